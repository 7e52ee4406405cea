"""The human report of one or more load levels, rendered with Rich from ``summary.json`` dicts only.

It reads nothing but summaries, so ``loadgen run`` at the end of a level, ``loadgen report`` on old run
directories and a sweep's side-by-side view print identical numbers. Invalid levels get red warning lines (they
are marked, not hidden).

Every section is built from column groups (e.g. TTFT p50/p90/p99) and laid out to fit the console width, never
folding a number or a level's label:

1. one row per level, every column side by side (a sweep compares best this way);
2. else the latency section stacks its groups (one row per metric and level, one column per percentile) and the
   other sections turn round (one row per metric, with its unit, and one column per level);
3. else (many levels at a narrow width) the groups go to separate tables, each titled with what it holds.

Long level labels become ``A``, ``B``, ... when that gives the tables a better layout; the full names are then
printed once, below the first table. No line ends in padding (``report.txt`` and piped output stay clean).
"""

from __future__ import annotations

import io
import os
import sys
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from rich import box
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.measure import Measurement
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from loadgen.core.metrics import legend

WIDE = 120
_PCTS = ("p50", "p90", "p99")
_LEGEND_TEXT = 100  # the longest line of a definition: wider text is hard to read


def output_width(stream: object = None) -> int | None:
    """The width for a console on ``stream`` (stdout by default): ``COLUMNS`` when set, else the terminal's own
    (None lets Rich ask the terminal), else ``WIDE`` for pipes, files and CI logs."""
    columns = os.environ.get("COLUMNS", "").strip()
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return None if isatty is not None and isatty() else WIDE
    except ValueError:  # a closed stream
        return WIDE


@dataclass(frozen=True)
class _Col:
    header: str  # one row per level: the column header, name over unit/statistic (one newline at most)
    cell: Callable[[dict], str | Text]
    justify: str = "right"
    name: str = ""  # one row per metric: the row's name (default: the header on one line)
    unit: str = ""  # one row per metric: the unit column

    @property
    def row_name(self) -> str:
        return self.name or " ".join(self.header.split())


@dataclass(frozen=True)
class _Group:
    name: str  # the title of its own table when the groups do not fit side by side
    cols: list[_Col]


@dataclass(frozen=True)
class _Section:
    title: str
    groups: list[_Group]
    stacked: bool = False  # every group has the same columns (statistics): stack the groups as rows


def _label(s: dict) -> str:
    """The level's full display label: ``loadgen report`` labels rows ``RUN_DIR/name``; a run directory is
    named ``<stamp>-<name>``, so the directory alone says it all."""
    label = str(s.get("label") or s.get("name") or "?")
    name = str(s.get("name") or "")
    if name and label.endswith("/" + name):
        head = label[: -len(name) - 1]
        if head == name or head.endswith("-" + name):
            return head
    return label


def _letters(i: int) -> str:
    out = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        out = chr(ord("A") + r) + out
    return out


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


def _whole(key: str) -> Callable[[dict], str]:
    """A whole number (tokens) in full, thousands separated."""
    return lambda s: "-" if s.get(key) is None else f"{int(s[key]):,}"


def _count(key: str) -> Callable[[dict], str]:
    return lambda s: "-" if s.get(key) is None else str(s[key])


def _short(s: dict) -> str:
    return _percent("short_output_share")(s)


def _percent(key: str) -> Callable[[dict], str]:
    """A share (0..1) as a percentage with one decimal; '-' when undefined."""
    return lambda s: "-" if s.get(key) is None else f"{s[key] * 100:.1f}"


def _errors(s: dict) -> str:
    """One kind per line (a cell never has to wrap), most frequent first."""
    kinds = {k: v for k, v in (s.get("errors_by_kind") or {}).items() if v and k != "short_output"}
    if not kinds:
        return "0"
    return "\n".join(f"{k} {v}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))


def _valid(s: dict) -> Text:
    return Text("yes", style="green") if s.get("valid") else Text("NO", style="bold red")


def _approx(summaries: Sequence[dict], key: str) -> str:
    return "~" if any(not (s.get(key) or {}).get("exact", True) for s in summaries) else ""


# -- sections --------------------------------------------------------------------------------------------------
def _throughput() -> _Section:
    return _Section("Throughput (measurement window)", [
        _Group("request rates", [
            _Col("target\nreq/s", _key("target_rate_rps"), name="target rate", unit="req/s"),
            _Col("scheduled\nreq/s", _key("scheduled_rate_rps"), name="scheduled rate", unit="req/s"),
            _Col("achieved\nreq/s", _key("achieved_rate_rps"), name="achieved rate", unit="req/s"),
            _Col("done\nreq/s", _key("request_throughput_rps"), name="done (completed)", unit="req/s"),
            _Col("goodput\nreq/s", _key("goodput_rps"), name="goodput", unit="req/s")]),
        _Group("tokens, requests in flight, window", [
            _Col("output\ntok/s", _key("output_token_throughput_tps"), name="output tokens", unit="tok/s"),
            _Col("total\ntok/s", _key("total_token_throughput_tps"), name="total tokens", unit="tok/s"),
            _Col("running\nreq (mean)", _key("mean_running_requests"), name="running (mean)", unit="requests"),
            _Col("window\ns", _key("window_s"), name="window", unit="s")]),
    ])


def _requests(summaries: Sequence[dict]) -> _Section:
    groups = [
        _Group("outcomes", [
            _Col("measured\nreq", _count("measured_requests"), name="measured", unit="requests"),
            _Col("completed\nreq", _count("completed_requests"), name="completed", unit="requests"),
            _Col("dropped\nreq", _count("dropped_count"), name="dropped", unit="requests"),
            _Col("late\nreq", _count("late_count"), name="late", unit="requests"),
            _Col("short\nout %", _short, name="short outputs", unit="%")])]
    if has_client_cancels(summaries):  # a state of its own: neither completed nor an error (METRICS.md)
        groups.append(_Group("cancelled by the client", [
            _Col("cancelled\nby client", _count("cancelled_by_client_count"), name="cancelled by client",
                 unit="requests"),
            _Col("cancelled\n% issued", _percent("cancelled_by_client_share"), name="cancelled share",
                 unit="% issued")]))
    groups.append(_Group("errors, validity", [
        _Col("errors, req\nby kind", _errors, "left", name="errors by kind", unit="requests"),
        _Col("valid", _valid, "left")]))
    return _Section("Requests (measurement window)", groups)


def has_client_cancels(summaries: Sequence[dict]) -> bool:
    """Whether a level planned client cancellations (``--cancel-rate``) or counted any: only then does the
    report give them columns (a level without them would show a column of zeros)."""
    return any(s.get("cancelled_by_client_count") or (s.get("extra") or {}).get("cancel") for s in summaries)


def has_reasoning(summaries: Sequence[dict]) -> bool:
    """Whether a level's streams carried reasoning tokens (a reasoning model): only then the reasoning section."""
    return any(s.get("reasoning_tokens_total") or (s.get("ttfrt_ms") or {}).get("count") for s in summaries)


def workload_notes(s: dict) -> list[tuple[str, str]]:
    """(what, sentence) about how the level's load was shaped beyond its rate (``summary["extra"]``, written by
    ``loadgen.level.plan``): the ramp before the window and the planned client cancellations. Shared with
    report.html."""
    extra = s.get("extra") or {}
    out = []
    ramp = extra.get("ramp")
    if isinstance(ramp, dict) and ramp.get("ramp_s"):
        if ramp.get("users") is not None:
            out.append(("Ramp", f"{ramp['users']} users started one by one over {ramp['ramp_s']:g} s, before "
                                "the measured window"))
        else:
            target = s.get("target_rate_rps")
            to = f" -> {target:g}" if target is not None else ""
            n = ramp.get("requests")
            out.append(("Ramp", f"{ramp.get('start_rate_rps') or 0:g}{to} req/s over {ramp['ramp_s']:g} s"
                                + (f" ({n} requests)" if n is not None else "") + ", excluded from the window"))
    cancel = extra.get("cancel")
    if isinstance(cancel, dict) and cancel.get("rate"):
        after = f" {cancel['after']} after issue" if cancel.get("after") else ""
        out.append(("Cancellation", f"{cancel['rate'] * 100:g}% of requests abandoned{after} (cancelled by "
                                    "client, not errors)"))
    return out


def _reasoning_share(s: dict) -> str:
    total, reasoning = s.get("output_tokens_total"), s.get("reasoning_tokens_total")
    if not total or reasoning is None:
        return "-"
    return f"{reasoning / total * 100:.1f}"


def _reasoning() -> _Section:
    """TTFRT/TTFAT percentiles and the reasoning/answer split of the output tokens (reasoning models only)."""
    return _Section("Reasoning model (completed requests)", [
        _Group("time to first reasoning token", [
            _Col(f"TTFRT\n{p} ms", _stat("ttfrt_ms", p), name=f"TTFRT {p}", unit="ms") for p in _PCTS]),
        _Group("time to first answer token", [
            _Col(f"TTFAT\n{p} ms", _stat("ttfat_ms", p), name=f"TTFAT {p}", unit="ms") for p in _PCTS]),
        _Group("output token split", [
            _Col("reasoning\ntok", _whole("reasoning_tokens_total"), name="reasoning tokens", unit="tokens"),
            _Col("answer\ntok", _whole("answer_tokens_total"), name="answer tokens", unit="tokens"),
            _Col("reasoning\n% output", _reasoning_share, name="reasoning share", unit="% output")]),
    ])


def _latency(summaries: Sequence[dict]) -> _Section:
    groups = []
    for name, key in (("TTFT", "ttft_ms"), ("TPOT", "tpot_ms"), ("ITL", "itl_ms"), ("E2E", "e2e_ms")):
        mark = _approx(summaries, key)
        groups.append(_Group(name + mark, [_Col(f"{name}{mark}\n{p}", _stat(key, p), name=p, unit="ms")
                                           for p in _PCTS]))
    return _Section("Latency from issued time (ms)", groups, stacked=True)


def _scheduled() -> _Section:
    return _Section("From scheduled time: includes client lag", [
        _Group("schedule lag", [
            _Col("sched lag\np50 ms", _stat("schedule_lag_ms", "p50"), name="schedule lag p50", unit="ms"),
            _Col("sched lag\np99 ms", _stat("schedule_lag_ms", "p99"), name="schedule lag p99", unit="ms")]),
        _Group("latency and goodput from scheduled time", [
            _Col("TTFT p99\nms", _stat("ttft_from_scheduled_ms", "p99"), name="TTFT p99", unit="ms"),
            _Col("E2E p99\nms", _stat("e2e_from_scheduled_ms", "p99"), name="E2E p99", unit="ms"),
            _Col("goodput\nreq/s", _key("goodput_from_scheduled_rps"), name="goodput", unit="req/s")]),
    ])


def _energy(key: str) -> Callable[[dict], str]:
    return lambda s: _num((s.get("energy") or {}).get(key))


def _energy_source(s: dict) -> str:
    e = s.get("energy")
    if not isinstance(e, dict):
        return "-"
    return f"{e.get('source') or '?'}/{e.get('method') or e.get('status')}"


def _energy_section() -> _Section:
    return _Section("Energy (measurement window)", [
        _Group("power", [
            _Col("source/\nmethod", _energy_source, "left", name="source/method"),
            _Col("mean\nW", _energy("mean_power_w"), name="mean power", unit="W"),
            _Col("peak\nW", _energy("peak_power_w"), name="peak power", unit="W"),
            _Col("idle\nW", _energy("idle_power_w"), name="idle power", unit="W")]),
        _Group("energy", [
            _Col("energy\nJ", _energy("energy_j"), name="energy", unit="J"),
            _Col("above\nidle J", _energy("energy_above_idle_j"), name="energy above idle", unit="J")]),
        _Group("energy per request and token", [
            _Col("J/req", _energy("joules_per_request"), name="per request", unit="J/req"),
            _Col("J/output\ntoken", _energy("joules_per_output_token"), name="per output token", unit="J/tok"),
            _Col("J/total\ntoken", _energy("joules_per_total_token"), name="per total token", unit="J/tok"),
            _Col("output\ntok/J", _energy("output_tokens_per_joule"), name="output tokens per joule",
                 unit="tok/J")]),
    ])


# -- layouts ---------------------------------------------------------------------------------------------------
def _table() -> Table:
    return Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)


def _by_level(sec: _Section, groups: Sequence[int], labels: Sequence[str], cells: list) -> Table:
    """One row per level, the columns of ``groups`` side by side."""
    t = _table()
    t.add_column("level", style="cyan", no_wrap=True)
    for g in groups:
        for c in sec.groups[g].cols:
            t.add_column(c.header, justify=c.justify, no_wrap=True)
    for row, label in enumerate(labels):
        t.add_row(label, *[cells[g][j][row] for g in groups for j in range(len(sec.groups[g].cols))])
    return t


def _by_metric(sec: _Section, labels: Sequence[str], cells: list) -> Table:
    """One row per metric (name, unit), one column per level."""
    t = _table()
    t.add_column("metric", no_wrap=True)
    t.add_column("unit", no_wrap=True)
    for label in labels:
        t.add_column(label, justify="right", no_wrap=True, header_style="cyan")
    for g, group in enumerate(sec.groups):
        for j, c in enumerate(group.cols):
            t.add_row(c.row_name, c.unit, *[cells[g][j][row] for row in range(len(labels))])
    return t


def _stacked(sec: _Section, labels: Sequence[str], cells: list) -> Table:
    """One row per group (metric) and level, one column per statistic: fits any number of levels."""
    t = _table()
    t.add_column("metric", no_wrap=True)
    if len(labels) > 1:
        t.add_column("level", style="cyan", no_wrap=True)
    for c in sec.groups[0].cols:
        t.add_column(f"{c.row_name} {c.unit}".strip(), justify="right", no_wrap=True)
    for g, group in enumerate(sec.groups):
        for row, label in enumerate(labels):
            head = [group.name if row == 0 else ""] + ([label] if len(labels) > 1 else [])
            t.add_row(*head, *[cells[g][j][row] for j in range(len(group.cols))],
                      end_section=len(labels) > 1 and row == len(labels) - 1)
    return t


def _width(console: Console, table: Table) -> int:
    return Measurement.get(console, console.options.update(max_width=10_000), table).maximum


def _fits(console: Console, table: Table) -> bool:
    return _width(console, table) <= console.width


def _layout(console: Console, sec: _Section, summaries: Sequence[dict], labels: Sequence[str]
            ) -> tuple[float, list[tuple[str, Table]]]:
    """(cost, [(title, table)]): 0 all side by side, 1 stacked or turned round, 2 split into several tables,
    3 and more squeezed (nothing fits)."""
    cells = [[[c.cell(s) for s in summaries] for c in g.cols] for g in sec.groups]
    everything = list(range(len(sec.groups)))
    table = _by_level(sec, everything, labels, cells)
    if _fits(console, table):
        return 0, [(sec.title, table)]
    alt = _stacked(sec, labels, cells) if sec.stacked else _by_metric(sec, labels, cells)
    if _fits(console, alt):
        return 1, [(sec.title, alt)]
    parts: list[list[int]] = [[]]
    for g in everything:
        if parts[-1] and not _fits(console, _by_level(sec, [*parts[-1], g], labels, cells)):
            parts.append([])
        parts[-1].append(g)
    if len(parts) > 1:  # as many tables as needed, but balanced: 2 + 2 groups reads better than 3 + 1
        k, n = len(parts), len(everything)
        cuts = [round(j * n / k) for j in range(k + 1)]
        even = [list(range(cuts[j], cuts[j + 1])) for j in range(k)]
        if all(p and _fits(console, _by_level(sec, p, labels, cells)) for p in even):
            parts = even
    tables = []
    for part in parts:
        names = ", ".join(sec.groups[g].name for g in part)
        tables.append((f"{sec.title}: {names}" if len(parts) > 1 else sec.title,
                       _by_level(sec, part, labels, cells)))
    widest = max(_width(console, t) for _, t in tables)
    if widest <= console.width:
        return 2, tables
    # Nothing fits (a very narrow console): Rich squeezes the narrower layout; every 10 columns too many count
    # as one more layout step (so that short labels win)
    alt_w = _width(console, alt)
    if alt_w <= widest:
        return 3 + (alt_w - console.width) / 10, [(sec.title, alt)]
    return 3 + (widest - console.width) / 10, tables


def _plan(console: Console, sections: Sequence[_Section], summaries: Sequence[dict]
          ) -> tuple[list[list[tuple[str, Table]]], list[tuple[str, str]]]:
    """The tables of every section, and the key of the short labels ([] when the full labels are used)."""
    full = [_label(s) for s in summaries]
    costs, plan = zip(*(_layout(console, sec, summaries, full) for sec in sections), strict=True)
    short = [_letters(i) for i in range(len(summaries))]
    if summaries and max(map(len, full)) > max(map(len, short)):
        short_costs, short_plan = zip(*(_layout(console, sec, summaries, short) for sec in sections), strict=True)
        if sum(short_costs) + 2 < sum(costs):  # a key to look up costs about two worse layouts
            return list(short_plan), list(zip(short, full, strict=True))
    return list(plan), []


# -- printing --------------------------------------------------------------------------------------------------
class _Trimmed:
    """``renderable`` without the padding at the end of its lines (tables pad every cell to its column)."""

    def __init__(self, renderable: RenderableType) -> None:
        self.renderable = renderable

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for line in console.render_lines(self.renderable, options, pad=False):
            yield from _rstrip(line)
            yield Segment.line()


def _rstrip(line: list[Segment]) -> Iterable[Segment]:
    end = len(line)
    while end and not line[end - 1].control and not line[end - 1].text.rstrip():
        end -= 1
    if end and not line[end - 1].control:
        last = line[end - 1]
        return [*line[:end - 1], Segment(last.text.rstrip(), last.style)]
    return line[:end]


def _print(console: Console, renderable: RenderableType) -> None:
    console.print(_Trimmed(renderable))


def _print_energy_notes(console: Console, summaries: Sequence[dict]) -> None:
    _print(console, Text("Energy: counter deltas where the source has an energy counter, else the integral of "
                         "sampled power; per token/request: energy / tokens (requests) completed in the window; "
                         "idle W measured before the load", style="dim"))
    for s in summaries:
        e = s.get("energy")
        if not isinstance(e, dict):
            continue
        if e.get("status") != "ok":
            _print(console, Text(f"Energy of {_label(s)} {e.get('status')}: {e.get('note')}", style="yellow"))
            continue
        if e.get("note"):
            _print(console, Text(f"Energy of {_label(s)}: {e['note']}", style="yellow"))
        if e.get("counter_energy_j") is not None and e.get("integral_energy_j") is not None:
            share = e.get("counter_minus_integral_share")
            _print(console, Text(f"Energy of {_label(s)}: counter {_num(e['counter_energy_j'])} J, power "
                                 f"integral {_num(e['integral_energy_j'])} J"
                                 + (f" ({share:+.1%})" if share is not None else "")))


def _legend_lines(width: int) -> list[Text]:
    """The metric definitions, wrapped here (no line ends in padding): a name column and a definition column
    when there is room, else one paragraph per metric with the continuation lines indented."""
    heads = [(name + (f" [{unit}]" if unit else ""), text) for name, unit, text in legend()]
    name_w = max(len(h) for h, _ in heads)
    lines: list[Text] = []
    if width >= WIDE:
        for head, text in heads:
            body = textwrap.wrap(text, min(width - name_w - 2, _LEGEND_TEXT), break_on_hyphens=False) or [""]
            lines.append(Text.assemble((head.ljust(name_w + 2), "cyan"), (body[0], "dim")))
            lines.extend(Text(" " * (name_w + 2) + b, style="dim") for b in body[1:])
        return lines
    for head, text in heads:
        wrapped = textwrap.wrap(f"{head}: {text}", max(20, width), subsequent_indent="    ",
                                break_on_hyphens=False)
        first = wrapped[0]
        cut = min(len(head) + 1, len(first))
        lines.append(Text.assemble((first[:cut], "cyan"), (first[cut:], "dim")))
        lines.extend(Text(w, style="dim") for w in wrapped[1:])
    return lines


def _print_legend(console: Console) -> None:
    console.print()
    _print(console, Text("Definitions", style="bold"))
    for line in _legend_lines(console.width):
        _print(console, line)


def render_report(summaries: list[dict], console: Console, title: str | None = None, show_legend: bool = True
                  ) -> None:
    """Print the report of ``summaries`` (one row, or one column, per level) on ``console``."""
    if title:
        if len(title) + 6 <= console.width:
            console.rule(Text(title, style="bold"))
        else:  # a rule would cut it with an ellipsis
            console.rule()
            _print(console, Text(title, style="bold"))
    sections = [_throughput(), _requests(summaries), _latency(summaries), _scheduled()]
    if has_reasoning(summaries):
        sections.append(_reasoning())
    has_energy = any(isinstance(s.get("energy"), dict) for s in summaries)
    if has_energy:
        sections.append(_energy_section())
    plan, key = _plan(console, sections, summaries)
    first = True
    for sec, tables in zip(sections, plan, strict=True):
        for title_, table in tables:
            _print(console, Text(title_, style="bold"))
            _print(console, table)
            if first and key:
                for short, full in key:
                    _print(console, Text.assemble((short, "cyan"), f" = {full}"))
            first = False
            console.print()
        if sec.title.startswith("Energy"):
            _print_energy_notes(console, summaries)
    if any(_approx(summaries, key) for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")):
        _print(console, Text("~ percentiles from a log histogram (3 significant digits): too many values to keep"))
    for s in summaries:
        if s.get("slo_s"):
            slo = ", ".join(f"{k} <= {v * 1000:g} ms" for k, v in s["slo_s"].items())
            _print(console, Text(f"SLO of {_label(s)}: {slo}"))
    for s in summaries:
        for what, line in workload_notes(s):
            _print(console, Text(f"{what} of {_label(s)}: {line}" if len(summaries) > 1 else f"{what}: {line}"))
    methods = {s.get("prompt_method") or "" for s in summaries}
    if len(methods) == 1:
        _print(console, Text(f"Prompts: {methods.pop() or 'not recorded'}"))
    else:
        for s in summaries:
            _print(console, Text(f"Prompts of {_label(s)}: {s.get('prompt_method') or 'not recorded'}"))
    for s in summaries:
        for w in s.get("warnings") or []:
            _print(console, Text(f"INVALID {_label(s)}: {w}", style="bold red"))
    if show_legend:
        _print_legend(console)


def report_text(summaries: list[dict], width: int = WIDE, title: str | None = None) -> str:
    """The same report as plain text (report.txt in run directories)."""
    console = Console(file=io.StringIO(), width=width, record=True, color_system=None, force_terminal=False,
                      legacy_windows=False)
    render_report(summaries, console, title=title)
    return console.export_text()
