"""What happened during a level, window by window: ``summary["timeseries"]``.

The summary says how a level went on average; a stall, a warm-up ramp or a server that fell behind half way
only shows over time. This module turns a level's records into per-window figures (docs/SUMMARY_SCHEMA.md,
"Time series"): scheduled, issued and completed request rates, mean requests in flight, output tokens/s, TTFT,
ITL and E2E p50/p90/p99, schedule lag p99, errors by kind and drops.

Decisions:

- Windows start at the run's t0 and cover the whole run, warm-up and cool-down included (the report shades the
  measurement window), so a reader sees the ramp that the summary leaves out.
- Each event lands in the window where it was *observed*: a request is scheduled/issued at its scheduled/issued
  time, completes (and gives its E2E) at its end, gives its TTFT at its first token, and each token-bearing
  chunk gives its tokens and ITL values at its own arrival. That is how a server's metrics are sampled too, so
  the two line up on one time axis. Latencies are of completed requests only, as in the summary; schedule lag of
  every issued request; errors by kind at the moment the error was seen.
- Output tokens/s counts the tokens seen in the stream (``chunk_tokens``) of completed requests, at their arrival,
  so a long answer spreads over the windows it was generated in (the summary's total uses the server's count
  where given; the two agree unless ``token_count_mismatches`` says otherwise).
- The last window usually ends after the run's last event; its rates still divide by the full window width.

Memory is bounded whatever the run's length: records are streamed once, their figures buffered in compact
``array`` blocks and folded into per-window counters and log histograms (``LogHistogram``, 32 buckets per
octave: a window's percentile is within 1.6 % of the exact value, and exact when the window's values are equal).
Windows are 1 s wide until a run needs more than ``max_windows`` (600) of them; then adjacent windows are merged
pairwise (2 s, 4 s, ...), which is exact since every width is a multiple of the first. At most 600 windows x 4
histograms x 8 KiB: about 20 MB, plus the blocks (a few MB), whatever the number of records.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from typing import Any

import numpy as np

from loadgen.core.histogram import LogHistogram
from loadgen.core.metrics import NS_PER_MS, token_chunks
from loadgen.core.records import STATUS_DROPPED, STATUS_ERROR, STATUS_OK, RequestRecord

WINDOW_S = 1.0
MAX_WINDOWS = 600
PERCENTILE_KEYS = ("p50", "p90", "p99")
_HIST_LAYOUT = {"lowest": 1_000, "highest": 3_600_000_000_000, "sub_bucket_bits": 6}  # 1 µs .. 1 h
_COUNTS = ("scheduled", "issued", "completed", "dropped", "tokens")
_HISTS = ("ttft", "itl", "e2e", "lag")
_BLOCK_RECORDS = 1 << 13
_BLOCK_CHUNKS = 1 << 16


def _sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


class TimeSeriesBuilder:
    """Feed it records (``add``) in any order, then ``result()``; see the module docstring."""

    def __init__(self, window_s: float = WINDOW_S, max_windows: int = MAX_WINDOWS) -> None:
        if window_s <= 0 or max_windows < 2:
            raise ValueError(f"need window_s > 0 and max_windows >= 2, got {window_s} and {max_windows}")
        self.width = int(round(window_s * 1e9))
        self.max_windows = int(max_windows)
        self.n = 0  # windows allocated so far
        self.end_ns = 0  # latest event seen: the series ends there
        self.records = 0
        self.counts = {k: np.zeros(0, np.int64) for k in _COUNTS}
        self.area = np.zeros(0)  # ns x requests in flight, per window
        self.errors: dict[str, np.ndarray] = {}
        self.hists: dict[str, list[LogHistogram | None]] = {k: [] for k in _HISTS}
        # issued, never ended (cancelled in flight): in flight to the series' end; as many as were in flight when
        # the run was stopped, however long it ran
        self._open = array("q")
        self._kinds: list[str] = []
        self._new_buffers()

    def _new_buffers(self) -> None:
        b = {k: array("q") for k in ("sched", "issued", "drop", "done", "err_t", "err_k", "iv_a", "iv_b",
                                     "ttft_t", "ttft_v", "e2e_t", "e2e_v", "lag_t", "lag_v",
                                     "ch_off", "ch_tok", "req_issued", "req_start")}
        self._buf = b

    # -- per record: a few appends, no numpy --------------------------------------------------------------
    def add(self, r: RequestRecord) -> None:
        b = self._buf
        self.records += 1
        b["sched"].append(r.scheduled_ns)
        issued = r.issued_ns
        if issued is None:
            if r.status == STATUS_DROPPED:
                b["drop"].append(r.scheduled_ns)
        else:
            b["issued"].append(issued)
            b["lag_t"].append(issued)
            b["lag_v"].append(issued - r.scheduled_ns)
            if r.end_ns is None:
                self._open.append(issued)
            else:
                b["iv_a"].append(issued)
                b["iv_b"].append(max(r.end_ns, issued))
            if r.status == STATUS_OK:
                self._add_completed(r, issued)
            elif r.status == STATUS_ERROR:
                kind = r.error_kind or "unknown"
                if kind not in self._kinds:
                    self._kinds.append(kind)
                b["err_t"].append(r.end_ns if r.end_ns is not None else issued)
                b["err_k"].append(self._kinds.index(kind))
        if len(b["sched"]) >= _BLOCK_RECORDS or len(b["ch_off"]) >= _BLOCK_CHUNKS:
            self._flush()

    def _add_completed(self, r: RequestRecord, issued: int) -> None:
        b = self._buf
        offsets, tokens = token_chunks(r)
        last = None
        if offsets:
            first, last = offsets[0] * 1000, offsets[-1] * 1000
            b["ttft_t"].append(issued + first)
            b["ttft_v"].append(first)
            b["req_issued"].append(issued)
            b["req_start"].append(len(b["ch_off"]))
            b["ch_off"].extend(offsets)
            b["ch_tok"].extend(tokens)
        end = r.end_ns if r.end_ns is not None else (None if last is None else issued + last)
        if end is None:
            return
        b["done"].append(end)
        e2e = last if last is not None else end - issued  # core/metrics.py:_e2e
        b["e2e_t"].append(end)
        b["e2e_v"].append(e2e)

    # -- per block: numpy ---------------------------------------------------------------------------------
    def _flush(self) -> None:
        a = {k: np.frombuffer(v, dtype=np.int64).copy() for k, v in self._buf.items()}
        self._new_buffers()
        chunk_t, chunk_tok, itl_t, itl_v = _chunks(a["ch_off"], a["ch_tok"], a["req_issued"], a["req_start"])
        latest = [x.max() for x in (a["sched"], a["issued"], a["iv_b"], a["done"], a["err_t"], chunk_t) if x.size]
        if not latest:
            return
        self._ensure(int(max(latest)))
        for key, times in (("scheduled", a["sched"]), ("issued", a["issued"]), ("completed", a["done"]),
                           ("dropped", a["drop"])):
            self.counts[key] += self._bincount(times)
        self.counts["tokens"] += self._bincount(chunk_t, chunk_tok)
        for k, kind in enumerate(self._kinds):
            hits = self._bincount(a["err_t"][a["err_k"] == k])
            self.errors[kind] = self.errors.get(kind, np.zeros(self.n, np.int64)) + hits
        self._add_area(a["iv_a"], a["iv_b"])
        for key, t, v in (("ttft", a["ttft_t"], a["ttft_v"]), ("e2e", a["e2e_t"], a["e2e_v"]),
                          ("lag", a["lag_t"], a["lag_v"]), ("itl", itl_t, itl_v)):
            self._add_values(key, t, v)

    def _window(self, t: np.ndarray) -> np.ndarray:
        return np.maximum(t, 0) // self.width

    def _bincount(self, t: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        if t.size == 0:
            return np.zeros(self.n, np.int64)
        out = np.bincount(self._window(t), weights=weights, minlength=self.n)
        return np.rint(out).astype(np.int64)

    def _add_area(self, a: np.ndarray, b: np.ndarray) -> None:
        """Add the time each interval [a, b] spends in each window: O(1) per interval (a prefix sum for the
        windows it covers whole), so a request longer than many windows costs no more than a short one."""
        if a.size == 0:
            return
        w, n = self.width, self.n
        a, b = np.maximum(a, 0), np.maximum(b, 0)
        i0, i1 = a // w, b // w
        same = i0 == i1
        d = ~same
        area = (_wsum(i0[same], (b - a)[same], n) + _wsum(i0[d], (i0[d] + 1) * w - a[d], n)
                + _wsum(i1[d], b[d] - i1[d] * w, n))
        whole = np.bincount(i0[d] + 1, minlength=n + 1) - np.bincount(i1[d], minlength=n + 1)
        self.area += np.cumsum(whole)[:n] * float(w) + area

    def _add_values(self, key: str, t: np.ndarray, v: np.ndarray) -> None:
        if t.size == 0:
            return
        idx = self._window(t)
        order = np.argsort(idx, kind="stable")
        idx, v = idx[order], v[order]
        cuts = np.flatnonzero(np.diff(idx)) + 1
        hists = self.hists[key]
        for i, vals in zip(idx[np.concatenate(([0], cuts))], np.split(v, cuts), strict=True):
            h = hists[i]
            if h is None:
                h = hists[i] = LogHistogram(**_HIST_LAYOUT)
            h.record_many(vals)

    # -- window bookkeeping -------------------------------------------------------------------------------
    def _ensure(self, latest_ns: int) -> None:
        """Room for a window holding ``latest_ns``: merge adjacent windows pairwise while more than
        ``max_windows`` would be needed, then grow every per-window structure."""
        self.end_ns = max(self.end_ns, latest_ns)
        while max(0, latest_ns) // self.width + 1 > self.max_windows:
            self._coarsen()
        need = max(0, latest_ns) // self.width + 1
        if need <= self.n:
            return
        grow = need - self.n
        for k in _COUNTS:
            self.counts[k] = np.concatenate((self.counts[k], np.zeros(grow, np.int64)))
        for k in self.errors:
            self.errors[k] = np.concatenate((self.errors[k], np.zeros(grow, np.int64)))
        self.area = np.concatenate((self.area, np.zeros(grow)))
        for k in _HISTS:
            self.hists[k].extend([None] * grow)
        self.n = need

    def _coarsen(self) -> None:
        def pairs(x: np.ndarray) -> np.ndarray:
            if x.size % 2:
                x = np.concatenate((x, np.zeros(1, x.dtype)))
            return x.reshape(-1, 2).sum(axis=1)

        self.counts = {k: pairs(v) for k, v in self.counts.items()}
        self.errors = {k: pairs(v) for k, v in self.errors.items()}
        self.area = pairs(self.area)
        for k in _HISTS:
            old = self.hists[k] + [None] * (len(self.hists[k]) % 2)
            merged: list[LogHistogram | None] = []
            for h0, h1 in zip(old[0::2], old[1::2], strict=True):
                if h0 is not None and h1 is not None:
                    h0.merge(h1)
                merged.append(h0 if h0 is not None else h1)
            self.hists[k] = merged
        self.n = (self.n + 1) // 2
        self.width *= 2

    # -- the result ---------------------------------------------------------------------------------------
    def result(self) -> dict[str, Any]:
        """``summary["timeseries"]``: lists with one entry per window (null where a window has no value)."""
        self._flush()
        if self._open:
            opened = np.frombuffer(self._open, dtype=np.int64).copy()
            self._open = array("q")
            self._ensure(int(opened.max()))
            self._add_area(opened, np.full(opened.size, self.end_ns, np.int64))
        n, w_s = self.n, self.width / 1e9

        def rate(c: np.ndarray) -> list[float]:
            return [_sig(x, 6) for x in (c / w_s).tolist()]

        def pct(key: str) -> dict[str, list[float | None]]:
            out: dict[str, list[float | None]] = {p: [] for p in PERCENTILE_KEYS}
            for h in self.hists[key]:
                for p in PERCENTILE_KEYS:
                    out[p].append(None if h is None else _sig(h.percentile(float(p[1:])) / NS_PER_MS))
            return out

        lag = pct("lag")["p99"]
        return {
            "window_s": w_s, "windows": n, "end_s": round(self.end_ns / 1e9, 6),
            "t_s": [round(i * w_s, 6) for i in range(n)],
            "scheduled_rps": rate(self.counts["scheduled"]), "issued_rps": rate(self.counts["issued"]),
            "completed_rps": rate(self.counts["completed"]), "output_tps": rate(self.counts["tokens"]),
            "in_flight": [_sig(x) for x in (self.area / self.width).tolist()],
            "ttft_ms": pct("ttft"), "itl_ms": pct("itl"), "e2e_ms": pct("e2e"), "schedule_lag_p99_ms": lag,
            "errors_by_kind": {k: v.tolist() for k, v in sorted(self.errors.items())},
            "dropped": self.counts["dropped"].tolist(),
        }


def _wsum(idx: np.ndarray, weights: np.ndarray, n: int) -> np.ndarray:
    """Sum of ``weights`` per window, as floats (numpy's bincount of nothing is an int array)."""
    return np.bincount(idx, weights=weights.astype(np.float64), minlength=n).astype(np.float64)


def _chunks(off_us: np.ndarray, tok: np.ndarray, req_issued: np.ndarray,
            req_start: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(arrival ns of every token-bearing chunk, its tokens, ITL times, ITL values in ns) of a block.

    ITL as in core/metrics.py: a chunk of k tokens after the first gives k values of gap / k (one entry per
    value, so a histogram weights it by tokens); the first chunk of a request gives none."""
    n = off_us.size
    if n == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty, np.zeros(0)
    per_req = np.diff(np.append(req_start, n))
    t = np.repeat(req_issued, per_req) + off_us * 1000
    gaps = np.empty(n)
    gaps[0] = np.nan
    gaps[1:] = np.diff(t) / tok[1:]
    gaps[req_start] = np.nan
    ok = ~np.isnan(gaps)
    return t, tok, np.repeat(t[ok], tok[ok]), np.repeat(gaps[ok], tok[ok])


def level_timeseries(records: Iterable[RequestRecord], window_s: float = WINDOW_S,
                     max_windows: int = MAX_WINDOWS) -> dict[str, Any]:
    """``summary["timeseries"]`` of every record (a level's ``load_level_records(run_dir)``), read once."""
    b = TimeSeriesBuilder(window_s, max_windows)
    for r in records:
        b.add(r)
    return b.result()
