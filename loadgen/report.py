"""The human report of one or more load levels (rows), rendered with Rich from ``summary.json`` dicts only.

It reads nothing but summaries, so ``loadgen run`` at the end of a level, ``loadgen report`` on old run
directories and a sweep's side-by-side view print identical numbers. Invalid levels get red warning lines (they
are marked, not hidden). Tables are built from column groups (e.g. TTFT p50/p90/p99) and packed to the console
width: at 120 columns the latency table is one table, at 80 it becomes several readable ones rather than one
squeezed table with folded numbers.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from loadgen.core.metrics import legend

WIDE = 120
_LABEL_MAX = 28
_PCTS = ("p50", "p90", "p99")


@dataclass(frozen=True)
class _Col:
    header: str  # may hold one newline: name over unit/statistic
    cell: Callable[[dict], str | Text]
    justify: str = "right"


def _label(s: dict) -> str:
    return str(s.get("label") or s.get("name") or "?")


def _num(v: float | None, digits: int = 3) -> str:
    """About ``digits`` significant digits, thousands separated; '-' when undefined (never a fake 0)."""
    if v is None:
        return "-"
    a = abs(v)
    if a >= 10 ** (digits - 1):
        return f"{v:,.0f}"
    if a == 0:
        return "0"
    if a >= 1:
        return f"{v:.{max(0, digits - len(str(int(a))))}f}"
    return f"{v:.{digits}f}"


def _key(key: str) -> Callable[[dict], str]:
    return lambda s: _num(s.get(key))


def _stat(key: str, stat: str) -> Callable[[dict], str]:
    return lambda s: _num((s.get(key) or {}).get(stat))


def _count(key: str) -> Callable[[dict], str]:
    return lambda s: "-" if s.get(key) is None else str(s[key])


def _short(s: dict) -> str:
    share = s.get("short_output_share")
    return "-" if share is None else f"{share * 100:.1f}"


def _errors(s: dict) -> str:
    kinds = {k: v for k, v in (s.get("errors_by_kind") or {}).items() if v and k != "short_output"}
    if not kinds:
        return "0"
    return ", ".join(f"{k} {v}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))


def _valid(s: dict) -> Text:
    return Text("yes", style="green") if s.get("valid") else Text("NO", style="bold red")


def _approx(summaries: Sequence[dict], key: str) -> str:
    return "~" if any(not (s.get(key) or {}).get("exact", True) for s in summaries) else ""


def _build_table(label_w: int, groups: Sequence[Sequence[_Col]], cells: list, part: list[int],
                 summaries: Sequence[dict]) -> Table:
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    t.add_column("level", style="cyan", overflow="fold", min_width=min(label_w, 12), max_width=label_w)
    for i in part:
        for c in groups[i]:
            t.add_column(c.header, justify=c.justify, no_wrap=c.justify == "right", overflow="fold")
    for row, s in enumerate(summaries):
        t.add_row(_label(s), *[cells[i][j][row] for i in part for j in range(len(groups[i]))])
    return t


def _print_tables(console: Console, title: str, groups: Sequence[Sequence[_Col]], summaries: Sequence[dict]
                  ) -> None:
    """Print one table, or several when the column groups do not fit the console width side by side."""
    label_w = min(_LABEL_MAX, max(len("level"), *(len(_label(s)) for s in summaries)))
    cells = [[[c.cell(s) for s in summaries] for c in g] for g in groups]

    def width(part: list[int]) -> int:
        table = _build_table(label_w, groups, cells, part, summaries)
        return Measurement.get(console, console.options.update(max_width=10_000), table).maximum

    parts: list[list[int]] = [[]]
    for i in range(len(groups)):
        if parts[-1] and width([*parts[-1], i]) > console.width:
            parts.append([])
        parts[-1].append(i)
    if len(parts) > 1:  # as many tables as needed, but balanced: 2 + 2 groups reads better than 3 + 1
        k, n = len(parts), len(groups)
        cuts = [round(j * n / k) for j in range(k + 1)]
        even = [list(range(cuts[j], cuts[j + 1])) for j in range(k)]
        if all(p and width(p) <= console.width for p in even):
            parts = even
    for n, part in enumerate(parts, 1):
        suffix = f" ({n}/{len(parts)})" if len(parts) > 1 else ""
        console.print(Text(title + suffix, style="bold"))
        console.print(_build_table(label_w, groups, cells, part, summaries))
        console.print()


def _throughput_groups() -> list[list[_Col]]:
    return [
        [_Col("target\nreq/s", _key("target_rate_rps")), _Col("scheduled\nreq/s", _key("scheduled_rate_rps")),
         _Col("achieved\nreq/s", _key("achieved_rate_rps")), _Col("done\nreq/s", _key("request_throughput_rps")),
         _Col("goodput\nreq/s", _key("goodput_rps"))],
        [_Col("output\ntok/s", _key("output_token_throughput_tps")),
         _Col("total\ntok/s", _key("total_token_throughput_tps")),
         _Col("running\n(mean)", _key("mean_running_requests")), _Col("window\ns", _key("window_s"))],
    ]


def _request_groups() -> list[list[_Col]]:
    return [
        [_Col("measured", _count("measured_requests")), _Col("completed", _count("completed_requests")),
         _Col("dropped", _count("dropped_count")), _Col("late", _count("late_count")),
         _Col("short\nout %", _short)],
        [_Col("errors by kind", _errors, "left"), _Col("valid", _valid, "left")],
    ]


def _latency_groups(summaries: Sequence[dict]) -> list[list[_Col]]:
    groups = []
    for name, key in (("TTFT", "ttft_ms"), ("TPOT", "tpot_ms"), ("ITL", "itl_ms"), ("E2E", "e2e_ms")):
        mark = _approx(summaries, key)
        groups.append([_Col(f"{name}{mark}\n{p}", _stat(key, p)) for p in _PCTS])
    return groups


def _scheduled_groups() -> list[list[_Col]]:
    return [
        [_Col("sched lag\np50", _stat("schedule_lag_ms", "p50")),
         _Col("sched lag\np99", _stat("schedule_lag_ms", "p99"))],
        [_Col("TTFT p99\n(sched)", _stat("ttft_from_scheduled_ms", "p99")),
         _Col("E2E p99\n(sched)", _stat("e2e_from_scheduled_ms", "p99")),
         _Col("goodput\n(sched)", _key("goodput_from_scheduled_rps"))],
    ]


def _energy(key: str) -> Callable[[dict], str]:
    return lambda s: _num((s.get("energy") or {}).get(key))


def _energy_source(s: dict) -> str:
    e = s.get("energy")
    if not isinstance(e, dict):
        return "-"
    return f"{e.get('source') or '?'}/{e.get('method') or e.get('status')}"


def _energy_groups() -> list[list[_Col]]:
    return [
        [_Col("source/\nmethod", _energy_source, "left"), _Col("mean\nW", _energy("mean_power_w")),
         _Col("peak\nW", _energy("peak_power_w")), _Col("idle\nW", _energy("idle_power_w"))],
        [_Col("energy\nJ", _energy("energy_j")), _Col("above\nidle J", _energy("energy_above_idle_j"))],
        [_Col("J/req", _energy("joules_per_request")), _Col("J/output\ntoken", _energy("joules_per_output_token")),
         _Col("J/total\ntoken", _energy("joules_per_total_token")),
         _Col("output\ntok/J", _energy("output_tokens_per_joule"))],
    ]


def _print_energy(console: Console, summaries: Sequence[dict]) -> None:
    """The energy table (only when some level asked for power) and one line per level that needs saying."""
    if not any(isinstance(s.get("energy"), dict) for s in summaries):
        return
    _print_tables(console, "Energy (measurement window)", _energy_groups(), summaries)
    console.print(Text("Energy: counter deltas where the source has an energy counter, else the integral of sampled "
                       "power; per token/request: energy / tokens (requests) completed in the window; idle W "
                       "measured before the load", style="dim"))
    for s in summaries:
        e = s.get("energy")
        if not isinstance(e, dict):
            continue
        if e.get("status") != "ok":
            console.print(Text(f"Energy of {_label(s)} {e.get('status')}: {e.get('note')}", style="yellow"))
            continue
        if e.get("note"):
            console.print(Text(f"Energy of {_label(s)}: {e['note']}", style="yellow"))
        if e.get("counter_energy_j") is not None and e.get("integral_energy_j") is not None:
            share = e.get("counter_minus_integral_share")
            console.print(Text(f"Energy of {_label(s)}: counter {_num(e['counter_energy_j'])} J, power integral "
                               f"{_num(e['integral_energy_j'])} J" + (f" ({share:+.1%})" if share is not None else "")))


def _print_legend(console: Console) -> None:
    """A two-column table when there is room; at narrow widths one wrapped line per metric."""
    if console.width < WIDE:
        console.print(Text("Definitions", style="bold"))
        for name, unit, text in legend():
            console.print(Text.assemble((name, "cyan"), f" [{unit}]: " if unit else ": ", (text, "dim")))
        return
    console.print(Text("Definitions", style="bold"))
    t = Table(box=None, show_header=False, pad_edge=False)
    t.add_column("metric", style="cyan", no_wrap=True)
    t.add_column("definition", style="dim", overflow="fold")
    for name, unit, text in legend():
        t.add_row(Text(name + (f" [{unit}]" if unit else "")), Text(text))
    console.print(t)


def render_report(summaries: list[dict], console: Console, title: str | None = None, show_legend: bool = True
                  ) -> None:
    """Print the report of ``summaries`` (one row per level) on ``console``."""
    if title:
        console.rule(Text(title, style="bold"))
    _print_tables(console, "Throughput (measurement window)", _throughput_groups(), summaries)
    _print_tables(console, "Requests", _request_groups(), summaries)
    _print_tables(console, "Latency from issued time (ms)", _latency_groups(summaries), summaries)
    _print_tables(console, "From scheduled time (ms): includes client lag", _scheduled_groups(),
                  summaries)
    _print_energy(console, summaries)
    if any(_approx(summaries, key) for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")):
        console.print(Text("~ percentiles from a log histogram (3 significant digits): too many values to keep"))
    for s in summaries:
        if s.get("slo_s"):
            slo = ", ".join(f"{k} <= {v * 1000:g} ms" for k, v in s["slo_s"].items())
            console.print(Text(f"SLO of {_label(s)}: {slo}"))
    methods = {s.get("prompt_method") or "" for s in summaries}
    if len(methods) == 1:
        console.print(Text(f"Prompts: {methods.pop() or 'not recorded'}"))
    else:
        for s in summaries:
            console.print(Text(f"Prompts of {_label(s)}: {s.get('prompt_method') or 'not recorded'}"))
    for s in summaries:
        for w in s.get("warnings") or []:
            console.print(Text(f"INVALID {_label(s)}: {w}", style="bold red"))
    if show_legend:
        _print_legend(console)


def report_text(summaries: list[dict], width: int = WIDE, title: str | None = None) -> str:
    """The same report as plain text (report.txt in run directories)."""
    console = Console(file=io.StringIO(), width=width, record=True, color_system=None, force_terminal=False,
                      legacy_windows=False)
    render_report(summaries, console, title=title)
    return console.export_text()
