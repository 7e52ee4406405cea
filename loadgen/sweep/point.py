"""One sweep point: the sweep's base scenario with this point's load and server, run through the one level
pipeline (``loadgen.level.pipeline``), so a point's directory is a run directory like any other (``loadgen
report`` reads it) and its ``config.json`` holds the point's resolved ``scenario``.

What a point adds to a plain run: its server is already up (the sweep owns it), the ``offline`` load (all N
requests at t=0: a closed loop of N users with one request each, measured until the last token, as the study
did), the server's own view (``ServerWatch``, fed by the level's server-metrics sampler at 5 Hz), and the
completion rate (the pace at which the server finished requests: the open-loop saturation signal).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loadgen.core.records import STATUS_OK
from loadgen.scenario.model import Scenario
from loadgen.sweep.grid import Point, SweepSpec, Target
from loadgen.sweep.scrape import ServerWatch
from loadgen.sweep.targets import Running

OFFLINE_LAG_BOUND_MS = 1000.0  # issuing N requests at once takes time: bound the schedule lag at 1 s, not 10 ms
WATCH_INTERVAL_S = 0.2  # the sweep's view of the server: 5 Hz at least, as before the sampler fed it
WATCH_SETTLE_S = 0.3  # the last scrape waits this long: counters updated at the very end are seen


def target_dict(spec: SweepSpec, target: Target, url: str, name: str, out_dir: Path) -> dict[str, Any]:
    """The base scenario (as a mapping) with one configuration's target and server, a name and an out dir."""
    t = target
    d = spec.base.model_dump()
    # an embedded configuration keeps the file's (absent) URL: the sweep's own server is where the load goes
    d["target"].update(url=d["target"]["url"] if t.kind == "embedded" else url, backend=t.backend, model=t.model)
    if t.profile:
        d["server"].update(model=t.profile, gpu=t.gpu, max_batch=t.max_batch, replicas=t.replicas, speed=t.speed,
                           mps=t.mps, spread=t.spread, replica_memory=t.replica_memory)
    d["results"].update(name=name, out_dir=str(out_dir), live=False)
    return d


def point_scenario(spec: SweepSpec, point: Point, url: str, out_dir: Path) -> Scenario:
    """The base scenario with this point's target, server, load and name; checked like any level."""
    from loadgen.scenario.check import resolve

    load = point.load
    d = target_dict(spec, point.target, url, point.id, out_dir)
    ld = d["load"]
    ld.update(rate=None, concurrency=None, requests=load.requests, duration=load.duration_s)
    if load.kind == "offline":
        ld.update(concurrency=int(load.value), requests=int(load.value), duration=None)
    elif load.kind == "rate":
        ld.update(rate=load.value)
    else:
        ld.update(concurrency=int(load.value))
    return resolve(Scenario.model_validate(d), check_paths=False)


def completion_rate(run_dir: Path) -> float | None:
    """Requests the server finished per second, between its first and last completion (open-loop saturation:
    below the scheduled rate, the server fell behind however punctually the client sent)."""
    from loadgen.core.summary import load_level_records

    ends = sorted(r.end_ns for r in load_level_records(run_dir) if r.status == STATUS_OK and r.end_ns is not None)
    if len(ends) < 2 or ends[-1] <= ends[0]:
        return None
    return (len(ends) - 1) / ((ends[-1] - ends[0]) / 1e9)


class PointWatch:
    """The sweep point's side task: the server's metrics during the level (from the level's sampler, which the
    pipeline hands to ``watch_server_metrics``: one scraper per level), and the completion rate after."""

    def __init__(self) -> None:
        self.watch = ServerWatch()
        self.sampler: Any = None

    def watch_server_metrics(self, sampler: Any) -> None:
        self.sampler = sampler
        sampler.add_listener(self.watch.feed, settle_s=WATCH_SETTLE_S, interval_s=WATCH_INTERVAL_S)

    def start(self) -> Any:
        return self

    def stop(self) -> None:
        pass

    def contribute(self, run_dir: Path, summary: dict[str, Any]) -> None:
        if self.sampler is not None and not self.watch.samples:
            self.watch.error = self.sampler.error
        summary["extra"]["server_watch"] = self.watch.result()
        summary["extra"]["completion_rate_rps"] = completion_rate(run_dir)


@dataclass
class PointOutcome:
    summary: dict[str, Any] | None
    interrupted: bool
    server_gone: str | None
    wall_s: float


def run_point(spec: SweepSpec, point: Point, running: Running, run_dir: Path, console: Any) -> PointOutcome:
    """Run one point into ``run_dir`` (created here) and write its config.json, records, summary.json."""
    from loadgen.level.pipeline import LevelOptions, run_level
    from loadgen.level.plan import plan_level

    sc = point_scenario(spec, point, running.url, run_dir.parent)
    offline = point.load.kind == "offline"
    opts = LevelOptions(
        front_end="sweep", console=_quiet_console(), plan=plan_level(sc, offline=offline), url=running.url,
        metrics_url=running.metrics_url, run_dir=run_dir, announce=False, side_tasks=[PointWatch()],
        config_extra={"argv": ["loadgen", "sweep", f"(point {point.id})"], "server": running.describe(),
                      "embedded_server": running.describe() if point.target.kind == "embedded" else None,
                      "sweep_point": point.definition(spec.workload)},
        ctx_extra={"sweep_point": point.id, "load": asdict(point.load), "offline": offline},
        ctx_fields={"open_loop": point.load.is_open_loop,
                    **({"max_schedule_lag_p99_ms": OFFLINE_LAG_BOUND_MS} if offline else {})})
    t0 = time.perf_counter()
    result = run_level(sc, _driver(sc), opts)
    return PointOutcome(result.summary, result.interrupted, result.driven.tripped, time.perf_counter() - t0)


def _driver(sc: Scenario) -> Any:
    if sc.load.workers > 1:
        from loadgen.runner.workers import WorkersDriver

        return WorkersDriver()
    from loadgen.runner.driver import AsyncioDriver

    return AsyncioDriver()


def _quiet_console() -> Any:
    import io

    from rich.console import Console

    return Console(file=io.StringIO() if not sys.stdout.isatty() else None, quiet=True)
