"""The text report at terminal widths: 80 columns (CI logs, piped output) and 200 (a wide terminal).

Nothing wider than the console, no table cut into "(1/2)" parts, no level label folded over several lines, a unit
on every value, no padding at the end of a line (the legend included); ``loadgen report`` and ``loadgen run`` honour
COLUMNS when their output is piped, and fall back to 120 columns.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from rich.console import Console

from loadgen.core.records import RequestRecord
from loadgen.core.summary import LevelContext, summarize
from loadgen.report import output_width, render_report, report_text
from loadgen.run_cli import console_for_output

MS = 1_000_000
ROOT = Path(__file__).resolve().parent.parent
NAMES = ("triton-http-poisson-8rps", "openai-completions-poisson-8rps", "triton-grpc-poisson-8rps")
DIRS = ("20261205-143848-triton-http-poisson-8rps", "20261205-144112-openai-completions-poisson-8rps")


def _records(n: int, rate: float, ttft_ms: float, itl_ms: float, errors: int = 0,
             reasoning: bool = False) -> list[RequestRecord]:
    """``n`` requests at ``rate`` req/s with some spread (real-looking percentiles), the last ``errors`` failed;
    ``reasoning``: 10 of the 16 tokens are a reasoning model's thinking, and every 8th request is abandoned by the
    client."""
    out = []
    for i in range(n):
        sched = int(i * 1000 / rate * MS)
        if reasoning and i % 8 == 5:
            out.append(RequestRecord(index=i, scheduled_ns=sched, issued_ns=sched, end_ns=sched + 500 * MS,
                                     status="cancelled_by_client", cancel_after_s=0.5, max_tokens=16,
                                     input_tokens=128))
            continue
        if i >= n - errors:
            out.append(RequestRecord(index=i, scheduled_ns=sched, issued_ns=sched, end_ns=sched + 30_000 * MS,
                                     status="error", error_kind="timeout" if i % 2 else "http_status",
                                     max_tokens=16, input_tokens=128))
            continue
        first = ttft_ms * (1 + (i % 7) / 5)
        offs = [int((first + j * itl_ms * (1 + (i % 3) / 10)) * 1000) for j in range(16)]  # µs after issue
        r = RequestRecord(index=i, scheduled_ns=sched, issued_ns=sched + (i % 4) * 200_000,
                          end_ns=sched + offs[-1] * 1000 + 1 * MS, chunk_offsets_us=offs,
                          chunk_tokens=[1] * 16, status="ok", max_tokens=16, input_tokens=128)
        if reasoning:
            r.reasoning_tokens = 10
            r.first_reasoning_ns = r.issued_ns + offs[0] * 1000
            r.first_answer_ns = r.issued_ns + offs[10] * 1000
        out.append(r)
    return out


def _summary(name: str, rate: float, ttft_ms: float, itl_ms: float, errors: int = 0, energy: bool = False,
             slo: bool = False, reasoning: bool = False) -> dict:
    n = int(rate * 20)
    extra = {"ramp": {"ramp_s": 30.0, "start_rate_rps": 0.0, "requests": 120},
             "cancel": {"rate": 0.125, "after": "exp:500ms", "mean_after_s": 0.5}} if reasoning else {}
    ctx = LevelContext(name=name, backend=name.rsplit("-poisson", 1)[0], target_rate=rate,
                       run_end_ns=int(n * 1000 / rate * MS), prompt_method="word-level approximation (1 word = 1 token)",
                       slo={"ttft": 0.05, "tpot": 0.02} if slo else {}, extra=extra)
    s = summarize(_records(n, rate, ttft_ms, itl_ms, errors, reasoning), ctx)
    if energy:  # the fields loadgen.power.energy writes
        s["energy"] = {"status": "ok", "note": None, "source": "nvml", "method": "counter", "mean_power_w": 231.4,
                       "peak_power_w": 298.2, "idle_power_w": 61.9, "energy_j": 4627.9, "counter_energy_j": 4627.9,
                       "integral_energy_j": 4590.2, "counter_minus_integral_share": 0.0081,
                       "energy_above_idle_j": 3389.6, "joules_per_request": 29.3, "joules_per_output_token": 1.83,
                       "joules_per_total_token": 0.203, "output_tokens_per_joule": 0.546}
    return s


@pytest.fixture
def runs() -> list[dict]:
    """Three levels with long names, as ``loadgen report`` labels them (``RUN_DIR/name``), errors in one."""
    out = [_summary(NAMES[0], 8.0, 41.7, 9.6, energy=True, slo=True),
           _summary(NAMES[1], 8.0, 1234.5, 12.25, errors=7, energy=True),
           _summary(NAMES[2], 8.0, 38.2, 9.1)]
    for s, d in zip(out, (*DIRS, "20261205-150201-" + NAMES[2]), strict=True):
        s["label"] = f"{d}/{s['name']}"
    return out


def _render(summaries: list[dict], width: int) -> str:
    console = Console(record=True, width=width, color_system=None, file=open(os.devnull, "w"))
    render_report(summaries, console, title="loadgen report")
    return console.export_text()


def _check_lines(text: str, width: int) -> list[str]:
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width, max(lines, key=len)
    assert [line for line in lines if line != line.rstrip()] == []  # no padding at any line's end
    assert "(1/2)" not in text and "(2/2)" not in text
    assert "…" not in text  # nothing cut with an ellipsis
    return lines


def _no_folded_label(lines: list[str], labels: list[str]) -> None:
    """Every label is whole on some line, and no line starts with the tail of a label folded over from above."""
    for label in labels:
        assert any(label in line for line in lines), label
        tails = [label[k:] for k in range(1, len(label))]
        folded = [line for line in lines if label not in line and any(line.lstrip().startswith(t) and len(t) >= 4
                                                                      for t in tails)]
        assert folded == [], (label, folded)


@pytest.mark.parametrize("width", [80, 200])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_report_fits_the_width_with_whole_labels_and_units(runs, width, n):
    summaries = runs[:n]
    lines = _check_lines(_render(summaries, width), width)
    text = "\n".join(lines)
    labels = [s["label"].split("/")[0] for s in summaries]  # <stamp>-<name>/<name> shows as the directory
    _no_folded_label(lines, labels)
    for section in ("Throughput (measurement window)", "Requests (measurement window)",
                    "Latency from issued time (ms)", "From scheduled time", "Energy (measurement window)"):
        assert text.count(section) == 1, section  # each section is one table
    for unit in ("req/s", "tok/s", "p50 ms" if width == 80 else "(ms)", "req", " W", " J", "tok/J", "%"):
        assert unit in text, unit
    # the numbers are there in either layout
    assert re.search(r"\b8\.00\b", text) and "nvml/counter" in text
    if n > 1:  # one kind of error per line of the cell
        assert "timeout 4" in text and "http_status 3" in text
    # the lines about a level name it in full
    assert f"SLO of {labels[0]}: ttft <= 50 ms, tpot <= 20 ms" in text
    assert f"Energy of {labels[0]}: counter 4,628 J" in text


@pytest.mark.parametrize("width", [80, 200])
@pytest.mark.parametrize("n", [1, 3])
def test_reasoning_cancellations_and_ramps_fit_the_width(runs, width, n):
    """A reasoning model's level with client cancellations and a ramp: its extra columns, section and lines fit."""
    summaries = []
    for s in runs[:n]:
        r = _summary(s["name"], 8.0, 41.7, 9.6, errors=7 if len(summaries) == 1 else 0, reasoning=True)
        r["label"] = s["label"]
        summaries.append(r)
    lines = _check_lines(_render(summaries, width), width)
    text = "\n".join(lines)
    _no_folded_label(lines, [s["label"].split("/")[0] for s in summaries])
    assert text.count("Reasoning model (completed requests)") == 1 and text.count("Requests (measurement") == 1
    assert summaries[0]["cancelled_by_client_count"] == 20 and summaries[0]["reasoning_tokens_total"] == 1400
    for figure in ("TTFRT", "TTFAT", "1,400", "62.5", "cancelled", "12.5"):  # 1400 of 2240 tokens; 20 of 160
        assert figure in text, figure
    if n > 1:  # the errors stay errors, by kind, and the cancellations are not among them
        kinds = summaries[1]["errors_by_kind"]
        assert f"timeout {kinds['timeout']}" in text and f"http_status {kinds['http_status']}" in text
        assert "cancelled_by_client" not in text[:text.index("Definitions")]
    who = f" of {summaries[0]['label'].split('/')[0]}" if n > 1 else ""
    assert f"Ramp{who}: 0 -> 8 req/s over 30 s (120 requests)" in " ".join(text.split())


def test_wide_terminal_shows_one_row_per_level_with_full_names(runs):
    text = _render(runs, 200)
    for d in DIRS:  # the directory's own name, one line per level in every table, nothing shortened
        rows = [line for line in text.splitlines() if line.startswith(d + " ")]
        assert len(rows) == 5, rows  # throughput, requests, latency, from scheduled, energy
    assert not re.search(r"^A = ", text, re.M)  # no key of short labels needed
    rows = [line[len(DIRS[1]):] for line in text.splitlines() if line.startswith(DIRS[1])]
    assert 12 in [len(re.findall(r"\d[\d,.]*", row)) for row in rows]  # TTFT TPOT ITL E2E x p50 p90 p99


def test_narrow_terminal_uses_short_labels_with_a_key_printed_once(runs):
    text = _render(runs[:2], 80)
    lines = text.splitlines()
    key = [line for line in lines if re.match(r"^[AB] = ", line)]
    assert key == [f"A = {DIRS[0]}", f"B = {DIRS[1]}"]
    # below the first table, before the second
    assert lines.index(key[0]) < next(i for i, line in enumerate(lines) if line.startswith("Requests"))
    assert re.search(r"^target rate\s+req/s\s+8\.00\s+8\.00$", text, re.M)  # a row per metric, a column per level
    assert re.search(r"^TTFT\s+A\s+[\d.,]+\s+[\d.,]+\s+[\d.,]+$", text, re.M)


def test_many_levels_at_80_columns_split_by_what_the_tables_hold(runs):
    summaries = []
    for i in range(12):
        s = dict(runs[i % 3])
        s["label"] = f"rate-{(i + 1) * 10}"
        summaries.append(s)
    text = _render(summaries, 80)
    lines = _check_lines(text, 80)
    _no_folded_label(lines, [s["label"] for s in summaries])
    assert "Throughput (measurement window): request rates" in text  # a named part, not "(1/2)"
    assert sum(line.startswith("rate-120 ") for line in lines) >= 4


@pytest.mark.parametrize("width", [80, 120, 200])
def test_legend_lines_have_no_padding(runs, width):
    text = report_text(runs[:1], width=width)
    legend = text[text.index("Definitions"):].splitlines()
    assert len(legend) > 30
    assert all(line == line.rstrip() and len(line) <= width for line in legend)
    assert any(line.startswith("ttft [ms]") for line in legend)
    if width < 120:  # one paragraph per metric, continuation lines indented
        assert all(line.startswith("    ") or re.match(r"^[a-z_0-9]+( \[[^]]+\])?: ", line) for line in legend[1:])


def test_report_txt_is_120_columns_without_trailing_spaces(runs):
    _check_lines(report_text(runs[:1]), 120)


def test_output_width_honours_columns_and_falls_back_to_120(monkeypatch):
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # not a terminal, as in a pipe or a CI log
    class Pipe:
        def isatty(self) -> bool:
            return False

    class Tty(Pipe):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("COLUMNS", raising=False)
    assert output_width(Pipe()) == 120
    assert output_width(Tty()) is None  # Rich asks the terminal
    monkeypatch.setenv("COLUMNS", "80")
    assert output_width(Pipe()) == 80 and output_width(Tty()) == 80
    monkeypatch.setenv("COLUMNS", "wide")
    assert output_width(Pipe()) == 120
    # the run front end: stdout is captured here, not a terminal
    monkeypatch.setenv("COLUMNS", "80")
    assert console_for_output().width == 80
    monkeypatch.delenv("COLUMNS")
    assert console_for_output().width == 120


def _run_dirs(tmp_path: Path, runs: list[dict]) -> list[Path]:
    """Two run directories with a stored summary, one crashed with records only (its summary recomputed)."""
    dirs = []
    for d, s in zip(DIRS, runs, strict=False):
        path = tmp_path / d
        path.mkdir()
        s = {k: v for k, v in s.items() if k != "label"}
        (path / "summary.json").write_bytes(orjson.dumps(s))
        dirs.append(path)
    crashed = tmp_path / ("20261205-150201-" + NAMES[2])
    crashed.mkdir()
    n = 160
    ctx = LevelContext(name=NAMES[2], target_rate=8.0, run_end_ns=int(n / 8 * 1000 * MS),
                       prompt_method="word-level approximation (1 word = 1 token)")
    with open(crashed / "records.jsonl", "wb") as fh:
        for r in _records(n, 8.0, 38.2, 9.1):
            fh.write(orjson.dumps(r.to_dict()) + b"\n")
    (crashed / "config.json").write_bytes(orjson.dumps({"level_context": ctx.to_dict(), "anchor": {}}))
    return [*dirs, crashed]


@pytest.mark.parametrize("columns", ["80", "200", None])
def test_loadgen_report_piped_honours_columns(tmp_path, runs, columns):
    dirs = _run_dirs(tmp_path, runs)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE")}
    env["PYTHONPATH"] = str(ROOT)
    if columns:
        env["COLUMNS"] = columns
    for args, labels in (([dirs[0]], [NAMES[0]]), (dirs, [d.name for d in dirs])):
        p = subprocess.run([sys.executable, "-m", "loadgen", "report", *(d.name for d in args)], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        width = int(columns or 120)
        lines = _check_lines(p.stdout, width)
        assert max(len(line) for line in lines) > width - 10  # the rule spans the width asked for
        _no_folded_label(lines, labels)
        assert "Latency from issued time (ms)" in p.stdout and "Definitions" in p.stdout
    assert "recomputed from records.jsonl" in p.stderr
