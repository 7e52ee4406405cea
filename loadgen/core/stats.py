"""Statistics of an arrival process: is this schedule (or trace) the process it claims to be?

Used by the arrival tests, by ``traces info`` and by the generator benchmarks, so that "the load was Poisson at
10 req/s" is a checked statement. All functions take int64 nanosecond offsets (or gaps in seconds) and return plain
floats.

- mean rate: requests / observed span.
- inter-arrival CV: std/mean of the gaps (1 for Poisson, ``cv`` for gamma renewal, 0 for constant).
- index of dispersion of counts: var/mean of the number of arrivals in consecutive windows of ``W`` seconds
  (1 for Poisson at any W; tends to cv**2 for a renewal process as W grows; near 0 for constant). Unlike the CV it
  also sees correlation between gaps, i.e. burstiness at the time scale W.
- KS test: Kolmogorov-Smirnov test of the gaps against the exponential or gamma distribution the spec asks for.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

_NS = 1e9


def interarrival_s(offsets_ns: np.ndarray, from_zero: bool = False) -> np.ndarray:
    """Gaps between consecutive arrivals, in seconds.

    ``from_zero=True`` counts the first offset as a gap from t0, which is right for schedules built by
    ``build_offsets`` (their first arrival is drawn from the process); traces start at an arbitrary time, so the
    default leaves that gap out.
    """
    t = np.asarray(offsets_ns, dtype=np.float64)
    if from_zero:
        t = np.concatenate(([0.0], t))
    return np.diff(t) / _NS


def mean_rate(offsets_ns: np.ndarray, duration_s: float | None = None) -> float:
    """Arrivals per second: count / duration when the observation window is known, else count / last offset."""
    n = len(offsets_ns)
    if n == 0:
        return 0.0
    span = duration_s if duration_s is not None else float(offsets_ns[-1]) / _NS
    return n / span if span > 0 else math.inf


def cv(gaps: np.ndarray) -> float:
    """Coefficient of variation (sample std with ddof=1, over mean)."""
    gaps = np.asarray(gaps, dtype=np.float64)
    if len(gaps) < 2:
        return math.nan
    m = float(gaps.mean())
    return float(gaps.std(ddof=1)) / m if m > 0 else math.nan


def window_counts(offsets_ns: np.ndarray, window_s: float, duration_s: float | None = None) -> np.ndarray:
    """Arrivals in each complete window ``[k*W, (k+1)*W)`` of the observed span (a partial last window is dropped)."""
    if window_s <= 0:
        raise ValueError("window_s must be positive")
    t = np.asarray(offsets_ns, dtype=np.int64)
    span_ns = duration_s * _NS if duration_s is not None else (float(t[-1]) if len(t) else 0.0)
    n_windows = int(span_ns // (window_s * _NS))
    if n_windows == 0:
        return np.zeros(0, dtype=np.int64)
    idx = (t // int(round(window_s * _NS))).astype(np.int64)
    idx = idx[idx < n_windows]
    return np.bincount(idx, minlength=n_windows)


def index_of_dispersion(offsets_ns: np.ndarray, window_s: float, duration_s: float | None = None) -> float:
    """var/mean of the per-window arrival counts (sample variance, ddof=1)."""
    counts = window_counts(offsets_ns, window_s, duration_s)
    if len(counts) < 2 or counts.mean() == 0:
        return math.nan
    return float(counts.var(ddof=1) / counts.mean())


def ks_interarrivals(gaps_s: np.ndarray, kind: str, rate: float, cv_: float | None = None,
                     min_gap_s: float = 0.0) -> tuple[float, float]:
    """KS test of gaps against the distribution of ``kind`` at ``rate``: returns (statistic, p-value).

    ``poisson`` tests against exponential(mean 1/rate); ``gamma`` against gamma(shape 1/cv^2, scale 1/(rate*shape)).
    A constant schedule has no distribution to test (its gaps are all equal); use ``cv`` for it.

    Times are quantised (ns in schedules, often ms in traces), and a bursty gamma puts a visible share of its gaps
    below one quantum, where the data cannot follow a continuous CDF; with enough samples the test then rejects a
    correct process. ``min_gap_s`` (say 1000 quanta) leaves out the shorter gaps and compares the rest with the
    reference distribution conditioned on ``gap >= min_gap_s``.
    """
    # Imported here: scipy costs ~0.5 s at start-up and only this test needs it.
    from scipy import stats as _st

    gaps_s = np.asarray(gaps_s, dtype=np.float64)
    if kind == "poisson":
        dist = _st.expon(scale=1.0 / rate)
    elif kind == "gamma":
        if cv_ is None or cv_ <= 0:
            raise ValueError("a gamma KS test needs cv > 0")
        shape = 1.0 / (cv_ * cv_)
        dist = _st.gamma(a=shape, scale=1.0 / (rate * shape))
    else:
        raise ValueError(f"no KS reference distribution for kind {kind!r} (poisson or gamma)")
    if min_gap_s > 0:
        gaps_s = gaps_s[gaps_s >= min_gap_s]
        f0 = float(dist.cdf(min_gap_s))
        res = _st.kstest(gaps_s, lambda x: (dist.cdf(x) - f0) / (1.0 - f0))
    else:
        res = _st.kstest(gaps_s, dist.cdf)
    return float(res.statistic), float(res.pvalue)


def summarize_arrivals(offsets_ns: np.ndarray, duration_s: float | None = None, window_s: float = 1.0,
                       from_zero: bool = False) -> dict[str, Any]:
    """The numbers ``traces info`` and the benchmarks print about a schedule or a trace's arrival times."""
    offsets_ns = np.asarray(offsets_ns, dtype=np.int64)
    gaps = interarrival_s(offsets_ns, from_zero=from_zero)
    return {
        "requests": int(len(offsets_ns)),
        "span_s": (float(offsets_ns[-1] - (0 if from_zero else offsets_ns[0])) / _NS) if len(offsets_ns) else 0.0,
        "mean_rate": mean_rate(offsets_ns, duration_s),
        "interarrival_mean_s": float(gaps.mean()) if len(gaps) else math.nan,
        "interarrival_cv": cv(gaps),
        "dispersion_window_s": window_s,
        "index_of_dispersion": index_of_dispersion(offsets_ns, window_s, duration_s),
    }
