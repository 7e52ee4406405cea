"""LogHistogram: percentile accuracy against numpy, exact merging, compact round trip, clamping."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from loadgen.core.histogram import LogHistogram

QS = [0, 0.1, 1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9, 99.99, 100]
TOLERANCE = 1e-3  # the brief's bound; the layout guarantees 1/2048


def _datasets() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2024)
    n = 50_000
    return {
        "lognormal_ttft": rng.lognormal(math.log(50e6), 1.0, n),  # ~50 ms, wide
        "exponential_itl": rng.exponential(2e6, n) + 1_000,
        "uniform_narrow": rng.uniform(1_000, 5_000, n),  # the exact (width-1) region and the first octaves
        "pareto_tail": (rng.pareto(1.2, n) + 1) * 1e5,
        "bimodal": np.concatenate([rng.normal(2e6, 1e5, n // 2), rng.normal(900e6, 5e7, n // 2)]),
        "small_sample": rng.lognormal(math.log(3e8), 0.3, 7),
    }


@pytest.mark.parametrize("name", list(_datasets()))
def test_percentiles_within_tolerance_of_numpy(name):
    x = np.clip(np.rint(_datasets()[name]), 1_000, 3_600_000_000_000).astype(np.int64)
    h = LogHistogram()
    h.record_many(x)
    exact = np.percentile(x, QS)
    est = np.array(h.percentiles(QS))
    rel = np.abs(est - exact) / exact
    assert rel.max() < TOLERANCE, (name, rel.max())
    assert rel.max() <= 1 / 2**11 + 1e-12  # the bound the layout promises
    assert h.count == len(x)
    assert h.min == int(x.min()) and h.max == int(x.max())
    assert h.percentile(0) == x.min() and h.percentile(100) == x.max()
    assert h.mean == pytest.approx(x.mean(), rel=1e-12)


def test_coarser_layout_has_proportionally_larger_error():
    # Sanity check that the test above can fail: 6 sub-bucket bits give ~1.5 % error.
    x = np.rint(np.random.default_rng(3).lognormal(math.log(5e7), 1.0, 20_000)).astype(np.int64)
    h = LogHistogram(sub_bucket_bits=6)
    h.record_many(x)
    rel = np.abs(np.array(h.percentiles(QS[1:-1])) - np.percentile(x, QS[1:-1])) / np.percentile(x, QS[1:-1])
    assert TOLERANCE < rel.max() <= 1 / 2**6


def test_small_values_are_exact():
    h = LogHistogram()
    values = np.arange(1_000, 2_048)
    h.record_many(values)
    for q in (0, 10, 33.3, 50, 90, 100):
        assert h.percentile(q) == pytest.approx(np.percentile(values, q), abs=1e-9)


def test_record_matches_record_many():
    x = np.rint(np.random.default_rng(4).exponential(1e7, 5_000)).astype(np.int64) + 1_000
    a, b = LogHistogram(), LogHistogram()
    a.record_many(x)
    for v in x.tolist():
        b.record(v)
    b.record(12_345, count=3)
    a.record_many(np.array([12_345] * 3))
    assert a.to_dict() == b.to_dict()


def test_merge_equals_recording_the_union():
    rng = np.random.default_rng(5)
    parts = [np.rint(rng.lognormal(math.log(m), 0.7, 10_000)).astype(np.int64) for m in (1e5, 3e7, 2e9)]
    merged = LogHistogram()
    for p in parts:
        h = LogHistogram()
        h.record_many(p)
        merged.merge(h)
    merged.merge(LogHistogram())  # merging an empty histogram changes nothing
    union = LogHistogram()
    union.record_many(np.concatenate(parts))
    assert merged.to_dict() == union.to_dict()
    assert merged.percentiles(QS) == union.percentiles(QS)
    assert merged.mean == union.mean


def test_merge_rejects_other_layout():
    with pytest.raises(ValueError):
        LogHistogram().merge(LogHistogram(sub_bucket_bits=10))


def test_round_trip_through_json():
    h = LogHistogram()
    h.record_many(np.rint(np.random.default_rng(6).lognormal(17, 1.5, 20_000)).astype(np.int64))
    h.record(5)  # below the range
    d = json.loads(json.dumps(h.to_dict()))
    assert len(d["index"]) < h.n_buckets  # only the non-zero buckets travel
    g = LogHistogram.from_dict(d)
    assert g.to_dict() == h.to_dict()
    assert g.percentiles(QS) == h.percentiles(QS)
    assert (g.count, g.min, g.max, g.mean, g.below_range) == (h.count, h.min, h.max, h.mean, h.below_range)


def test_from_dict_rejects_inconsistent_payload():
    h = LogHistogram()
    h.record_many(np.array([5_000, 6_000, 7_000]))
    d = h.to_dict()
    with pytest.raises(ValueError):
        LogHistogram.from_dict({**d, "count": 4})
    with pytest.raises(ValueError):
        LogHistogram.from_dict({**d, "index": [10**9, 1, 2]})
    with pytest.raises(ValueError):
        LogHistogram.from_dict({**d, "format": 99})


def test_clamping_is_counted_and_extremes_stay_exact():
    h = LogHistogram(lowest=1_000, highest=1_000_000)
    h.record_many(np.array([10, 500, 2_000, 3_000, 5_000_000]))
    h.record(0)
    h.record(-7)  # a negative duration (clock trouble) is clamped and counted, not lost
    assert h.below_range == 4 and h.above_range == 1
    assert h.count == 7
    assert h.min == -7 and h.max == 5_000_000
    assert h.mean == pytest.approx((10 + 500 + 2_000 + 3_000 + 5_000_000 - 7) / 7)
    # Clamped values count as the range edge: the median of the 7 (exactly 500) reads as lowest, the value above
    # the median (3,000) is inside the range and exact, and q = 0 / 100 are the exact extremes.
    assert h.percentile(50) == 1_000
    assert h.percentile(5 / 6 * 100) == pytest.approx(3_000, rel=1e-3)
    assert h.percentile(0) == -7 and h.percentile(100) == 5_000_000


def test_empty_and_bad_arguments():
    h = LogHistogram()
    assert h.count == 0 and h.min is None and h.max is None
    assert math.isnan(h.mean) and math.isnan(h.percentile(50))
    with pytest.raises(ValueError):
        h.percentile(101)
    with pytest.raises(ValueError):
        h.record_many(np.array([1.0, float("nan")]))
    with pytest.raises(ValueError):
        LogHistogram(lowest=10, highest=5)
    h.record_many(np.array([], dtype=np.int64))
    assert h.count == 0


def test_float_values_are_rounded():
    h = LogHistogram()
    h.record_many(np.array([1500.4, 1500.6]))
    assert (h.min, h.max) == (1500, 1501)


def test_memory_is_fixed_by_the_range():
    h = LogHistogram()
    size = h.memory_bytes
    assert size < 300_000
    h.record_many(np.random.default_rng(7).integers(1, 10**13, 100_000))
    assert h.memory_bytes == size
    for i in range(h.n_buckets):  # buckets tile the range without gaps or overlaps
        low, high = h.bucket_bounds(i)
        assert low <= high
        if i:
            assert low == h.bucket_bounds(i - 1)[1] + 1
    assert h.bucket_bounds(0)[0] == 1_000
    assert h.bucket_bounds(h.n_buckets - 1)[0] <= 3_600_000_000_000 <= h.bucket_bounds(h.n_buckets - 1)[1]
