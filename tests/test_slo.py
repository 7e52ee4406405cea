"""--slo parsing, the per-request SLO decision behind goodput, and --fail-on parsing/evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from loadgen.core.records import RequestRecord
from loadgen.core.slo import (
    check_names,
    evaluate,
    flat_metrics,
    parse_fail_on,
    parse_slo,
    slo_mask,
)
from loadgen.core.summary import LevelContext, summarize
from loadgen.errors import UsageError

MS = 1_000_000


def test_parse_slo_units_to_seconds():
    slo = parse_slo("ttft=500ms,tpot=50ms,itl=80ms,e2e=10s")
    assert slo == pytest.approx({"ttft": 0.5, "tpot": 0.05, "itl": 0.08, "e2e": 10.0})
    assert parse_slo(" e2e = 2m ")["e2e"] == pytest.approx(120.0)
    assert parse_slo("ttft=250000us")["ttft"] == pytest.approx(0.25)
    assert parse_slo("itl=1e6ns")["itl"] == pytest.approx(1e-3)
    assert parse_slo("TTFT=0.5s") == {"ttft": 0.5}


@pytest.mark.parametrize("text, fragment", [
    ("ttft=500", "unit"),  # a bare number is ambiguous
    ("ttft=500h", "unit"),
    ("latency=5ms", "KEY=DURATION"),
    ("ttft", "KEY=DURATION"),
    ("ttft=5ms,ttft=6ms", "twice"),
    ("ttft=0ms", "positive"),
    ("", "empty"),
    ("ttft=-5ms", "not a duration"),
])
def test_parse_slo_errors_name_the_flag(text, fragment):
    with pytest.raises(UsageError) as err:
        parse_slo(text)
    msg = str(err.value)
    assert msg.startswith("--slo") and fragment in msg and "\n" not in msg


def test_slo_mask_semantics():
    nan = math.nan
    ttft = np.array([100, 600, nan, 100, 100, 100]) * MS
    tpot = np.array([10, 10, 10, nan, 60, 10]) * MS
    itl_max = np.array([20, 20, 20, nan, 20, 90]) * MS
    e2e = np.array([1000, 1000, 1000, 1000, 1000, 1000]) * MS
    slo = {"ttft": 0.5, "tpot": 0.05, "itl": 0.08}
    mask = slo_mask(slo, ttft, tpot, itl_max, e2e)
    # ok; ttft too slow; no token (fails ttft); undefined tpot/itl hold; tpot too slow; one stall over itl
    assert mask.tolist() == [True, False, False, True, False, False]
    assert slo_mask({"e2e": 0.9}, ttft, tpot, itl_max, e2e).sum() == 0
    assert slo_mask({"e2e": 1.0}, ttft, tpot, itl_max, e2e).all()  # the threshold itself holds


def test_parse_fail_on_converts_units():
    checks = parse_fail_on("ttft_p99<500ms,error_rate<1%,goodput_rps>5,achieved_ratio>0.95")
    assert [(c.name, c.op, c.value) for c in checks] == [
        ("ttft_p99", "<", pytest.approx(500.0)),
        ("error_rate", "<", pytest.approx(0.01)),
        ("goodput_rps", ">", 5.0),
        ("achieved_ratio", ">", 0.95),
    ]
    more = parse_fail_on("e2e_p90 <= 2s, itl_mean>=0.5ms, window_s>1m, tpot_max<40, error_rate_timeout<=0.5%")
    assert [c.value for c in more] == pytest.approx([2000.0, 0.5, 60.0, 40.0, 0.005])
    assert [c.op for c in more] == ["<=", ">=", ">", "<", "<="]


@pytest.mark.parametrize("text, fragment", [
    ("ttft_p98<5ms", "unknown metric"),
    ("ttft_p99=5ms", "operators"),
    ("ttft_p99<5%", "% applies"),
    ("goodput_rps>5ms", "not a duration"),
    ("error_rate<1kg", "unknown unit"),
    ("ttft_p99<fast", "not a number"),
    (" , ", "empty"),
])
def test_parse_fail_on_errors(text, fragment):
    with pytest.raises(UsageError) as err:
        parse_fail_on(text)
    assert str(err.value).startswith("--fail-on") and fragment in str(err.value)


def test_unknown_name_lists_valid_names():
    with pytest.raises(UsageError) as err:
        parse_fail_on("latency<5ms")
    assert "ttft_p99" in str(err.value) and "goodput_rps" in str(err.value)


def _summary() -> dict:
    records = []
    for i in range(50):
        sched = i * 20 * MS
        ttft_us = 100_000 if i % 5 else 700_000  # every 5th request misses a 500 ms TTFT SLO
        records.append(RequestRecord(
            index=i, scheduled_ns=sched, issued_ns=sched, end_ns=sched + (ttft_us + 50_000) * 1000,
            chunk_offsets_us=[ttft_us, ttft_us + 25_000, ttft_us + 50_000], chunk_tokens=[1, 1, 1],
            status="ok" if i != 7 else "error", error_kind=None if i != 7 else "timeout", max_tokens=3,
        ))
        if i % 2:  # a reasoning model's stream: the first token is reasoning, the next ones the answer
            records[-1].first_reasoning_ns = sched + ttft_us * 1000
            records[-1].first_answer_ns = sched + (ttft_us + 25_000) * 1000
            records[-1].reasoning_tokens = 1
    ctx = LevelContext(name="t", target_rate=50.0, run_end_ns=1000 * MS, slo={"ttft": 0.5, "tpot": 0.05})
    return summarize(records, ctx)


def test_evaluate_against_a_summary():
    s = _summary()
    checks = parse_fail_on("ttft_p50<200ms,ttft_p99<500ms,error_rate<5%,goodput_rps>30,achieved_ratio>=0.95")
    results = evaluate(checks, s)
    by_name = {c.name: (actual, ok) for c, actual, ok in results}
    assert by_name["ttft_p50"] == (pytest.approx(100.0), True)
    assert by_name["ttft_p99"][1] is False and by_name["ttft_p99"][0] == pytest.approx(700.0)
    assert by_name["error_rate"] == (pytest.approx(1 / 50), True)
    assert by_name["goodput_rps"] == (pytest.approx(39 / 1.0), True)  # 49 completed, 10 miss TTFT
    assert by_name["achieved_ratio"] == (pytest.approx(1.0), True)


def test_missing_value_fails_its_check():
    s = _summary()
    s["goodput_rps"] = None
    [(_, actual, ok)] = evaluate(parse_fail_on("goodput_rps>0"), s)
    assert actual is None and ok is False


def test_every_check_name_resolves_in_a_real_summary():
    values = flat_metrics(_summary())
    assert set(values) == set(check_names())
    missing = [name for name, v in values.items() if v is None]
    assert missing == []


def test_values_are_printed_with_their_units():
    from loadgen.core.slo import format_value

    assert format_value("ttft_p99", 8.75396) == "8.754 ms"
    assert format_value("error_rate", 0.0125) == "1.25 %"
    assert format_value("goodput_rps", 5.5) == "5.5 req/s"
    assert format_value("window_s", 30.0) == "30 s"
    assert format_value("ttft_p99", None) == "no value"
