"""The sweep's Rich tables (the console, ``report.txt``) and the same tables as plain rows for the HTML page.

Each table is built once as (title, headers, rows of strings, note) by ``sweep_tables`` and rendered by Rich or
by ``plots.write_html``, so the terminal and the page never disagree.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

Table_ = tuple[str, list[str], list[list[str]], str]


def fmt(v: Any, digits: int = 3) -> str:
    """About ``digits`` significant digits, thousands separated; '-' when undefined."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int) or (v.is_integer() and abs(v) < 1e15):
        return f"{int(v):,}"
    a = abs(v)
    if a >= 10 ** (digits - 1):
        return f"{v:,.0f}"
    if a == 0:
        return "0"
    if a >= 1:
        return f"{v:.{max(0, digits - len(str(int(a))))}f}"
    return f"{v:.{digits}g}"


def _pct(v: Any) -> str:
    return "-" if v is None else f"{v:+.1%}"


def speed_note(rows: Sequence[dict[str, Any]]) -> str | None:
    speeds = sorted({r.get("speed") for r in rows if r.get("speed") not in (None, 1, 1.0)})
    if not speeds:
        return None
    return ("Emulated server at speed " + ", ".join(f"{s:g}" for s in speeds) + ": it runs s times real time, so "
            "every figure here is rescaled to real time (throughput / s; TTFT, TPOT, ITL, E2E x s; J/token x s). "
            "The measured throughput is in results.json (measured_throughput).")


def sweep_tables(rows: Sequence[dict[str, Any]], analysis: dict[str, Any]) -> list[Table_]:
    metric = analysis.get("latency_metric", "e2e_p99")
    fl, fe = set(analysis.get("frontier_latency") or []), set(analysis.get("frontier_energy") or [])
    knees = {c["knee"] for c in analysis.get("curves") or [] if c.get("knee")}
    sats = {c["saturation"] for c in analysis.get("curves") or [] if c.get("saturation")}
    advised = (analysis.get("advised") or {}).get("point")
    done = [r for r in rows if r.get("status", "done") == "done" and r.get("throughput") is not None]
    tables: list[Table_] = []

    def marks(r: dict[str, Any]) -> str:
        m = "".join(c for c, s in (("F", fl), ("E", fe), ("K", knees), ("S", sats)) if r["point"] in s)
        return m + ("*" if r["point"] == advised else "")

    body = [[r["config"], r["load"], fmt(r["throughput"]), fmt(r.get("output_throughput")), fmt(r.get("batch")),
             fmt(None if r.get("kv_peak") is None else 100 * r["kv_peak"]), fmt(r.get("ttft_p99")),
             fmt(r.get("tpot_mean")), fmt(r.get("itl_p99")), fmt(r.get("e2e_mean")), fmt(r.get("e2e_p99")),
             fmt(r.get("j_per_token"), 3), fmt(r.get("preemptions")),
             "yes" if r.get("valid") else "NO", marks(r)] for r in done]
    tables.append(("Sweep points (times in ms)",
                   ["config", "load", "total tok/s", "output tok/s", "batch", "KV peak %", "TTFT p99", "TPOT mean",
                    "ITL p99", "E2E mean", "E2E p99", "J/token", "preempt", "valid", "marks"], body,
                   f"marks: F on the throughput-{metric} Pareto frontier, E on the throughput-J/token frontier, "
                   f"K knee (latency within {analysis.get('knee_factor', 2):g}x the low-load latency), S saturation "
                   "point, * advised configuration. batch: mean running requests per replica (server metrics). "
                   "TPOT mean = the study's mean ITL (per-request mean gap, averaged over requests)."))
    out = analysis.get("left_out") or []
    if out:
        tables.append(("Left out of the curves", ["point", "why"], [[o["point"], o["why"]] for o in out], ""))
    curves = analysis.get("curves") or []
    if curves:
        tables.append(("Knee and saturation per curve", ["curve", "along", "knee", "saturation point"],
                       [[c["curve"], "max batch" if c["axis"] == "max_batch" else "load", c.get("knee") or "-",
                         c.get("saturation") or "- (still climbing)"] for c in curves],
                       f"saturation: the first point after which no later point adds more than "
                       f"{analysis.get('saturation_gain', 0.05):.0%} throughput"))
    by_point = {r["point"]: r for r in rows}
    for adv in analysis.get("batch_advice") or []:
        body = [[by_point[p]["config"], fmt(by_point[p].get("max_batch")), fmt(by_point[p]["throughput"]),
                 fmt(e, 3), fmt(by_point[p].get(metric))] for p, e in adv["eta"].items()]
        tables.append((f"Batch efficiency eta(B) = T(B) / (B T(1)): {adv['series']}, {adv['load']}",
                       ["config", "max batch", "tok/s", "eta", metric], body, ""))
        body = [[fmt(a["eta_min"]), fmt(a["latency_factor"]), fmt(a["ref_batch"]), fmt(a["latency_bound"]),
                 fmt(a["batch"]) if a["batch"] is not None else "none"] for a in adv["advice"]]
        tables.append(("Advised batch: largest B with eta(B) >= eta_min and latency <= L x latency(ref batch)",
                       ["eta_min", "L", "ref batch", f"{metric} bound", "advised batch"], body, ""))
    rep = analysis.get("replication") or []
    if rep:
        body = []
        for x in rep:
            r = by_point[x["point"]]
            mps = "" if (r.get("replicas") or 1) == 1 else ("no" if r.get("mps") == "off" else "yes")
            body.append([f"{r.get('replicas')} x {r.get('max_batch')}", mps, r["load"], fmt(r["throughput"]),
                         _pct(x["gain"]), fmt(r.get("tpot_mean")), fmt(None if r.get("e2e_mean") is None
                                                                        else r["e2e_mean"] / 1e3),
                         fmt(r.get("mean_power_w")), fmt(r.get("j_per_token"), 3), fmt(r.get("preemptions"))])
        tables.append(("Replication: N replicas on one GPU vs one replica at its largest batch",
                       ["replicas x batch", "MPS", "load", "tok/s", "gain", "TPOT mean ms", "mean E2E s", "W",
                        "J/token",
                        "preempt"], body, "gain over the one-replica configuration with the largest max batch"))
    adv = analysis.get("advised")
    if adv:
        r = by_point.get(adv["point"]) if adv.get("point") else None
        line = (f"{r['config']} / {r['load']}: {fmt(r['throughput'])} tok/s, {metric} {fmt(r.get(metric))} ms"
                if r else "no configuration meets it")
        tables.append((f"Advised configuration under --slo {adv['slo']}", ["advice"],
                       [[line]] + [[m] for m in adv.get("misses") or []][:20], ""))
    return tables


def rich_table(t: Table_) -> Table:
    title, headers, body, _ = t
    table = Table(title=Text(title, style="bold"), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i < 2 or not body or not _numeric(body, i) else "right",
                         overflow="fold")
    for row in body:
        table.add_row(*row)
    return table


def _numeric(body: list[list[str]], i: int) -> bool:
    cells = [row[i] for row in body if i < len(row) and row[i] not in ("-", "")]
    return bool(cells) and all(c.replace(",", "").replace(".", "").replace("+", "").replace("-", "")
                               .replace("%", "").isdigit() for c in cells)


def render(rows: Sequence[dict[str, Any]], analysis: dict[str, Any], console: Console,
           notes: Sequence[str] = ()) -> None:
    for t in sweep_tables(rows, analysis):
        console.print(rich_table(t))
        if t[3]:
            console.print(Text(t[3], style="dim"))
        console.print()
    note = speed_note(rows)
    for line in ([note] if note else []) + list(notes):
        console.print(Text(line))


def render_text(rows: Sequence[dict[str, Any]], analysis: dict[str, Any], notes: Sequence[str] = (),
                width: int = 160) -> str:
    console = Console(file=io.StringIO(), width=width, record=True, color_system=None, force_terminal=False)
    render(rows, analysis, console, notes)
    return console.export_text()
