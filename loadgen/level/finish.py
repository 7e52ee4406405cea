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
    """``summary.json``, ``report.txt`` (the text report with every definition, then the plan's notes) and what
    happened during the run: ``timeseries.json`` (``summary["timeseries"]`` points at it) and ``report.html``.
    Here rather than in ``summarize_level`` because every front end calls this (Locust has its own summary),
    and one pass over the records feeds both the series and the page (``loadgen.report_html``)."""
    from loadgen.report import report_text
    from loadgen.report_html import collect_run, write_report

    page = collect_run(run_dir, summary, save_series=True)
    write_json(run_dir / "summary.json", summary)
    notes = "".join(line + "\n" for line in describe or [])
    (run_dir / "report.txt").write_text(report_text([summary]) + notes)
    write_report(run_dir / "report.html", [page])


_HINTS = {
    "connection": "is the server running and is --url right?",
    "timeout": "the server never finished one: is it hung or far too slow? (--request-timeout)",
    "abandoned": "the server never finished one before the drain ended: is it hung or overloaded? "
                 "(--drain-timeout)",
    "empty": "the server answered without any output token: check --backend and --model (a model that stops at "
             "once, or an endpoint that does not generate?)",
    "protocol": "the responses could not be understood: check --backend for this server",
    "stream_error": "the server reported an error in every stream: check its log",
    "too_large": "every response passed its size bound: does the server ignore max_tokens? "
                 "(--max-response-bytes)",
}


def _http_hint(status: int | None) -> str:
    if status == 404:
        return "the path does not exist on this server: check --backend (e.g. openai-chat against a " \
               "completions-only server, or the reverse) and that --url is the server root"
    if status in (401, 403):
        return "the server refused the credentials: check --api-key / --header"
    if status in (400, 422):
        return "the server refused the request body: check --model and --backend"
    return "the server failed every request: check its log"


def no_success(run_dir: Path, summary: dict[str, Any]) -> str | None:
    """One line naming the likely cause when requests were sent and none succeeded (exit 3), else None."""
    if summary.get("completed_requests") or not summary.get("error_count"):
        return None
    kinds = {k: v for k, v in (summary.get("errors_by_kind") or {}).items() if v and k != "short_output"}
    kind = max(kinds, key=lambda k: kinds[k]) if kinds else "error"
    first = _first_error(run_dir, kind)
    detail = f" (first: {first['error']})" if first and first.get("error") else ""
    hint = _http_hint(first.get("http_status") if first else None) if kind == "http_status" else \
        _HINTS.get(kind, "check the server and --backend")
    return (f"no request succeeded: {kinds.get(kind, 0)} of {summary['error_count']} failed requests ended "
            f"{kind}{detail}; {hint}; {run_dir} keeps every record")


def _first_error(run_dir: Path, kind: str) -> dict[str, Any] | None:
    from loadgen.core.summary import load_level_records

    for rec in load_level_records(run_dir):
        if rec.error_kind == kind:
            return {"error": (rec.error or "")[:160], "http_status": rec.http_status}
    return None


def judge(fail_on: str | None, summary: dict[str, Any]) -> None:
    """Raise ``ThresholdFailed`` (exit 4) when a ``--fail-on`` condition is missed, naming each with its value."""
    if not fail_on:
        return
    from loadgen.core.slo import evaluate, format_value, parse_fail_on

    failed = [(c, actual) for c, actual, ok in evaluate(parse_fail_on(fail_on), summary) if not ok]
    if failed:
        parts = ", ".join(f"{c.text} (got {format_value(c.name, actual)})" for c, actual in failed)
        raise ThresholdFailed(f"--fail-on missed: {parts}")
