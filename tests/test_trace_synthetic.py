"""Synthetic arrival models (time-varying rate, Markov-modulated bursts) pass the statistics tests of the core
arrival issue: the realised rate per segment, the time-rescaling Kolmogorov-Smirnov test (arrivals mapped through
the cumulative rate must be a unit Poisson process), and the MMPP's index of dispersion against its closed form."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from loadgen.core.stats import index_of_dispersion, window_counts
from loadgen.errors import UsageError
from loadgen.traces.readers import open_trace
from loadgen.traces.synthetic import MMPP, build_synthetic, is_synthetic, parse_model, rescaled_gaps

CODE = Path(__file__).resolve().parents[2] / "shared" / "traces" / "azure-llm-2023" / "AzureLLMInferenceTrace_code.csv"
NS = 1_000_000_000


def _ks_ok(offsets, profile) -> float:
    return stats.kstest(rescaled_gaps(offsets, profile), "expon").pvalue


def test_piecewise_rate_per_segment_and_time_rescaling():
    offsets, facts, profile = build_synthetic("piecewise:5@60s,20@30s,0@10s", None, 1000, None, seed=3)
    assert facts["mean_rate_rps"] == pytest.approx(9.0)
    t = offsets / NS
    for start in range(0, 1000, 100):  # the profile repeats every 100 s
        for a, b, rate in ((0, 60, 5), (60, 90, 20), (90, 100, 0)):
            n = int(((t >= start + a) & (t < start + b)).sum())
            mean = rate * (b - a)
            assert abs(n - mean) <= 4 * np.sqrt(max(mean, 1)), (start, a, n, mean)
    assert _ks_ok(offsets, profile) > 1e-3
    assert np.all(np.diff(offsets) >= 0) and offsets[-1] < 1000 * NS


def test_rate_option_rescales_the_shape_and_requests_bound_the_length():
    offsets, facts, _ = build_synthetic("piecewise:5@60s,20@30s", 30.0, 540, None, seed=1)  # 6 whole cycles
    assert facts["rate_scale"] == pytest.approx(30.0 / 10.0)
    assert len(offsets) / 540 == pytest.approx(30.0, rel=0.03)
    exact, _, _ = build_synthetic("mmpp:2,40@30s,5s", None, None, 5000, seed=2)
    assert len(exact) == 5000
    again, _, _ = build_synthetic("mmpp:2,40@30s,5s", None, None, 5000, seed=2)
    assert np.array_equal(exact, again)


def test_diurnal_curve():
    offsets, facts, profile = build_synthetic("diurnal:10,0.8,10m,150s", None, 6000, None, seed=4)
    assert facts["period_s"] == 600 and facts["peak_s"] == 150
    assert len(offsets) / 6000 == pytest.approx(10, rel=0.03)
    assert _ks_ok(offsets, profile) > 1e-3
    phase = (offsets / NS) % 600
    near_peak = ((phase > 75) & (phase < 225)).sum()  # +-75 s around the peak at 150 s
    near_trough = ((phase > 375) & (phase < 525)).sum()  # around 450 s
    expect = (1 + 0.8 * 2 * np.sqrt(2) / np.pi) / (1 - 0.8 * 2 * np.sqrt(2) / np.pi)  # mean of cos over +-pi/4
    assert near_peak / near_trough == pytest.approx(expect, rel=0.12)


def test_mmpp_rate_dispersion_and_rescaling():
    model = MMPP((2.0, 40.0), (30.0, 5.0))
    assert model.mean_rate == pytest.approx((2 * 30 + 40 * 5) / 35)
    iods, rates = [], []
    for seed in range(4):
        offsets, facts, path = build_synthetic("mmpp:2,40@30s,5s", None, 12_000, None, seed=seed)
        rates.append(len(offsets) / 12_000)
        iods.append(index_of_dispersion(offsets, 60.0, 12_000))
        assert _ks_ok(offsets, path) > 1e-3  # Poisson given the state path
    assert facts["dispersion_60s_theory"] == pytest.approx(model.dispersion(60.0))
    assert np.mean(rates) == pytest.approx(model.mean_rate, rel=0.05)
    assert np.mean(iods) == pytest.approx(model.dispersion(60.0), rel=0.15)
    assert index_of_dispersion(offsets, 1.0, 12_000) == pytest.approx(model.dispersion(1.0), rel=0.15)
    assert model.dispersion(60.0) > 100  # bursty: a Poisson process has 1


def test_rate_from_a_trace_follows_its_minutes():
    rows = [r.time_ns for r in open_trace(str(CODE))]
    offsets, facts, _ = build_synthetic(f"trace-rate:{CODE}", None, 3420, None, seed=5)
    assert facts["bins"] == 58 and facts["bin_s"] == 60
    mine, theirs = window_counts(offsets, 60, 3420), window_counts(np.array(rows), 60, 3420)
    assert np.corrcoef(mine, theirs)[0, 1] > 0.95
    assert mine.sum() == pytest.approx(theirs.sum(), rel=0.05)


@pytest.mark.parametrize("text,match", [
    ("piecewise:5", "RATE@DURATION"), ("piecewise:-1@10s", "must be a finite number"),
    ("diurnal:10,2,1h", "amplitude"), ("diurnal:10,0.5", "MEAN,AMPLITUDE,PERIOD"),
    ("mmpp:2,40", "R1,R2"), ("mmpp:2@5s", "at least two states"), ("mmpp:1,2@5s,0s", "dwell"),
    ("burst:1", "use piecewise"),
])
def test_bad_models_are_one_clear_line(text, match):
    with pytest.raises(UsageError, match=match):
        parse_model(text)


def test_is_synthetic():
    assert is_synthetic("mmpp:1,2@3s,4s") and is_synthetic("diurnal:1,0,1h")
    assert not is_synthetic("poisson") and not is_synthetic("gamma") and not is_synthetic(None)
    with pytest.raises(UsageError, match="--duration or --requests"):
        build_synthetic("piecewise:1@1s", None, None, None, 0)
