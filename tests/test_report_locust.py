"""Locust's level summary when the workers' records stay on their machines (merged histograms and counters): the
same keys as the exact summary, built by the same core code, so ``--fail-on`` on a reasoning model's TTFAT or on
the client's cancellations judges a Locust level as it judges ``loadgen run``. Pure: no server, no gevent."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from loadgen.core.records import RequestRecord
from loadgen.core.slo import evaluate, parse_fail_on
from loadgen.core.summary import LevelContext
from loadgen.locust import report as lreport
from loadgen.locust.stats import LLMStats, MeasureWindow, NodeStats

MS = 1_000_000
REL = 2e-3  # the merged histogram's resolution (3 significant digits), with room for interpolation


def records(n: int = 400) -> list[RequestRecord]:
    """20 req/s; reasoning for 4..12 tokens then 6 answer tokens; every 7th abandoned by the client, every 23rd
    an error; ``i % 11 == 0`` streams carry no reasoning at all (their TTFRT/TTFAT are undefined)."""
    out = []
    for i in range(n):
        sched = i * 50 * MS
        r = RequestRecord(index=i, scheduled_ns=sched, issued_ns=sched + 200_000, input_tokens=64, max_tokens=18)
        think = 4 + i % 9
        offs = [(15 + i % 13) * 1000 + 3000 * j for j in range(think + 6)]  # µs after issue
        r.chunk_offsets_us, r.chunk_tokens = offs, [1] * len(offs)
        r.end_ns = r.issued_ns + offs[-1] * 1000 + MS
        r.status = "ok"
        if i % 11:
            r.first_reasoning_ns, r.first_answer_ns = r.issued_ns + offs[0] * 1000, r.issued_ns + offs[think] * 1000
            r.reasoning_tokens = think
        if i % 7 == 3:
            r.status, r.cancel_after_s, r.first_answer_ns = "cancelled_by_client", 0.02, None
            r.chunk_offsets_us, r.chunk_tokens, r.end_ns = offs[:2], [1, 1], r.issued_ns + 20 * MS
        elif i % 23 == 5:
            r.status, r.error_kind, r.chunk_offsets_us, r.chunk_tokens = "error", "timeout", [], []
        out.append(r)
    return out


def both(tmp_path: Path, ctx: LevelContext) -> tuple[dict, dict]:
    """(exact, merged): the exact summary of the records, and the master's from two workers' deltas."""
    recs = records()
    path = tmp_path / "records.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r.to_dict()) + b"\n" for r in recs))
    exact = lreport.exact_summary([path], ctx)
    stats = LLMStats()
    for worker in (0, 1):
        node = NodeStats(MeasureWindow(warmup_requests=ctx.warmup_requests), slo=ctx.slo)
        for k, r in enumerate(x for x in recs if x.index % 2 == worker):
            node.add(r)
            if k % 50 == 49:
                stats.merge(node.take())
        stats.merge(node.take())
    return exact, lreport.histogram_summary(stats, ctx, None)


def test_the_merged_summary_has_the_exact_ones_keys_and_figures(tmp_path: Path):
    ctx = LevelContext(name="r", target_rate=20.0, warmup_requests=20, run_end_ns=400 * 50 * MS,
                       slo={"ttft": 0.03}, extra={"cancel": {"rate": 0.14, "after": "20ms", "mean_after_s": 0.02}})
    exact, merged = both(tmp_path, ctx)
    assert set(merged) == set(exact)
    assert exact["cancelled_by_client_count"] == 54 and exact["reasoning_tokens_total"] > 0
    for key in ("measured_requests", "completed_requests", "error_count", "cancelled_by_client_count",
                "cancelled_by_client_share", "reasoning_tokens_total", "answer_tokens_total", "output_tokens_total",
                "excluded_warmup", "excluded_cooldown", "goodput_rps", "window_s", "errors_by_kind", "extra"):
        assert merged[key] == exact[key], key
    for key in ("ttfrt_ms", "ttfat_ms", "ttft_ms", "e2e_ms"):
        assert merged[key]["count"] == exact[key]["count"] and merged[key]["na"] == exact[key]["na"], key
        for stat in ("p50", "p90", "p99"):
            assert merged[key][stat] == pytest.approx(exact[key][stat], rel=REL), (key, stat)
    assert merged["ttfat_ms"]["na"] > 0  # the streams without reasoning are counted as undefined, not as 0


def test_fail_on_reasoning_and_cancellations_judges_both_alike(tmp_path: Path):
    ctx = LevelContext(name="r", target_rate=20.0, run_end_ns=400 * 50 * MS)
    exact, merged = both(tmp_path, ctx)
    p90 = exact["ttfat_ms"]["p90"]
    for text, holds in ((f"ttfat_p90<{p90 * 1.01:.6g}", True), (f"ttfat_p90<{p90 * 0.9:.6g}", False),
                        ("ttfrt_p50<100", True), ("cancelled_by_client_share<0.1", False),
                        ("reasoning_tokens_total>0", True)):
        checks = parse_fail_on(text)
        for summary in (exact, merged):
            [(_, actual, ok)] = evaluate(checks, summary)
            assert actual is not None and ok is holds, (text, actual, summary["merged_from_histograms"])
