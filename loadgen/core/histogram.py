"""A mergeable log-linear histogram of positive integers (nanoseconds), HDR-style, >= 3 significant digits.

Why: Locust workers and live views need percentiles without keeping every value, and a distributed run must add
workers' latency distributions together exactly. Locust's own buckets keep two significant digits, which turns a
123 ms p99 into "120 ms"; this one keeps the relative error of any percentile under 0.05 %.

Bucket layout (``M = sub_bucket_bits``): values below ``2**M`` get one bucket each (exact). Above that, each
octave ``[2**(M-1+e), 2**(M+e))`` is split into ``2**(M-1)`` equal buckets of width ``2**e``, so a bucket's width is
at most ``1/2**(M-1)`` of its lower edge. A percentile reports the centre of its bucket, hence a relative error of
at most ``1/2**M`` (0.049 % for M = 11), and is kept inside the exact recorded [min, max].

Memory is fixed by the range: with the defaults (1 µs .. 1 h, M = 11) the counter array has 32,421 int64 entries,
about 253 KiB, however many values are recorded. ``to_dict`` sends only the non-zero buckets.

Values outside ``[lowest, highest]`` are counted in the edge bucket (clamped) and tallied in ``below_range`` /
``above_range`` so a report can say how many were clamped; ``min``, ``max`` and ``mean`` use the exact values.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

_FORMAT = 1


def _exact_sum(arr: np.ndarray, bound: int) -> int:
    """Sum of an int64 array without overflow: int64 sums over chunks small enough that none can overflow."""
    chunk = max(1, (2**62) // max(bound, 1))
    if chunk >= arr.size:
        return int(arr.sum(dtype=np.int64))
    return sum(int(arr[i:i + chunk].sum(dtype=np.int64)) for i in range(0, arr.size, chunk))


class LogHistogram:
    """Counts of positive integers in log-linear buckets; see the module docstring for the layout."""

    def __init__(self, lowest: int = 1_000, highest: int = 3_600_000_000_000, sub_bucket_bits: int = 11) -> None:
        if not 1 <= sub_bucket_bits <= 20:
            raise ValueError(f"sub_bucket_bits must be in 1..20, got {sub_bucket_bits}")
        if not 1 <= lowest < highest or highest >= 2**53:
            raise ValueError(f"need 1 <= lowest < highest < 2**53, got lowest={lowest} highest={highest}")
        self.lowest = int(lowest)
        self.highest = int(highest)
        self.sub_bucket_bits = int(sub_bucket_bits)
        self._half = 1 << (self.sub_bucket_bits - 1)
        self._linear = 1 << self.sub_bucket_bits
        self._offset = self._raw_index(self.lowest)
        self._counts = np.zeros(self._raw_index(self.highest) - self._offset + 1, dtype=np.int64)
        self._count = 0
        self._sum = 0  # Python int: exact however many values
        self._min: int | None = None
        self._max: int | None = None
        self._below = 0
        self._above = 0
        self._cum: np.ndarray | None = None  # cumulative counts, cached between percentile calls

    # -- layout --------------------------------------------------------------------------------------------
    def _raw_index(self, v: int) -> int:
        if v < self._linear:
            return v
        e = v.bit_length() - self.sub_bucket_bits
        return e * self._half + (v >> e)

    def _raw_index_many(self, v: np.ndarray) -> np.ndarray:
        _, exp2 = np.frexp(v.astype(np.float64))  # exact bit length for integers below 2**53
        e = np.maximum(exp2.astype(np.int64) - self.sub_bucket_bits, 0)
        return np.where(v < self._linear, v, e * self._half + (v >> e))

    def bucket_bounds(self, index: int) -> tuple[int, int]:
        """Inclusive [low, high] of the values counted in bucket ``index`` (of the counter array)."""
        raw = index + self._offset
        if raw < self._linear:
            return raw, raw
        e = raw // self._half - 1
        low = (raw - e * self._half) << e
        return low, low + (1 << e) - 1

    @property
    def n_buckets(self) -> int:
        return len(self._counts)

    @property
    def memory_bytes(self) -> int:
        return int(self._counts.nbytes)

    # -- recording -----------------------------------------------------------------------------------------
    def record(self, value: int, count: int = 1) -> None:
        """Record ``value`` ``count`` times."""
        if count < 1:
            if count == 0:
                return
            raise ValueError(f"count must be >= 0, got {count}")
        v = int(round(value))
        self._note(v, v, v * count, count)
        if v < self.lowest:
            self._below += count
            v = self.lowest
        elif v > self.highest:
            self._above += count
            v = self.highest
        self._counts[self._raw_index(v) - self._offset] += count

    def record_many(self, values: np.ndarray) -> None:
        """Record every value of an array (integers, or floats that are rounded; NaN is refused)."""
        arr = np.asarray(values)
        if arr.size == 0:
            return
        arr = arr.ravel()
        if arr.dtype.kind == "f":
            if np.isnan(arr).any():
                raise ValueError("cannot record NaN in a histogram")
            arr = np.rint(np.clip(arr, -(2.0**62), 2.0**62))
        arr = arr.astype(np.int64, copy=False)
        lo, hi = int(arr.min()), int(arr.max())
        self._note(lo, hi, _exact_sum(arr, max(abs(lo), abs(hi))), arr.size)
        below = arr < self.lowest
        above = arr > self.highest
        self._below += int(below.sum())
        self._above += int(above.sum())
        clamped = np.clip(arr, self.lowest, self.highest)
        idx = self._raw_index_many(clamped) - self._offset
        if idx.size < 4096:  # small batches (one request's token gaps): touch only their buckets
            np.add.at(self._counts, idx, 1)
        else:
            self._counts += np.bincount(idx, minlength=len(self._counts))

    def _note(self, lo: int, hi: int, total: int, n: int) -> None:
        self._count += n
        self._sum += total
        self._min = lo if self._min is None else min(self._min, lo)
        self._max = hi if self._max is None else max(self._max, hi)
        self._cum = None

    def merge(self, other: LogHistogram) -> LogHistogram:
        """Add ``other``'s counts to this one (same layout required); returns self."""
        if (other.lowest, other.highest, other.sub_bucket_bits) != (self.lowest, self.highest, self.sub_bucket_bits):
            raise ValueError(
                "cannot merge histograms with different layouts: "
                f"{(self.lowest, self.highest, self.sub_bucket_bits)} vs "
                f"{(other.lowest, other.highest, other.sub_bucket_bits)}"
            )
        if other._count == 0:
            return self
        self._counts += other._counts
        self._below += other._below
        self._above += other._above
        self._note(other._min, other._max, other._sum, other._count)  # type: ignore[arg-type]
        return self

    # -- reading -------------------------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return self._count

    @property
    def min(self) -> int | None:
        return self._min

    @property
    def max(self) -> int | None:
        return self._max

    @property
    def mean(self) -> float:
        return self._sum / self._count if self._count else math.nan

    @property
    def total(self) -> int:
        return self._sum

    @property
    def below_range(self) -> int:
        return self._below

    @property
    def above_range(self) -> int:
        return self._above

    def _value_at_rank(self, cum: np.ndarray, rank: int) -> float:
        """Estimate of the ``rank``-th smallest value (0-based): the centre of its bucket."""
        index = int(np.searchsorted(cum, rank, side="right"))
        low, high = self.bucket_bounds(index)
        return (low + high) / 2.0

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100) with numpy's default (linear) interpolation between order statistics.

        Within 1/2**sub_bucket_bits relative error of ``numpy.percentile`` of the recorded values (for values
        inside [lowest, highest]; clamped values count as the range edge). q = 0 and 100 give the exact min and
        max; ``nan`` when nothing was recorded.
        """
        if not 0 <= q <= 100 or q != q:
            raise ValueError(f"percentile must be in 0..100, got {q}")
        if self._count == 0:
            return math.nan
        if q == 0 or q == 100:  # the extremes are kept exactly, even when they were clamped
            return float(self._min if q == 0 else self._max)  # type: ignore[arg-type]
        if self._cum is None:
            self._cum = np.cumsum(self._counts)
        pos = q / 100.0 * (self._count - 1)
        lo_rank = math.floor(pos)
        frac = pos - lo_rank
        est = self._value_at_rank(self._cum, lo_rank)
        if frac > 0:
            est += frac * (self._value_at_rank(self._cum, lo_rank + 1) - est)
        return float(min(max(est, self._min), self._max))  # type: ignore[type-var]

    def percentiles(self, qs: list[float]) -> list[float]:
        return [self.percentile(q) for q in qs]

    # -- transport -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Compact JSON-able form: the layout, the exact summary and only the non-zero buckets."""
        nz = np.flatnonzero(self._counts)
        return {
            "format": _FORMAT,
            "lowest": self.lowest,
            "highest": self.highest,
            "sub_bucket_bits": self.sub_bucket_bits,
            "count": self._count,
            "sum": self._sum,
            "min": self._min,
            "max": self._max,
            "below": self._below,
            "above": self._above,
            "index": nz.tolist(),
            "counts": self._counts[nz].tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LogHistogram:
        """Inverse of ``to_dict``; raises ValueError on a payload that does not add up."""
        if d.get("format") != _FORMAT:
            raise ValueError(f"unknown histogram format {d.get('format')!r} (expected {_FORMAT})")
        h = cls(d["lowest"], d["highest"], d["sub_bucket_bits"])
        index = np.asarray(d["index"], dtype=np.int64)
        counts = np.asarray(d["counts"], dtype=np.int64)
        if index.shape != counts.shape or (index.size and (index.min() < 0 or index.max() >= h.n_buckets)):
            raise ValueError("histogram payload: bucket indices and counts do not match the layout")
        if (counts < 0).any() or int(counts.sum()) != d["count"]:
            raise ValueError("histogram payload: bucket counts do not add up to its count")
        np.add.at(h._counts, index, counts)
        h._count = int(d["count"])
        h._sum = int(d["sum"])
        h._min = d["min"]
        h._max = d["max"]
        h._below = int(d["below"])
        h._above = int(d["above"])
        return h

    def copy(self) -> LogHistogram:
        return LogHistogram.from_dict(self.to_dict())

    def __repr__(self) -> str:
        return (f"LogHistogram(count={self._count}, min={self._min}, max={self._max}, "
                f"range=[{self.lowest}, {self.highest}], sub_bucket_bits={self.sub_bucket_bits})")
