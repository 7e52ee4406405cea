"""summarize(): window, warm-up/cool-down exclusion, rates, goodput, errors, validity; records.jsonl loading."""

from __future__ import annotations

import json
import re
from pathlib import Path

import orjson
import pytest

from loadgen.core.records import RequestRecord
from loadgen.core.summary import LevelContext, load_records, summarize
from loadgen.errors import UsageError

MS = 1_000_000
DOC = Path(__file__).resolve().parents[1] / "docs" / "SUMMARY_SCHEMA.md"


def ok(i: int, sched_ms: float, lag_ms: float = 0.0, ttft_ms: float = 10.0, gap_ms: float = 5.0, tokens: int = 4,
       max_tokens: int | None = None, input_tokens: int = 100, server_out: int | None = None) -> RequestRecord:
    """A completed request whose tokens arrive one per chunk, ``gap_ms`` apart after ``ttft_ms``."""
    sched = int(sched_ms * MS)
    issued = sched + int(lag_ms * MS)
    offs = [int((ttft_ms + j * gap_ms) * 1000) for j in range(tokens)]
    return RequestRecord(
        index=i, scheduled_ns=sched, issued_ns=issued, end_ns=issued + (offs[-1] + 1000) * 1000,
        chunk_offsets_us=offs, chunk_tokens=[1] * tokens, status="ok",
        max_tokens=tokens if max_tokens is None else max_tokens, input_tokens=input_tokens,
        server_output_tokens=server_out,
    )


def open_loop(n: int = 200, period_ms: float = 10.0, **kw) -> list[RequestRecord]:
    return [ok(i, i * period_ms, **kw) for i in range(n)]


def test_basic_open_loop_rates_and_latencies():
    records = open_loop(100)  # 100 req/s for 1 s, each 4 tokens: TTFT 10, then 5 ms gaps
    s = summarize(records, LevelContext(name="a", target_rate=100.0, run_end_ns=1000 * MS))
    assert s["window_s"] == pytest.approx(1.0)
    assert s["measured_requests"] == s["completed_requests"] == 100
    assert s["request_throughput_rps"] == pytest.approx(100.0)
    assert s["output_token_throughput_tps"] == pytest.approx(400.0)
    assert s["input_token_throughput_tps"] == pytest.approx(10_000.0)
    assert s["total_token_throughput_tps"] == pytest.approx(10_400.0)
    assert s["achieved_rate_rps"] == pytest.approx(100.0)
    assert s["achieved_ratio"] == pytest.approx(1.0)
    assert s["ttft_ms"]["p50"] == pytest.approx(10.0)
    assert s["e2e_ms"]["p99"] == pytest.approx(25.0)
    assert s["tpot_ms"]["mean"] == pytest.approx(5.0)
    assert s["itl_ms"]["count"] == 300 and s["itl_ms"]["p50"] == pytest.approx(5.0)
    # each request is in flight 26 ms (issue to end); the last two are cut by the window end at 1000 ms
    assert s["mean_running_requests"] == pytest.approx((98 * 26 + 20 + 10) / 1000)
    assert s["goodput_rps"] is None  # no SLO given
    assert s["valid"] is True and s["warnings"] == []
    assert s["energy"] is None
    json.dumps(s, allow_nan=False)  # strict JSON: no NaN, no numpy types


def test_warmup_seconds_and_cooldown_exclusion():
    records = open_loop(200)  # schedule 0..1990 ms, issuing ends at 2000 ms
    ctx = LevelContext(target_rate=100.0, run_end_ns=2000 * MS, warmup_s=0.5, cooldown_s=0.2)
    s = summarize(records, ctx)
    assert s["excluded_warmup"] == 50  # scheduled before 500 ms
    assert s["excluded_cooldown"] == 19  # scheduled after 1800 ms: 1810..1990
    assert s["measured_requests"] == 131  # 500..1800 inclusive
    assert (s["window_start_s"], s["window_end_s"]) == (pytest.approx(0.5), pytest.approx(1.8))
    assert s["request_throughput_rps"] == pytest.approx(131 / 1.3, abs=1e-6)


def test_warmup_by_request_count_starts_the_window_at_the_first_measured_request():
    s = summarize(open_loop(100), LevelContext(target_rate=100.0, run_end_ns=1000 * MS, warmup_requests=20))
    assert s["excluded_warmup"] == 20
    assert s["window_start_s"] == pytest.approx(0.2)
    assert s["measured_requests"] == 80
    assert s["request_throughput_rps"] == pytest.approx(80 / 0.8)


def test_closed_loop_window_ends_at_last_completion():
    records = [ok(i, (i // 4) * 30.0) for i in range(40)]  # 4 users, back to back 30 ms apart
    s = summarize(records, LevelContext(concurrency=4))
    assert s["mode"] == "closed_loop" and s["target_rate_rps"] is None
    assert s["window_end_s"] == pytest.approx((9 * 30 + 26) / 1000)  # last end: sched 270 + 26 ms
    assert s["achieved_ratio"] is None
    assert s["request_throughput_rps"] == pytest.approx(40 / 0.296, abs=1e-6)


def test_from_scheduled_latencies_include_client_lag():
    records = [ok(i, i * 10.0, lag_ms=3.0 if i % 2 else 0.0) for i in range(100)]
    s = summarize(records, LevelContext(target_rate=100.0, run_end_ns=1000 * MS))
    assert s["ttft_ms"]["max"] == pytest.approx(10.0)
    assert s["ttft_from_scheduled_ms"]["max"] == pytest.approx(13.0)
    assert s["e2e_from_scheduled_ms"]["max"] == pytest.approx(28.0)
    assert s["schedule_lag_ms"]["p50"] == pytest.approx(1.5)
    assert s["late_count"] == 50 and s["late_share"] == pytest.approx(0.5)  # late: lag > 1 ms


def test_goodput_from_issued_and_from_scheduled():
    records = []
    for i in range(100):
        ttft = 40.0 if i < 30 else 10.0  # 30 requests miss ttft <= 20 ms
        lag = 15.0 if 30 <= i < 50 else 0.0  # 20 more miss it only when measured from the schedule
        records.append(ok(i, i * 10.0, ttft_ms=ttft, lag_ms=lag))
    ctx = LevelContext(target_rate=100.0, run_end_ns=1000 * MS, slo={"ttft": 0.020}, max_schedule_lag_p99_ms=50)
    s = summarize(records, ctx)
    assert s["goodput_rps"] == pytest.approx(70.0)
    assert s["goodput_from_scheduled_rps"] == pytest.approx(50.0)
    assert s["goodput_ratio"] == pytest.approx(0.7)


def test_errors_by_kind_excluded_from_latency_but_in_error_rate():
    records = open_loop(100)
    bad = records[10]
    bad.status, bad.error_kind = "error", "stream_error"  # error after HTTP 200, chunks already received
    bad.chunk_offsets_us = [10_000, 900_000]
    bad.chunk_tokens = [1, 1]
    for r in records[20:23]:
        r.status, r.error_kind, r.chunk_offsets_us, r.chunk_tokens = "error", "http_status", [], []
        r.http_status = 503
    records[30].status, records[30].error_kind = "error", "timeout"
    records[40].status, records[40].issued_ns, records[40].end_ns = "dropped", None, None
    records[41].status, records[41].end_ns = "cancelled", None
    s = summarize(records, LevelContext(target_rate=100.0, run_end_ns=1000 * MS))
    assert s["errors_by_kind"]["stream_error"] == 1
    assert s["errors_by_kind"]["http_status"] == 3
    assert s["errors_by_kind"]["timeout"] == 1
    assert s["error_count"] == 5
    assert s["dropped_count"] == 1 and s["cancelled_count"] == 1
    assert s["completed_requests"] == 93
    assert s["error_rate"] == pytest.approx(5 / 98, abs=1e-6)
    assert s["error_rate_by_kind"]["http_status"] == pytest.approx(3 / 98, abs=1e-6)
    assert s["itl_ms"]["max"] == pytest.approx(5.0)  # the errored stream's 890 ms gap is not an ITL sample
    assert s["itl_ms"]["count"] == 93 * 3
    assert s["issued_requests"] == 99  # the dropped one was never issued
    assert s["achieved_rate_rps"] == pytest.approx(99.0)


def test_short_outputs_and_token_count_mismatch():
    records = open_loop(100)
    for r in records[:10]:
        r.max_tokens = 8  # got 4
    records[50].server_output_tokens = 6  # server says 6, stream carried 4
    records[51].server_output_tokens = 4
    s = summarize(records, LevelContext(target_rate=100.0, run_end_ns=1000 * MS))
    assert s["short_output_count"] == 10 and s["short_output_share"] == pytest.approx(0.1)
    assert s["errors_by_kind"]["short_output"] == 10
    assert s["token_count_mismatches"] == 1 and s["server_token_counts"] == 2
    assert s["output_tokens_total"] == 99 * 4 + 6
    assert s["valid"] is False
    assert any("fewer output tokens than asked" in w for w in s["warnings"])


def test_validity_warnings():
    records = open_loop(40, period_ms=25.0, lag_ms=0.0)  # 40 req/s scheduled...
    for r in records[1::2]:  # ...but the client dropped every other one: 20 req/s achieved
        r.issued_ns = r.end_ns = None
        r.chunk_offsets_us, r.chunk_tokens, r.status = [], [], "dropped"
    records[4].issued_ns += 30 * MS  # one request 30 ms late: p99 of lag above 10 ms
    ctx = LevelContext(target_rate=40.0, run_end_ns=1000 * MS,
                       client={"saturated": True, "saturation_reason": "event loop lag p99 25 ms"})
    s = summarize(records, ctx)
    text = " | ".join(s["warnings"])
    assert s["valid"] is False
    assert "achieved rate 20 req/s is 50.0% of the scheduled 40 req/s" in text
    assert "schedule lag p99" in text
    assert "only 20 completed requests" in text
    assert "client saturated: event loop lag p99 25 ms" in text
    assert s["client"]["saturated"] is True


def test_itl_past_the_exact_cap_is_marked_not_exact():
    s = summarize(open_loop(100), LevelContext(target_rate=100.0, run_end_ns=1000 * MS, itl_exact_cap=100))
    assert s["itl_ms"]["exact"] is False
    assert s["itl_ms"]["count"] == 300
    assert s["itl_ms"]["p50"] == pytest.approx(5.0, rel=2e-3)
    assert s["ttft_ms"]["exact"] is True


def test_context_errors():
    s = summarize(open_loop(50), LevelContext(cooldown_s=1.0, target_rate=100.0))  # interrupted: no run end
    assert s["valid"] is False and any("cool-down of 1 s not applied" in w for w in s["warnings"])
    assert s["measured_requests"] == 50 and s["window_end_s"] == pytest.approx(0.49)
    with pytest.raises(UsageError, match="unknown level_context key"):
        LevelContext.from_dict({"name": "x", "rate": 5})
    bad = ok(0, 0.0)
    bad.status = "finished"
    with pytest.raises(UsageError, match="unknown status"):
        summarize([bad], LevelContext())


def _write(path: Path, records: list[RequestRecord], tail: bytes = b"") -> None:
    with open(path, "wb") as fh:
        for r in records:
            fh.write(orjson.dumps(r.to_dict()) + b"\n")
        fh.write(tail)


def test_load_records_skips_a_truncated_last_line(tmp_path):
    records = open_loop(60)
    path = tmp_path / "records.jsonl"
    full = orjson.dumps(ok(60, 600.0).to_dict())
    _write(path, records, tail=full[: len(full) // 2])  # a crash mid-write
    loaded = load_records(path)
    s = summarize(loaded, LevelContext(target_rate=100.0, run_end_ns=600 * MS))
    assert loaded.skipped_lines == 1 and loaded.read == 60
    assert s["records_skipped"] == 1
    assert s["completed_requests"] == 60
    assert s["ttft_ms"]["p50"] == pytest.approx(10.0)
    same = summarize(records, LevelContext(target_rate=100.0, run_end_ns=600 * MS))
    assert {k: v for k, v in s.items() if k != "records_skipped"} == \
        {k: v for k, v in same.items() if k != "records_skipped"}


def test_load_records_refuses_a_corrupt_middle_line(tmp_path):
    path = tmp_path / "records.jsonl"
    _write(path, open_loop(3))
    lines = path.read_bytes().splitlines()
    path.write_bytes(lines[0] + b"\n{garbage\n" + lines[1] + b"\n")
    with pytest.raises(UsageError, match=r"records.jsonl:2: not a request record"):
        list(load_records(path))
    with pytest.raises(UsageError, match="cannot read records"):
        load_records(tmp_path / "missing.jsonl")


def _all_keys(summary: dict) -> set[str]:
    keys = set()
    for k, v in summary.items():
        keys.add(k)
        if isinstance(v, dict) and k not in ("arrival", "client", "extra", "slo_s"):
            keys.update(v)
    return keys


def test_schema_doc_lists_every_key():
    records = open_loop(100)
    records[3].status, records[3].error_kind = "error", "timeout"
    s = summarize(records, LevelContext(target_rate=100.0, run_end_ns=1000 * MS, slo={"ttft": 0.1}))
    documented = set(re.findall(r"`([a-z0-9_]+)`", DOC.read_text()))
    assert sorted(_all_keys(s) - documented) == []
