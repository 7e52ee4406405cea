"""Running a search: the one server (the URL given, or the embedded one started here once), the steps as real
levels (``loadgen.search.step.LevelStepper``), a line per step, then ``search.json``, the table, the plot and the
answer; the exit code (see ``loadgen search --help``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from loadgen.errors import LoadgenError
from loadgen.search.algorithm import FAILS_AT_START, SearchOutcome, SearchSettings, StepResult, search
from loadgen.search.output import answer_line, load_text, search_json, steps_table, write_plot

INTERRUPTED = "interrupted"
DRAIN_CAP = 1.0  # an overloaded step waits at most one level's length for its queue to drain (then: abandoned)


def _console() -> Any:
    from rich.console import Console

    from loadgen.report import output_width

    return Console(width=output_width())


def step_line(i: int, step: StepResult, users: bool) -> str:
    from loadgen.core.slo import format_value

    parts = []
    for j in step.judgements:
        name = j.condition.split("<")[0].split(">")[0].strip()
        bound = "" if j.lower is None and j.upper is None else (
            f" [{'-' if j.lower is None else format_value(name, j.lower)}, "
            f"{'-' if j.upper is None else format_value(name, j.upper)}]")
        parts.append(f"{name} {format_value(name, j.value)}{bound} {j.verdict}")
    note = f"  saturated: {step.saturated}" if step.saturated else ""
    lean = f" (leans {step.leaning})" if step.verdict != step.leaning else ""
    return (f"step {i}: {load_text(step.load, users)}  {step.verdict}{lean}  " + "; ".join(parts)
            + f"  ({step.levels} level{'s' if step.levels > 1 else ''}, {step.wall_s:.0f} s){note}")


def run_search(sc: Any, checks: list[Any], condition: str, settings: SearchSettings, search_dir: Path,
               args: argparse.Namespace, scenario: dict[str, Any]) -> int:
    from loadgen.search.step import LevelStepper

    console = _console()
    users = settings.integer
    console.print(f"[bold]loadgen search[/] {condition}: {'users' if users else 'rate'} from "
                  f"{load_text(settings.start, users)}, budget {settings.budget_s:g} s, precision "
                  f"{100 * settings.precision:g} %, confidence {100 * args.confidence:g} %")
    console.print(f"search directory: {search_dir}")
    server, url, metrics_url = _target(sc, console)
    done: list[StepResult] = []

    def on_step(step: StepResult) -> None:
        done.append(step)
        console.print(step_line(len(done), step, users), markup=False, highlight=False, soft_wrap=True)

    stepper = LevelStepper(sc, checks, url, metrics_url, search_dir, users=users, confidence=args.confidence,
                           drain_cap_s=max(2.0, DRAIN_CAP * (sc.load.duration or 10.0)))
    try:
        outcome = search(stepper, settings, on_step=on_step)
    except KeyboardInterrupt:
        outcome = SearchOutcome(done, None, None, INTERRUPTED, sum(s.wall_s for s in done))
    except LoadgenError as err:  # the server gone, results not written: keep the steps done, then say why
        _finish(SearchOutcome(done, None, None, f"stopped: {err}", sum(s.wall_s for s in done)), condition,
                users, args, settings, scenario, search_dir, console, answer=False)
        raise
    finally:
        if server is not None:
            server.stop()
    _finish(outcome, condition, users, args, settings, scenario, search_dir, console)
    if outcome.stop_reason == INTERRUPTED:
        return 130
    if outcome.stop_reason == FAILS_AT_START:
        from loadgen.errors import ThresholdFailed

        raise ThresholdFailed(answer_line(outcome, condition, users, args.confidence))
    return 0


def _target(sc: Any, console: Any) -> tuple[Any, str, str | None]:
    """(the embedded server or None, the URL, the metrics URL): the embedded server is started once, here."""
    if sc.target.url is not None:
        return None, sc.target.url, None
    from loadgen.level.target import start_embedded, url_of

    server = start_embedded(sc, console.print)
    return server, url_of(server, sc.target.backend), server.metrics_url


def _finish(outcome: SearchOutcome, condition: str, users: bool, args: argparse.Namespace,
            settings: SearchSettings, scenario: dict[str, Any], search_dir: Path, console: Any,
            answer: bool = True) -> None:
    from dataclasses import asdict

    plot = write_search(outcome, condition, users, args.confidence, asdict(settings), scenario, search_dir,
                        plot=not args.no_plot)
    if outcome.points:
        console.print(steps_table(outcome, users))
    console.print(f"search.json: {search_dir / 'search.json'}" + (f"   plot: {plot}" if plot else ""),
                  soft_wrap=True)
    if answer and outcome.stop_reason not in (FAILS_AT_START, INTERRUPTED):
        console.print(answer_line(outcome, condition, users, args.confidence), markup=False, highlight=False, soft_wrap=True)


def write_search(outcome: SearchOutcome, condition: str, users: bool, confidence: float, settings: dict[str, Any],
                 scenario: dict[str, Any], search_dir: Path, plot: bool = True) -> Path | None:
    """``search.json`` and (with ``plot``, when there are steps) ``plot.png`` in ``search_dir``; the plot's path."""
    from loadgen.level.rundir import write_json

    write_json(search_dir / "search.json", search_json(outcome, condition, users, confidence, settings, scenario))
    return write_plot(outcome, search_dir / "plot.png", users) if plot and outcome.points else None
