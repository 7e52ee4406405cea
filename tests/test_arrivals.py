"""Arrival schedules: statistics of each process, determinism, truncation, striping and validation.

Tolerances come from the sampling distribution of each statistic (k standard errors), not from the seeds used, so a
correct generator passes for any seed and a wrong rate, CV or distribution fails.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from loadgen.core.arrivals import BLOCK, ArrivalSpec, build_offsets, offsets_for_stripe
from loadgen.core.stats import (
    cv,
    index_of_dispersion,
    interarrival_s,
    ks_interarrivals,
    mean_rate,
    summarize_arrivals,
    window_counts,
)
from loadgen.errors import UsageError

RATE = 200.0
DURATION = 600.0  # 120k expected arrivals, 600 one-second windows
N_SEEDS = 200


def _cv_standard_error(c: float, n: int) -> float:
    """Asymptotic s.e. of the sample CV of gamma data: c * sqrt((1 + c^2) / (2n)) (delta method)."""
    return c * math.sqrt((1 + c * c) / (2 * n))


@pytest.fixture(scope="module")
def long_runs() -> dict[str, np.ndarray]:
    return {
        "poisson": build_offsets(ArrivalSpec("poisson", rate=RATE, duration_s=DURATION, seed=11)),
        "gamma2": build_offsets(ArrivalSpec("gamma", rate=RATE, cv=2.0, duration_s=DURATION, seed=12)),
        "gamma05": build_offsets(ArrivalSpec("gamma", rate=RATE, cv=0.5, duration_s=DURATION, seed=13)),
        "constant": build_offsets(ArrivalSpec("constant", rate=RATE, duration_s=DURATION, seed=14)),
    }


@pytest.mark.parametrize("name,c", [("poisson", 1.0), ("gamma2", 2.0), ("gamma05", 0.5)])
def test_rate_cv_dispersion_and_ks_of_long_runs(long_runs, name, c):
    t = long_runs[name]
    expected = RATE * DURATION
    # Count in a fixed window of a renewal process: sd = c * sqrt(expected) (renewal CLT).
    assert abs(len(t) - expected) < 4 * c * math.sqrt(expected)
    assert abs(mean_rate(t, DURATION) - RATE) < 4 * c * math.sqrt(expected) / DURATION
    gaps = interarrival_s(t, from_zero=True)
    assert abs(gaps.mean() - 1 / RATE) < 4 * c / RATE / math.sqrt(len(gaps))
    assert abs(cv(gaps) - c) < 5 * _cv_standard_error(c, len(gaps))
    # Index of dispersion of 1 s counts (200 arrivals per window) tends to c^2; its s.e. is about
    # c^2 * sqrt(2 / (K - 1)) for K windows.
    k = len(window_counts(t, 1.0, DURATION))
    assert k == 600
    d = index_of_dispersion(t, 1.0, DURATION)
    assert abs(d - c * c) < 5 * c * c * math.sqrt(2 / (k - 1))
    kind = "poisson" if name == "poisson" else "gamma"
    # Gaps under 1 µs are left out: at cv=2 about 1.7 % of gaps are under 1 ns, where ns rounding shows.
    _, p = ks_interarrivals(gaps, kind, RATE, None if kind == "poisson" else c, min_gap_s=1e-6)
    assert p > 1e-3


def test_constant_is_exactly_periodic(long_runs):
    t = long_runs["constant"]
    assert len(t) == int(RATE * DURATION)
    assert t[0] == 0
    np.testing.assert_array_equal(t, np.rint(np.arange(len(t)) * 1e9 / RATE).astype(np.int64))
    assert cv(interarrival_s(t)) < 1e-6
    counts = window_counts(t, 1.0, DURATION)
    assert (counts == RATE).all()
    assert index_of_dispersion(t, 1.0, DURATION) == 0.0


def test_constant_counts_at_duration_boundary():
    # rate 4 for 1 s: 0, .25, .5, .75 (1.0 is the end, not an arrival); rate 3 for 10 s: 0 .. 9.67 s
    assert build_offsets(ArrivalSpec("constant", rate=4, duration_s=1, seed=0)).tolist() == [
        0, 250_000_000, 500_000_000, 750_000_000]
    t = build_offsets(ArrivalSpec("constant", rate=3, duration_s=10, seed=0))
    assert len(t) == 30 and t[-1] == 9_666_666_667
    assert len(build_offsets(ArrivalSpec("constant", rate=3, max_requests=7, seed=0))) == 7


@pytest.mark.parametrize("kind,c", [("poisson", 1.0), ("gamma", 2.0), ("gamma", 0.5)])
def test_many_seeds_ks_pvalues_uniform_and_rate_unbiased(kind, c):
    n, rate = 500, 50.0
    pvalues, z = [], []
    for seed in range(N_SEEDS):
        spec = ArrivalSpec(kind, rate=rate, cv=c if kind == "gamma" else None, max_requests=n, seed=seed)
        t = build_offsets(spec)
        assert len(t) == n
        gaps = interarrival_s(t, from_zero=True)
        pvalues.append(ks_interarrivals(gaps, kind, rate, c if kind == "gamma" else None)[1])
        # Time of the n-th arrival: mean n/rate, sd c*sqrt(n)/rate.
        z.append((t[-1] / 1e9 - n / rate) / (c * math.sqrt(n) / rate))
    pvalues = np.array(pvalues)
    # Under the null the p-values are uniform: the number below 0.05 is Binomial(200, 0.05) (mean 10, sd 3.1).
    below = int((pvalues < 0.05).sum())
    assert below <= 10 + 4 * math.sqrt(N_SEEDS * 0.05 * 0.95)
    assert st.kstest(pvalues, "uniform").pvalue > 1e-3
    z = np.array(z)
    assert abs(z.mean()) < 4 / math.sqrt(N_SEEDS)
    assert 0.8 < z.std(ddof=1) < 1.2


def test_ks_rejects_the_wrong_distribution():
    bursty = interarrival_s(build_offsets(ArrivalSpec("gamma", rate=100, cv=2.0, max_requests=2000, seed=1)), True)
    assert ks_interarrivals(bursty, "poisson", 100)[1] < 1e-6
    smooth = interarrival_s(build_offsets(ArrivalSpec("poisson", rate=100, max_requests=2000, seed=2)), True)
    assert ks_interarrivals(smooth, "gamma", 100, 0.5)[1] < 1e-6
    # A 10 % rate error is visible with 20k gaps.
    many = interarrival_s(build_offsets(ArrivalSpec("poisson", rate=100, max_requests=20_000, seed=3)), True)
    assert ks_interarrivals(many, "poisson", 110)[1] < 1e-4
    assert ks_interarrivals(many, "poisson", 100)[1] > 1e-3
    with pytest.raises(ValueError):
        ks_interarrivals(many, "constant", 100)


def test_ks_quantisation_guard():
    # 120k bursty gaps rounded to whole ns: the plain test sees the rounding below 1 ns, the guarded one does not,
    # and the guarded one still rejects the wrong distribution.
    t = build_offsets(ArrivalSpec("gamma", rate=RATE, cv=2.0, duration_s=DURATION, seed=12))
    gaps = interarrival_s(t, from_zero=True)
    assert ks_interarrivals(gaps, "gamma", RATE, 2.0)[1] < 1e-6
    assert ks_interarrivals(gaps, "gamma", RATE, 2.0, min_gap_s=1e-6)[1] > 1e-3
    assert ks_interarrivals(gaps, "gamma", RATE, 1.8, min_gap_s=1e-6)[1] < 1e-6


def test_dispersion_distinguishes_bursty_from_poisson(long_runs):
    assert index_of_dispersion(long_runs["gamma2"], 1.0, DURATION) > 2.0
    assert index_of_dispersion(long_runs["gamma05"], 1.0, DURATION) < 0.5


def test_first_arrival_is_drawn_not_forced_to_zero():
    firsts = [build_offsets(ArrivalSpec("poisson", rate=10, max_requests=1, seed=s))[0] for s in range(200)]
    assert min(firsts) > 0
    # The first gap is Exp(mean 0.1 s) like the others: its mean over 200 seeds is within 4 s.e.
    assert abs(np.mean(firsts) / 1e9 - 0.1) < 4 * 0.1 / math.sqrt(200)


def test_deterministic_and_seed_dependent():
    spec = ArrivalSpec("gamma", rate=500, cv=1.5, duration_s=30, seed=42)
    a, b = build_offsets(spec), build_offsets(ArrivalSpec(**spec.to_dict()))
    assert a.dtype == np.int64
    np.testing.assert_array_equal(a, b)
    c = build_offsets(ArrivalSpec("gamma", rate=500, cv=1.5, duration_s=30, seed=43))
    assert len(a) != len(c) or not np.array_equal(a, c)
    assert ArrivalSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("kind,cvv", [("poisson", None), ("gamma", 0.7), ("constant", None)])
def test_truncation_by_count_and_duration_gives_prefixes(kind, cvv):
    # Counts that cross the generation block boundary: the carry between blocks must not shift anything.
    short = build_offsets(ArrivalSpec(kind, rate=1000, cv=cvv, max_requests=BLOCK + 10, seed=5))
    long = build_offsets(ArrivalSpec(kind, rate=1000, cv=cvv, max_requests=2 * BLOCK + 123, seed=5))
    assert len(short) == BLOCK + 10 and len(long) == 2 * BLOCK + 123
    np.testing.assert_array_equal(long[: len(short)], short)
    assert (np.diff(long) >= 0).all()
    by_time = build_offsets(ArrivalSpec(kind, rate=1000, cv=cvv, duration_s=70.0, seed=5, count="random"))
    assert by_time[-1] < 70 * 10**9
    np.testing.assert_array_equal(by_time, long[long < 70 * 10**9])  # same stream, cut at the duration
    both = build_offsets(ArrivalSpec(kind, rate=1000, cv=cvv, duration_s=70.0, max_requests=5000, seed=5))
    np.testing.assert_array_equal(both, long[:5000])  # the count bound comes first: the free process
    tiny = build_offsets(ArrivalSpec(kind, rate=1000, cv=cvv, duration_s=70.0, max_requests=1, seed=5))
    assert len(tiny) == 1


def test_empty_schedule_when_nothing_arrives_in_time():
    t = build_offsets(ArrivalSpec("poisson", rate=1e-6, duration_s=1e-3, seed=0))
    assert t.dtype == np.int64 and len(t) == 0


@pytest.mark.parametrize("n_workers", [1, 2, 3, 7])
def test_stripes_partition_the_schedule(n_workers):
    t = build_offsets(ArrivalSpec("poisson", rate=100, max_requests=1001, seed=9))
    parts = [offsets_for_stripe(t, w, n_workers) for w in range(n_workers)]
    idx = np.concatenate([i for i, _ in parts])
    assert sorted(idx.tolist()) == list(range(len(t)))
    for w, (i, o) in enumerate(parts):
        assert (i % n_workers == w).all()
        np.testing.assert_array_equal(o, t[i])


def test_stripe_arguments_checked():
    t = np.arange(10, dtype=np.int64)
    with pytest.raises(ValueError):
        offsets_for_stripe(t, 3, 3)
    with pytest.raises(ValueError):
        offsets_for_stripe(t, 0, 0)


def test_closed_loop_has_no_schedule():
    spec = ArrivalSpec("closed", concurrency=4, max_requests=100).validate()
    assert not spec.is_open_loop
    with pytest.raises(ValueError):
        build_offsets(spec)


@pytest.mark.parametrize(
    "kwargs,flag",
    [
        (dict(kind="poisson", rate=0, duration_s=1), "--rate"),
        (dict(kind="poisson", rate=-5, duration_s=1), "--rate"),
        (dict(kind="poisson", rate=float("nan"), duration_s=1), "--rate"),
        (dict(kind="poisson", rate=float("inf"), duration_s=1), "--rate"),
        (dict(kind="poisson", rate=2e6, duration_s=1), "absurd"),
        (dict(kind="poisson", rate=None, duration_s=1), "--rate"),
        (dict(kind="constant", rate="10", duration_s=1), "--rate"),
        (dict(kind="gamma", rate=10, cv=0, duration_s=1), "--cv"),
        (dict(kind="gamma", rate=10, cv=-1, duration_s=1), "--cv"),
        (dict(kind="gamma", rate=10, cv=float("nan"), duration_s=1), "--cv"),
        (dict(kind="gamma", rate=10, duration_s=1), "--cv"),
        (dict(kind="poisson", rate=10, cv=2, duration_s=1), "--cv"),
        (dict(kind="poisson", rate=10, concurrency=0, duration_s=1), "--concurrency"),
        (dict(kind="closed", concurrency=0), "--concurrency"),
        (dict(kind="closed", concurrency=2.5), "--concurrency"),
        (dict(kind="closed"), "--concurrency"),
        (dict(kind="closed", rate=5, concurrency=2), "--rate"),
        (dict(kind="burst", rate=10, duration_s=1), "--arrival"),
        (dict(kind="poisson", rate=10), "--duration/--requests"),
        (dict(kind="poisson", rate=10, duration_s=0), "--duration"),
        (dict(kind="poisson", rate=10, duration_s=float("inf")), "--duration"),
        (dict(kind="poisson", rate=10, max_requests=0), "--requests"),
        (dict(kind="poisson", rate=1e6, duration_s=3600), "schedule limit"),
        (dict(kind="poisson", rate=10, duration_s=1, seed=-1), "--seed"),
    ],
)
def test_validation_names_the_flag(kwargs, flag):
    with pytest.raises(UsageError) as info:
        ArrivalSpec(**kwargs).validate()
    msg = str(info.value)
    assert flag in msg and "\n" not in msg


def test_valid_specs_pass():
    ArrivalSpec("poisson", rate=1e6, max_requests=10).validate()
    ArrivalSpec("gamma", rate=0.5, cv=1.0, duration_s=10, concurrency=64).validate()
    ArrivalSpec("closed", concurrency=1).validate()
    assert ArrivalSpec("poisson", rate=10, duration_s=5, max_requests=20).expected_requests() == 20
    with pytest.raises(UsageError, match="unknown field"):
        ArrivalSpec.from_dict({"kind": "poisson", "rates": 3})


def test_stats_helpers_on_hand_made_data():
    # Windows of 1 s over 4 s: counts 1, 3, 0, 2; the arrival at 4.5 s is in a partial window and is dropped.
    t = (np.array([0.5, 1.1, 1.2, 1.9, 3.0, 3.5, 4.5]) * 1e9).astype(np.int64)
    assert window_counts(t, 1.0, 4.0).tolist() == [1, 3, 0, 2]
    counts = np.array([1, 3, 0, 2])
    assert index_of_dispersion(t, 1.0, 4.0) == pytest.approx(counts.var(ddof=1) / counts.mean())
    assert mean_rate(t, 7.0) == pytest.approx(1.0)
    assert mean_rate(t) == pytest.approx(7 / 4.5)
    np.testing.assert_allclose(interarrival_s(t), [0.6, 0.1, 0.7, 1.1, 0.5, 1.0])
    np.testing.assert_allclose(interarrival_s(t, from_zero=True)[0], 0.5)
    s = summarize_arrivals(t, window_s=1.0)
    assert s["requests"] == 7 and s["span_s"] == pytest.approx(4.0)
    assert s["interarrival_cv"] == pytest.approx(cv(interarrival_s(t)))
    assert math.isnan(cv(np.array([1.0])))


@pytest.mark.parametrize("kind,cvv", [("poisson", None), ("gamma", 2.0), ("gamma", 0.5)])
def test_exact_count_by_default_keeps_the_process(kind, cvv):
    """--rate 8 --duration 30 sends 240 requests, for any seed; the gaps keep the process's CV."""
    for seed in range(20):
        t = build_offsets(ArrivalSpec(kind, rate=8, cv=cvv, duration_s=30, seed=seed))
        assert len(t) == 240 and t[0] >= 0 and t[-1] < 30 * 10**9 and (np.diff(t) >= 0).all()
    big = build_offsets(ArrivalSpec(kind, rate=2000, cv=cvv, duration_s=100, seed=3))
    assert len(big) == 200_000  # crosses the generation block boundary
    gaps = np.diff(big).astype(np.float64)
    cv = gaps.std() / gaps.mean()
    assert abs(cv - (cvv or 1.0)) < 0.05 * (cvv or 1.0), cv
    np.testing.assert_array_equal(big, build_offsets(ArrivalSpec(kind, rate=2000, cv=cvv, duration_s=100, seed=3)))


def test_exact_count_poisson_is_uniform_in_the_window():
    """A Poisson process conditioned on n arrivals puts them uniformly in the window: a KS test over 50 seeds."""
    from scipy import stats

    pooled = np.concatenate([build_offsets(ArrivalSpec("poisson", rate=10, duration_s=20, seed=s))
                             for s in range(50)]) / 20e9
    assert len(pooled) == 50 * 200
    assert stats.kstest(pooled, "uniform").pvalue > 1e-3


def test_random_count_varies_and_the_count_bound_still_wins():
    counts = {len(build_offsets(ArrivalSpec("poisson", rate=8, duration_s=30, seed=s, count="random")))
              for s in range(10)}
    assert len(counts) > 3  # the free process: about 240 +- 15
    assert len(build_offsets(ArrivalSpec("poisson", rate=8, duration_s=30, max_requests=100, seed=1))) == 100
    with pytest.raises(UsageError, match="--arrival-count"):
        ArrivalSpec("poisson", rate=8, duration_s=30, count="maybe").validate()
