"""The level's time series (``loadgen.core.timeseries``): exact per-window figures on records with known timing,
events placed where they were observed, windows merged (exactly) to stay at most 600 for a long run, and memory
that does not grow with the number of records."""

from __future__ import annotations

import random
import re
import tracemalloc
from pathlib import Path

import orjson
import pytest

from loadgen.core.records import RequestRecord
from loadgen.core.summary import LevelContext, load_records, summarize
from loadgen.core.timeseries import level_timeseries

MS = 1_000_000
S = 1_000_000_000
DOC = Path(__file__).resolve().parents[1] / "docs" / "SUMMARY_SCHEMA.md"


def ok(i: int, sched_ns: int, ttft_ms: int = 20, gap_ms: int = 10, tokens: int = 4, lag_ms: int = 1,
       tail_ms: int = 1) -> RequestRecord:
    """Completed: issued ``lag_ms`` late, one token per chunk from ``ttft_ms`` on, ``gap_ms`` apart; the
    response ends ``tail_ms`` after the last token."""
    issued = sched_ns + lag_ms * MS
    offs = [(ttft_ms + j * gap_ms) * 1000 for j in range(tokens)]
    return RequestRecord(index=i, scheduled_ns=sched_ns, issued_ns=issued, end_ns=issued + (offs[-1] + tail_ms * 1000)
                         * 1000, chunk_offsets_us=offs, chunk_tokens=[1] * tokens, status="ok", max_tokens=tokens,
                         input_tokens=100)


def known_level() -> list[RequestRecord]:
    """Three seconds at 10 req/s; TTFT 20 ms and E2E 50 ms, except 50 / 80 ms in the third second; plus one
    timeout that spans the three windows, one drop and one request cancelled in flight."""
    recs = [ok(i, i * 100 * MS, ttft_ms=50 if i >= 20 else 20) for i in range(30)]
    recs.append(RequestRecord(index=30, scheduled_ns=500 * MS, issued_ns=500 * MS, end_ns=2500 * MS,
                              status="error", error_kind="timeout"))
    recs.append(RequestRecord(index=31, scheduled_ns=1500 * MS, status="dropped"))
    recs.append(RequestRecord(index=32, scheduled_ns=2000 * MS, issued_ns=2000 * MS, status="cancelled"))
    return recs


def test_exact_figures_per_window():
    ts = level_timeseries(known_level())
    assert ts["window_s"] == 1.0 and ts["windows"] == 3 and ts["t_s"] == [0.0, 1.0, 2.0]
    assert ts["end_s"] == pytest.approx(2.982)  # the last request: scheduled 2.9 s, +1 ms lag, +81 ms
    assert ts["scheduled_rps"] == [11.0, 11.0, 11.0]  # 10 + the timeout; 10 + the drop; 10 + the cancelled
    assert ts["issued_rps"] == [11.0, 10.0, 11.0]
    assert ts["completed_rps"] == [10.0, 10.0, 10.0]
    assert ts["output_tps"] == [40.0, 40.0, 40.0]
    assert ts["dropped"] == [0, 1, 0]
    assert ts["errors_by_kind"] == {"timeout": [0, 0, 1]}  # counted when the error was seen
    # in flight: ten requests x 51 ms (81 ms in the third second), the timeout's 0.5 + 1 + 0.5 s, and the
    # cancelled request from 2.0 s to the series' end at 2.982 s
    assert ts["in_flight"] == pytest.approx([0.51 + 0.5, 0.51 + 1.0, 0.81 + 0.5 + 0.982], abs=1e-3)
    assert ts["ttft_ms"] == {"p50": [20.0, 20.0, 50.0], "p90": [20.0, 20.0, 50.0], "p99": [20.0, 20.0, 50.0]}
    assert ts["e2e_ms"]["p50"] == [50.0, 50.0, 80.0]
    assert ts["itl_ms"]["p99"] == [10.0, 10.0, 10.0]
    assert ts["schedule_lag_p99_ms"] == [1.0, 1.0, 1.0]


def test_each_value_lands_where_it_was_observed():
    """A long answer's tokens and ITL values fall in the windows where they arrived (a chunk of k tokens gives k
    values of gap / k); its TTFT in the first token's window, its E2E and completion at its end."""
    r = RequestRecord(index=0, scheduled_ns=0, issued_ns=0, end_ns=2_100 * MS, chunk_offsets_us=[500_000, 1_500_000,
                      2_050_000], chunk_tokens=[1, 3, 2], status="ok", max_tokens=6)
    ts = level_timeseries([r])
    assert ts["output_tps"] == [1.0, 3.0, 2.0]
    assert ts["ttft_ms"]["p50"] == [500.0, None, None]
    assert ts["itl_ms"]["p50"] == [None, 333.3, 275.0]  # 1000 ms / 3 tokens; 550 ms / 2 tokens
    assert ts["e2e_ms"]["p50"] == [None, None, 2050.0] and ts["completed_rps"] == [0.0, 0.0, 1.0]
    assert ts["in_flight"] == pytest.approx([1.0, 1.0, 0.1])


def test_percentiles_of_varied_values_are_within_the_histograms_bound():
    recs = [ok(i, i * 5 * MS, ttft_ms=5 + i) for i in range(100)]  # TTFT 5..104 ms, all in the first second
    ts = level_timeseries(recs)
    for p, exact in (("p50", 54.5), ("p90", 94.1), ("p99", 103.01)):
        assert ts["ttft_ms"][p][0] == pytest.approx(exact, rel=0.016)


def test_totals_agree_with_the_summary():
    recs = [ok(i, i * 37 * MS, tokens=1 + i % 7) for i in range(300)]
    ts = level_timeseries(recs)
    s = summarize(recs, LevelContext(target_rate=27.0, run_end_ns=300 * 37 * MS))
    assert sum(ts["output_tps"]) * ts["window_s"] == s["output_tokens_total"]
    assert sum(ts["completed_rps"]) * ts["window_s"] == s["completed_requests"]


def test_order_does_not_matter():
    recs = known_level() + [ok(100 + i, i * 7 * S) for i in range(200)]  # long enough to merge windows
    shuffled = recs[:]
    random.Random(3).shuffle(shuffled)
    assert level_timeseries(shuffled) == level_timeseries(recs)


def test_a_long_run_keeps_at_most_600_windows_and_merging_is_exact():
    recs = [ok(i, i * 10 * S + (i % 5) * 150 * MS, ttft_ms=10 + i % 13) for i in range(1080)]  # three hours
    ts = level_timeseries(recs)
    assert ts["windows"] <= 600 and ts["window_s"] == 32.0  # 1 s doubled until 10,800 s fit in 600 windows
    assert len(ts["t_s"]) == len(ts["in_flight"]) == len(ts["ttft_ms"]["p99"]) == ts["windows"]
    direct = level_timeseries(recs, window_s=32.0, max_windows=10**6)
    assert direct == ts


def test_empty_level():
    ts = level_timeseries([])
    assert ts["windows"] == 0 and ts["t_s"] == [] and ts["errors_by_kind"] == {}


def _write_records(path: Path, n: int, span_s: int) -> None:
    with open(path, "wb") as f:
        for i in range(n):
            sched = i * span_s * S // n
            f.write(orjson.dumps({"index": i, "scheduled_ns": sched, "issued_ns": sched + 200_000,
                                  "end_ns": sched + 200_000 + 900 * MS, "status": "ok", "max_tokens": 16,
                                  "chunk_offsets_us": [50_000 + 50_000 * j for j in range(16)],
                                  "chunk_tokens": [1] * 16, "input_tokens": 100 + i % 50}) + b"\n")


def _peak(path: Path) -> tuple[int, dict]:
    tracemalloc.start()
    try:
        ts = level_timeseries(load_records(path))
        return tracemalloc.get_traced_memory()[1], ts
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_records(tmp_path: Path):
    """Four times the records over the same two hours: the same windows, hardly more memory (the records are
    streamed; only per-window counters and histograms are kept)."""
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    _write_records(small, 20_000, 7200)
    _write_records(large, 80_000, 7200)
    peak_small, ts_small = _peak(small)
    peak_large, ts_large = _peak(large)
    assert ts_small["windows"] == ts_large["windows"] <= 600
    assert sum(ts_large["completed_rps"]) * ts_large["window_s"] == 80_000
    assert peak_large < 1.3 * peak_small, (peak_small, peak_large)
    assert peak_large < 40e6, peak_large  # 450 windows x 4 histograms x 8 KiB, and the blocks


def test_schema_doc_lists_every_key(tmp_path: Path):
    """Every key of timeseries.json and of summary["timeseries"] (its pointer) is in docs/SUMMARY_SCHEMA.md."""
    from loadgen.report_html.data import load_timeseries, save_timeseries

    documented = set(re.findall(r"`([a-z0-9_.]+)`", DOC.read_text()))
    ts = level_timeseries(known_level())
    keys = set(ts) | set(ts["ttft_ms"]) | set(ts["errors_by_kind"])
    assert sorted(keys - documented) == []
    pointer = save_timeseries(tmp_path, ts)
    assert sorted({"timeseries", *pointer, pointer["file"]} - documented) == []
    assert load_timeseries(tmp_path) == ts  # the file round-trips
