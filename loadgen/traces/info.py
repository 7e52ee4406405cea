"""``loadgen traces info``: the statistics of a trace, or of what a replay sent, in one streaming pass.

The same numbers for a trace file and for a run directory let a user see whether a replay was faithful: rows,
span, mean rate, inter-arrival CV, index of dispersion of counts at 1 s and 60 s, input/output token
percentiles and prefix reuse. Definitions are those of ``loadgen.core.stats`` (sample variances, complete
windows from the first arrival, span = last - first arrival); a 1 GB trace is read in one pass with memory
bounded by its span (one counter per window) and its largest token count (one counter per length), never by its
number of rows. Prefix reuse keeps the set of block hashes seen, so it grows with the distinct hashes (Mooncake
traces are small).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from loadgen.errors import UsageError
from loadgen.traces.readers import MOONCAKE_BLOCK, TraceRow

NS = 1_000_000_000
WINDOWS_S = (1.0, 60.0)
PERCENTILES = (50, 90, 99)
BATCH = 8_192
MAX_LENGTH_BINS = 4_000_000  # token counts above this are kept in the top bin (their max stays exact)


class _Growing:
    """A non-negative integer histogram that grows as needed (counts per window, or per token count)."""

    def __init__(self, cap: int | None = None) -> None:
        self.counts = np.zeros(1024, dtype=np.int64)
        self.cap = cap

    def add(self, idx: np.ndarray) -> None:
        if not len(idx):
            return
        if self.cap is not None:
            idx = np.minimum(idx, self.cap)
        top = int(idx.max())
        if top >= len(self.counts):
            grown = np.zeros(max(top + 1, 2 * len(self.counts)), dtype=np.int64)
            grown[: len(self.counts)] = self.counts
            self.counts = grown
        self.counts[: top + 1] += np.bincount(idx, minlength=top + 1)


def _percentiles(hist: np.ndarray, n: int, qs: Iterable[float]) -> dict[str, float]:
    """numpy's default (linear) percentiles, computed from a histogram of whole numbers."""
    cum = np.cumsum(hist)
    out = {}
    for q in qs:
        pos = q / 100 * (n - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        v_lo = int(np.searchsorted(cum, lo + 1))
        v_hi = int(np.searchsorted(cum, hi + 1))
        out[f"p{q:g}"] = v_lo + (v_hi - v_lo) * (pos - lo)
    return out


class TraceStats:
    """Streaming accumulator; feed ``add_batch`` sorted times (ns) with their lengths, then ``result``."""

    def __init__(self, windows_s: Iterable[float] = WINDOWS_S) -> None:
        self.windows_s = tuple(windows_s)
        self.n = 0
        self.first: int | None = None
        self.last: int | None = None
        self._gaps = [0, 0.0, 0.0]  # count, mean, M2 (Chan et al. parallel update)
        self._windows = [_Growing() for _ in self.windows_s]
        self._in = _Growing(MAX_LENGTH_BINS)
        self._out = _Growing(MAX_LENGTH_BINS)
        self._max = [0, 0]
        self._sum = [0, 0]
        self._seen: set[int] = set()
        self.blocks = self.reused_blocks = self.hash_rows = 0
        self.tokens_with_hash = self.reused_tokens = 0

    def add_batch(self, times: np.ndarray, n_in: np.ndarray, n_out: np.ndarray) -> None:
        if not len(times):
            return
        times = np.asarray(times, dtype=np.int64)
        if self.first is None:
            self.first = int(times[0])
        gaps = np.diff(times if self.last is None else np.concatenate(([self.last], times))).astype(np.float64) / NS
        self._merge_gaps(gaps)
        self.last = int(times[-1])
        rel = times - self.first
        for w, hist in zip(self.windows_s, self._windows, strict=True):
            hist.add(rel // round(w * NS))
        for k, (arr, hist) in enumerate(((n_in, self._in), (n_out, self._out))):
            arr = np.asarray(arr, dtype=np.int64)
            hist.add(arr)
            self._max[k] = max(self._max[k], int(arr.max()))
            self._sum[k] += int(arr.sum())
        self.n += len(times)

    def _merge_gaps(self, gaps: np.ndarray) -> None:
        if not len(gaps):
            return
        n_a, mean_a, m2_a = self._gaps
        n_b, mean_b = len(gaps), float(gaps.mean())
        m2_b = float(((gaps - mean_b) ** 2).sum())
        n = n_a + n_b
        delta = mean_b - mean_a
        self._gaps = [n, mean_a + delta * n_b / n, m2_a + m2_b + delta * delta * n_a * n_b / n]

    def add_hashes(self, hash_ids: tuple[int, ...] | list[int], input_tokens: int,
                   block_tokens: int = MOONCAKE_BLOCK) -> None:
        """Count blocks already seen in an earlier request (an infinite prefix cache's hits)."""
        self.hash_rows += 1
        self.tokens_with_hash += input_tokens
        for k, h in enumerate(hash_ids):
            size = min(block_tokens, max(0, input_tokens - k * block_tokens))
            self.blocks += 1
            if h in self._seen:
                self.reused_blocks += 1
                self.reused_tokens += size
            else:
                self._seen.add(h)

    def result(self) -> dict[str, Any]:
        n = self.n
        span = (self.last - self.first) / NS if n else 0.0
        count, mean, m2 = self._gaps
        cv = math.sqrt(m2 / (count - 1)) / mean if count >= 2 and mean > 0 else math.nan
        disp = {}
        for w, hist in zip(self.windows_s, self._windows, strict=True):
            k = int(span // w)
            c = hist.counts[:k]
            disp[f"{w:g}s"] = _num(float(c.var(ddof=1) / c.mean())) if k >= 2 and c.mean() > 0 else None
        res: dict[str, Any] = {
            "requests": n, "span_s": round(span, 6), "mean_rate_rps": _num(n / span) if span > 0 else None,
            "interarrival_cv": _num(cv), "index_of_dispersion": disp,
        }
        for k, (name, hist) in enumerate((("input_tokens", self._in), ("output_tokens", self._out))):
            if n:
                d = {key: _num(v) for key, v in _percentiles(hist.counts, n, PERCENTILES).items()}
                d.update({"max": self._max[k], "mean": _num(self._sum[k] / n)})
            else:
                d = {}
            res[name] = d
        res["prefix_reuse"] = None
        if self.hash_rows:
            res["prefix_reuse"] = {
                "requests_with_hash_ids": self.hash_rows, "blocks": self.blocks,
                "reused_blocks": self.reused_blocks, "reused_block_share": _num(self.reused_blocks / self.blocks)
                if self.blocks else None,
                "reused_token_share": _num(self.reused_tokens / self.tokens_with_hash)
                if self.tokens_with_hash else None,
            }
        return res


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 4)


def stats_of_rows(rows: Iterable[TraceRow], block_tokens: int = MOONCAKE_BLOCK) -> TraceStats:
    """One pass over a reader's rows, in batches of ``BATCH`` (constant memory apart from the histograms)."""
    st = TraceStats()
    t, a, b = array("q"), array("q"), array("q")
    for r in rows:
        t.append(r.time_ns)
        a.append(r.input_tokens)
        b.append(r.output_tokens)
        if r.hash_ids:
            st.add_hashes(r.hash_ids, r.input_tokens, block_tokens)
        if len(t) >= BATCH:
            st.add_batch(*(np.frombuffer(x, dtype=np.int64) for x in (t, a, b)))
            t, a, b = array("q"), array("q"), array("q")
    if len(t):
        st.add_batch(*(np.frombuffer(x, dtype=np.int64) for x in (t, a, b)))
    return st


def stats_of_arrays(times: np.ndarray, n_in: np.ndarray, n_out: np.ndarray) -> dict[str, Any]:
    st = TraceStats()
    order = np.argsort(times, kind="stable")
    st.add_batch(np.asarray(times)[order], np.asarray(n_in)[order], np.asarray(n_out)[order])
    return st.result()


def file_info(reader: Any) -> dict[str, Any]:
    """Statistics of a trace file (a ``TraceReader``), with where it came from."""
    res = stats_of_rows(reader).result()
    res["source"] = {"path": reader.path, "format": reader.format, "first_timestamp": reader.origin,
                     "skipped_failed_rows": reader.skipped_failed, "skipped_filtered_rows": reader.skipped_filtered}
    return res


def run_dir_info(run_dir: str | Path) -> dict[str, Any]:
    """What a replay scheduled and what it sent (from records.jsonl), beside the trace facts in config.json."""
    run_dir = Path(run_dir)
    rec_path, cfg_path = run_dir / "records.jsonl", run_dir / "config.json"
    if not rec_path.is_file():
        raise UsageError(f"{run_dir}: no records.jsonl; give a trace file or a `loadgen run` directory")
    config: dict[str, Any] = {}
    if cfg_path.is_file():
        try:
            config = orjson.loads(cfg_path.read_bytes())
        except orjson.JSONDecodeError:
            config = {}
    sched, issued, lag, n_in, asked, got, got_in = [], [], [], [], [], [], []
    from loadgen.core.summary import load_records

    for r in load_records(rec_path):
        sched.append(r.scheduled_ns)
        n_in.append(r.input_tokens)
        asked.append(r.max_tokens)
        if r.issued_ns is not None:
            issued.append(r.issued_ns)
            lag.append(r.issued_ns - r.scheduled_ns)
            got.append(r.output_tokens)
            got_in.append(r.server_input_tokens if r.server_input_tokens is not None else r.input_tokens)
    if not sched:
        raise UsageError(f"{rec_path}: no records")
    extra = ((config.get("level_context") or {}).get("extra") or {}).get("trace") or {}
    schedule = stats_of_arrays(np.array(sched, dtype=np.int64), np.array(n_in), np.array(asked))
    sent = stats_of_arrays(np.array(issued, dtype=np.int64), np.array(got_in), np.array(got)) if issued else {}
    if extra.get("prefix_reuse"):
        schedule["prefix_reuse"] = extra["prefix_reuse"]
    lag_ms = np.array(lag, dtype=np.float64) / 1e6
    return {
        "run_dir": str(run_dir),
        "trace": extra.get("source_stats"),
        "schedule": schedule,
        "sent": sent,
        "issue_error_ms": {f"p{q}": _num(float(np.percentile(lag_ms, q))) for q in (50, 99)} | {
            "max": _num(float(lag_ms.max()))} if len(lag_ms) else None,
        "not_sent": len(sched) - len(issued),
        "replay": {k: extra.get(k) for k in ("path", "format", "describe") if k in extra},
    }
