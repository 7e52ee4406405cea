"""Issue 14, client side: planned client cancellation, ramps before the measured window, and reasoning-model
timings. Pure parts only (delay forms, the seeded per-request plan, ramp offsets' shape, the closed loop's
staggered users on a fake clock, the OpenAI codec on canned SSE bytes, the summary's accounting); the same
features against the real embedded server are in ``test_cancel_ramp_reasoning_server.py``."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from loadgen.codecs.openai import OpenAIStreamParser
from loadgen.core.arrivals import (
    ArrivalSpec,
    Ramp,
    build_offsets,
    build_offsets_with_ramp,
    ramp_offsets,
    user_start_offsets,
)
from loadgen.core.cancel import CancellingSource, CancelPlan, check_cancel, parse_delay
from loadgen.core.clock import FakeClock
from loadgen.core.records import RequestRecord
from loadgen.core.slo import evaluate, parse_fail_on
from loadgen.core.summary import LevelContext, summarize
from loadgen.errors import UsageError
from loadgen.level.plan import level_context, plan_level
from loadgen.level.recorder import Recorder
from loadgen.runner.loop import LoadLoop, LoopSettings
from loadgen.scenario.check import build, resolve
from loadgen.transport.common import cancelled_by_client, finish_http_stream, wait_limit

MS = 1_000_000
S = 1_000_000_000


def scenario(**load):
    return resolve(build({"load": load}), check_paths=False)


# -- cancellation: the delay forms and the seeded plan -----------------------------------------------------------
def test_delay_forms_parse_and_bad_ones_name_the_flag():
    assert parse_delay("2s").quantile(0.7) == 2.0
    assert parse_delay("500ms").mean_s == 0.5
    u = parse_delay("uniform:1s,3s")
    assert (u.quantile(0.0), u.quantile(0.5), u.mean_s) == (1.0, 2.0, 2.0)
    e = parse_delay("exp:2s")
    assert e.quantile(0.5) == pytest.approx(2 * math.log(2))
    for bad, words in (("soon", "not a duration"), ("uniform:3s,1s", "below the low end"), ("exp:0", "positive"),
                       ("normal:1,2", "unknown form"), ("uniform:1s", "two durations"), ("", "empty")):
        with pytest.raises(UsageError, match="--cancel-after") as err:
            parse_delay(bad)
        assert words in str(err.value)


def test_cancel_flags_are_checked_together_before_anything_starts():
    assert check_cancel(None, None) is None and check_cancel(0.0, None) is None
    for rate, after, words in ((0.2, None, "needs --cancel-after"), (None, "2s", "applies with --cancel-rate"),
                               (1.5, "2s", "between 0 and 1"), (-0.1, "2s", "between 0 and 1")):
        with pytest.raises(UsageError, match=words):
            check_cancel(rate, after)
    with pytest.raises(UsageError, match="--cancel-rate 1.5"):
        scenario(rate=5, requests=10, cancel_rate=1.5, cancel_after="1s")


def test_the_plan_is_a_seeded_function_of_the_index():
    plan = CancelPlan(0.25, parse_delay("uniform:1s,2s"), seed=7)
    n = 20_000
    delays = [plan.delay_s(i) for i in range(n)]
    chosen = [d for d in delays if d is not None]
    # Binomial(20000, 0.25): sd 61; 5 sd either side.
    assert abs(len(chosen) - n * 0.25) < 5 * math.sqrt(n * 0.25 * 0.75)
    assert all(1.0 <= d <= 2.0 for d in chosen)
    assert abs(np.mean(chosen) - 1.5) < 0.02  # sd of the mean 0.289/sqrt(5000) = 0.004
    # The same answer whatever order the requests are built in (workers, Locust), another one for another seed.
    assert [plan.delay_s(i) for i in reversed(range(100))] == delays[:100][::-1]
    other = CancelPlan(0.25, parse_delay("uniform:1s,2s"), seed=8)
    assert [other.delay_s(i) for i in range(100)] != delays[:100]
    assert CancelPlan(1.0, parse_delay("exp:1s")).delay_s(3) is not None


def test_plan_level_gives_every_spec_its_delay_and_states_it():
    sc = scenario(rate=10, requests=200, cancel_rate=0.3, cancel_after="exp:2s", seed=4)
    plan = plan_level(sc)
    assert isinstance(plan.source, CancellingSource)
    delays = [plan.source.spec(i).cancel_after_s for i in range(200)]
    again = plan_level(sc)
    assert [again.source.spec(i).cancel_after_s for i in range(200)] == delays
    assert 30 < sum(d is not None for d in delays) < 90
    assert plan.extra["cancel"] == {"rate": 0.3, "after": "exp:2s", "mean_after_s": 2.0}
    assert any("30% of requests abandoned" in line for line in plan.describe)
    assert plan_level(scenario(rate=10, requests=20)).source.spec(0).cancel_after_s is None


def test_the_cancel_deadline_wins_only_when_it_comes_first():
    assert wait_limit(300.0, None) == (300.0, False)
    assert wait_limit(300.0, 2.0) == (2.0, True)
    assert wait_limit(1.0, 2.0) == (1.0, False)  # the request timeout comes first: a timeout error
    assert wait_limit(None, 2.0) == (2.0, True)
    assert wait_limit(None, None) == (None, False)


# -- cancellation: the summary keeps them apart ------------------------------------------------------------------
def ok(i: int, ttft_ms: float = 10.0) -> RequestRecord:
    sched = i * 10 * MS
    offs = [int(ttft_ms * 1000) + 2000 * k for k in range(4)]
    return RequestRecord(index=i, scheduled_ns=sched, issued_ns=sched, end_ns=sched + (offs[-1] + 1000) * 1000,
                         chunk_offsets_us=offs, chunk_tokens=[1] * 4, status="ok", max_tokens=4, input_tokens=8)


def test_cancelled_by_client_is_counted_apart_from_errors_and_latencies():
    records = [ok(i) for i in range(40)]
    for i in (3, 9, 27):  # abandoned after a very late first token: must not reach the TTFT percentiles
        r = records[i]
        r.chunk_offsets_us, r.chunk_tokens = [900_000], [1]
        r.cancel_after_s = 1.0
        cancelled_by_client(r)
    records[5].status, records[5].error_kind = "error", "timeout"
    s = summarize(records, LevelContext(target_rate=100.0, run_end_ns=400 * MS))
    assert s["cancelled_by_client_count"] == 3 and s["cancelled_by_client_share"] == pytest.approx(3 / 40)
    assert s["completed_requests"] == 36 and s["error_count"] == 1
    assert s["error_rate"] == pytest.approx(1 / 37, abs=1e-6)  # errors / (completed + errors): the 3 are neither
    assert s["ttft_ms"]["max"] == pytest.approx(10.0) and s["ttft_ms"]["count"] == 36
    assert s["cancelled_count"] == 0 and s["errors_by_kind"]["timeout"] == 1
    [(_, value, passed)] = evaluate(parse_fail_on("error_rate<5%"), s)
    assert passed and value == pytest.approx(1 / 37, abs=1e-6)
    assert records[3].status == "cancelled_by_client" and "--cancel-after" in records[3].error
    assert RequestRecord.from_dict(orjson.loads(orjson.dumps(records[3].to_dict()))) == records[3]


# -- ramps ------------------------------------------------------------------------------------------------------
def test_a_poisson_ramp_rises_linearly_and_keeps_its_count():
    spec = ArrivalSpec(kind="poisson", rate=200.0, duration_s=5.0, seed=11)
    ramp = Ramp(10.0)
    head = ramp_offsets(spec, ramp)
    assert len(head) == round(200 / 2 * 10)  # the area under the rate line, exactly (count = exact)
    assert np.all(np.diff(head) >= 0) and head[0] >= 0 and head[-1] < 10 * S
    # With the rate rising from 0, a quarter of the ramp's arrivals fall in its first half (Binomial sd 13.7).
    first_half = int((head < 5 * S).sum())
    assert abs(first_half - 250) < 5 * math.sqrt(1000 * 0.25 * 0.75)
    counts, _ = np.histogram(head, bins=5, range=(0, 10 * S))
    expected = [40, 120, 200, 280, 360]  # ∫ of 20 t over each 2 s bin
    assert all(abs(c - e) < 5 * math.sqrt(e) for c, e in zip(counts, expected, strict=True))
    assert np.array_equal(ramp_offsets(spec, ramp), head)  # seeded
    assert not np.array_equal(ramp_offsets(ArrivalSpec(kind="poisson", rate=200.0, duration_s=5.0, seed=12), ramp),
                              head)


def test_the_whole_schedule_is_the_ramp_then_the_measured_schedule_shifted():
    spec = ArrivalSpec(kind="constant", rate=10.0, duration_s=3.0, seed=1)
    whole, n_ramp = build_offsets_with_ramp(spec, Ramp(4.0, start_rate=2.0))
    assert n_ramp == math.ceil((2 + 10) / 2 * 4)
    head, tail = whole[:n_ramp], whole[n_ramp:]
    assert np.array_equal(tail, build_offsets(spec) + 4 * S)
    # One arrival per unit of the cumulative rate Λ(t) = 2t + t² (2 -> 10 req/s over 4 s): arrival k at
    # Λ⁻¹(k) = sqrt(1 + k) - 1, so the gaps shrink as the rate rises.
    k = np.arange(n_ramp)
    assert np.abs(head - (np.sqrt(1 + k) - 1) * S).max() <= 1
    gaps = np.diff(head)
    assert np.all(gaps[1:] < gaps[:-1]) and gaps[-1] == pytest.approx(S / 10, rel=0.05)
    assert build_offsets_with_ramp(spec, None)[1] == 0


def test_a_ramp_is_excluded_from_the_measured_window_like_warm_up():
    sc = scenario(rate=20, duration=2, ramp="2s", ramp_start_rate=5, warmup="1s")
    plan = plan_level(sc)
    assert sc.warmup_s == 3.0 and plan.extra["ramp"]["requests"] == round((5 + 20) / 2 * 2)
    ctx = level_context(sc, plan, "http://x", "t")
    assert ctx.warmup_s == 3.0
    records = [RequestRecord(index=i, scheduled_ns=int(o), issued_ns=int(o), end_ns=int(o) + 20 * MS,
                             chunk_offsets_us=[5000, 10000], chunk_tokens=[1, 1], status="ok", max_tokens=2)
               for i, o in enumerate(plan.offsets)]
    ctx.run_end_ns = int(plan.offsets[-1]) + 1
    s = summarize(records, ctx)
    ramp_and_warm = int((plan.offsets < 3 * S).sum())
    assert s["excluded_warmup"] == ramp_and_warm and s["measured_requests"] == len(records) - ramp_and_warm
    assert s["window_start_s"] == 3.0 and s["extra"]["ramp"]["ramp_s"] == 2.0


def test_ramp_flags_are_checked():
    for load, words in (({"rate": 5, "requests": 10, "ramp_start_rate": 1}, "applies with --ramp"),
                        ({"concurrency": 2, "requests": 10, "ramp": "5s", "ramp_start_rate": 1}, "open loops"),
                        ({"rate": 5, "requests": 10, "ramp": "0s"}, "positive duration"),
                        ({"arrival": "piecewise:5@10s", "requests": 10, "ramp": "5s"}, "already sets the load")):
        with pytest.raises(UsageError, match=words):
            scenario(**load)


async def test_closed_loop_users_join_one_by_one_over_the_ramp(tmp_path):
    from tests.test_loop import FakeBackend, drive, read, source

    assert user_start_offsets(4, 2.0) == [0, S // 2, S, 3 * S // 2] and user_start_offsets(3, None) == [0, 0, 0]
    clock = FakeClock(auto_advance=False)
    backend = FakeBackend(clock, ttft_ns=10 * MS, itl_ns=10 * MS)  # 4 tokens: 40 ms a request
    rec = Recorder(tmp_path / "r.jsonl")
    settings = LoopSettings(offsets_ns=None, concurrency=4, duration_s=1.0, ramp_s=2.0, start_lead_ns=0,
                            drain_timeout_s=5.0)
    out = await drive(clock, LoadLoop(backend, source("4"), rec, clock, settings).run(), step_ns=MS)
    rec.close()
    recs = read(tmp_path / "r.jsonl")
    assert min(r.issued_ns for r in recs) == 0
    # User k joins at k x 0.5 s, so the users in flight rise 1, 2, 3, 4 over the ramp, then stay at 4.
    in_flight_at = [sum(1 for r in recs if r.issued_ns <= t * MS < r.end_ns) for t in (250, 750, 1250, 1750, 2500)]
    assert in_flight_at == [1, 2, 3, 4, 4]
    # The duration (1 s) runs after the ramp (2 s): issuing stops at 3 s.
    assert 2.9 * S < max(r.issued_ns for r in recs) < 3 * S <= out.issue_end_ns


# -- reasoning --------------------------------------------------------------------------------------------------
def sse(*objs) -> list[bytes]:
    return [b"data: " + (o if isinstance(o, bytes) else orjson.dumps(o)) + b"\n\n" for o in objs]


def delta(**d) -> dict:
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": d}]}


def test_the_codec_times_the_first_reasoning_and_the_first_answer_token():
    chunks = sse(delta(role="assistant"), delta(reasoning_content=" think"), delta(reasoning_content=" more"))
    chunks += [b"".join(sse(delta(reasoning_content=" again"), delta(content=" The")))]  # two events, one read
    chunks += sse(delta(content=" answer"),
                  {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 5,
                                            "completion_tokens_details": {"reasoning_tokens": 3}}}, b"[DONE]")
    times = [1000 * MS + k * 10 * MS for k in range(len(chunks))]
    rec = RequestRecord(index=0, scheduled_ns=0, issued_ns=0, max_tokens=5)
    finish_http_stream(rec, OpenAIStreamParser(chat=True), times, chunks, t0=1000 * MS)
    assert rec.status == "ok" and rec.chunk_tokens == [1, 1, 2, 1]  # TTFT: the first token of either kind
    assert rec.first_token_ns == 10 * MS and rec.first_reasoning_ns == 10 * MS
    assert rec.first_answer_ns == 30 * MS and rec.reasoning_tokens == 3 and rec.output_tokens == 5


def test_the_newer_reasoning_key_and_a_client_count_without_usage_details():
    chunks = sse(delta(reasoning=" a"), delta(reasoning=" b"), delta(content=" c"), b"[DONE]")
    rec = RequestRecord(index=0, scheduled_ns=0, issued_ns=0, max_tokens=3)
    finish_http_stream(rec, OpenAIStreamParser(chat=True), [5 * MS, 6 * MS, 9 * MS, 10 * MS], chunks, t0=0)
    assert (rec.first_reasoning_ns, rec.first_answer_ns, rec.reasoning_tokens) == (5 * MS, 9 * MS, 2)


def test_a_stream_without_reasoning_leaves_the_reasoning_fields_empty():
    rec = RequestRecord(index=0, scheduled_ns=0, issued_ns=0, max_tokens=2)
    finish_http_stream(rec, OpenAIStreamParser(chat=True), [MS, 2 * MS, 3 * MS],
                       sse(delta(content=" a"), delta(content=" b"), b"[DONE]"), t0=0)
    assert rec.status == "ok" and rec.first_reasoning_ns is rec.first_answer_ns is rec.reasoning_tokens is None
    assert "first_reasoning_ns" not in rec.to_dict()


def test_the_summary_keeps_reasoning_and_answer_apart():
    records = [ok(i, ttft_ms=10.0) for i in range(10)]
    for i, r in enumerate(records[:6]):  # six reasoning streams: thinking starts at TTFT, the answer 40+i ms later
        r.first_reasoning_ns = r.issued_ns + 10 * MS
        r.first_answer_ns = r.issued_ns + (40 + i) * MS
        r.reasoning_tokens = 3
    s = summarize(records, LevelContext(target_rate=100.0, run_end_ns=100 * MS))
    assert s["ttfrt_ms"]["count"] == 6 and s["ttfrt_ms"]["na"] == 4 and s["ttfrt_ms"]["p50"] == pytest.approx(10)
    assert s["ttfat_ms"]["min"] == pytest.approx(40) and s["ttfat_ms"]["max"] == pytest.approx(45)
    assert s["ttft_ms"]["count"] == 10 and s["ttft_ms"]["p50"] == pytest.approx(10)
    assert s["reasoning_tokens_total"] == 18 and s["answer_tokens_total"] == 40 - 18
    [(_, value, passed)] = evaluate(parse_fail_on("ttfat_p99<44ms"), s)
    assert value > 44 and not passed
