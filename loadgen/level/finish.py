"""Finish a load level: settle ``config.json`` with what the run learnt, summarise every record, add energy, write
``summary.json`` and ``report.txt``, and judge ``--fail-on``. The same for every front end and driver."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from loadgen.errors import ThresholdFailed
from loadgen.level.rundir import write_json


def settle_config(run_dir: Path, ctx: Any, config: dict[str, Any], run_end_ns: int | None, client: dict[str, Any],
                  power: Any = None) -> None:
    ctx.client = client
    ctx.run_end_ns = run_end_ns
    config["level_context"] = asdict(ctx)
    if power is not None:
        config["power"] = power.describe()
    write_json(run_dir / "config.json", config)


def summarize_level(run_dir: Path, ctx: Any, power: Any = None) -> dict[str, Any]:
    """The summary of every ``records*.jsonl`` in ``run_dir`` (one file, or one per worker), with energy."""
    from loadgen.core.summary import load_level_records, summarize

    summary = summarize(load_level_records(run_dir), ctx)
    if power is not None:
        summary["energy"] = power.finish(run_dir, summary)
    return summary


def write_results(run_dir: Path, summary: dict[str, Any], describe: list[str] | None = None) -> None:
    """``summary.json`` and ``report.txt`` (the text report with every definition, then the plan's notes)."""
    from loadgen.report import report_text

    write_json(run_dir / "summary.json", summary)
    notes = "".join(line + "\n" for line in describe or [])
    (run_dir / "report.txt").write_text(report_text([summary]) + notes)


def judge(fail_on: str | None, summary: dict[str, Any]) -> None:
    """Raise ``ThresholdFailed`` (exit 4) when a ``--fail-on`` condition is missed, naming each with its value."""
    if not fail_on:
        return
    from loadgen.core.slo import evaluate, parse_fail_on

    failed = [(c, actual) for c, actual, ok in evaluate(parse_fail_on(fail_on), summary) if not ok]
    if failed:
        parts = ", ".join(f"{c.text} (got {actual})" for c, actual in failed)
        raise ThresholdFailed(f"--fail-on missed: {parts}")
