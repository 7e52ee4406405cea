"""The asyncio driver of a load level: one event loop sends the plan (``LoadLoop``) and records every request.

``loadgen.level.pipeline`` plans the level and finishes it; this module only probes the target, opens the run
directory through the pipeline's callback, drives the loop with its live display and reports the client's own
figures (CPU, event-loop lag, whether the generator was the bottleneck). ``drive_level`` also runs inside each
``--workers`` process (``loadgen.runner.workers``), as one stripe of the schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import time
from typing import Any

from loadgen.core.clock import MonotonicClock, wall_anchor
from loadgen.core.records import ERR_CONNECTION, STATUS_OK, RequestRecord
from loadgen.errors import ResultsError
from loadgen.level.pipeline import Driven, LevelRun
from loadgen.level.recorder import Recorder
from loadgen.runner.backends import make_backend
from loadgen.runner.live import LiveDisplay, LiveStats, monitor_loop_lag
from loadgen.runner.loop import LoadLoop, LoopOutcome, LoopSettings
from loadgen.scenario.backend import backend_options
from loadgen.scenario.model import Scenario


def install_uvloop() -> str:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        return "uvloop"
    except ImportError:
        return "asyncio"


class ConnectionWatch:
    """Stops the run when the server is gone: N connection errors in a row with no success between."""

    def __init__(self, loop: LoadLoop, limit: int) -> None:
        self.loop = loop
        self.limit = limit
        self.streak = 0
        self.tripped: str | None = None

    def __call__(self, rec: RequestRecord) -> None:
        if rec.error_kind == ERR_CONNECTION:
            self.streak += 1
            if self.limit and self.streak >= self.limit and self.tripped is None:
                self.tripped = " ".join((rec.error or "connection error").split())[:300]
                self.loop.stop()
        elif rec.status == STATUS_OK:  # only a success shows the server is there (a dying gRPC stream also
            self.streak = 0            # ends some requests as protocol errors, which must not hide it)


def backend_for(sc: Scenario, url: str) -> Any:
    return make_backend(sc.target.backend, backend_options(sc, url))


async def probe_target(sc: Scenario, url: str) -> dict:
    """Check the target once (reachable, right backend, model served) and return what the server said."""
    backend = backend_for(sc, url)
    await backend.start()
    try:
        return await backend.probe()
    finally:
        await backend.close()


class AsyncioDriver:
    """One process, one event loop (uvloop when installed)."""

    name = "asyncio"

    def drive(self, run: LevelRun) -> Driven:
        install_uvloop()
        outcome, client, tripped = asyncio.run(drive_level(run))
        failure = ResultsError(client["results_error"]) if client.get("results_error") else None
        return Driven(outcome, client, tripped, failure)


def loop_class(plan: Any) -> type[LoadLoop]:
    """The loop that sends the plan: multi-turn sessions have their own (``loadgen.runner.sessions``)."""
    if getattr(plan, "sessions", None) is not None:
        from loadgen.runner.sessions import SessionLoop

        return SessionLoop
    return LoadLoop


def loop_settings_for(run: LevelRun) -> LoopSettings:
    sc = run.scenario
    return LoopSettings(offsets_ns=run.plan.offsets, concurrency=sc.load.concurrency, duration_s=sc.load.duration,
                        max_requests=sc.load.requests, on_late=sc.load.on_late,
                        late_tolerance_ns=int(sc.load.late_tolerance * 1e9), drain_timeout_s=sc.limits.drain_timeout,
                        ramp_s=sc.load.ramp if run.plan.offsets is None else None)


class _Signals:
    """Ctrl-C (and SIGTERM) stop issuing; a second one raises KeyboardInterrupt. A worker process leaves Ctrl-C
    to its parent, which stops the workers with one SIGTERM each."""

    def __init__(self, loop: LoadLoop, worker: bool) -> None:
        self.loop = loop
        self.count = 0
        self.handled = (signal.SIGTERM,) if worker else (signal.SIGINT, signal.SIGTERM)

    def _on_signal(self) -> None:
        self.count += 1
        self.loop.stop()
        if self.count > 1:
            raise KeyboardInterrupt

    def __enter__(self) -> _Signals:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            for sig in self.handled:
                asyncio.get_running_loop().add_signal_handler(sig, self._on_signal)
        return self

    def __exit__(self, *exc: Any) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            for sig in self.handled:
                asyncio.get_running_loop().remove_signal_handler(sig)


def client_figures(outcome: LoopOutcome, stats: LiveStats, clock: Any, cpu_s: float, wall_s: float,
                   anchor: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """The summary's ``client`` block: what the generator spent, and whether it was the bottleneck."""
    lag_p99_ms = stats.loop_lag.percentile(99) / 1e6 if stats.loop_lag.count else 0.0
    reasons = []
    if lag_p99_ms > 20:
        reasons.append(f"event-loop lag p99 {lag_p99_ms:.1f} ms")
    if wall_s and cpu_s / wall_s > 0.9:
        reasons.append(f"client CPU {100 * cpu_s / wall_s:.0f} % of one core")
    return {
        "event_loop": asyncio.get_event_loop_policy().__class__.__module__.split(".")[0],
        "wake_method": clock.wake_method,
        "cpu_seconds": round(cpu_s, 3), "wall_seconds": round(wall_s, 3),
        "cpu_utilisation": round(cpu_s / wall_s, 3) if wall_s else None,
        "cpu_seconds_per_1000_requests": round(1000 * cpu_s / outcome.issued, 3) if outcome.issued else None,
        "loop_lag_p99_ms": round(lag_p99_ms, 3), "issued": outcome.issued, "dropped": outcome.dropped,
        "late": outcome.late, "cancelled_at_end": outcome.cancelled, "interrupted": outcome.interrupted,
        "stopped_early": outcome.stopped_early,
        "anchor": anchor, "t0_offset_ns": outcome.t0_ns - anchor["monotonic_ns"],
        "saturated": bool(reasons), "saturation_reason": "; ".join(reasons) or None, "server": info,
    }


async def drive_level(run: LevelRun, part: Any = None) -> tuple[LoopOutcome, dict, str | None]:
    """Probe the target, then (only then) open the run directory through ``run.open_dir(info)`` and run.

    ``part`` (a ``loadgen.runner.workers.WorkerLink``) makes this process one of several worker processes of the
    level: it runs its stripe of the schedule from the t0 the parent hands out, writes ``records.w<K>.jsonl``
    and reports live figures to the parent instead of drawing them.
    """
    sc, plan = run.scenario, run.plan
    backend = backend_for(sc, run.url)
    await backend.start()
    try:
        info = await backend.probe()
        run_dir = run.open_dir(info)
        recorder = Recorder(run_dir / ("records.jsonl" if part is None else f"records.w{part.worker}.jsonl"))
        stats = LiveStats()
        settings = loop_settings_for(run)
        if part is not None:
            part.share(settings)
            settings.t0_ns = await part.ready(settings)
        clock = MonotonicClock()
        loop = loop_class(plan)(backend, plan.source, recorder, clock, settings, stats)
        recorder.on_error = lambda err: loop.stop()  # results that cannot be written: stop the load
        watch = ConnectionWatch(loop, sc.limits.max_connection_errors)
        stats.add_observer(watch)
        for make_watch in run.watches:  # a front end's live judges (a search step's saturation watch)
            stats.add_observer(make_watch(loop))
        aloop = asyncio.get_running_loop()
        anchor = wall_anchor()
        recorder.start()
        lag_task = aloop.create_task(monitor_loop_lag(stats))
        display = LiveDisplay(stats, total=plan.total if plan.offsets is not None or plan.sessions is not None
                              else sc.load.requests,
                              duration_s=sc.load.duration if plan.offsets is None else None,
                              target_rate=plan.target_rate, console=run.console, enabled=run.live and part is None)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        with display, _Signals(loop, worker=part is not None):
            disp_task = aloop.create_task(display.run() if part is None else part.report(stats))
            # Collect once and freeze what exists now, so that no full garbage collection (13-15 ms measured)
            # stalls the loop in the middle of the run.
            gc.collect()
            gc.freeze()
            try:
                outcome = await loop.run()
            finally:
                gc.unfreeze()  # a sweep runs many levels in one process: let the next collection see it all
                clock.close()
                disp_task.cancel()
                lag_task.cancel()
                await recorder.stop()
        client = client_figures(outcome, stats, clock, time.process_time() - cpu0, time.perf_counter() - wall0,
                                anchor, info)
        if watch.tripped:
            client["server_gone"] = watch.tripped
        if recorder.error is not None:
            client["results_error"] = recorder.describe_error()
            outcome.interrupted = True
            if part is not None:  # a worker: the parent reports it in one line and stops the others
                raise ResultsError(recorder.describe_error() or "")
        return outcome, client, watch.tripped
    finally:
        await backend.close()
