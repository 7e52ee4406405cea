"""The page itself: the verdict first, then the summary table (one column per run, every row with its unit),
the plots, and the notes saying what is missing and why. One file: a small CSS block, no script, no font and
no image fetched from anywhere (every plot is a ``data:`` URI)."""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from typing import Any

from loadgen import __version__
from loadgen.report import has_client_cancels, has_reasoning, workload_notes
from loadgen.report_html.data import RunData

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222; margin: 0;
       background: #fff; }
main { max-width: 1120px; margin: 0 auto; padding: 16px 20px 40px; }
h1 { font-size: 22px; margin: 8px 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; }
.meta { color: #555; margin: 0 0 12px; }
.verdict { border-radius: 6px; padding: 10px 14px; margin: 10px 0; }
.verdict.ok { background: #e8f5e9; border: 1px solid #66bb6a; }
.verdict.bad { background: #ffebee; border: 1px solid #e53935; }
.verdict b { font-size: 16px; } .verdict ul { margin: 6px 0 0 0; padding-left: 22px; }
table { border-collapse: collapse; margin: 6px 0; }
th, td { padding: 3px 10px; border-bottom: 1px solid #eee; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; } td.unit { color: #666; text-align: left; }
tr.group td { font-weight: 600; background: #f5f5f5; text-align: left; padding-top: 8px; }
td.bad { color: #c62828; font-weight: 600; } td.ok { color: #2e7d32; font-weight: 600; }
img { max-width: 100%; height: auto; display: block; margin: 6px 0; }
.caption, .notes { color: #555; font-size: 13px; } .notes li { margin: 2px 0; }
footer { color: #888; font-size: 12px; margin-top: 30px; }
"""

_esc = html.escape


def _num(v: Any) -> str:
    """3 significant digits, thousands separated; n/a for a figure that could not be computed (never 0)."""
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    v = float(v)
    if v != v:
        return "n/a"
    r = float(f"{v:.3g}")
    if abs(r) >= 100:
        return f"{v:,.0f}"
    if r == 0:
        return "0"
    return f"{v:#.3g}" if abs(v) >= 0.001 else f"{v:.2g}"  # 4.00, not 4: three digits stay visible


def _pcts(key: str, stats: tuple[str, ...] = ("p50", "p90", "p99")) -> Callable[[dict], str]:
    def cell(s: dict) -> str:
        d = s.get(key) or {}
        return " / ".join(_num(d.get(p)) for p in stats)
    return cell


def _get(key: str, scale: float = 1.0) -> Callable[[dict], str]:
    def cell(s: dict) -> str:
        v = s.get(key)
        return _num(v * scale if isinstance(v, (int, float)) and not isinstance(v, bool) and scale != 1 else v)
    return cell


def _errors(s: dict) -> str:
    kinds = {k: v for k, v in (s.get("errors_by_kind") or {}).items() if v and k != "short_output"}
    detail = ", ".join(f"{k} {v:,}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))
    return _num(s.get("error_count")) + (f" ({detail})" if detail else "")


def _energy(key: str) -> Callable[[dict], str]:
    return lambda s: _num((s.get("energy") or {}).get(key))


# (row name, unit, cell) or a group title alone
ROWS: list[tuple[str, str, Callable[[dict], str]] | str] = [
    "Throughput (measurement window)",
    ("target rate", "req/s", _get("target_rate_rps")),
    ("scheduled rate (the seeded schedule)", "req/s", _get("scheduled_rate_rps")),
    ("achieved rate (issued)", "req/s", _get("achieved_rate_rps")),
    ("completed", "req/s", _get("request_throughput_rps")),
    ("goodput (meets --slo)", "req/s", _get("goodput_rps")),
    ("output tokens", "tok/s", _get("output_token_throughput_tps")),
    ("input + output tokens", "tok/s", _get("total_token_throughput_tps")),
    ("requests in flight (mean)", "requests", _get("mean_running_requests")),
    ("measurement window", "s", _get("window_s")),
    "Requests",
    ("measured", "requests", _get("measured_requests")),
    ("completed", "requests", _get("completed_requests")),
    ("errors (by kind)", "requests", _errors),
    ("dropped (late, --on-late drop)", "requests", _get("dropped_count")),
    ("late (lag above the tolerance)", "requests", _get("late_count")),
    ("short outputs", "%", _get("short_output_share", 100.0)),
    "Latency from the issued time: p50 / p90 / p99",
    ("TTFT", "ms", _pcts("ttft_ms")),
    ("TPOT", "ms", _pcts("tpot_ms")),
    ("ITL", "ms", _pcts("itl_ms")),
    ("E2E", "ms", _pcts("e2e_ms")),
    "From the scheduled time (includes the client's lag): p50 / p90 / p99",
    ("TTFT", "ms", _pcts("ttft_from_scheduled_ms")),
    ("E2E", "ms", _pcts("e2e_from_scheduled_ms")),
    ("schedule lag", "ms", _pcts("schedule_lag_ms")),
]
ENERGY_ROWS: list[tuple[str, str, Callable[[dict], str]] | str] = [
    "Energy (measurement window)",
    ("mean power", "W", _energy("mean_power_w")),
    ("energy per output token", "J/tok", _energy("joules_per_output_token")),
    ("energy", "J", _energy("energy_j")),
]


CANCEL_ROWS: list[tuple[str, str, Callable[[dict], str]] | str] = [
    ("cancelled by the client (--cancel-rate)", "requests", _get("cancelled_by_client_count")),
    ("cancelled by the client, share of issued", "%", _get("cancelled_by_client_share", 100.0)),
]
REASONING_ROWS: list[tuple[str, str, Callable[[dict], str]] | str] = [
    "Reasoning model (completed requests): p50 / p90 / p99",
    ("TTFRT (first reasoning token)", "ms", _pcts("ttfrt_ms")),
    ("TTFAT (first answer token)", "ms", _pcts("ttfat_ms")),
    ("reasoning tokens", "tokens", _get("reasoning_tokens_total")),
    ("answer tokens", "tokens", _get("answer_tokens_total")),
]


def _rows(runs: list[RunData]) -> list[tuple[str, str, Callable[[dict], str]] | str]:
    """The table's rows: the client's cancellations beside the other request states (after the errors, never in
    them) when a run planned or counted any, the reasoning rows when a run's streams carried reasoning, energy
    when measured."""
    summaries = [r.summary for r in runs]
    rows = list(ROWS)
    if has_client_cancels(summaries):
        at = next(i for i, row in enumerate(rows) if isinstance(row, tuple) and row[0] == "short outputs")
        rows[at:at] = CANCEL_ROWS
    if has_reasoning(summaries):
        rows += REASONING_ROWS
    if any((s.get("energy") or {}).get("energy_j") is not None for s in summaries):
        rows += ENERGY_ROWS
    return rows


def summary_table(runs: list[RunData]) -> str:
    rows = _rows(runs)
    head = "".join(f"<th>{_esc(r.label)}</th>" for r in runs)
    out = [f"<table><thead><tr><th>metric</th><th>unit</th>{head}</tr></thead><tbody>"]
    for row in rows:
        if isinstance(row, str):
            out.append(f"<tr class='group'><td colspan='{2 + len(runs)}'>{_esc(row)}</td></tr>")
            continue
        name, unit, cell = row
        cells = "".join(f"<td>{_esc(cell(r.summary))}</td>" for r in runs)
        out.append(f"<tr><td>{_esc(name)}</td><td class='unit'>{_esc(unit)}</td>{cells}</tr>")
    valid = "".join(f"<td class='{'ok' if r.summary.get('valid') else 'bad'}'>"
                    f"{'valid' if r.summary.get('valid') else 'INVALID'}</td>" for r in runs)
    out.append(f"<tr><td>verdict</td><td class='unit'></td>{valid}</tr></tbody></table>")
    return "".join(out)


def verdict(runs: list[RunData]) -> str:
    """Valid or INVALID with every warning, per run, above everything else."""
    out = []
    for r in runs:
        s = r.summary
        who = f"{_esc(r.label)}: " if len(runs) > 1 else ""
        if s.get("valid"):
            kinds = _errors(s).partition(" ")[2]
            errors = f"; {s['error_count']:,} failed {kinds}".rstrip() if s.get("error_count") else ""
            out.append(f"<div class='verdict ok'><b>{who}VALID</b>: every validity condition held "
                       f"({_num(s.get('completed_requests'))} completed requests in the window{_esc(errors)})</div>")
            continue
        items = "".join(f"<li>{_esc(w)}</li>" for w in s.get("warnings") or ["no verdict in this summary"])
        out.append(f"<div class='verdict bad'><b>{who}INVALID</b>: do not use these numbers as a measurement"
                   f"<ul>{items}</ul></div>")
    return "".join(out)


def describe(r: RunData) -> str:
    """The run's one line: backend, model, URL, load, when it started (UTC)."""
    s = r.summary
    load = (f"{s['target_rate_rps']:g} req/s {(s.get('arrival') or {}).get('kind', '')}".strip()
            if s.get("target_rate_rps") else f"{s.get('concurrency') or '?'} users (closed loop)")
    parts = [s.get("backend"), f"model {s.get('model')}" if s.get("model") else None, s.get("url"), load]
    client = s.get("client") or {}
    anchor = client.get("anchor") or {}
    if anchor.get("wall_ns") is not None:
        wall = (int(anchor["wall_ns"]) + int(client.get("t0_offset_ns") or 0)) / 1e9
        parts.append("started " + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(wall)))
    if r.run_dir is not None:
        parts.append(str(r.run_dir))
    return " · ".join(_esc(str(p)) for p in parts if p)


def image(uri: str, alt: str, caption: str) -> str:
    return f"<img alt='{_esc(alt)}' src='{uri}'><p class='caption'>{_esc(caption)}</p>"


def page(title: str, runs: list[RunData], sections: list[tuple[str, str]], notes: list[str]) -> str:
    """The whole document: ``sections`` are (heading, HTML body) in order."""
    meta = "".join(f"<p class='meta'>{(_esc(r.label) + ': ') if len(runs) > 1 else ''}{describe(r)}</p>"
                   for r in runs)
    meta += "".join(f"<p class='meta'>{_esc(what)}{' of ' + _esc(r.label) if len(runs) > 1 else ''}: "
                    f"{_esc(line)}</p>" for r in runs for what, line in workload_notes(r.summary))
    body = [f"<h1>{_esc(title)}</h1>", meta, verdict(runs), "<h2>Summary</h2>", summary_table(runs)]
    if notes:
        body.append("<ul class='notes'>" + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>")
    for heading, html_body in sections:
        body.append(f"<h2>{_esc(heading)}</h2>{html_body}")
    body.append(f"<footer>slm-loadgen {_esc(__version__)}, written {time.strftime('%Y-%m-%d %H:%M:%S')}. "
                "Definitions of every metric: report.txt beside summary.json, `loadgen report --help`, "
                "docs/METRICS.md.</footer>")
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{_esc(title)}</title><style>{CSS}</style></head><body><main>"
            + "\n".join(body) + "</main></body></html>\n")
