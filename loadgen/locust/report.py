"""The run directory and the reports of a Locust level: the same files and numbers as ``loadgen run``.

Layout (``runs/<stamp>-<name>/``): ``config.json`` and ``summary.json``/``report.txt`` from the master (or the
local runner), ``records.jsonl`` from a local run or ``records.w<K>.jsonl`` from worker K of a distributed run,
``llm_stats.csv`` (the merged live statistics) and ``llm_history.json`` (their history, the charts' data).

The summary is computed by ``loadgen.core.summary.summarize`` over every records file whenever the master can read
them all (a local run, ``--processes N``, workers sharing a filesystem): the same code path as ``loadgen run``.
When worker records stay on other machines, the master writes a summary from the merged histograms instead
(``merged_from_histograms: true``, percentiles to 3 significant digits); copying the workers' ``records.w*.jsonl``
into the directory and running ``loadgen report DIR`` recomputes it exactly.
"""

from __future__ import annotations

import csv
import html
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from loadgen.core.metrics import NS_PER_MS, histogram_stats
from loadgen.core.summary import (
    LevelContext,
    LevelCounts,
    MultiRecords,
    assemble_summary,
    measurement_window,
    summarize,
)
from loadgen.locust.stats import LLMStats


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.strip())
    except OSError:
        return -1


def exact_summary(files: list[Path], ctx: LevelContext) -> dict[str, Any]:
    summary = summarize(MultiRecords(files), ctx)
    summary["merged_from_histograms"] = False
    return summary


# summary key -> (merged histogram, scale, undefined for a completed request: counted in "na" as the summary does)
_DISTS = {
    "schedule_lag_ms": ("schedule_lag", 1.0 / NS_PER_MS, False),
    "ttft_ms": ("ttft", 1.0 / NS_PER_MS, True),
    "ttft_from_scheduled_ms": ("ttft_sched", 1.0 / NS_PER_MS, True),
    "tpot_ms": ("tpot", 1.0 / NS_PER_MS, True),
    "itl_ms": ("itl", 1.0 / NS_PER_MS, False),
    "e2e_ms": ("e2e", 1.0 / NS_PER_MS, True),
    "e2e_from_scheduled_ms": ("e2e_sched", 1.0 / NS_PER_MS, True),
    "output_tokens_per_request": ("output_tokens", 1.0, False),
    "ttfrt_ms": ("ttfrt", 1.0 / NS_PER_MS, True),
    "ttfat_ms": ("ttfat", 1.0 / NS_PER_MS, True),
}


def histogram_summary(stats: LLMStats, ctx: LevelContext, offsets_ns: np.ndarray | None) -> dict[str, Any]:
    """The summary from merged histograms and counters (for records the master cannot read), built by the same
    core code as the exact one (``loadgen.core.summary``: window, counts, rates, goodput, verdict), so it has the
    same keys and ``--fail-on`` finds every name. Two approximations: the achieved rate counts the measured issued
    requests, and the mean in flight their whole time in flight (the records would clip both to the window)."""
    c = stats.counts
    w0, w1 = measurement_window(ctx, stats.first_sched, stats.last_sched, stats.last_end)
    scheduled = None
    if ctx.is_open_loop and offsets_ns is not None:
        scheduled = int(((offsets_ns >= w0) & (offsets_ns <= w1)).sum())
    errors = {k: int(v) for k, v in stats.errors.items() if v}
    counts = LevelCounts(
        measured=c["measured"], issued=c["issued"], completed=c["completed"], errors=errors, dropped=c["dropped"],
        cancelled=c["cancelled"], cancelled_by_client=c["cancelled_by_client"], late=c["late"], short=c["short"],
        output_tokens=c["output_tokens"], input_tokens=c["input_tokens"], requested_tokens=c["requested_tokens"],
        reasoning_tokens=c["reasoning_tokens"], server_counts=c["server_counts"],
        out_mismatch=c["token_mismatches"], in_mismatch=c["input_mismatches"],
        excluded_warmup=c["excluded_warmup"], excluded_cooldown=c["excluded_cooldown"],
        issued_in_window=c["issued"], scheduled_in_window=scheduled, running_ns=c["busy_ns"],
        good=c["good"] if ctx.slo else None, good_sched=c["good_sched"] if ctx.slo else None)
    dists = {key: histogram_stats(stats.hist[name], scale=scale,
                                  na=max(0, c["completed"] - stats.hist[name].count) if per_completed else 0)
             for key, (name, scale, per_completed) in _DISTS.items()}
    s = assemble_summary(ctx, w0, w1, counts, dists, records_total=c["records"])
    s["merged_from_histograms"] = True
    return s


def write_stats_csv(path: Path, stats: LLMStats) -> None:
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(stats.csv_rows())


def write_history_csv(path: Path, stats: LLMStats) -> None:
    keys = ["t", "requests_per_s", "output_tokens_per_s", "errors_per_s", "completed"]
    keys += [f"{m}_{p}_ms" for m in ("ttft", "tpot", "itl", "e2e") for p in ("p50", "p90", "p99")]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(keys)
        for point in stats.history:
            w.writerow(["" if point.get(k) is None else point.get(k) for k in keys])


def write_history_json(path: Path, stats: LLMStats) -> None:
    path.write_bytes(orjson.dumps(list(stats.history)))


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.4g}"
    return str(v)


def html_block(summary: dict[str, Any] | None, stats: LLMStats) -> str:
    """A self-contained section for Locust's HTML report: the LLM metrics table and the level's key numbers."""
    rows = stats.rows()
    head = ["metric", "unit", "count", "mean", "p50", "p90", "p95", "p99", "p999", "max"]
    titles = ["Metric", "Unit", "Count", "Mean", "p50", "p90", "p95", "p99", "p99.9", "Max"]
    out = io.StringIO()
    out.write('<section id="loadgen-llm-metrics" style="font-family:sans-serif;margin:24px">')
    out.write("<h2>LLM metrics (slm-loadgen; percentiles to 3+ significant digits)</h2>")
    out.write('<table border="1" cellpadding="4" style="border-collapse:collapse">')
    out.write("<tr>" + "".join(f"<th>{t}</th>" for t in titles) + "</tr>")
    for r in rows:
        out.write("<tr>" + "".join(f"<td>{html.escape(_cell(r.get(k)))}</td>" for k in head) + "</tr>")
    out.write("</table>")
    if summary:
        keys = ("request_throughput_rps", "output_token_throughput_tps", "total_token_throughput_tps",
                "goodput_rps", "achieved_rate_rps", "scheduled_rate_rps", "error_rate", "valid")
        if summary.get("cancelled_by_client_count"):  # --cancel-rate: a state of its own, not an error
            keys += ("cancelled_by_client_count", "cancelled_by_client_share")
        if summary.get("reasoning_tokens_total"):  # a reasoning model
            keys += ("reasoning_tokens_total", "answer_tokens_total")
        out.write("<h3>Level summary</h3><ul>")
        for k in keys:
            out.write(f"<li>{k}: {html.escape(_cell(summary.get(k)))}</li>")
        for w in summary.get("warnings") or []:
            out.write(f'<li style="color:#c00">INVALID: {html.escape(w)}</li>')
        out.write("</ul>")
    out.write("</section>")
    return out.getvalue()


def inject_html(page: str, block: str) -> str:
    """Put ``block`` after the report's React root (or at the end of the body); idempotent."""
    if 'id="loadgen-llm-metrics"' in page:
        return page
    marker = '<div id="root"></div>'
    if marker in page:
        return page.replace(marker, marker + block, 1)
    if "</body>" in page:
        return page.replace("</body>", block + "</body>", 1)
    return page + block
