"""Power model: instantaneous board watts from what the emulated GPU is doing, and the energy it adds up to.

Four levels, between the profile's ``idle_w`` and ``max_w`` (the board limit):

* idle: no replica has anything to run (clocks drop);
* active floor, ``idle + floor_frac * (max - idle)``: work is in flight but the GPU waits (host phases, and
  the latency-bound part of a GPU phase: launches, syncs, tiny kernels); clocks stay up, kernels do not run;
* memory-bound, ``idle + mem_frac * (max - idle)``: streaming weights/KV from HBM at the achieved bandwidth;
* compute-bound: ``max_w``, the power limit (prefill GEMMs).

A GPU phase in isolation draws a time-weighted mix of the last three levels (the phase's ``StepCost`` split).
When several replicas are in their GPU phases at once they share the GPU (gpu.py's stretch factor ``s``): each
phase's draw above the floor is diluted by ``s``, so a saturated GPU draws the average of its tenants'
intensities, never their sum; the total is capped at ``max_w``. ``mem_frac`` is fitted to the study's
OPT-1.3B figures (about 256 W at batch 1 and 340 W at batch 512 on the h100-64gb profile); ``floor_frac`` is
assumed (about 40 W over idle), because those two figures cannot separate it from ``mem_frac``.
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
    floor_w: float  # active-floor watts above idle
    mem_w: float  # memory-bound watts above the active floor
    compute_w: float  # compute-bound watts above the active floor

    @classmethod
    def for_gpu(cls, gpu: GpuProfile) -> PowerModel:
        span = gpu.max_w - gpu.idle_w
        floor = gpu.floor_frac * span
        return cls(gpu.idle_w, gpu.max_w, floor, (gpu.mem_frac - gpu.floor_frac) * span, span - floor)

    def phase_dynamic_w(self, cost: StepCost) -> float:
        """Mean watts above the active floor over a GPU phase run alone."""
        gpu = cost.gpu_s
        if gpu <= 0:
            return 0.0
        return (self.mem_w * cost.mem_s + self.compute_w * cost.compute_s) / gpu

    def total_w(self, active: bool, dynamic_w: Iterable[float] = (), stretch: float = 1.0) -> float:
        """Board watts now: ``active`` if any replica has work; ``dynamic_w`` of the phases on the GPU."""
        if not active:
            return self.idle_w
        extra = sum(dynamic_w) / max(stretch, 1.0)
        return min(self.max_w, self.idle_w + self.floor_w + extra)

    def step_energy_j(self, cost: StepCost) -> float:
        """Joules of one step of a lone replica (host phase at the floor, GPU phase at its mix)."""
        active = self.idle_w + self.floor_w
        return active * cost.total_s + self.mem_w * cost.mem_s + self.compute_w * cost.compute_s


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
