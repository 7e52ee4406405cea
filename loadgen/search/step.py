"""One search step as a real level: the base scenario at one load, run through the level pipeline against the
search's one server, then judged from its records (``loadgen.search.confidence``) and checked for saturation.

``LevelStepper(...)`` is the ``run_step(load, prior)`` that ``loadgen.search.algorithm.search`` calls; an
extension (``prior`` given) runs one more level at the same load with the next seed and pools the records.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loadgen.core.metrics import E2E_SCHED, REQUEST_METRICS, request_times
from loadgen.core.records import ERROR_KINDS, STATUS_ERROR, STATUS_OK
from loadgen.errors import TargetError
from loadgen.scenario.model import Scenario
from loadgen.search.algorithm import StepResult, step_result
from loadgen.search.confidence import StepData, judge
from loadgen.search.saturation import SaturationWatch, judge_records

# per-request metrics judged by the order-statistic bound (ITL is per token, pooled: not independent draws)
BOUNDED_METRICS = tuple(m for m in REQUEST_METRICS if m.of_times is not None)


def step_scenario(base: Scenario, load: float, users: bool, name: str, out_dir: Path, seed_offset: int = 0,
                  drain_cap_s: float | None = None) -> Scenario:
    """The base scenario with this step's load (a rate, or ``users`` in a closed loop), name and seed."""
    from loadgen.scenario.check import resolve

    d = base.model_dump()
    ld = d["load"]
    if users:
        ld.update(rate=None, concurrency=int(load))
    else:
        ld.update(rate=float(load))
    ld["seed"] = int(ld.get("seed") or 0) + seed_offset
    d["results"].update(name=name, out_dir=str(out_dir), live=False)
    if drain_cap_s is not None:  # an overloaded step must not wait a minute for its queue to drain
        d["limits"]["drain_timeout"] = min(float(d["limits"]["drain_timeout"]), drain_cap_s)
    return resolve(Scenario.model_validate(d), check_paths=False)


def step_data(records: Any, summary: dict[str, Any], warmup_requests: int = 0,
              warmup_s: float = 0.0) -> tuple[StepData, str | None]:
    """A level's records and summary -> (the data the conditions are judged on, why it is saturated or None)."""
    from loadgen.core.slo import flat_metrics

    values: dict[str, list[float]] = {m.name: [] for m in BOUNDED_METRICS}
    sched, from_sched = [], []
    sent = completed = errors = 0
    kinds = dict.fromkeys(ERROR_KINDS, 0)
    for r in records:
        if r.index < warmup_requests or r.scheduled_ns < warmup_s * 1e9 or r.issued_ns is None:
            continue
        sent += 1
        if r.status == STATUS_ERROR:
            errors += 1
            kinds[r.error_kind or "unknown"] = kinds.get(r.error_kind or "unknown", 0) + 1
        if r.status != STATUS_OK:
            continue
        completed += 1
        times = request_times(r)
        if times is None:
            continue
        for m in BOUNDED_METRICS:
            v = m.of_times(times)
            if v is not None:
                values[m.name].append(v if m.unit != "ms" else v / 1e6)
        e2e_sched = E2E_SCHED.of_times(times) if E2E_SCHED.of_times is not None else None
        if e2e_sched is not None:
            sched.append(r.scheduled_ns)
            from_sched.append(e2e_sched / 1e6)
    finished = completed + errors
    counts = {"error_rate": (errors, finished), **{f"error_rate_{k}": (v, finished) for k, v in kinds.items()}}
    ratio = summary.get("goodput_ratio")
    if ratio is not None:
        counts["goodput_ratio"] = (int(round(ratio * completed)), completed)
    data = StepData({k: np.asarray(v, dtype=float) for k, v in values.items()}, counts, flat_metrics(summary))
    return data, judge_records(np.asarray(sched), np.asarray(from_sched), sent, completed)


@dataclass
class LevelStepper:
    """``run_step(load, prior)`` backed by real levels, one run directory each under ``<search>/steps/``."""

    base: Scenario
    checks: list[Any]
    url: str
    metrics_url: str | None
    search_dir: Path
    users: bool = False
    confidence: float = 0.95
    drain_cap_s: float | None = None
    levels: int = 0

    def __call__(self, load: float, prior: StepResult | None) -> StepResult:
        started = time.perf_counter()
        self.levels += 1
        label = f"c{int(load)}" if self.users else f"{load:.4g}rps"
        name = f"{self.levels:02d}-{label}" + (f"-x{prior.levels}" if prior is not None else "")
        # every level of the search draws its own prompts and arrivals (seed + level number): an extension adds
        # independent samples, and no step is served from the prefix cache that an earlier step filled
        sc = step_scenario(self.base, load, self.users, name, self.search_dir / "steps",
                           seed_offset=self.levels - 1, drain_cap_s=self.drain_cap_s)
        result = self._run(sc, name)
        from loadgen.core.summary import load_level_records

        data, saturated = step_data(load_level_records(result.run_dir), result.summary, sc.warmup_requests,
                                    sc.warmup_s)
        saturated = result.driven.client.get("stopped_early") or saturated  # the live reason says more
        if prior is not None and prior.data is not None:
            data = prior.data.pooled(data)
            saturated = saturated or prior.saturated
        judgements = [judge(c, data, self.confidence) for c in self.checks]
        dirs = [*(prior.run_dirs if prior is not None else []), str(result.run_dir)]
        wall = (prior.wall_s if prior is not None else 0.0) + time.perf_counter() - started
        return step_result(load, judgements, data, dirs, saturated, wall)

    def _saturation_watch(self, sc: Scenario) -> Any:
        """An open-loop step ends early once its queue grows without bound (``SaturationWatch``): the step is a
        fail either way, and the rest of its length and drain would only cost time. A closed loop cannot queue
        past its users, so it has no watch."""

        def make(control: Any) -> SaturationWatch:
            return SaturationWatch(control.end_early, control.in_flight, rate=sc.load.rate)

        return make

    def _run(self, sc: Scenario, name: str) -> Any:
        from loadgen.level.pipeline import LevelOptions, run_level
        from loadgen.level.plan import plan_level

        opts = LevelOptions(front_end="search", console=_quiet_console(), plan=plan_level(sc), url=self.url,
                            metrics_url=self.metrics_url, run_dir=self.search_dir / "steps" / name, announce=False,
                            config_extra={"search_step": name}, ctx_extra={"search_step": name},
                            watches=() if self.users else (self._saturation_watch(sc),))
        result = run_level(sc, _driver(sc), opts)
        if result.driven.tripped:
            raise TargetError(f"the server stopped answering during step {name} (last: {result.driven.tripped}); "
                              f"its run directory {result.run_dir} keeps every record received")
        if result.driven.failure is not None:
            raise result.driven.failure
        if result.interrupted:
            raise KeyboardInterrupt
        return result


def _driver(sc: Scenario) -> Any:
    if sc.load.workers > 1:
        from loadgen.runner.workers import WorkersDriver

        return WorkersDriver()
    from loadgen.runner.driver import AsyncioDriver

    return AsyncioDriver()


def _quiet_console() -> Any:
    from rich.console import Console

    return Console(quiet=True)
