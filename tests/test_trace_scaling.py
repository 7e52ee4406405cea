"""Replay plans: time scaling, windows, timestamp buckets, rate scaling that keeps the burstiness (thinning whole
bursts down, superposition of shifted copies up), length scaling, caps, and determinism."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from loadgen.core.stats import index_of_dispersion
from loadgen.errors import UsageError
from loadgen.traces.readers import open_trace
from loadgen.traces.scaling import (
    ReplayOptions,
    build_plan,
    burst_ids,
    expected_thinned_iod,
    load_window,
    parse_window,
    thin_bursts,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "traces"
CONV = SHARED / "azure-llm-2023" / "AzureLLMInferenceTrace_conv.csv"
CODE = SHARED / "azure-llm-2023" / "AzureLLMInferenceTrace_code.csv"
EXAMPLES = Path(__file__).resolve().parents[1] / "traces"
NS = 1_000_000_000


@pytest.fixture(scope="module")
def code():
    return load_window(open_trace(str(CODE)))


@pytest.fixture(scope="module")
def conv():
    return load_window(open_trace(str(CONV)))


def test_speedup_and_window(conv):
    plain = build_plan(conv, ReplayOptions())
    assert np.array_equal(plain.offsets_ns, conv.time_ns) and len(plain) == len(conv)
    fast = build_plan(conv, ReplayOptions(speedup=10))
    assert np.array_equal(fast.offsets_ns, np.rint(conv.time_ns / 10).astype(np.int64))
    reader = open_trace(str(CONV))
    win = load_window(reader, 600.0, 60.0)
    inside = conv.time_ns[(conv.time_ns >= 600 * NS) & (conv.time_ns < 660 * NS)]
    assert np.array_equal(win.time_ns, inside - 600 * NS)  # relative to the window start
    assert win.span_ns == 60 * NS and win.truncated
    plan = build_plan(win, ReplayOptions())
    assert plan.facts["window_rows"] == len(inside)
    assert parse_window("10m:30m", _seconds) == (600.0, 1800.0)
    assert parse_window("1h:", _seconds) == (3600.0, None)
    with pytest.raises(UsageError, match="START:DURATION"):
        parse_window("600", _seconds)
    with pytest.raises(UsageError, match="no trace rows"):
        load_window(open_trace(str(CONV)), 99_999.0, 10.0)


def _seconds(text, flag):
    from loadgen.core.units import parse_seconds

    return parse_seconds(text, flag)


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_target_rate_halves_and_doubles_the_code_trace_keeping_its_60s_dispersion(code, factor):
    span = code.span_ns / NS
    rate = len(code) / span
    base60, base1 = index_of_dispersion(code.time_ns, 60, span), index_of_dispersion(code.time_ns, 1, span)
    for seed in range(4):
        plan = build_plan(code, ReplayOptions(target_rate=rate * factor, seed=seed))
        assert len(plan) / span == pytest.approx(rate * factor, rel=0.03)
        assert np.all(np.diff(plan.offsets_ns) >= 0)
        iod60 = index_of_dispersion(plan.offsets_ns, 60, span)
        assert abs(iod60 / base60 - 1) <= 0.2, (seed, iod60, base60)
        assert abs(index_of_dispersion(plan.offsets_ns, 1, span) / base1 - 1) <= 0.2
    rate_facts = plan.facts["rate"]
    assert rate_facts["method"] == ("thinning" if factor < 1 else "superposition")
    assert ("whole bursts" in rate_facts["text"]) == (factor < 1)


def test_thinning_single_requests_would_lose_the_dispersion(code):
    """Why bursts: independent thinning scales the dispersion to p*IoD + 1 - p (a 0.5x code trace: about half)."""
    span = code.span_ns / NS
    base = index_of_dispersion(code.time_ns, 60, span)
    plan = build_plan(code, ReplayOptions(target_rate=0.5 * len(code) / span, burst_gap=0.0, seed=1))
    got = index_of_dispersion(plan.offsets_ns, 60, span)
    assert got == pytest.approx(0.5 * base + 0.5, rel=0.2)
    assert got < 0.7 * base


def test_expected_dispersion_after_thinning_matches_simulation(code):
    span = code.span_ns
    rng = np.random.default_rng(3)
    for gap in (0.0, 1.0):
        ids = burst_ids(code.time_ns, gap)
        expected = expected_thinned_iod(code.time_ns, ids, 0.5, 60 * NS, span)
        sims = [index_of_dispersion(code.time_ns[thin_bursts(ids, len(code) // 2, rng)], 60, span / NS)
                for _ in range(40)]
        assert np.mean(sims) == pytest.approx(expected, rel=0.12), gap


def test_superposition_counts_and_fractional_factors(conv):
    span = conv.span_ns / NS
    rate = len(conv) / span
    double = build_plan(conv, ReplayOptions(target_rate=2 * rate, seed=2))
    assert len(double) == 2 * len(conv)  # two whole copies
    assert np.bincount(double.copy).tolist() == [len(conv), len(conv)]
    assert np.array_equal(np.sort(double.rows[double.copy == 1]), np.arange(len(conv)))
    assert double.offsets_ns.max() <= conv.span_ns  # shifted circularly inside the window
    base60 = index_of_dispersion(conv.time_ns, 60, span)
    assert index_of_dispersion(double.offsets_ns, 60, span) == pytest.approx(base60, rel=0.2)
    one_half = build_plan(conv, ReplayOptions(target_rate=1.5 * rate, seed=2))
    assert len(one_half) == pytest.approx(1.5 * len(conv), rel=0.01)
    assert one_half.facts["rate"]["copies"] == 2 and "plus 0.5 of a shifted copy" in one_half.facts["rate"]["text"]
    again = build_plan(conv, ReplayOptions(target_rate=1.5 * rate, seed=2))
    other = build_plan(conv, ReplayOptions(target_rate=1.5 * rate, seed=3))
    assert np.array_equal(again.offsets_ns, one_half.offsets_ns)
    assert not np.array_equal(other.offsets_ns, one_half.offsets_ns)


def test_rate_scaling_composes_with_speedup(conv):
    span = conv.span_ns / NS
    plan = build_plan(conv, ReplayOptions(speedup=4, target_rate=10.0, seed=0))
    assert len(plan) / (span / 4) == pytest.approx(10.0, rel=0.02)
    assert plan.facts["rate"]["rate_before_rps"] == pytest.approx(4 * len(conv) / span)
    assert plan.facts["replay_window_s"] == pytest.approx(span / 4)
    assert plan.facts["replay_rate_rps"] == pytest.approx(10.0, rel=0.02)


def test_timestamp_buckets_together_or_spread():
    src = load_window(open_trace(str(EXAMPLES / "example_prefix.jsonl")))
    together = build_plan(src, ReplayOptions())
    assert together.facts["buckets"]["bucketed"] and "fired together" in together.facts["buckets"]["text"]
    assert np.array_equal(together.offsets_ns, src.time_ns)
    spread = build_plan(src, ReplayOptions(buckets="spread", seed=4))
    assert "spread uniformly" in spread.facts["buckets"]["text"]
    assert np.all(np.diff(spread.offsets_ns) >= 0)
    assert np.array_equal(spread.rows, np.arange(len(src)))  # row i still replays row i
    delta = spread.offsets_ns - src.time_ns
    assert delta.min() >= 0 and delta.max() < 3 * NS
    assert len(np.unique(spread.offsets_ns)) == len(src)  # no two requests at the same instant any more
    assert delta.std() > 0.5 * NS  # spread over the bucket, not nudged
    with pytest.raises(UsageError, match="not in 3 s buckets"):
        build_plan(load_window(open_trace(str(CONV)), 0, 120), ReplayOptions(buckets="spread"))


def test_length_clip_and_scale(conv):
    clip = build_plan(conv, ReplayOptions(max_input_tokens=2048, max_output_tokens=256))
    assert clip.input_tokens.max() == 2048 and clip.output_tokens.max() == 256
    lengths = clip.facts["lengths"]
    assert lengths["input_clipped"] == int((conv.input_tokens > 2048).sum()) > 0
    assert "clipped to 2048 tokens" in lengths["text"]
    scale = build_plan(conv, ReplayOptions(max_input_tokens=2048, length_mode="scale"))
    f = 2048 / conv.input_tokens.max()
    assert scale.input_tokens.max() == 2048 and scale.facts["lengths"]["input_scale"] == pytest.approx(f)
    assert np.allclose(scale.input_tokens, np.clip(np.rint(conv.input_tokens * f), 1, None), atol=0)
    assert scale.block_tokens == round(512 * f)


def test_caps_and_bad_options(conv):
    capped = build_plan(conv, ReplayOptions(max_duration_s=60.0, max_requests=100))
    assert len(capped) == min(100, int((conv.time_ns < 60 * NS).sum()))
    for bad, match in ((ReplayOptions(speedup=0), "--speedup"), (ReplayOptions(target_rate=-1), "--target-rate"),
                       (ReplayOptions(length_mode="squash"), "--length-mode"),
                       (ReplayOptions(burst_gap=-1.0), "--burst-gap")):
        with pytest.raises(UsageError, match=match):
            build_plan(conv, bad)
    later = load_window(open_trace(str(CONV)), 100.0, 60.0)
    assert later.time_ns[0] > 0
    with pytest.raises(UsageError, match="empty"):
        build_plan(later, ReplayOptions(max_duration_s=1e-9))
    assert math.isfinite(capped.facts["window_rate_rps"])
