"""``loadgen run``: the scenario's flags (and ``--scenario FILE``), then one level through the pipeline with the
asyncio driver (or ``--workers N`` worker processes)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from loadgen.scenario.flags import add_flags, add_scenario_file_flags


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = _epilog()
    add_scenario_file_flags(p)
    add_flags(p)


def _epilog() -> str:
    try:
        from loadgen.core.metrics import metrics_help

        return metrics_help()
    except Exception:  # the legend is a convenience; --help must work regardless
        return ""


def console_for_output() -> Any:
    """The console of the run's live view and report: COLUMNS when set, else the terminal's width, else 120 (a
    pipe or a CI log, where there is no terminal to ask)."""
    from rich.console import Console

    from loadgen.report import output_width

    return Console(width=output_width())


def execute(args: argparse.Namespace) -> int:
    from loadgen.scenario.load import scenario_from_args, scenario_toml

    sc, _ = scenario_from_args(args, check_paths=not args.print_scenario)
    if args.print_scenario:
        sys.stdout.write(scenario_toml(sc))
        return 0
    return run_scenario(sc)


def run_scenario(sc: Any) -> int:
    """Plan (before anything starts), then the level with the asyncio driver or ``--workers`` processes."""
    from loadgen.level.pipeline import LevelOptions, run_level, verdict
    from loadgen.level.plan import plan_level
    from loadgen.report import render_report

    plan = plan_level(sc)
    console = console_for_output()
    if sc.load.workers > 1:
        from loadgen.runner.workers import WorkersDriver

        driver: Any = WorkersDriver()
    else:
        from loadgen.runner.driver import AsyncioDriver

        driver = AsyncioDriver()
    result = run_level(sc, driver, LevelOptions(front_end="run", console=console, plan=plan))
    # The legend is long: the console gets the tables, report.txt (and loadgen run --help) the definitions.
    render_report([result.summary], console, show_legend=False)
    n = sc.load.workers
    records = "records.jsonl" if n == 1 else f"records.w{{0..{n - 1}}}.jsonl"
    console.print(f"records: {result.run_dir / records}   summary: {result.run_dir / 'summary.json'}   "
                  f"definitions: {result.run_dir / 'report.txt'}   plots: {result.run_dir / 'report.html'}")
    code = verdict(result)
    if code == 130:
        console.print("[yellow]interrupted: the records received so far are saved[/]")
    return code
