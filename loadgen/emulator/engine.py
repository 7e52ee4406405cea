"""The emulated SLM engine: one per Triton model instance, generating tokens on the performance model's clock.

A daemon thread runs the step loop. Each step the scheduler (scheduler.py) admits, prefills and decodes; the
performance model (perfmodel.py) says how long the host and GPU phases take; the thread waits for the absolute
deadline of each phase (``time.monotonic_ns``; relative sleeps would accumulate drift) and then hands every
request its token through ``on_tokens``. Replicas on one GPU meet in a SharedGpu (gpu.py): a GPU phase is
stretched while other replicas are on the GPU too, host phases overlap freely (MPS), and the power/energy
accounting is shared.

Timeline: a step's nominal start is the previous step's end. The callbacks of the previous step and the
planning of this one happen inside this step's host phase; only when they take longer than the host phase does
the timeline slip (``late_steps``, ``late_ms_total``). ``lag_ms_*`` is how late the thread got to plan each
step after its nominal start, which is the headroom figure when measuring how many streams one emulator can
feed.

This module is the contract with the Triton Python-backend model: ``EngineRequest`` and ``Engine``'s methods.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from loadgen.emulator.gpu import GPU, HOST, IDLE, SharedGpu
from loadgen.emulator.perfmodel import StepCost, step_cost
from loadgen.emulator.power import PowerModel
from loadgen.emulator.profiles import (
    BLOCK_TOKENS,
    DEFAULT_GPU_MEMORY_FRACTION,
    GpuProfile,
    ModelProfile,
    check_batch_fits,
    get_gpu,
    get_model,
)
from loadgen.emulator.scheduler import Scheduler
from loadgen.errors import UsageError

_MAX_SLEEP_NS = 50_000_000  # wake at least this often to notice stop()
_POLL_NS = 1_000_000  # how often a shared GPU phase re-reads the other replicas' activity


@dataclass(eq=False)
class EngineRequest:
    """One generation request: the host fills the first fields, the engine the timestamps and counters."""

    request_id: str
    input_tokens: int
    max_tokens: int
    on_tokens: Callable[
        [EngineRequest, int, bool], None
    ]  # (req, n_new_tokens, is_final), from the engine thread
    on_error: Callable[[EngineRequest, str], None] | None = None
    arrival_time_ns: int = 0  # time.monotonic_ns() clock
    first_scheduled_time_ns: int = 0
    first_token_time_ns: int = 0
    last_token_time_ns: int = 0
    cancelled: bool = False  # set by the host; the engine drops the request at its next step
    block_hashes: list | None = None  # prefix-cache names of its full blocks (prefix_cache.block_hashes), or None
    cached_tokens: int = 0  # prompt tokens found in the prefix cache, not prefilled (engine-filled)
    output_tokens: int = 0  # tokens delivered so far (engine-filled)
    preemptions: int = 0  # times its KV cache was dropped and recomputed (engine-filled)


class Engine:
    """Continuous-batching engine emulating ``model`` on ``gpu``; see the module docstring.

    ``replicas`` / ``replica_index``: this engine is one of N on the same emulated GPU and gets 1/N of its
    memory budget. Give every replica the same ``shared_path`` (a file, e.g. under /dev/shm, that the host
    removes before the server starts) so that they also share bandwidth, power and the energy counter; without
    it the replica behaves as if it had the GPU's bandwidth to itself. ``mps=False`` emulates time slicing
    instead of MPS (must be the same for every replica of a path). ``speed`` divides every emulated duration.
    ``prefix_cache`` turns automatic prefix caching on (requests that carry ``block_hashes`` reuse the KV blocks
    of earlier ones); ``block_tokens`` is the KV block size (the pool's memory is the same whatever the size).
    """

    def __init__(
        self,
        model: ModelProfile | str,
        gpu: GpuProfile | str,
        max_batch: int,
        replicas: int = 1,
        replica_index: int = 0,
        speed: float = 1.0,
        shared_path: str | None = None,
        gpu_memory_fraction: float = DEFAULT_GPU_MEMORY_FRACTION,
        mps: bool = True,
        max_prefill_tokens: int = 2048,
        prefix_cache: bool = True,
        block_tokens: int = BLOCK_TOKENS,
    ) -> None:
        self.model = get_model(model)
        self.gpu = get_gpu(gpu)
        if not speed > 0:
            raise UsageError(f"speed={speed!r} is invalid: use a positive factor (1.0 = real time)")
        if replicas < 1 or not 0 <= replica_index < replicas:
            raise UsageError(
                f"replica_index={replica_index} is invalid for {replicas} replica(s): use 0 to {replicas - 1}"
            )
        if int(block_tokens) != block_tokens or not 1 <= block_tokens <= 1024:
            raise UsageError(f"block_tokens={block_tokens!r} is invalid: use a KV block size of 1 to 1024 tokens")
        blocks = check_batch_fits(self.model, self.gpu, max_batch, replicas, gpu_memory_fraction)
        blocks = blocks * BLOCK_TOKENS // int(block_tokens)  # the same pool memory in blocks of the chosen size
        self.max_batch = int(max_batch)
        self.replicas = int(replicas)
        self.replica_index = int(replica_index)
        self.speed = float(speed)
        self.shared_path = shared_path
        self.mps = bool(mps)
        self.prefix_cache = bool(prefix_cache)
        self.block_tokens = int(block_tokens)
        self._power = PowerModel.for_gpu(self.gpu)
        model_p, gpu_p = self.model, self.gpu
        self._sched = Scheduler(
            max_batch,
            blocks,
            max_model_len=self.model.max_model_len,
            max_prefill_tokens=max_prefill_tokens,
            cost_fn=lambda shape: step_cost(model_p, gpu_p, shape),
            block_tokens=int(block_tokens),
            prefix_cache=prefix_cache,
        )
        self._shared: SharedGpu | None = None
        self._inbox: deque[EngineRequest] = deque()
        self._inbox_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live: dict[int, EngineRequest] = {}
        self._ids = itertools.count()
        self._lags_ns: deque[int] = deque(maxlen=20_000)
        self._lag_max_ns = 0
        self.late_steps = 0
        self._late_ns = 0
        self.callback_errors = 0
        self.dropped = 0  # requests the host cancelled (client gone), queued or running
        self._stopped = False
        self._failed = False
        self._final_energy_j = 0.0

    # ------------------------------------------------------------------ public API
    def start(self) -> None:
        """Attach to the (shared) GPU and start the step thread."""
        if self._thread is not None:
            raise UsageError("engine already started: create a new Engine to start again")
        self._shared = SharedGpu(self.replicas, self._power, self.shared_path, self.mps)
        self._shared.attach(self.replica_index)
        self._thread = threading.Thread(
            target=self._loop, name=f"slm-engine-{self.model.name}-{self.replica_index}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the step thread; requests still queued or running get ``on_error('engine stopped')``."""
        with self._inbox_lock:
            if self._stopped:
                return
            self._stopped = True
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._inbox_lock:
            pending = list(self._inbox)
            self._inbox.clear()
        pending.extend(self._live.values())
        self._live.clear()
        for req in pending:
            _report_error(req, "engine stopped")
        shared, self._shared = self._shared, None
        if shared is not None:
            shared.set_state(self.replica_index, IDLE)
            self._final_energy_j = shared.energy_j()
            shared.close()

    def submit(self, req: EngineRequest) -> None:
        """Queue a request (thread-safe); it is admitted at the engine's next step."""
        req.arrival_time_ns = time.monotonic_ns()
        with self._inbox_lock:
            if not (self._stopped or self._failed):
                self._inbox.append(req)
                self._wake.set()
                return
        _report_error(req, "engine is stopped")

    def stats(self) -> dict:
        """A snapshot for metrics endpoints; cheap enough to poll every second."""
        sched = self._sched
        cache = sched.cache
        lags = np.fromiter(list(self._lags_ns), dtype=np.int64) if self._lags_ns else np.zeros(1, np.int64)
        power_w, energy_j, stretch = self._power.idle_w, self._final_energy_j, 1.0
        shared = self._shared
        if shared is not None:
            try:
                power_w, energy_j, stretch = shared.power_w(), shared.energy_j(), shared.stretch()
            except ValueError:  # closed by a concurrent stop()
                energy_j = self._final_energy_j
        return {
            "running": sched.running,
            "waiting": sched.waiting + len(self._inbox),
            "context": sched.prefilling,
            "kv_used_blocks": sched.kv_used_blocks,
            "kv_total_blocks": sched.kv_total_blocks,
            "kv_usage": sched.kv_used_blocks / sched.kv_total_blocks,
            "kv_block_tokens": sched.block_tokens,
            "kv_cached_blocks": sched.kv_cached_blocks,
            "prefix_cache": cache is not None,
            "prefix_cache_queries": cache.queries if cache is not None else 0,  # prompt tokens looked up
            "prefix_cache_hits": cache.hits if cache is not None else 0,  # of them found cached
            "prefix_cache_reused_blocks": cache.reused_blocks if cache is not None else 0,
            "prefix_cache_evictions": cache.evictions if cache is not None else 0,
            "requests_dropped": self.dropped,  # cancelled by the host (their slot and KV freed)
            "preemptions": sched.preemptions,
            "steps": sched.steps,
            "tokens_generated": sched.tokens_generated,
            "requests_completed": sched.requests_completed,
            "power_w": power_w,
            "energy_j": energy_j,
            "gpu_stretch": stretch,
            "lag_ms_p50": float(np.percentile(lags, 50)) / 1e6,
            "lag_ms_p99": float(np.percentile(lags, 99)) / 1e6,
            "lag_ms_max": self._lag_max_ns / 1e6,
            "late_steps": self.late_steps,
            "late_ms_total": self._late_ns / 1e6,
            "callback_errors": self.callback_errors,
            "failed": self._failed,
            "max_batch": self.max_batch,
            "replicas": self.replicas,
            "replica_index": self.replica_index,
            "speed": self.speed,
        }

    # ------------------------------------------------------------------ the step thread
    def _loop(self) -> None:
        try:
            self._steps()
        except Exception as exc:  # noqa: BLE001 - fail the requests loudly rather than leave them hanging
            with self._inbox_lock:
                self._failed = True
                pending = list(self._inbox) + list(self._live.values())
                self._inbox.clear()
            self._live.clear()
            for req in pending:
                _report_error(req, f"emulated engine failed: {type(exc).__name__}: {exc}")
            raise

    def _steps(self) -> None:
        shared = self._shared
        assert shared is not None
        slot = self.replica_index
        deadline: int | None = None  # end of the previous step = nominal start of the next
        state = IDLE
        while not self._stop.is_set():
            self._wake.clear()
            self._drain_inbox()
            self._drop_cancelled()
            plan = self._sched.step()
            now = time.monotonic_ns()
            if plan is None:
                if state != IDLE:
                    shared.set_state(slot, IDLE)
                    state = IDLE
                deadline = None
                self._wake.wait(0.2)
                continue
            if deadline is None:
                start = now
            else:
                lag = now - deadline
                self._lags_ns.append(lag)
                self._lag_max_ns = max(self._lag_max_ns, lag)
                start = deadline
            if state != HOST:
                shared.set_state(slot, HOST)
                state = HOST
            for key in plan.admitted:
                req = self._live.get(key)
                if req is not None:
                    req.first_scheduled_time_ns = now
                    req.cached_tokens = plan.cached.get(key, 0)
            cost = plan.cost
            host_end = start + int(cost.host_s / self.speed * 1e9)
            if host_end < now:
                self.late_steps += 1
                self._late_ns += now - host_end
                host_end = now
            if not self._sleep_until(host_end):
                break
            end = self._gpu_phase(shared, slot, cost, host_end)
            if end is None:
                break
            state = HOST
            deadline = end
            self._emit(plan)

    def _gpu_phase(self, shared: SharedGpu, slot: int, cost: StepCost, t0: int) -> int | None:
        """Run the GPU phase from ``t0`` (processor sharing when shared); its end in ns, None if stopped."""
        shared.set_state(slot, GPU, cost.utilisation, self._power.phase_dynamic_w(cost))
        try:
            if self.replicas == 1:
                end = t0 + int(cost.gpu_s / self.speed * 1e9)
                return end if self._sleep_until(end) else None
            remaining = cost.gpu_s  # emulated seconds of lone-GPU work still to do
            t = t0
            while True:
                s = shared.stretch()
                end = t + int(remaining * s / self.speed * 1e9)
                if not self._sleep_until(min(end, t + _POLL_NS)):
                    return None
                now = time.monotonic_ns()
                if now >= end:
                    return end
                remaining -= (now - t) / 1e9 * self.speed / s
                t = now
        finally:
            shared.set_state(slot, HOST)

    def _sleep_until(self, deadline_ns: int) -> bool:
        """Sleep to an absolute monotonic deadline; False if stop() was called meanwhile."""
        while True:
            if self._stop.is_set():
                return False
            left = deadline_ns - time.monotonic_ns()
            if left <= 0:
                return True
            time.sleep(min(left, _MAX_SLEEP_NS) / 1e9)

    def _drain_inbox(self) -> None:
        with self._inbox_lock:
            if not self._inbox:
                return
            batch = list(self._inbox)
            self._inbox.clear()
        for req in batch:
            if req.cancelled:
                self.dropped += 1
                continue
            key = next(self._ids)
            try:
                self._sched.add(key, req.input_tokens, req.max_tokens, req.block_hashes)
            except UsageError as exc:
                _report_error(req, str(exc))
                continue
            self._live[key] = req

    def _drop_cancelled(self) -> None:
        gone = [key for key, req in self._live.items() if req.cancelled]
        for key in gone:
            self._sched.cancel(key)
            del self._live[key]
        self.dropped += len(gone)

    def _emit(self, plan) -> None:
        """Hand out this step's tokens; a callback that raises loses its request, not the engine."""
        now = time.monotonic_ns()
        finished = set(plan.finished) if plan.finished else ()
        live = self._live
        for keys in (plan.decoded, plan.first):
            for key in keys:
                req = live.get(key)
                if req is None:
                    continue
                final = key in finished
                req.output_tokens += 1
                if not req.first_token_time_ns:
                    req.first_token_time_ns = now
                req.last_token_time_ns = now
                if final:
                    del live[key]
                try:
                    req.on_tokens(req, 1, final)
                except Exception as exc:  # noqa: BLE001 - the host's callback must not kill the engine
                    self.callback_errors += 1
                    if not final:
                        self._sched.cancel(key)
                        live.pop(key, None)
                    _report_error(req, f"on_tokens raised {type(exc).__name__}: {exc}")
        for key in plan.preempted:
            req = live.get(key)
            if req is not None:
                req.preemptions += 1


def _report_error(req: EngineRequest, message: str) -> None:
    if req.on_error is None:
        return
    try:
        req.on_error(req, message)
    except Exception:  # noqa: BLE001 - nothing sensible left to do with an error callback that fails
        pass
