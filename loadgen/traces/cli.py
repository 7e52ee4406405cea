"""``loadgen traces info|fetch|list``: look at a trace (or at what a replay sent), download one, list the catalog."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import orjson

from loadgen.errors import UsageError


def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="traces_cmd", metavar="ACTION")
    i = sub.add_parser("info", help="statistics of a trace file, a catalog trace, or a replay's run directory",
                       description="Rows, span, mean rate, inter-arrival CV, index of dispersion at 1 s and 60 s, "
                                   "token percentiles and prefix reuse. Given a `loadgen run` directory of a trace "
                                   "replay: the same numbers for the trace window, the schedule and what was sent.")
    i.add_argument("target", help="trace file, catalog name, or run directory")
    i.add_argument("--format", default=None, help="azure | mooncake | burstgpt | csv | jsonl (default: detect)")
    i.add_argument("--columns", default=None, help="generic traces: time=COL,input=COL,output=COL[,hash_ids=COL]")
    i.add_argument("--time-unit", default=None, help="generic traces: s | ms | us | ns | datetime")
    i.add_argument("--where", action="append", default=[], metavar="COL=VALUE", help="keep only matching rows")
    i.add_argument("--keep-failed", action="store_true", help="BurstGPT: count failed rows (0 response tokens) too")
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")
    f = sub.add_parser("fetch", help="download a catalog trace into the cache, verified by sha256")
    f.add_argument("name", help="catalog name (see `loadgen traces list`)")
    f.add_argument("--sha256", default=None, help="expected checksum (for entries without one, or to override)")
    f.add_argument("--no-verify", action="store_true", help="keep the file even without a checksum to compare")
    f.add_argument("--url", default=None, help="download from this URL instead (a mirror)")
    f.add_argument("--force", action="store_true", help="download again even if cached")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    ls = sub.add_parser("list", help="the catalog of public traces and bundled examples")
    ls.add_argument("--json", action="store_true", help="print the catalog as JSON")


def execute(args: argparse.Namespace) -> int:
    cmd = getattr(args, "traces_cmd", None)
    if cmd == "info":
        return _info(args)
    if cmd == "fetch":
        return _fetch(args)
    if cmd == "list":
        return _list(args)
    raise UsageError("give an action: loadgen traces info FILE | fetch NAME | list")


def _console() -> Any:
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 110, highlight=False)


def _info(args: argparse.Namespace) -> int:
    from loadgen.traces.info import file_info, run_dir_info

    if os.path.isdir(args.target):
        res = run_dir_info(args.target)
        if args.json:
            print(orjson.dumps(res, option=orjson.OPT_INDENT_2).decode())
            return 0
        cols = {"trace window": res.get("trace"), "schedule": res["schedule"], "sent": res["sent"]}
        console = _console()
        replay = res.get("replay") or {}
        for line in replay.get("describe") or []:
            console.print(line, markup=False)
        _table(console, {k: v for k, v in cols.items() if v}, f"replay fidelity: {res['run_dir']}")
        err = res.get("issue_error_ms")
        if err:
            console.print(f"issue error (issued - scheduled, client clock): p50 {err['p50']} ms, p99 {err['p99']} ms,"
                          f" max {err['max']} ms; not sent: {res['not_sent']}", markup=False)
        return 0
    from loadgen.traces.catalog import resolve_trace
    from loadgen.traces.readers import open_trace, parse_where

    path, defaults = resolve_trace(args.target)
    reader = open_trace(path, args.format or defaults.get("format"), args.columns or defaults.get("columns"),
                        args.time_unit or defaults.get("time_unit"), keep_failed=args.keep_failed,
                        where=parse_where(args.where))
    res = file_info(reader)
    if args.json:
        print(orjson.dumps(res, option=orjson.OPT_INDENT_2).decode())
        return 0
    console = _console()
    src = res["source"]
    _table(console, {"trace": res}, f"{src['path']} ({src['format']}, first timestamp {src['first_timestamp']})")
    if src["skipped_failed_rows"] or src["skipped_filtered_rows"]:
        console.print(f"left out: {src['skipped_failed_rows']} failed rows (0 output tokens), "
                      f"{src['skipped_filtered_rows']} rows not matching --where", markup=False)
    return 0


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}g}" if abs(v) < 1e6 else f"{v:,.0f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _rows(st: dict[str, Any]) -> list[tuple[str, str]]:
    disp = st.get("index_of_dispersion") or {}
    out = [("requests", _fmt(st.get("requests"))), ("span s", _fmt(st.get("span_s"), 6)),
           ("mean rate req/s", _fmt(st.get("mean_rate_rps"))), ("inter-arrival CV", _fmt(st.get("interarrival_cv")))]
    out += [(f"dispersion {k}", _fmt(v)) for k, v in disp.items()]
    for name in ("input_tokens", "output_tokens"):
        d = st.get(name) or {}
        label = "input" if name == "input_tokens" else "output"
        out.append((f"{label} tokens p50/p90/p99/max",
                    "/".join(f"{d[k]:,.0f}" if d.get(k) is not None else "-" for k in ("p50", "p90", "p99", "max"))
                    if d else "-"))
    reuse = st.get("prefix_reuse")
    out.append(("prefix reuse blocks/tokens", f"{reuse['reused_block_share']:.1%} / {reuse['reused_token_share']:.1%}"
                if reuse else "-"))
    return out


def _table(console: Any, columns: dict[str, dict[str, Any]], title: str) -> None:
    from rich import box
    from rich.table import Table

    t = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    t.add_column("statistic", style="cyan")
    for name in columns:
        t.add_column(name, justify="right")
    rows = {name: dict(_rows(st)) for name, st in columns.items()}
    for label, _ in _rows(next(iter(columns.values()))):
        t.add_row(label, *[rows[name].get(label, "-") for name in columns])
    console.print(t)


def _fetch(args: argparse.Namespace) -> int:
    from loadgen.traces.catalog import find_entry
    from loadgen.traces.fetch import fetch_trace

    entry = find_entry(args.name)
    path, digest = fetch_trace(entry, sha256=args.sha256, verify=not args.no_verify, url=args.url, force=args.force,
                               progress=not args.no_progress and sys.stderr.isatty())
    verified = "verified" if (args.sha256 or entry.get("sha256")) and not args.no_verify else "NOT verified"
    print(f"{entry['name']}: {path} (sha256 {digest}, {verified})")
    print(f"licence: {entry['license']}; cite: {entry['citation']}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from loadgen.traces.catalog import catalog_path, load_catalog, local_path

    entries = load_catalog()
    if args.json:
        print(orjson.dumps({"catalog": str(catalog_path()), "traces": entries}, option=orjson.OPT_INDENT_2).decode())
        return 0
    from rich import box
    from rich.table import Table

    t = Table(box=box.SIMPLE_HEAD, title=f"trace catalog ({catalog_path()})", title_justify="left")
    for col in ("name", "format", "size", "local", "licence", "description"):
        t.add_column(col, overflow="fold")
    for e in entries:
        size = f"{e['size'] / 1e6:,.1f} MB" if e.get("size") else "?"
        here = "bundled" if e.get("bundled") else ("cached" if local_path(e).is_file() else "-")
        desc = e["description"] if len(e["description"]) <= 72 else e["description"][:69] + "..."
        t.add_row(e["name"], e["format"], size, here, e["license"].split(" (")[0].split(";")[0], desc)
    _console().print(t)
    return 0
