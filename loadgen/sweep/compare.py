"""``loadgen compare RUN_OR_SWEEP ...``: the same workload against several backends or configurations, side by
side: each metric's value per item, its difference from the baseline (the first item) and which item is better.

Items are run directories (``loadgen run``: any backend, Triton or OpenAI-compatible) and the points of sweep
directories. Items are compared at equal load: they are grouped by load level (``offline-600``, ``rate-4``,
``c16``) and each group is one table; a group whose items were measured with different request sizes or counts
says so. Emulated servers at speed s are rescaled to real time, as in ``loadgen sweep``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import orjson

from loadgen.errors import UsageError
from loadgen.sweep.grid import LoadLevel, Point, Target
from loadgen.sweep.runner import point_row

# (label, row key, better: "higher" | "lower" | None)
METRICS: tuple[tuple[str, str, str | None], ...] = (
    ("total tokens/s", "throughput", "higher"),
    ("output tokens/s", "output_throughput", "higher"),
    ("requests/s", "request_throughput", "higher"),
    ("TTFT p50 ms", "ttft_p50", "lower"),
    ("TTFT p99 ms", "ttft_p99", "lower"),
    ("TPOT mean ms", "tpot_mean", "lower"),
    ("ITL p99 ms", "itl_p99", "lower"),
    ("E2E p50 ms", "e2e_p50", "lower"),
    ("E2E p99 ms", "e2e_p99", "lower"),
    ("error rate", "error_rate", "lower"),
    ("J / token", "j_per_token", "lower"),
    ("mean running batch", "batch", None),
)
TIE = 0.01  # values within 1 % of each other are a tie


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="RUN_OR_SWEEP", help="run directories and/or sweep directories")
    p.add_argument("--baseline", type=int, default=1, help="which item the differences are relative to (1-based)")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON instead of tables")


def _load_level(config: dict[str, Any], summary: dict[str, Any]) -> LoadLevel:
    extra = summary.get("extra") or {}
    if isinstance(extra.get("load"), dict):
        return LoadLevel(**extra["load"])
    ld = (config.get("scenario") or {}).get("load") or {}
    if ld.get("rate") is not None:
        return LoadLevel("rate", float(ld["rate"]), ld.get("requests"), ld.get("duration"))
    if ld.get("concurrency") is not None:
        return LoadLevel("concurrency", float(ld["concurrency"]), ld.get("requests"), ld.get("duration"))
    return LoadLevel("rate", float(summary.get("target_rate_rps") or 0))


def run_dir_item(path: Path) -> dict[str, Any]:
    """The row of one run directory (``loadgen run`` or a sweep point), labelled by its directory name."""
    from loadgen.report_cli import load_run_dir

    summaries, _ = load_run_dir(path)
    if len(summaries) != 1:
        raise UsageError(f"{path}: holds {len(summaries)} levels; compare takes one level per run directory")
    summary = summaries[0]
    try:
        config = orjson.loads((path / "config.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        config = {}
    emb = config.get("embedded_server") or {}
    sc = config.get("scenario") or {}
    w, ld = sc.get("workload") or {}, sc.get("load") or {}
    speed = float(emb.get("speed") or 1.0) if emb else 1.0
    target = Target(kind="embedded" if emb else "external", label=path.name, backend=summary.get("backend") or "",
                    model=summary.get("model") or "", url=summary.get("url"), profile=emb.get("profile"),
                    gpu=emb.get("gpu"), max_batch=emb.get("max_batch"), replicas=emb.get("replicas"), speed=speed)
    row = point_row(Point(target, _load_level(config, summary)), summary)
    row["workload"] = {"input_tokens": w.get("input_tokens"), "output_tokens": w.get("output_tokens"),
                       "lengths": w.get("lengths") or (summary.get("extra") or {}).get("lengths"),
                       "seed": ld.get("seed"),
                       "requests": summary.get("measured_requests")}
    return row


def collect_items(paths: list[str]) -> list[dict[str, Any]]:
    from loadgen.sweep.results import is_sweep_dir, load_sweep

    items: list[dict[str, Any]] = []
    for raw in paths:
        path = Path(raw)
        if is_sweep_dir(path):
            spec, rows = load_sweep(path)
            done = [r for r in rows if r.get("status") == "done"]
            if not done:
                raise UsageError(f"{raw}: this sweep has no finished point yet")
            for r in done:
                row = run_dir_item(path / "points" / r["point"])
                row["label"] = f"{spec.name}/{r['config']}"
                items.append(row)
        elif path.is_dir():
            row = run_dir_item(path)
            row["label"] = path.name
            items.append(row)
        else:
            raise UsageError(f"{raw}: not a run or sweep directory (it does not exist)")
    return items


def compare_group(items: list[dict[str, Any]], baseline: int = 0) -> dict[str, Any]:
    """Per metric: values, differences from ``items[baseline]``, and the best item (or a tie)."""
    base = items[baseline]
    metrics = []
    for label, key, better in METRICS:
        values = [it.get(key) for it in items]
        if all(v is None for v in values):
            continue
        diffs = [None if (v is None or base.get(key) in (None, 0)) else v / base[key] - 1 for v in values]
        best = None
        present = [(v, i) for i, v in enumerate(values) if v is not None and not math.isnan(v)]
        if better and len(present) >= 2:
            pick = max(present) if better == "higher" else min(present)
            others = [v for v, i in present if i != pick[1]]
            close = any(abs(v - pick[0]) <= TIE * max(abs(pick[0]), 1e-12) for v in others)
            best = "tie" if close else items[pick[1]]["label"]
        metrics.append({"metric": label, "key": key, "better": better, "values": values, "diff": diffs,
                        "best": best})
    notes = []
    loads = {it["load"] for it in items}
    if len(loads) > 1:
        notes.append("the items were measured at different loads (" + ", ".join(sorted(loads)) + ")")
    shapes = {orjson.dumps(it.get("workload"), option=orjson.OPT_SORT_KEYS) for it in items}
    if len(shapes) > 1:
        notes.append("request sizes, counts or seeds differ between the items: the workload is not the same")
    invalid = [it["label"] for it in items if not it.get("valid")]
    if invalid:
        notes.append("invalid (see their reports): " + ", ".join(invalid))
    return {"items": [{"label": it["label"], "backend": it.get("backend"), "url": it.get("url"),
                       "load": it["load"], "speed": it.get("speed")} for it in items],
            "baseline": base["label"], "metrics": metrics, "notes": notes}


def group_items(items: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """By load level; when no load level is shared by two items, everything is one group (with a note)."""
    by_load: dict[str, list[dict[str, Any]]] = {}
    for it in items:
        by_load.setdefault(it["load"], []).append(it)
    groups = [g for g in by_load.values() if len(g) >= 2]
    return groups or [items]


def render(result: dict[str, Any], console: Any) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from loadgen.sweep.tables import fmt

    items = result["items"]
    t = Table(title=Text(f"Compare at {', '.join(sorted({i['load'] for i in items}))} (baseline "
                         f"{result['baseline']})", style="bold"), title_justify="left", box=box.SIMPLE_HEAD)
    t.add_column("metric")
    for it in items:
        t.add_column(f"{it['label']}\n{it['backend']}", justify="right", overflow="fold")
    t.add_column("better", overflow="fold")
    for m in result["metrics"]:
        cells = []
        for v, d in zip(m["values"], m["diff"], strict=True):
            txt = fmt(v, 4 if m["key"] == "j_per_token" else 3)
            if d is not None and v is not None and result["baseline"] is not None and abs(d) > 1e-12:
                txt += f" ({d:+.1%})"
            cells.append(txt)
        best = m["best"] or ("-" if m["better"] else "")
        t.add_row(m["metric"] + (" ^" if m["better"] == "higher" else " v" if m["better"] == "lower" else ""),
                  *cells, best)
    console.print(t)
    console.print(Text("^ higher is better, v lower is better; (+x %) relative to the baseline; a tie is within "
                       f"{TIE:.0%}", style="dim"))
    speeds = {i.get("speed") for i in items if i.get("speed") not in (None, 1, 1.0)}
    if speeds:
        console.print(Text("emulated server(s) at speed " + ", ".join(f"{s:g}" for s in sorted(speeds)) +
                           ": figures rescaled to real time (throughput / speed, times x speed)"))
    for n in result["notes"]:
        console.print(Text("note: " + n, style="yellow"))
    console.print()


def execute(args: argparse.Namespace) -> int:
    from rich.console import Console

    items = collect_items(args.paths)
    if len(items) < 2:
        raise UsageError("compare needs at least two levels: give two or more run directories, or sweeps")
    results = []
    for group in group_items(items):
        base = args.baseline - 1
        if not 0 <= base < len(group):
            raise UsageError(f"--baseline {args.baseline}: choose 1 to {len(group)} (items in the comparison)")
        results.append(compare_group(group, base))
    if args.json:
        sys.stdout.write(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    console = Console(width=None if sys.stdout.isatty() else 160)
    for r in results:
        render(r, console)
    return 0
