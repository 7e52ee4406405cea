"""Mergeable LLM statistics for the Locust front end: per-node deltas, the master's aggregate, live views.

A load-generating node (the local runner or a worker) folds each finished record into ``NodeStats``: counters and
``LogHistogram``s of TTFT, TPOT, ITL (per token), E2E and schedule lag, with the metric definitions of
``loadgen.core.metrics``. Every report interval the node hands over what it gathered since the last time
(``take``: only non-zero buckets, a few kB); the master (or the local runner itself) merges these deltas into
``LLMStats``. Histograms add exactly, so the merged percentiles are those of all workers' values within the
histogram's 3-significant-digit resolution, never Locust's two digits; the master never sees a per-token event.

``LLMStats`` also keeps the last few seconds of deltas for "current" values (the charts) and a bounded history;
with a ``server_source`` (the level's server-metrics sampler) each history point also holds the server's queued
and running requests and KV-cache usage, for the web UI's server charts.
"""

from __future__ import annotations

import collections
import math
import time
from typing import Any

import numpy as np

from loadgen.core.histogram import LogHistogram
from loadgen.core.metrics import REQUEST_METRICS_BY_NAME, request_times, token_chunks
from loadgen.core.records import (
    ERROR_KINDS,
    STATUS_CANCELLED,
    STATUS_CANCELLED_BY_CLIENT,
    STATUS_DROPPED,
    STATUS_ERROR,
    STATUS_OK,
    RequestRecord,
)

# name -> (label, unit); latency histograms hold nanoseconds, output_tokens holds tokens
METRICS: dict[str, tuple[str, str]] = {
    "ttft": ("TTFT", "ms"),
    "tpot": ("TPOT", "ms"),
    "itl": ("ITL", "ms"),
    "e2e": ("E2E", "ms"),
    "schedule_lag": ("schedule lag", "ms"),
    "output_tokens": ("output tokens/request", "tokens"),
}
# the last four feed the summary only: latency from the schedule, reasoning models' TTFRT and TTFAT
HISTS = (*METRICS, "ttft_sched", "e2e_sched", "ttfrt", "ttfat")
COUNTERS = ("records", "measured", "issued", "completed", "errors", "dropped", "cancelled", "late", "short",
            "output_tokens", "input_tokens", "requested_tokens", "busy_ns", "server_counts", "token_mismatches",
            "good", "good_sched", "cancelled_by_client", "reasoning_tokens", "input_mismatches", "excluded_warmup",
            "excluded_cooldown")
PCTS = (50.0, 90.0, 95.0, 99.0, 99.9)
PCT_KEYS = ("p50", "p90", "p95", "p99", "p999")
WINDOW_S = 10.0  # "current" values: the deltas of the last this many seconds
SERVER_STALE_NS = 5_000_000_000  # a server scrape older than this is not "now" (the page stopped answering)
SERVER_KEYS = ("queued", "running", "kv_usage")
HISTORY_MAX = 3600
FLUSH_CHUNKS = 4096  # bulk-record pending values in slices this small: no long stall of the generator's hub

_TTFT = REQUEST_METRICS_BY_NAME["ttft"].of_times
_TPOT = REQUEST_METRICS_BY_NAME["tpot"].of_times
_E2E = REQUEST_METRICS_BY_NAME["e2e"].of_times
_TTFRT = REQUEST_METRICS_BY_NAME["ttfrt"].of_times
_TTFAT = REQUEST_METRICS_BY_NAME["ttfat"].of_times


def new_histogram(name: str) -> LogHistogram:
    """Nanoseconds from 1 µs to 1 h; schedule lag from 1 ns (it is often below a microsecond); tokens from 1.

    Every node and the master build the same layouts here, so any two histograms of a metric merge."""
    if name == "output_tokens":
        return LogHistogram(lowest=1, highest=10_000_000)
    if name == "schedule_lag":
        return LogHistogram(lowest=1)
    return LogHistogram()


class MeasureWindow:
    """Which records count as measured: the summary's rule (warm-up by count or time, cool-down before the end)."""

    def __init__(self, warmup_requests: int = 0, warmup_s: float = 0.0, sched_end_ns: float = math.inf,
                 late_threshold_ns: float = 10_000_000) -> None:
        self.warmup_requests = warmup_requests
        self.warm_ns = int(warmup_s * 1e9)
        self.sched_end_ns = sched_end_ns
        self.late_ns = late_threshold_ns

    def measured(self, rec: RequestRecord) -> bool:
        s = rec.scheduled_ns
        return rec.index >= self.warmup_requests and s >= self.warm_ns and s <= self.sched_end_ns

    def excluded_as(self, rec: RequestRecord) -> str:
        """Why a record that is not measured is left out (the summary's ``excluded_*`` counters)."""
        return "excluded_warmup" if rec.index < self.warmup_requests or rec.scheduled_ns < self.warm_ns \
            else "excluded_cooldown"

    def to_dict(self) -> dict[str, Any]:
        return {"warmup_requests": self.warmup_requests, "warm_ns": self.warm_ns,
                "sched_end_ns": None if math.isinf(self.sched_end_ns) else int(self.sched_end_ns),
                "late_ns": self.late_ns}


class NodeStats:
    """What one load-generating process saw since its last hand-over."""

    def __init__(self, window: MeasureWindow | None = None, slo: dict[str, float] | None = None) -> None:
        self.window = window or MeasureWindow()
        self.slo = dict(slo or {})  # seconds, from parse_slo: goodput is counted here, per request
        self._reset()

    def _reset(self) -> None:
        self.hist = {name: new_histogram(name) for name in HISTS}
        self.pending: dict[str, list[float]] = {name: [] for name in HISTS if name != "itl"}
        self.itl_offsets: list[int] = []  # token-bearing chunks of completed requests, flattened (µs)
        self.itl_tokens: list[int] = []
        self.itl_starts: list[int] = []  # where each request's chunks begin in the flat lists
        self.counts: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.first_sched: int | None = None
        self.last_sched: int | None = None
        self.last_end: int | None = None

    def add(self, rec: RequestRecord) -> None:
        c = self.counts
        c["records"] += 1
        if not self.window.measured(rec):
            c[self.window.excluded_as(rec)] += 1
            return
        c["measured"] += 1
        s = rec.scheduled_ns
        self.first_sched = s if self.first_sched is None else min(self.first_sched, s)
        self.last_sched = s if self.last_sched is None else max(self.last_sched, s)
        if rec.status == STATUS_DROPPED:
            c["dropped"] += 1
            return
        times = request_times(rec)
        if times is None:
            c["cancelled"] += 1
            return
        c["issued"] += 1
        lag = times.lag_ns
        pend = self.pending
        pend["schedule_lag"].append(lag)
        if lag > self.window.late_ns:
            c["late"] += 1
        if rec.status == STATUS_CANCELLED:
            c["cancelled"] += 1
            return
        end = rec.end_ns if rec.end_ns is not None else rec.last_token_ns
        if end is not None:
            c["busy_ns"] += max(0, end - rec.issued_ns)  # type: ignore[operator]
            self.last_end = end if self.last_end is None else max(self.last_end, end)
        if rec.status == STATUS_ERROR:
            c["errors"] += 1
            self.errors[rec.error_kind or "unknown"] += 1
            return
        if rec.status != STATUS_OK:
            if rec.status == STATUS_CANCELLED_BY_CLIENT:  # --cancel-rate: counted, not a latency sample
                c["cancelled_by_client"] += 1
            return
        c["completed"] += 1
        ttft, tpot, e2e = _TTFT(times), _TPOT(times), _E2E(times)
        if ttft is not None:
            pend["ttft"].append(ttft)
            pend["ttft_sched"].append(ttft + lag)
        if tpot is not None:
            pend["tpot"].append(tpot)
        if e2e is not None:
            pend["e2e"].append(e2e)
            pend["e2e_sched"].append(e2e + lag)
        ttfrt, ttfat = _TTFRT(times), _TTFAT(times)
        if ttfrt is not None:  # a reasoning model's stream (the summary's rule: completed requests only)
            pend["ttfrt"].append(ttfrt)
            if ttfat is not None:
                pend["ttfat"].append(ttfat)
        if rec.reasoning_tokens:
            c["reasoning_tokens"] += rec.reasoning_tokens
        offsets, tokens = token_chunks(rec)
        if len(offsets) > 1:  # the per-token ITL values are computed in bulk at the hand-over (take)
            self.itl_starts.append(len(self.itl_offsets))
            self.itl_offsets.extend(offsets)
            self.itl_tokens.extend(tokens)
            if len(self.itl_offsets) >= FLUSH_CHUNKS:
                self._flush()
        if self.slo:
            itl_max = None
            if "itl" in self.slo and len(offsets) > 1:
                itl_max = 1000.0 * max((offsets[j] - offsets[j - 1]) / tokens[j] for j in range(1, len(offsets)))
            c["good"] += self._meets(ttft, tpot, itl_max, e2e)
            c["good_sched"] += self._meets(None if ttft is None else ttft + lag, tpot, itl_max,
                                           None if e2e is None else e2e + lag)
        out = times.output_tokens
        pend["output_tokens"].append(out)
        c["output_tokens"] += out
        c["input_tokens"] += rec.server_input_tokens if rec.server_input_tokens is not None else rec.input_tokens
        c["requested_tokens"] += rec.max_tokens
        if rec.max_tokens > 0 and out < rec.max_tokens:
            c["short"] += 1
        if rec.server_output_tokens is not None:
            c["server_counts"] += 1
            if rec.server_output_tokens != rec.client_output_tokens:
                c["token_mismatches"] += 1
        if rec.server_input_tokens is not None and rec.server_input_tokens != rec.input_tokens:
            c["input_mismatches"] += 1

    def _meets(self, ttft: float | None, tpot: float | None, itl_max: float | None, e2e: float | None) -> int:
        """The goodput rule of ``loadgen.core.slo.slo_mask`` for one request (values in ns)."""
        slo = self.slo
        if "ttft" in slo and (ttft is None or ttft > slo["ttft"] * 1e9):
            return 0
        if "tpot" in slo and tpot is not None and tpot > slo["tpot"] * 1e9:
            return 0
        if "itl" in slo and itl_max is not None and itl_max > slo["itl"] * 1e9:
            return 0
        if "e2e" in slo and (e2e is None or e2e > slo["e2e"] * 1e9):
            return 0
        return 1

    def _flush(self) -> None:
        """Record the pending values (one ``record_many`` per metric instead of one call per value)."""
        for name, values in self.pending.items():
            if values:
                self.hist[name].record_many(np.maximum(np.asarray(values, dtype=np.float64), 0))
                values.clear()
        if self.itl_starts:
            offs = np.asarray(self.itl_offsets, dtype=np.int64) * 1000
            toks = np.asarray(self.itl_tokens, dtype=np.int64)
            later = np.ones(len(offs), dtype=bool)
            later[np.asarray(self.itl_starts, dtype=np.int64)] = False  # a request's first chunk has no gap
            gaps = np.diff(offs, prepend=offs[:1])[later]
            spread = gaps / toks[later]
            self.hist["itl"].record_many(np.maximum(np.repeat(spread, toks[later]), 0))
            self.itl_offsets, self.itl_tokens, self.itl_starts = [], [], []

    def take(self) -> dict[str, Any] | None:
        """The delta since the last call (compact, JSON/msgpack-able), or None when nothing happened."""
        if not self.counts["records"]:
            return None
        self._flush()
        delta = {
            "hist": {name: h.to_dict() for name, h in self.hist.items() if h.count},
            "counts": dict(self.counts),
            "errors": dict(self.errors),
            "first_sched": self.first_sched,
            "last_sched": self.last_sched,
            "last_end": self.last_end,
        }
        self._reset()
        return delta


def _fmt(v: float | None, unit: str) -> str:
    """Four significant digits (the histogram keeps better than three)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if unit == "ms":
        v = v / 1e6
    if v == 0:
        return "0"
    digits = max(0, 3 - int(math.floor(math.log10(abs(v)))))
    return f"{v:,.{digits}f}"


class SparseWindow:
    """Percentiles of a few histogram deltas (``LogHistogram.to_dict`` payloads) without building a full layout.

    Same estimate as ``LogHistogram.percentile`` (bucket centres, linear interpolation between ranks, clamped to the
    exact min and max); the work is proportional to the buckets the deltas hold, not to the layout's 32k buckets.
    """

    def __init__(self, template: LogHistogram, parts: list[dict]) -> None:
        self.template = template
        parts = [p for p in parts if p.get("count")]
        self.count = sum(int(p["count"]) for p in parts)
        if not self.count:
            return
        idx = np.concatenate([np.asarray(p["index"], dtype=np.int64) for p in parts])
        cnt = np.concatenate([np.asarray(p["counts"], dtype=np.int64) for p in parts])
        order = np.argsort(idx, kind="stable")
        self.idx, self.cum = idx[order], np.cumsum(cnt[order])
        self.min = min(p["min"] for p in parts)
        self.max = max(p["max"] for p in parts)

    def _centre(self, rank: int) -> float:
        low, high = self.template.bucket_bounds(int(self.idx[int(np.searchsorted(self.cum, rank, side="right"))]))
        return (low + high) / 2.0

    def percentile(self, q: float) -> float:
        if self.count == 0:
            return math.nan
        if q <= 0 or q >= 100:
            return float(self.min if q <= 0 else self.max)
        pos = q / 100.0 * (self.count - 1)
        lo = math.floor(pos)
        est = self._centre(lo)
        if pos > lo:
            est += (pos - lo) * (self._centre(lo + 1) - est)
        return float(min(max(est, self.min), self.max))


class LLMStats:
    """The aggregate of every node's deltas (on the master, or in the local runner)."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self.clock = clock
        self.started = clock()
        self.hist = {name: new_histogram(name) for name in HISTS}
        self.counts: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.first_sched: int | None = None
        self.last_sched: int | None = None
        self.last_end: int | None = None
        self.recent: collections.deque[tuple[float, dict[str, dict], dict[str, int]]] = collections.deque()
        self._templates = {name: new_histogram(name) for name in HISTS}  # layouts, for the sparse windows
        self._rows_cache: tuple[Any, list[dict[str, Any]]] | None = None
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=HISTORY_MAX)
        self.deltas = 0
        self.server_source: Any = None  # () -> the sampler's latest common values (or None)

    def merge(self, delta: dict[str, Any] | None) -> None:
        if not delta:
            return
        self.deltas += 1
        hists = {name: LogHistogram.from_dict(d) for name, d in delta.get("hist", {}).items() if name in HISTS}
        for name, h in hists.items():
            self.hist[name].merge(h)
        counts = {k: int(v) for k, v in delta.get("counts", {}).items()}
        self.counts.update(counts)
        self.errors.update({k: int(v) for k, v in delta.get("errors", {}).items()})
        for key, pick in (("first_sched", min), ("last_sched", max), ("last_end", max)):
            v = delta.get(key)
            if v is not None:
                cur = getattr(self, key)
                setattr(self, key, v if cur is None else pick(cur, v))
        errors = sum(int(v) for v in delta.get("errors", {}).values())
        self.recent.append((self.clock(), dict(delta.get("hist", {})), {**counts, "errors": errors}))
        self._expire()

    def _expire(self) -> None:
        cutoff = self.clock() - WINDOW_S
        while self.recent and self.recent[0][0] < cutoff:
            self.recent.popleft()

    # -- reading ---------------------------------------------------------------------------------------------
    def current(self) -> tuple[dict[str, SparseWindow], dict[str, float]]:
        """The last ``WINDOW_S`` seconds: per-metric counts (sparse, cheap to combine) and per-second rates."""
        self._expire()
        parts: dict[str, list[dict]] = {name: [] for name in HISTS}
        totals: collections.Counter[str] = collections.Counter()
        for _, delta_hists, counts in self.recent:
            for name, d in delta_hists.items():
                if name in parts:
                    parts[name].append(d)
            totals.update(counts)
        span = min(WINDOW_S, max(1e-9, self.clock() - self.started))
        rates = {"requests_per_s": totals["completed"] / span, "output_tokens_per_s": totals["output_tokens"] / span,
                 "errors_per_s": totals["errors"] / span}
        return {name: SparseWindow(self._templates[name], parts[name]) for name in HISTS}, rates

    def percentile(self, name: str, q: float, hist: Any = None) -> float | None:
        h = hist if hist is not None else self.hist[name]
        return None if h.count == 0 else h.percentile(q)

    def rows(self) -> list[dict[str, Any]]:
        """The web UI table: one row per metric (cumulative; 'current' over the last seconds), then rates, errors.

        Cached until the next delta or second: every open browser tab polls it, on the generator's hub."""
        key = (self.deltas, int(self.clock()))
        if self._rows_cache is not None and self._rows_cache[0] == key:
            return self._rows_cache[1]
        rows = self._rows()
        self._rows_cache = (key, rows)
        return rows

    def _rows(self) -> list[dict[str, Any]]:
        cur_hists, rates = self.current()
        rows = []
        for name, (label, unit) in METRICS.items():
            h = self.hist[name]
            row = {"metric": label, "unit": unit, "count": h.count, "mean": _fmt(h.mean if h.count else None, unit),
                   "min": _fmt(h.min, unit), "max": _fmt(h.max, unit),
                   "current": _fmt(self.percentile(name, 50.0, cur_hists[name]), unit)}
            row.update({k: _fmt(self.percentile(name, q), unit) for k, q in zip(PCT_KEYS, PCTS, strict=True)})
            rows.append(row)
        elapsed = max(1e-9, self.clock() - self.started)
        c = self.counts
        for label, total, cur in (("requests/s (completed)", c["completed"], rates["requests_per_s"]),
                                  ("output tokens/s", c["output_tokens"], rates["output_tokens_per_s"]),
                                  ("errors/s", c["errors"], rates["errors_per_s"])):
            rows.append({"metric": label, "unit": "1/s", "count": total, "mean": _fmt(total / elapsed, ""),
                         "current": _fmt(cur, "")})
        for kind, n in self.errors_by_kind().items():
            rows.append({"metric": f"errors: {kind}", "unit": "", "count": n})
        return rows

    def errors_by_kind(self) -> dict[str, int]:
        out = {k: self.errors.get(k, 0) for k in ERROR_KINDS}
        out.update({k: v for k, v in self.errors.items() if k not in out})
        out["short_output"] = self.counts["short"]
        return out

    def snapshot(self) -> dict[str, Any]:
        """A point of the live history: cumulative and current percentiles (ms), rates, errors."""
        cur_hists, rates = self.current()
        point: dict[str, Any] = {"t": round(self.clock() - self.started, 3), **{k: round(v, 4) for k, v in rates.items()}}
        for name in ("ttft", "tpot", "itl", "e2e"):
            for key, q in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0)):
                v = self.percentile(name, q, cur_hists[name])
                point[f"{name}_{key}_ms"] = None if v is None else round(v / 1e6, 4)
        point["errors"] = {k: v for k, v in self.errors.items() if v}
        point["completed"] = self.counts["completed"]
        point.update(self._server_point())
        return point

    def _server_point(self) -> dict[str, Any]:
        """``server_queued``, ``server_running``, ``server_kv_usage``: the server's latest scrape, when fresh."""
        latest = self.server_source() if self.server_source is not None else None
        if not latest or time.perf_counter_ns() - int(latest.get("t_mono_ns", 0)) > SERVER_STALE_NS:
            return {}
        return {f"server_{k}": latest.get(k) for k in SERVER_KEYS}

    def tick(self) -> dict[str, Any]:
        point = self.snapshot()
        self.history.append(point)
        return point

    def to_json(self) -> dict[str, Any]:
        """What ``/loadgen/stats`` serves: the table rows, the counters and the history (for the charts)."""
        return {"rows": self.rows(), "counts": dict(self.counts), "errors_by_kind": self.errors_by_kind(),
                "history": list(self.history), "metrics": {k: v[0] for k, v in METRICS.items()},
                "percentiles_exact_to": "3 significant digits (mergeable log histogram, relative error < 0.05 %)"}

    def csv_rows(self) -> list[list[Any]]:
        """Header + one row per metric: count, mean, min, max and percentiles at full precision (ms / tokens)."""
        header = ["metric", "unit", "count", "mean", "min", "max", "p50", "p90", "p95", "p99", "p99.9"]
        out: list[list[Any]] = [header]
        for name, (label, unit) in METRICS.items():
            h = self.hist[name]
            scale = 1e-6 if unit == "ms" else 1.0
            vals = [h.mean, h.min, h.max, *(h.percentile(q) for q in PCTS)] if h.count else [None] * 8
            out.append([label, unit, h.count, *("" if v is None else f"{v * scale:.6g}" for v in vals)])
        c = self.counts
        for label, key in (("completed requests", "completed"), ("output tokens", "output_tokens"),
                           ("input tokens", "input_tokens")):
            out.append([label, "", c[key], "", "", "", "", "", "", "", ""])
        for kind, n in self.errors_by_kind().items():
            out.append([f"errors: {kind}", "", n, "", "", "", "", "", "", "", ""])
        return out
