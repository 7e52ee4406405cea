"""One load level, end to end, for every front end: plan -> target -> run directory -> drive -> finish.

- **plan** (``loadgen.level.plan``): the schedule and the request source, from the scenario alone;
- **target**: the URL given, or the embedded Triton server started here (and stopped after);
- **run directory**: created only once the driver's probe has said the target can be used, so a wrong URL or
  model leaves no empty directory behind; ``config.json`` is written then, and the power side-car started;
- **drive**: a ``Driver`` sends the plan and records every request (the asyncio loop, its worker processes; the
  Locust front end drives through Locust's own events but plans and finishes with the same functions);
- **finish** (``loadgen.level.finish``): config settled, every record summarised, energy, summary and report.

A front end chooses the driver and the console; it then turns the ``LevelResult`` into its exit code
(``verdict``). Nothing here knows asyncio, gevent or Locust.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from loadgen import __version__
from loadgen.core.issue import IssueOutcome
from loadgen.errors import LoadgenError, ResultsError, TargetError
from loadgen.level.finish import judge, no_success, settle_config, summarize_level, write_results
from loadgen.level.plan import LevelPlan, level_context, plan_level
from loadgen.level.rundir import make_run_dir, write_json
from loadgen.level.target import start_embedded, url_of
from loadgen.scenario.load import public_dict
from loadgen.scenario.model import Scenario


@dataclass
class LevelRun:
    """What a driver is given: the scenario and its plan, the target URL, where to say things, and
    ``open_dir(server_info) -> run_dir``, to call once its probe has succeeded."""

    scenario: Scenario
    plan: LevelPlan
    url: str
    console: Any
    live: bool
    open_dir: Callable[[dict[str, Any]], Path]
    # factories of live record observers: each gets the driver's control (``end_early(reason)``,
    # ``in_flight()``) and returns a ``watch(record)``; the asyncio driver honours them (not the workers)
    watches: Sequence[Callable[[Any], Callable[[Any], None]]] = ()


@dataclass
class Driven:
    """What a driver hands back: the merged outcome (None when interrupted before it knew one), the summary's
    ``client`` block, why the server was declared gone (``tripped``), and the error of a part that failed
    mid-run (raised by the front end after the summary is written)."""

    outcome: IssueOutcome | None
    client: dict[str, Any]
    tripped: str | None = None
    failure: LoadgenError | None = None


class Driver(Protocol):
    name: str

    def drive(self, run: LevelRun) -> Driven: ...


class SideTask(Protocol):
    """Something that watches the level from beside it (e.g. the server's own metrics). A side task with a
    ``watch_server_metrics(sampler)`` method is handed the level's server-metrics sampler (when there is one)
    before it starts, to read its scrapes instead of scraping the same page again."""

    def start(self) -> Any: ...

    def stop(self) -> None: ...

    def contribute(self, run_dir: Path, summary: dict[str, Any]) -> None: ...


@dataclass
class LevelResult:
    run_dir: Path
    summary: dict[str, Any]
    driven: Driven
    scenario: Scenario

    @property
    def interrupted(self) -> bool:
        return self.driven.outcome is None or self.driven.outcome.interrupted


@dataclass
class LevelOptions:
    """How a front end wants its level run, beyond the scenario."""

    front_end: str = "run"
    console: Any = None
    plan: LevelPlan | None = None
    url: str | None = None  # a server the front end already runs (a sweep's); else the scenario's or embedded
    metrics_url: str | None = None
    run_dir: Path | None = None  # exactly this directory (a sweep point); else <out_dir>/<stamp>-<name>
    config_extra: dict[str, Any] = field(default_factory=dict)
    ctx_extra: dict[str, Any] = field(default_factory=dict)  # merged into LevelContext.extra
    ctx_fields: dict[str, Any] = field(default_factory=dict)  # LevelContext fields set (e.g. a validity bound)
    side_tasks: Sequence[SideTask] = ()
    watches: Sequence[Callable[[Any], Callable[[Any], None]]] = ()  # see LevelRun.watches
    announce: bool = True  # print the header lines (run name, run directory, plan notes)


def base_config(sc: Scenario, opts: LevelOptions, url: str, server: Any, ctx: Any) -> dict[str, Any]:
    import asyncio

    loop_kind = asyncio.get_event_loop_policy().__class__.__module__.split(".")[0]  # uvloop, when installed
    return {"loadgen_version": __version__, "python": platform.python_version(), "front_end": opts.front_end,
            "event_loop": loop_kind, "argv": redact_argv(sys.argv), "scenario": public_dict(sc),
            "url": url, "embedded_server": server.describe() if server is not None else None,
            "level_context": asdict(ctx), **opts.config_extra}


def run_level(sc: Scenario, driver: Driver, opts: LevelOptions) -> LevelResult:
    """Run one level of ``sc`` with ``driver``; see the module docstring. The server started here and the power
    side-car are stopped whatever happens."""
    from loadgen.power.monitor import power_monitor

    console = opts.console
    plan = opts.plan or plan_level(sc)
    power = power_monitor(sc.power, console)
    server = None
    try:
        url = opts.url or sc.target.url
        metrics_url = opts.metrics_url
        if url is None:
            server = start_embedded(sc, console.print if console is not None else None)
            url, metrics_url = url_of(server, sc.target.backend), server.metrics_url
        name = sc.default_name()
        ctx = level_context(sc, plan, url, name)
        ctx.extra.update(opts.ctx_extra)
        for key, value in opts.ctx_fields.items():
            setattr(ctx, key, value)
        config = base_config(sc, opts, url, server, ctx)
        opened: dict[str, Path] = {}
        sampler = _server_metrics(sc, url, metrics_url, console, opts.side_tasks)
        tasks = [*([sampler] if sampler is not None else []), *opts.side_tasks]

        def open_dir(info: dict[str, Any]) -> Path:
            run_dir = _open_dir(sc, opts, name, config, info)
            opened["dir"] = run_dir
            if sampler is not None:  # it has scraped since before the probe; its file starts now
                sampler.open(run_dir)
            if opts.announce and console is not None:
                console.print(f"[bold]loadgen {opts.front_end}[/] {name} -> {url} ({sc.target.backend}, model "
                              f"{sc.target.model})")
                console.print(f"run directory: {run_dir}")
                for line in plan.describe:
                    console.print(line, markup=False, highlight=False)
            if power is not None:  # the side-car samples idle power first (blocking), then the load starts
                power.start(run_dir, metrics_url, url)
            return run_dir

        driven = _drive(driver, LevelRun(sc, plan, url, console, sc.results.live, open_dir, opts.watches), tasks, opened)
        run_dir = opened["dir"]
        try:
            settle_config(run_dir, ctx, config, driven.outcome.issue_end_ns if driven.outcome else None,
                          driven.client, power)
            summary = summarize_level(run_dir, ctx, power)
            for task in tasks:
                task.contribute(run_dir, summary)
            write_results(run_dir, summary, plan.describe)
        except OSError as err:
            if isinstance(driven.failure, ResultsError):  # the records failed first: that line says more
                raise driven.failure from None
            raise ResultsError(f"cannot write the results in {run_dir} ({err.strerror or err}); the records "
                               f"written so far are kept: `loadgen report {run_dir}` reads them") from None
        return LevelResult(run_dir, summary, driven, sc)
    finally:
        if power is not None:
            power.stop()
        if server is not None:
            server.stop()


def _open_dir(sc: Scenario, opts: LevelOptions, name: str, config: dict[str, Any], info: dict[str, Any]) -> Path:
    if opts.run_dir is not None:
        run_dir = opts.run_dir
        run_dir.mkdir(parents=True, exist_ok=False)
    else:
        run_dir = make_run_dir(Path(sc.results.out_dir), name)
    config["server_info"] = info
    write_json(run_dir / "config.json", config)
    return run_dir


def _server_metrics(sc: Scenario, url: str, metrics_url: str | None, console: Any,
                    side_tasks: Sequence[SideTask]) -> Any:
    """The default side task: the server's Prometheus page sampled into ``server_metrics.jsonl``
    (``--server-metrics``; ``auto`` is the embedded or the front end's server's page, else derived from the URL).
    One sampler per level (the ``--workers`` parent runs it); side tasks that watch the same page read it."""
    from loadgen.telemetry.server_metrics import sampler_for

    def say(text: str) -> None:
        if console is not None:
            console.print(text, style="yellow", markup=False, highlight=False)

    res = sc.results
    sampler = sampler_for(res.server_metrics, res.server_metrics_interval, sc.target.backend, url, metrics_url, say)
    if sampler is not None:
        for task in side_tasks:
            watch = getattr(task, "watch_server_metrics", None)
            if watch is not None:
                watch(sampler)
    return sampler


def _drive(driver: Driver, run: LevelRun, tasks: Sequence[SideTask], opened: dict[str, Path]) -> Driven:
    """The driver's run, with the side tasks around it; Ctrl-C after the run directory exists keeps it."""
    started = []
    try:
        for task in tasks:
            task.start()
            started.append(task)
        return driver.drive(run)
    except KeyboardInterrupt:
        if "dir" not in opened:
            raise
        return Driven(None, {"interrupted": True})
    finally:
        for task in started:
            task.stop()


def verdict(result: LevelResult) -> int:
    """A front end's exit code for a finished level: results that could not be written (6), the server gone (3),
    a failed part (its code), interrupted (130), a missed ``--fail-on`` (4), else 0. Raises the ``LoadgenError``
    that carries the line to print."""
    sc, driven = result.scenario, result.driven
    if isinstance(driven.failure, ResultsError):
        raise driven.failure
    if driven.tripped:
        raise TargetError(f"the server stopped answering mid-run ({sc.limits.max_connection_errors} connection "
                          f"errors in a row, last: {driven.tripped}); the run directory {result.run_dir} keeps every "
                          "record received")
    if driven.failure is not None:
        raise driven.failure
    if result.interrupted:
        return 130
    failed = no_success(result.run_dir, result.summary)
    if failed is not None:
        raise TargetError(failed)
    judge(sc.results.fail_on, result.summary)
    return 0


def redact_argv(argv: list[str]) -> list[str]:
    """The command line as written to config.json: values of --api-key and --header hidden, and credentials
    inside any URL."""
    from loadgen.scenario.files import redact_text

    out, hide = [], False
    for a in map(redact_text, argv):
        if hide:
            out.append("<redacted>")
            hide = False
            continue
        if a in ("--api-key", "--header"):
            out.append(a)
            hide = True
        elif a.startswith(("--api-key=", "--header=")):
            out.append(a.split("=", 1)[0] + "=<redacted>")
        else:
            out.append(a)
    return out
