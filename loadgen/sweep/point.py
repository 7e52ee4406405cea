"""One sweep point, built from the pieces ``loadgen run`` uses (``run_level_async``, ``summarize``, the power
monitor), so a point's directory is a run directory like any other (``loadgen report`` reads it).

What a point adds to a plain run: its server is already up (the sweep owns it), the ``offline`` load (all N
requests at t=0: a closed loop of N users with one request each, measured until the last token, as the study
did), the study's ShareGPT-like lengths (the emulator's ``sharegpt_like_lengths``, so a point can be set beside
``simulate_offline`` of the same requests), the server's own view (``ServerWatch``), and the completion rate (the
pace at which the server finished requests: the open-loop saturation signal).
"""

from __future__ import annotations

import asyncio
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loadgen import __version__
from loadgen.core.records import STATUS_OK, RequestSpec
from loadgen.runner.rundir import write_json
from loadgen.runner.settings import RunSettings, parse_seconds
from loadgen.sweep.grid import Point, SweepSpec
from loadgen.sweep.scrape import ServerWatch
from loadgen.sweep.targets import Running

OFFLINE_LAG_BOUND_MS = 1000.0  # issuing N requests at once takes time: bound the schedule lag at 1 s, not 10 ms


class LengthsSource:
    """Requests with given (input, output) lengths, cycled; prompts built up front for offline points."""

    def __init__(self, inputs: np.ndarray, outputs: np.ndarray, builder: Any, min_tokens: bool,
                 prebuild: int = 0) -> None:
        self.inputs, self.outputs = inputs, outputs
        self.builder = builder
        self.min_tokens = min_tokens
        self._cache: dict[int, tuple[str, int]] = {}
        for i in range(min(prebuild, len(inputs))):
            self._cache[i] = builder.build(int(inputs[i]), i)

    def spec(self, index: int) -> RequestSpec:
        k = index % len(self.inputs)
        prompt, count = self._cache.pop(index, None) or self.builder.build(int(self.inputs[k]), index)
        n_out = int(self.outputs[k])
        return RequestSpec(index=index, prompt=prompt, input_tokens=count, max_tokens=n_out,
                           min_tokens=n_out if self.min_tokens else None)


@dataclass
class _Load:
    """What ``run_level_async`` takes as a workload: a source and open-loop offsets (None: closed loop)."""

    source: Any
    offsets: np.ndarray | None
    target_rate: float | None


def sharegpt_lengths(n: int, seed: int, profile: str | None) -> tuple[np.ndarray, np.ndarray]:
    from loadgen.emulator.profiles import get_model
    from loadgen.emulator.simulate import sharegpt_like_lengths

    max_len = 2048
    if profile:
        max_len = min(2048, get_model(profile).max_model_len)
    return sharegpt_like_lengths(n, seed=seed, max_model_len=max_len)


def point_settings(spec: SweepSpec, point: Point, url: str, out_dir: Path) -> RunSettings:
    w, load, t = spec.workload, point.load, point.target
    warm = str(w.warmup).strip()
    warmup_requests, warmup_s = (int(warm), 0.0) if warm.isdigit() else (0, parse_seconds(warm, "warmup"))
    common: dict[str, Any] = dict(
        url=url, backend=t.backend, model=t.model, headers=dict(spec.headers), http_client=w.http_client,
        server_model=t.profile or "external", server_gpu=t.gpu or "external", server_replicas=t.replicas or 1,
        server_max_batch=t.max_batch or 0, server_speed=t.speed, input_tokens=w.input_tokens,
        output_tokens=w.output_tokens, seed=w.seed, warmup_requests=warmup_requests, warmup_s=warmup_s,
        request_timeout_s=w.request_timeout_s, name=point.id, out_dir=str(out_dir), live=False,
        power=spec.power, power_interval_s=spec.power_interval_s, idle_s=spec.idle_s)
    if load.kind == "offline":
        n = int(load.value)
        return RunSettings(**common, concurrency=n, max_requests=n, drain_timeout_s=w.request_timeout_s)
    if load.kind == "rate":
        return RunSettings(**common, arrival=w.arrival, rate=load.value, cv=w.cv, max_requests=load.requests,
                           duration_s=load.duration_s, drain_timeout_s=min(600.0, w.request_timeout_s))
    return RunSettings(**common, concurrency=int(load.value), max_requests=load.requests, duration_s=load.duration_s,
                       drain_timeout_s=min(600.0, w.request_timeout_s))


def _workload(spec: SweepSpec, point: Point, s: RunSettings) -> _Load | None:
    """The ShareGPT-like workload, or None to let ``run_level_async`` build the usual one from ``s``."""
    if spec.workload.lengths != "sharegpt":
        return None
    from loadgen.core.arrivals import build_offsets
    from loadgen.core.prompts import PromptBuilder
    from loadgen.runner.run import build_arrival

    offline = point.load.kind == "offline"
    n = int(point.load.value) if offline else max(4096, point.load.requests or 0)
    inputs, outputs = sharegpt_lengths(n, spec.workload.seed, point.target.profile)
    source = LengthsSource(inputs, outputs, PromptBuilder(tokenizer=None, seed=s.seed), s.min_tokens,
                           prebuild=n if offline else 0)
    arrival = build_arrival(s)
    offsets = build_offsets(arrival) if arrival.is_open_loop else None
    return _Load(source, offsets, s.rate)


def completion_rate(run_dir: Path) -> float | None:
    """Requests the server finished per second, between its first and last completion (open-loop saturation:
    below the target rate, the server fell behind however punctually the client sent)."""
    from loadgen.core.summary import load_records

    ends = sorted(r.end_ns for r in load_records(run_dir / "records.jsonl")
                  if r.status == STATUS_OK and r.end_ns is not None)
    if len(ends) < 2 or ends[-1] <= ends[0]:
        return None
    return (len(ends) - 1) / ((ends[-1] - ends[0]) / 1e9)


@dataclass
class PointOutcome:
    summary: dict[str, Any] | None
    interrupted: bool
    server_gone: str | None
    wall_s: float


def run_point(spec: SweepSpec, point: Point, running: Running, run_dir: Path, console: Any) -> PointOutcome:
    """Run one point into ``run_dir`` (created here) and write its config.json, records.jsonl, summary.json."""
    from loadgen.core.prompts import PromptBuilder
    from loadgen.core.summary import LevelContext
    from loadgen.power.monitor import power_monitor
    from loadgen.report import report_text
    from loadgen.runner.run import build_arrival, finish_level, install_uvloop, run_level_async

    s = point_settings(spec, point, running.url, run_dir.parent)
    load = _workload(spec, point, s)
    arrival = build_arrival(s)
    power = power_monitor(s, console)
    loop_kind = install_uvloop()
    offline = point.load.kind == "offline"
    ctx = LevelContext(name=point.id, backend=s.backend, url=s.url or "", model=s.model, target_rate=s.rate,
                       concurrency=s.concurrency, arrival=asdict(arrival), warmup_s=s.warmup_s,
                       warmup_requests=s.warmup_requests, prompt_method=PromptBuilder(seed=s.seed).method,
                       on_late=s.on_late, late_threshold_ms=s.late_tolerance_s * 1e3,
                       open_loop=point.load.is_open_loop)
    if offline:
        ctx.max_schedule_lag_p99_ms = OFFLINE_LAG_BOUND_MS
    ctx.extra = {"sweep_point": point.id, "load": asdict(point.load), "lengths": spec.workload.lengths,
                 "offline": offline}
    config = {"loadgen_version": __version__, "python": platform.python_version(), "event_loop": loop_kind,
              "argv": ["loadgen", "sweep", f"(point {point.id})"], "settings": s.public_dict(), "url": s.url,
              "embedded_server": running.describe() if point.target.kind == "embedded" else None,
              "server": running.describe(), "sweep_point": point.definition(spec.workload),
              "level_context": asdict(ctx)}

    def prepare_dir(info: dict) -> Path:
        run_dir.mkdir(parents=True, exist_ok=False)
        config["server_info"] = info
        write_json(run_dir / "config.json", config)
        if power is not None:  # one monitor per level, started from this (the main) thread
            power.start(run_dir, running.metrics_url, running.url)
        return run_dir

    watch = ServerWatch(running.metrics_url)
    quiet = _quiet_console()
    t0 = time.perf_counter()
    try:
        watch.start()
        try:
            outcome, client, tripped = asyncio.run(run_level_async(s, s.url or "", prepare_dir, quiet, load))
        except KeyboardInterrupt:
            if not run_dir.exists():
                raise
            outcome, client, tripped = None, {"interrupted": True}, None
        finally:
            watch.stop()
        summary = finish_level(run_dir, ctx, config, outcome, client, power)
        summary["extra"]["server_watch"] = watch.result()
        summary["extra"]["completion_rate_rps"] = completion_rate(run_dir)
        write_json(run_dir / "summary.json", summary)
        (run_dir / "report.txt").write_text(report_text([summary]))
        interrupted = outcome is None or outcome.interrupted
        return PointOutcome(summary, interrupted, tripped, time.perf_counter() - t0)
    finally:
        if power is not None:
            power.stop()


def _quiet_console() -> Any:
    import io

    from rich.console import Console

    return Console(file=io.StringIO() if not sys.stdout.isatty() else None, quiet=True)
