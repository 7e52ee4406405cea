"""``loadgen run --trace`` end to end against a stamping server in its own process: every request arrives once, on
time (issue error measured at the server on the shared monotonic clock), the replay keeps the trace's shape
(``traces info`` of the run), and the run directory states how the trace was replayed.

The strict targets (p99 <= 2 ms at speed-up 1 and <= 5 ms at 10 over 5 minutes) are measured by
benchmarks/trace_replay_fidelity.py (figures in benchmarks/TRACE_REPLAY.md). Arrival is the kernel's receive
stamp at the server. This 2-core machine is shared with other jobs; 10 runs of each configuration below gave
p50 0.08-0.22 ms and p99 0.30-1.7 ms at load average 0.5-1; an earlier series at load 1.4-3 (server-loop stamps,
which add the server's wake-up) had p99 0.5-5.3 ms and one run at 26.6 ms. So: p50 <= 3 ms (a scheduling bug
shows there) and p99 <= 50 ms (no failure from a neighbour's CPU burst).
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from loadgen.cli import main
from loadgen.traces.fidelity import StampServer, issue_errors, run_replay
from loadgen.traces.info import run_dir_info

ROOT = Path(__file__).resolve().parents[1]
CONV = ROOT.parent / "shared" / "traces" / "azure-llm-2023" / "AzureLLMInferenceTrace_conv.csv"
P50_BOUND_MS = 3.0
P99_BOUND_MS = 50.0


def _only_dir(out: Path) -> Path:
    dirs = [p for p in out.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


@pytest.mark.parametrize("window,speedup", [("600:6", 1), ("0:60", 10)])
def test_replay_arrives_on_time_and_keeps_the_trace_shape(tmp_path, window, speedup):
    with StampServer(tokens=2) as srv:
        run_dir = run_replay(srv.url, str(CONV), tmp_path, ["--window", window, "--speedup", str(speedup)])
        stamps = srv.stamps()
    res = issue_errors(run_dir, stamps)
    assert res["requests"] >= 20
    assert res["matched"] == res["requests"] == len(stamps) and res["unmatched"] == 0  # each request once
    assert res["min_ms"] > 0  # never early
    assert res["p50_ms"] <= P50_BOUND_MS and res["p99_ms"] <= P99_BOUND_MS, res
    info = run_dir_info(run_dir)
    sched, sent = info["schedule"], info["sent"]
    assert sent["requests"] == sched["requests"] == res["requests"]
    assert sent["interarrival_cv"] == pytest.approx(sched["interarrival_cv"], rel=0.05)
    assert sent["index_of_dispersion"]["1s"] == pytest.approx(sched["index_of_dispersion"]["1s"], rel=0.1)
    assert sent["input_tokens"] == sched["input_tokens"]
    summary = orjson.loads((run_dir / "summary.json").read_bytes())
    trace = summary["extra"]["trace"]
    assert trace["format"] == "azure" and trace["speedup"] == speedup and trace["requests"] == res["requests"]
    assert summary["mode"] == "open_loop" and summary["arrival"]["kind"] == "trace"
    assert summary["target_rate_rps"] == pytest.approx(trace["requests"] / trace["replay_window_s"], rel=1e-6)
    assert trace["replay_window_s"] == pytest.approx(float(window.split(":")[1]) / speedup)
    report = (run_dir / "report.txt").read_text()
    assert "trace replay:" in report and f"speed-up {speedup}x" in report


def test_mooncake_replay_scaled_to_a_short_context_with_spread_buckets(tmp_path, capsys):
    with StampServer(tokens=2) as srv:
        rc = main(["run", "--url", srv.url, "--model", "m", "--trace", "example-prefix", "--speedup", "24",
                   "--max-input-tokens", "2048", "--length-mode", "scale", "--trace-buckets", "spread",
                   "--no-live", "--out-dir", str(tmp_path)])
        stamps = srv.stamps()
    assert rc == 0, capsys.readouterr().err
    run_dir = _only_dir(tmp_path)
    assert len(stamps) == 60
    trace = orjson.loads((run_dir / "summary.json").read_bytes())["extra"]["trace"]
    assert trace["lengths"]["input_scale"] < 1 and trace["lengths"]["block_tokens"] < 512
    assert trace["buckets"]["mode"] == "spread" and trace["buckets"]["bucketed"]
    assert 0.3 < trace["prefix_reuse"]["reused_block_share"] < 0.8
    records = [orjson.loads(x) for x in (run_dir / "records.jsonl").read_bytes().splitlines()]
    assert max(r["input_tokens"] for r in records) <= 2048
    out = capsys.readouterr().out
    assert "spread uniformly over each bucket" in out and "input scaled by" in out


def test_synthetic_arrival_model_run(tmp_path, capsys):
    with StampServer(tokens=2) as srv:
        rc = main(["run", "--url", srv.url, "--model", "m", "--arrival", "mmpp:5,60@1s,0.5s", "--duration", "2",
                   "--input-tokens", "16", "--output-tokens", "2", "--no-live", "--out-dir", str(tmp_path)])
        stamps = srv.stamps()
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((_only_dir(tmp_path) / "summary.json").read_text())
    assert summary["arrival"]["kind"] == "mmpp" and summary["extra"]["synthetic"]["rates_rps"] == [5.0, 60.0]
    assert summary["mode"] == "open_loop" and len(stamps) == summary["records_total"] > 5


@pytest.mark.parametrize("argv,message", [
    (["--trace", str(CONV), "--rate", "5"], "--rate does not apply to --trace"),
    (["--rate", "5", "--duration", "1", "--speedup", "2"], "--speedup applies to trace replay"),
    (["--trace", str(ROOT / "nope.csv")], "--trace: no file at"),
    (["--trace", str(CONV), "--window", "99999:10"], "no trace rows"),
    (["--trace", str(CONV), "--trace-buckets", "spread"], "not in 3 s buckets"),
    (["--trace", "azure-code-2024-week"], "loadgen traces fetch azure-code-2024-week"),
])
def test_trace_flags_misuse_is_one_clear_line(tmp_path, capsys, argv, message):
    rc = main(["run", "--url", "http://127.0.0.1:9", "--model", "m", "--no-live", "--out-dir", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.iterdir())
