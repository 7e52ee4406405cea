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
from loadgen.core.summary import LevelContext, MultiRecords, summarize, validity_warnings
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


def _dist(stats: LLMStats, name: str, scale: float) -> dict[str, Any]:
    return histogram_stats(stats.hist[name], scale=scale)


def histogram_summary(stats: LLMStats, ctx: LevelContext, offsets_ns: np.ndarray | None) -> dict[str, Any]:
    """The summary schema filled from merged histograms and counters (for records the master cannot read)."""
    s = summarize([], ctx)  # every key, with the level's context
    c = stats.counts
    w0 = int(ctx.warmup_s * 1e9)
    if ctx.warmup_requests > 0 and stats.first_sched is not None:
        w0 = max(w0, stats.first_sched)
    if ctx.is_open_loop:
        w1 = (ctx.run_end_ns - int(ctx.cooldown_s * 1e9) if ctx.run_end_ns is not None
              else stats.last_sched if stats.last_sched is not None else w0)
    else:
        w1 = stats.last_end if stats.last_end is not None else (ctx.run_end_ns or w0)
    window_ns = max(0, int(w1) - int(w0))
    window_s = window_ns / 1e9 if window_ns else None

    def rate(n: float) -> float | None:
        return None if not window_s else round(n / window_s, 6)

    def share(n: int, d: int) -> float | None:
        return None if d == 0 else round(n / d, 6)

    completed, errors = c["completed"], c["errors"]
    scheduled = None
    if ctx.is_open_loop and offsets_ns is not None and window_s:
        scheduled = rate(int(((offsets_ns >= w0) & (offsets_ns <= w1)).sum()))
    achieved = rate(c["issued"])
    to_ms = 1.0 / NS_PER_MS
    errors_by_kind = stats.errors_by_kind()
    s.update({
        "window_start_s": round(w0 / 1e9, 9), "window_end_s": round(w1 / 1e9, 9), "window_s": window_s,
        "records_total": c["records"], "measured_requests": c["measured"], "issued_requests": c["issued"],
        "completed_requests": completed, "error_count": errors, "error_rate": share(errors, completed + errors),
        "errors_by_kind": errors_by_kind,
        "error_rate_by_kind": {k: share(v, completed + errors) for k, v in errors_by_kind.items()},
        "dropped_count": c["dropped"], "cancelled_count": c["cancelled"], "late_count": c["late"],
        "late_share": share(c["late"], c["issued"]), "short_output_count": c["short"],
        "short_output_share": share(c["short"], completed), "output_tokens_total": c["output_tokens"],
        "input_tokens_total": c["input_tokens"], "requested_tokens_total": c["requested_tokens"],
        "server_token_counts": c["server_counts"], "token_count_mismatches": c["token_mismatches"],
        "achieved_rate_rps": achieved, "scheduled_rate_rps": scheduled,
        "achieved_ratio": None if (achieved is None or not scheduled) else round(achieved / scheduled, 6),
        "request_throughput_rps": rate(completed), "output_token_throughput_tps": rate(c["output_tokens"]),
        "input_token_throughput_tps": rate(c["input_tokens"]),
        "total_token_throughput_tps": rate(c["output_tokens"] + c["input_tokens"]),
        "goodput_rps": rate(c["good"]) if ctx.slo else None,
        "goodput_from_scheduled_rps": rate(c["good_sched"]) if ctx.slo else None,
        "goodput_ratio": share(c["good"], completed) if ctx.slo else None,
        "mean_running_requests": round(c["busy_ns"] / window_ns, 6) if window_ns else None,
        "schedule_lag_ms": _dist(stats, "schedule_lag", to_ms), "ttft_ms": _dist(stats, "ttft", to_ms),
        "ttft_from_scheduled_ms": _dist(stats, "ttft_sched", to_ms), "tpot_ms": _dist(stats, "tpot", to_ms),
        "itl_ms": _dist(stats, "itl", to_ms), "e2e_ms": _dist(stats, "e2e", to_ms),
        "e2e_from_scheduled_ms": _dist(stats, "e2e_sched", to_ms),
        "output_tokens_per_request": _dist(stats, "output_tokens", 1.0),
    })
    warnings = validity_warnings(s, ctx)
    s["valid"], s["warnings"] = not warnings, warnings
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
