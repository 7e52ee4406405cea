"""Per-request metric definitions (METRICS.md) on hand-built records with known times, and the ITL accumulator."""

from __future__ import annotations

import numpy as np
import pytest

from loadgen.core.metrics import (
    E2E,
    E2E_SCHED,
    ITL,
    LEVEL_METRICS,
    OUTPUT_TOKENS,
    REQUEST_METRICS,
    SCHEDULE_LAG,
    TPOT,
    TTFT,
    TTFT_SCHED,
    ItlAccumulator,
    distribution_stats,
    itl_values_ns,
    legend,
    metrics_help,
    request_times,
)
from loadgen.core.records import RequestRecord

MS = 1_000_000


def rec(chunks: list[tuple[float, int]], sched_ms: float = 100.0, lag_ms: float = 0.0, end_ms: float | None = None,
        server_out: int | None = None, issued: bool = True, status: str = "ok") -> RequestRecord:
    """chunks: (ms after issue, tokens). end_ms: ms after issue (default: 1 ms after the last chunk)."""
    sched = int(sched_ms * MS)
    issued_ns = sched + int(lag_ms * MS) if issued else None
    if end_ms is None:
        end_ms = (chunks[-1][0] if chunks else 0.0) + 1.0
    return RequestRecord(
        index=0, scheduled_ns=sched, issued_ns=issued_ns,
        end_ns=None if issued_ns is None else issued_ns + int(end_ms * MS),
        chunk_offsets_us=[int(t * 1000) for t, _ in chunks], chunk_tokens=[k for _, k in chunks],
        status=status, server_output_tokens=server_out, max_tokens=64, input_tokens=10,
    )


def ms(metric, r: RequestRecord) -> float | None:
    v = metric.of_record(r)
    return None if v is None else v / MS


def test_single_token_chunks_all_metrics():
    r = rec([(10, 1), (12, 1), (20, 1)], sched_ms=100, lag_ms=0.5)
    assert ms(SCHEDULE_LAG, r) == pytest.approx(0.5)
    assert ms(TTFT, r) == pytest.approx(10.0)
    assert ms(TTFT_SCHED, r) == pytest.approx(10.5)
    assert ms(E2E, r) == pytest.approx(20.0)  # last token chunk, not end_ns (21 ms)
    assert ms(E2E_SCHED, r) == pytest.approx(20.5)
    assert ms(TPOT, r) == pytest.approx((20 - 10) / 2)
    assert OUTPUT_TOKENS.of_record(r) == 3
    np.testing.assert_allclose(ITL.of_record(r) / MS, [2.0, 8.0])


def test_multi_token_chunks_spread_itl_and_first_chunk_gives_none():
    r = rec([(5, 3), (9, 2), (15, 4)])
    itl = itl_values_ns(r) / MS
    # first chunk's 3 tokens: no samples; 4 ms over 2 tokens; 6 ms over 4 tokens
    np.testing.assert_allclose(itl, [2.0, 2.0, 1.5, 1.5, 1.5, 1.5])
    assert itl.size == 9 - 3
    assert itl.sum() == pytest.approx(15 - 5)  # the per-token gaps add up to last - first token time
    assert ms(TTFT, r) == pytest.approx(5.0)
    assert ms(TPOT, r) == pytest.approx((15 - 5) / (9 - 1))  # TPOT excludes TTFT, uses all output tokens


def test_one_token_output_has_no_tpot_and_no_itl():
    r = rec([(7, 1)])
    assert TPOT.of_record(r) is None
    assert itl_values_ns(r).size == 0
    assert ms(TTFT, r) == pytest.approx(7.0)
    assert ms(E2E, r) == pytest.approx(7.0)


def test_one_chunk_carrying_all_tokens_gives_zero_itl_samples_but_defined_tpot():
    r = rec([(30, 4)])
    assert itl_values_ns(r).size == 0
    assert TPOT.of_record(r) == 0.0  # the formula: (E2E - TTFT) / 3 with E2E == TTFT


def test_zero_token_chunks_are_not_token_bearing():
    r = rec([(1, 0), (3, 1), (7, 0), (9, 2)], end_ms=12)
    assert ms(TTFT, r) == pytest.approx(3.0)  # the empty chunk at 1 ms does not start TTFT
    assert ms(E2E, r) == pytest.approx(9.0)
    np.testing.assert_allclose(itl_values_ns(r) / MS, [3.0, 3.0])  # 6 ms from 3 to 9 over 2 tokens
    assert OUTPUT_TOKENS.of_record(r) == 3


def test_no_token_response_uses_end_for_e2e():
    r = rec([], end_ms=40)
    assert TTFT.of_record(r) is None
    assert ms(E2E, r) == pytest.approx(40.0)
    assert TPOT.of_record(r) is None


def test_server_count_preferred_for_output_tokens_and_tpot():
    r = rec([(10, 1), (20, 1), (30, 1)], server_out=5)
    assert OUTPUT_TOKENS.of_record(r) == 5
    assert ms(TPOT, r) == pytest.approx((30 - 10) / 4)


def test_not_issued_request_has_no_metrics():
    r = rec([], issued=False, status="dropped")
    assert request_times(r) is None
    for m in REQUEST_METRICS:
        if m.of_times is not None:
            assert m.of_record(r) is None


def test_mismatched_chunk_arrays_are_refused():
    r = rec([(1, 1), (2, 1)])
    r.chunk_tokens = [1]
    with pytest.raises(ValueError, match="chunk"):
        TTFT.of_record(r)


def _random_records(rng: np.random.Generator, n: int) -> list[RequestRecord]:
    out = []
    for _ in range(n):
        n_chunks = int(rng.integers(0, 12))
        times = np.cumsum(rng.integers(0, 40_000, size=n_chunks))  # µs, ties allowed
        toks = rng.integers(0, 4, size=n_chunks)  # includes empty chunks
        r = RequestRecord(index=0, scheduled_ns=0, issued_ns=0, end_ns=int(times[-1] * 1000) if n_chunks else 0,
                          chunk_offsets_us=[int(t) for t in times], chunk_tokens=[int(k) for k in toks], status="ok")
        out.append(r)
    return out


def test_accumulator_matches_per_record_definition_across_block_flushes():
    rng = np.random.default_rng(7)
    records = _random_records(rng, 400)
    acc = ItlAccumulator(block_chunks=37)  # many flushes, requests never split across blocks
    for r in records:
        acc.add(r)
    stats, maxima = acc.finish()
    per_record = [itl_values_ns(r) for r in records]
    expected = np.concatenate(per_record)
    assert stats["exact"] is True
    assert stats["count"] == expected.size
    assert stats["p50"] == pytest.approx(np.percentile(expected, 50) / MS, abs=2e-6)
    assert stats["p99"] == pytest.approx(np.percentile(expected, 99) / MS, abs=2e-6)
    assert stats["mean"] == pytest.approx(expected.mean() / MS, abs=2e-6)
    assert maxima.size == len(records)
    for v, m in zip(per_record, maxima, strict=True):
        if v.size:
            assert m == pytest.approx(v.max())
        else:
            assert np.isnan(m)


def test_accumulator_switches_to_histogram_past_the_cap():
    rng = np.random.default_rng(11)
    records = []
    for _ in range(300):
        gaps = rng.lognormal(np.log(8000), 0.6, size=30).astype(np.int64) + 1  # µs
        times = np.cumsum(gaps)
        records.append(RequestRecord(index=0, scheduled_ns=0, issued_ns=0, chunk_offsets_us=times.tolist(),
                                     chunk_tokens=[1] * 30, status="ok"))
    acc = ItlAccumulator(exact_cap=1000, block_chunks=500)
    for r in records:
        acc.add(r)
    stats, _ = acc.finish()
    expected = np.concatenate([itl_values_ns(r) for r in records]) / MS
    assert stats["exact"] is False
    assert stats["count"] == expected.size == 300 * 29
    for key, q in (("p50", 50), ("p90", 90), ("p99", 99)):
        assert stats[key] == pytest.approx(np.percentile(expected, q), rel=2e-3)
    assert stats["mean"] == pytest.approx(expected.mean(), rel=1e-6)
    assert stats["max"] == pytest.approx(expected.max(), rel=1e-6)


def test_distribution_stats_exact_and_na():
    values = np.arange(1, 101, dtype=float)
    s = distribution_stats(np.append(values, np.nan), na=1)
    assert s["count"] == 100 and s["na"] == 1 and s["exact"] is True
    assert s["p50"] == pytest.approx(50.5)
    assert s["p99"] == pytest.approx(99.01)
    assert s["p99_9"] == pytest.approx(99.901)
    assert (s["min"], s["max"], s["mean"]) == (1.0, 100.0, 50.5)
    empty = distribution_stats(np.empty(0), na=3)
    assert empty["count"] == 0 and empty["na"] == 3 and empty["p99"] is None


def test_legend_and_help_define_every_metric():
    names = [name for name, _, _ in legend()]
    for m in REQUEST_METRICS:
        assert m.name in names
    for m in LEVEL_METRICS:
        assert m.key in names
    text = metrics_help()
    assert "itl [ms]" in text and "first chunk" in text
    assert all(len(line) <= 100 for line in text.splitlines())
