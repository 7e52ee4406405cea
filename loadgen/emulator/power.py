"""Power model: board watts from what the emulated GPU is doing, and the energy it adds up to.

Three physical terms above the profile's ``idle_w`` (profiles.py says where each constant comes from):

* static, ``active_w``: while any replica has work the clocks stay up and the chip leaks at its working voltage,
  whether a kernel runs or the GPU waits for the host; idle (no work at all) drops back to ``idle_w``;
* memory traffic, ``j_per_byte`` for every byte read from or written to HBM (weights, KV cache);
* arithmetic, ``j_per_flop`` for every FLOP of the matrix multiplies and attention.

So a step of a lone replica costs ``(idle_w + active_w) * duration + j_per_byte * bytes + j_per_flop * flops``
joules: a memory-bound batch-1 step of a large model draws what its bytes cost, not a fitted "memory-bound level",
and watts grow with the batch through the arithmetic and KV traffic it adds. A GPU phase's dynamic draw is its
energy over its lone duration; when several replicas' GPU phases share the GPU (gpu.py's stretch factor ``s``)
each progresses at ``1 / s`` of its lone speed, so it moves its bytes ``s`` times slower and its draw is divided
by ``s``. The total is capped at the board limit ``max_w``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from loadgen.emulator.perfmodel import StepCost
from loadgen.emulator.profiles import GpuProfile


@dataclass(frozen=True, slots=True)
class PowerModel:
    idle_w: float
    max_w: float
    floor_w: float  # static watts over idle while the engine has work
    j_per_byte: float
    j_per_flop: float

    @classmethod
    def for_gpu(cls, gpu: GpuProfile) -> PowerModel:
        return cls(gpu.idle_w, gpu.max_w, gpu.active_w, gpu.j_per_byte, gpu.j_per_flop)

    def dynamic_j(self, cost: StepCost) -> float:
        """Joules of a step's traffic and arithmetic (on top of the static power over its duration)."""
        return self.j_per_byte * cost.bytes + self.j_per_flop * cost.flops

    def phase_dynamic_w(self, cost: StepCost) -> float:
        """Mean watts above the active floor over a GPU phase run alone."""
        gpu = cost.gpu_s
        if gpu <= 0:
            return 0.0
        return self.dynamic_j(cost) / gpu

    def total_w(self, active: bool, dynamic_w: Iterable[float] = (), stretch: float = 1.0) -> float:
        """Board watts now: ``active`` if any replica has work; ``dynamic_w`` of the phases on the GPU."""
        if not active:
            return self.idle_w
        extra = sum(dynamic_w) / max(stretch, 1.0)
        return min(self.max_w, self.idle_w + self.floor_w + extra)

    def step_energy_j(self, cost: StepCost) -> float:
        """Joules of one step of a lone replica (static power over the whole step, plus its bytes and FLOPs);
        the board limit caps the GPU phase's draw."""
        static = self.idle_w + self.floor_w
        gpu_w = min(self.max_w, static + self.phase_dynamic_w(cost))
        return static * cost.host_s + gpu_w * cost.gpu_s


class EnergyCounter:
    """Integrates piecewise-constant power into joules; never decreases (time only moves forward)."""

    __slots__ = ("joules", "_t", "_w")

    def __init__(self, t0: float = 0.0, watts: float = 0.0) -> None:
        self.joules = 0.0
        self._t = t0
        self._w = watts

    def set_power(self, t: float, watts: float) -> None:
        """Close the interval up to ``t`` at the previous power, then draw ``watts`` from ``t`` on."""
        if t > self._t:
            self.joules += self._w * (t - self._t)
            self._t = t
        self._w = watts

    def read(self, t: float) -> float:
        self.set_power(t, self._w)
        return self.joules
