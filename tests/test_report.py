"""The Rich report (numbers, warnings, legend, width handling) and the ``loadgen report`` subcommand."""

from __future__ import annotations

import argparse
import json
import re

import orjson
import pytest
from rich.console import Console

from loadgen.cli import main as cli_main
from loadgen.core.metrics import REQUEST_METRICS
from loadgen.core.records import RequestRecord
from loadgen.core.summary import LevelContext, summarize
from loadgen.errors import UsageError
from loadgen.report import render_report, report_text
from loadgen.report_cli import configure, execute

MS = 1_000_000


def _records(n: int = 100, period_ms: float = 10.0, ttft_ms: float = 12.5) -> list[RequestRecord]:
    out = []
    for i in range(n):
        sched = int(i * period_ms * MS)
        offs = [int(ttft_ms * 1000) + j * 4000 for j in range(5)]  # µs after issue: ITL 4 ms
        out.append(RequestRecord(index=i, scheduled_ns=sched, issued_ns=sched, end_ns=sched + offs[-1] * 1000,
                                 chunk_offsets_us=offs, chunk_tokens=[1] * 5, status="ok", max_tokens=5,
                                 input_tokens=20))
    return out


def _ctx(name: str, rate: float, **kw) -> LevelContext:
    return LevelContext(name=name, target_rate=rate, run_end_ns=1000 * MS, prompt_method="synthetic words, n=20",
                        slo={"ttft": 0.02}, **kw)


@pytest.fixture
def summaries() -> list[dict]:
    good = summarize(_records(), _ctx("rate-100", 100.0))
    # 150 req/s scheduled, but every third request was dropped by a late client: achieved 100 of 150, invalid
    behind = _records(150, period_ms=1000 / 150)
    for r in behind[2::3]:
        r.issued_ns = r.end_ns = None
        r.chunk_offsets_us, r.chunk_tokens, r.status = [], [], "dropped"
    short = summarize(behind, _ctx("rate-150", 150.0))
    return [good, short]


def _render(summaries: list[dict], width: int) -> str:
    console = Console(record=True, width=width, color_system=None)
    render_report(summaries, console, title="test run")
    return console.export_text()


def test_report_shows_numbers_warnings_prompt_method_and_legend(summaries):
    text = _render(summaries, 120)
    row = next(line for line in text.splitlines() if line.strip().startswith("rate-100") and "12.5" in line)
    # TTFT p50 p90 p99, TPOT, ITL, E2E p50 p90 p99 from issued time, one table at 120 columns
    assert re.search(r"12\.5\s+12\.5\s+12\.5\s+4\.00\s+4\.00\s+4\.00\s+4\.00\s+4\.00\s+4\.00\s+28\.5", row)
    # target, scheduled, achieved, done, goodput, tok/s
    assert re.search(r"rate-150\s+150\s+150\s+100\s+100\s+100\s+500\s+2,500", text)
    assert "INVALID rate-150: achieved rate 100 req/s is 66.7% of the scheduled 150 req/s" in text
    assert "INVALID rate-100" not in text
    assert "Prompts: synthetic words, n=20" in text
    assert "SLO of rate-100: ttft <= 20 ms" in text
    for metric in REQUEST_METRICS:
        assert metric.definition.split()[0] in text
    assert "(1/2)" not in text
    assert max(len(line) for line in text.splitlines()) <= 120


def test_warning_lines_are_red(summaries):
    console = Console(record=True, width=120, color_system="truecolor", force_terminal=True)
    render_report(summaries, console)
    html = console.export_html(inline_styles=True)
    assert re.search(r'<span style="color: #800000[^"]*font-weight: bold[^"]*">INVALID rate-150', html)


def test_narrow_console_stacks_tables_instead_of_splitting_or_squeezing(summaries):
    text = _render(summaries, 80)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "(1/2)" not in text and "(2/2)" not in text  # no table cut into numbered parts
    assert text.count("Latency from issued time (ms)") == 1
    # the latency groups stacked: one row per metric and level, one column per percentile
    assert re.search(r"^TTFT\s+rate-100\s+12\.5\s+12\.5\s+12\.5\s*$", text, re.M)
    assert re.search(r"^TPOT\s+rate-100\s+4\.00\s+4\.00\s+4\.00$", text, re.M)
    # the throughput turned round: one row per metric with its unit, one column per level
    assert re.search(r"^target rate\s+req/s\s+100\s+150$", text, re.M)
    assert "…" not in text  # nothing truncated with an ellipsis


def test_report_text_is_plain(summaries):
    text = report_text(summaries, width=100)
    assert "\x1b[" not in text
    assert "rate-150" in text and "INVALID" in text


def test_histogram_percentiles_are_marked():
    s = summarize(_records(), _ctx("big", 100.0, itl_exact_cap=10))
    text = _render([s], 120)
    assert "ITL~" in text and "log histogram" in text


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure(parser)
    return parser.parse_args(argv)


def test_cli_renders_saved_summaries_side_by_side(tmp_path, summaries, capsys):
    for s in summaries:
        d = tmp_path / s["name"]
        d.mkdir()
        (d / "summary.json").write_bytes(orjson.dumps(s))
    args = _parse([str(tmp_path / "rate-100"), str(tmp_path / "rate-150"), "--json"])
    assert execute(args) == 0
    merged = json.loads(capsys.readouterr().out)
    assert [m["label"] for m in merged] == ["rate-100/rate-100", "rate-150/rate-150"]
    assert merged[1]["valid"] is False
    assert execute(_parse([str(tmp_path / "rate-100")])) == 0
    out = capsys.readouterr().out
    assert "rate-100" in out and "12.5" in out


def test_cli_recomputes_a_crashed_run(tmp_path, capsys):
    d = tmp_path / "crashed"
    d.mkdir()
    with open(d / "records.jsonl", "wb") as fh:
        for r in _records(50):
            fh.write(orjson.dumps(r.to_dict()) + b"\n")
        fh.write(b'{"index": 50, "scheduled_ns": 5000')  # cut mid-write
    ctx = _ctx("crashed", 100.0).to_dict()
    ctx["run_end_ns"] = 500 * MS
    (d / "config.json").write_bytes(orjson.dumps({"level_context": ctx, "anchor": {}}))
    assert execute(_parse([str(d), "--json"])) == 0
    captured = capsys.readouterr()
    [s] = json.loads(captured.out)
    assert s["recomputed"] is True and s["records_skipped"] == 1
    assert s["completed_requests"] == 50 and s["ttft_ms"]["p50"] == pytest.approx(12.5)
    assert "recomputed from records.jsonl" in captured.err and "truncated" in captured.err


def test_cli_errors_name_the_directory(tmp_path, capsys):
    with pytest.raises(UsageError, match="missing: not a run directory"):
        execute(_parse([str(tmp_path / "missing")]))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="empty: no summary.json or records.jsonl"):
        execute(_parse([str(empty)]))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "summary.json").write_text("{not json")
    with pytest.raises(UsageError, match="summary.json: not valid JSON"):
        execute(_parse([str(bad)]))
    (bad / "summary.json").unlink()
    (bad / "records.jsonl").write_text("")
    with pytest.raises(UsageError, match="no summary.json or config.json"):
        execute(_parse([str(bad)]))
    (bad / "config.json").write_text('{"other": 1}')
    with pytest.raises(UsageError, match="no 'level_context'"):
        execute(_parse([str(bad)]))
    # wired into the loadgen command: one error line, exit code 2
    assert cli_main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("loadgen report: error:")


# -- issue 14: client cancellations, ramps and reasoning models ------------------------------------------------
def _reasoning_records(n: int = 100) -> list[RequestRecord]:
    """10 ms apart, 10 tokens each, the first 6 reasoning: TTFRT 20 ms, TTFAT 40..48 ms (44 ms median); every
    tenth request abandoned by the client after 3 tokens (status cancelled_by_client, not an error)."""
    out = []
    for i in range(n):
        sched = int(i * 10 * MS)
        answer_at = 40_000 + (i % 5) * 2000  # µs after issue
        offs = [20_000 + j * 2000 for j in range(6)] + [answer_at + j * 2000 for j in range(4)]
        r = RequestRecord(index=i, scheduled_ns=sched, issued_ns=sched, end_ns=sched + offs[-1] * 1000,
                          chunk_offsets_us=offs, chunk_tokens=[1] * 10, status="ok", max_tokens=10,
                          input_tokens=20, first_reasoning_ns=sched + offs[0] * 1000,
                          first_answer_ns=sched + answer_at * 1000, reasoning_tokens=6)
        if i % 10 == 3:
            r.status, r.cancel_after_s, r.end_ns = "cancelled_by_client", 0.025, sched + 25 * MS
            r.chunk_offsets_us, r.chunk_tokens, r.first_answer_ns = offs[:3], [1] * 3, None
        out.append(r)
    return out


_EXTRA = {"ramp": {"ramp_s": 5.0, "start_rate_rps": 1.0, "requests": 22},
          "cancel": {"rate": 0.1, "after": "25ms", "mean_after_s": 0.025}}


def _issue14_summary(name: str = "reasoning") -> dict:
    return summarize(_reasoning_records(), _ctx(name, 100.0, extra=dict(_EXTRA)))


def test_cancellations_ramp_and_reasoning_are_in_the_report():
    s = _issue14_summary()
    assert s["cancelled_by_client_count"] == 10 and s["error_count"] == 0 and s["completed_requests"] == 90
    text = _render([s], 200)
    # beside the other request states, in a group of their own: the errors column still says 0
    head = next(line for line in text.splitlines() if "measured" in line and "cancelled" in line)
    assert head.index("short") < head.index("cancelled") < head.index("errors, req")
    assert re.search(r"^reasoning\s+100\s+90\s+0\s+0\s+0\.0\s+10\s+10\.0\s+0\s+yes$", text, re.M)
    # TTFRT p50 p90 p99, TTFAT p50 p90 p99, reasoning and answer tokens, the reasoning share of the output
    assert "Reasoning model (completed requests)" in text
    assert re.search(r"^reasoning\s+20\.0\s+20\.0\s+20\.0\s+44\.0\s+48\.0\s+48\.0\s+540\s+360\s+60\.0$", text, re.M)
    assert "Ramp: 1 -> 100 req/s over 5 s (22 requests), excluded from the window" in text
    assert "Cancellation: 10% of requests abandoned 25ms after issue (cancelled by client, not errors)" in text
    # several levels: each line names its level
    two = _render([s, _issue14_summary("other")], 120)
    assert "Ramp of reasoning: 1 -> 100 req/s" in two and "Cancellation of other: 10%" in two
    # token counts are whole numbers, however few
    few = summarize(_reasoning_records(8), _ctx("few", 100.0))
    assert re.search(r"^few(\s+[\d.]+){6}\s+42\s+28\s+60\.0$", _render([few], 200), re.M)


def test_a_level_without_them_shows_none_of_them(summaries):
    text = _render(summaries, 200)
    for absent in ("cancelled", "Reasoning model", "TTFRT", "TTFAT", "Ramp", "Cancellation"):
        assert absent not in text[:text.index("Definitions")], absent
    # planned cancellations that never fired still get their (zero) columns
    s = dict(summaries[0], extra={"cancel": _EXTRA["cancel"]})
    assert re.search(r"^rate-100\s+100\s+100\s+0\s+0\s+0\.0\s+0\s+0\.0\s+0\s+yes$", _render([s], 200), re.M)


def test_loadgen_report_rerenders_them_from_a_crashed_runs_records(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one row per level, whatever the terminal
    d = tmp_path / "crashed"
    d.mkdir()
    (d / "records.jsonl").write_bytes(b"".join(orjson.dumps(r.to_dict()) + b"\n" for r in _reasoning_records()))
    ctx = _ctx("crashed", 100.0, extra=dict(_EXTRA)).to_dict()
    (d / "config.json").write_bytes(orjson.dumps({"level_context": ctx, "anchor": {}}))
    assert execute(_parse([str(d)])) == 0
    out = capsys.readouterr().out
    assert re.search(r"^crashed\s+20\.0\s+20\.0\s+20\.0\s+44\.0\s+48\.0\s+48\.0\s+540\s+360\s+60\.0$", out, re.M)
    assert re.search(r"^crashed\s+100\s+90\s+0\s+0\s+0\.0\s+10\s+10\.0\s+0\s+yes$", out, re.M)
    assert "Ramp: 1 -> 100 req/s over 5 s" in out and "Cancellation: 10% of requests" in out
