"""``loadgen traces info``: the command on a file, and on a replay's run directory (schedule vs what was sent)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson
import pytest

from loadgen.cli import main
from loadgen.core.records import STATUS_DROPPED, STATUS_OK, RequestRecord
from loadgen.errors import UsageError
from loadgen.traces.info import TraceStats, run_dir_info, stats_of_arrays

EXAMPLES = Path(__file__).resolve().parents[1] / "traces"


def test_info_command_on_files(capsys):
    assert main(["traces", "info", str(EXAMPLES / "example_bursty.csv"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["requests"] == 85 and res["source"]["format"] == "azure"
    assert res["interarrival_cv"] > 1.2  # Markov-modulated bursts: burstier than Poisson
    assert main(["traces", "info", "example-generic"]) == 0  # a bundled example by name, columns from the catalog
    out = capsys.readouterr().out
    assert "dispersion 1s" in out and "mean rate req/s" in out and "93" in out
    assert main(["traces", "info", str(EXAMPLES / "example_generic.csv")]) == 2
    assert "--trace-columns" in capsys.readouterr().err
    assert main(["traces"]) == 2


def test_streaming_merge_equals_one_batch():
    rng = np.random.default_rng(1)
    t = np.cumsum(rng.exponential(0.05, 10_000) * 1e9).astype(np.int64)
    a, b = rng.integers(1, 5000, 10_000), rng.integers(1, 800, 10_000)
    whole = stats_of_arrays(t, a, b)
    st = TraceStats()
    for k in range(0, 10_000, 777):
        st.add_batch(t[k:k + 777], a[k:k + 777], b[k:k + 777])
    assert st.result() == whole
    assert whole["input_tokens"]["p50"] == pytest.approx(np.percentile(a, 50))
    assert whole["output_tokens"]["p99"] == pytest.approx(np.percentile(b, 99))


def _run_dir(tmp_path: Path) -> Path:
    rd = tmp_path / "run"
    rd.mkdir()
    rng = np.random.default_rng(2)
    sched = np.cumsum(rng.exponential(0.1, 400) * 1e9).astype(np.int64)
    lines = []
    for i, s in enumerate(sched.tolist()):
        if i == 7:
            rec = RequestRecord(index=i, scheduled_ns=s, status=STATUS_DROPPED, input_tokens=50, max_tokens=9)
        else:
            rec = RequestRecord(index=i, scheduled_ns=s, issued_ns=s + 200_000 + (i % 10) * 10_000, end_ns=s + 10**7,
                                chunk_offsets_us=[1000, 2000], chunk_tokens=[1, 1], status=STATUS_OK,
                                input_tokens=50 + i, max_tokens=9)
        lines.append(orjson.dumps(rec.to_dict()))
    (rd / "records.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    trace = {"path": "x.csv", "format": "azure", "describe": ["trace replay: x.csv"],
             "source_stats": stats_of_arrays(sched, np.full(400, 5), np.full(400, 9)),
             "prefix_reuse": {"reused_block_share": 0.5, "reused_token_share": 0.4}}
    (rd / "config.json").write_bytes(orjson.dumps({"level_context": {"extra": {"trace": trace}}}))
    return rd


def test_run_dir_info_compares_schedule_and_sent(tmp_path, capsys):
    rd = _run_dir(tmp_path)
    res = run_dir_info(rd)
    assert res["schedule"]["requests"] == 400 and res["sent"]["requests"] == 399 and res["not_sent"] == 1
    assert res["issue_error_ms"]["p50"] == pytest.approx(0.24, abs=0.011)
    assert res["issue_error_ms"]["max"] == pytest.approx(0.29)
    assert res["sent"]["interarrival_cv"] == pytest.approx(res["schedule"]["interarrival_cv"], rel=0.01)
    assert res["sent"]["output_tokens"]["max"] == 2  # what was received, not what was asked
    assert res["schedule"]["prefix_reuse"]["reused_block_share"] == 0.5
    assert main(["traces", "info", str(rd)]) == 0
    out = capsys.readouterr().out
    assert "trace replay: x.csv" in out and "schedule" in out and "sent" in out and "issue error" in out
    with pytest.raises(UsageError, match="no records.jsonl"):
        run_dir_info(tmp_path)
