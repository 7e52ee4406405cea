"""From trace rows to a replay plan: window, timestamp buckets, rate scaling, time scaling, length scaling.

The plan is compact numpy arrays (int64 offsets, int32 lengths, about 16 bytes per request) plus the facts a report
needs to say what was done to the trace. The order of the steps is fixed and stated:

1. window ``[start, start + duration)`` of trace time (relative to the first row); reading stops at its end;
2. timestamp buckets (Mooncake records arrivals in ~3 s buckets): fired together as recorded, or spread uniformly
   over their bucket (seeded); spreading refuses a trace whose timestamps are not bucketed;
3. rate scaling to ``target_rate`` (the final mean rate, after the speed-up): *thinning whole bursts* to go down,
   *superposition of circularly shifted copies* (plus one thinned copy for a fractional part) to go up. A burst is
   a run of arrivals separated by gaps shorter than ``burst_gap``. Thinning single requests keeps the trace's
   relative rate curve but pulls its index of dispersion towards 1 (IoD' = p*IoD + 1 - p); keeping or dropping
   whole bursts keeps the dispersion when bursts are what makes the trace bursty (the Azure code trace).
   ``burst_gap="auto"`` picks, from a ladder, the gap whose expected dispersion after thinning (computed exactly
   from the trace, no simulation) best matches the trace's own at 1 s and at ``dispersion_window_s``; a smooth
   trace whose long-window dispersion is a slow rate drift (the Azure conversation trace) then keeps near-single
   request thinning, its short-scale shape, and a lower long-window dispersion, as any thinning must give it.
   Independent shifted copies keep the dispersion when going up (variances add like means). Each random choice
   (which bursts, which shifts) is the best of ``CANDIDATES`` seeded draws by the same two dispersions, which
   removes most of the draw-to-draw spread of a single draw (about +-20 % on the code trace);
4. time scaling by ``speedup`` (offsets divided by it);
5. length scaling for short-context models: ``clip`` each length to the maximum, or ``scale`` all lengths by one
   factor so the longest fits (shape kept; Mooncake prefix blocks shrink by the same factor);
6. caps: ``max_duration_s`` (replay time) and ``max_requests``.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from loadgen.errors import UsageError
from loadgen.traces.readers import MOONCAKE_BLOCK, TraceRow

NS = 1_000_000_000
GAP_LADDER_S = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
LENGTH_MODES = ("clip", "scale")
BUCKET_MODES = ("together", "spread")
SHORT_WINDOW_S = 1.0  # the short time scale whose dispersion rate scaling also keeps
CANDIDATES = 16  # seeded draws per random choice of the rate scaling; the closest in dispersion is kept


@dataclass(frozen=True)
class ReplayOptions:
    speedup: float = 1.0
    target_rate: float | None = None  # requests/s of the replay (after the speed-up)
    window_start_s: float = 0.0
    window_duration_s: float | None = None  # trace time; None = to the end
    buckets: str = "together"
    bucket_s: float = 3.0
    burst_gap: float | str = "auto"  # seconds, or "auto"
    dispersion_window_s: float = 60.0
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None
    length_mode: str = "clip"
    max_duration_s: float | None = None  # replay time
    max_requests: int | None = None
    seed: int = 0

    def validate(self) -> ReplayOptions:
        if not (math.isfinite(self.speedup) and self.speedup > 0):
            raise UsageError(f"--speedup {self.speedup!r}: must be a positive number (2 = twice as fast)")
        if self.target_rate is not None and not (math.isfinite(self.target_rate) and self.target_rate > 0):
            raise UsageError(f"--target-rate {self.target_rate!r}: must be a positive number of requests/s")
        if self.window_start_s < 0 or (self.window_duration_s is not None and self.window_duration_s <= 0):
            raise UsageError("--window START:DURATION: START must be >= 0 and DURATION > 0")
        if self.buckets not in BUCKET_MODES:
            raise UsageError(f"--trace-buckets {self.buckets!r}: use together or spread")
        if not self.bucket_s > 0:
            raise UsageError(f"--trace-bucket {self.bucket_s!r}: must be a positive duration")
        if self.burst_gap != "auto" and not (isinstance(self.burst_gap, (int, float)) and self.burst_gap >= 0):
            raise UsageError(f"--burst-gap {self.burst_gap!r}: seconds >= 0 (0 = thin single requests) or auto")
        if self.length_mode not in LENGTH_MODES:
            raise UsageError(f"--length-mode {self.length_mode!r}: use clip or scale")
        for name, v in (("--max-input-tokens", self.max_input_tokens), ("--max-output-tokens", self.max_output_tokens)):
            if v is not None and v < 1:
                raise UsageError(f"{name} {v}: must be at least 1")
        return self


def parse_window(text: str | None, parse_seconds: Any) -> tuple[float, float | None]:
    """``START:DURATION`` (durations like 90, 5m, 1h; DURATION may be empty = to the end) -> seconds."""
    if not text:
        return 0.0, None
    start, sep, dur = text.partition(":")
    if not sep:
        raise UsageError(f"--window {text!r}: expected START:DURATION, e.g. 0:5m or 10m:30m (or 10m: for the rest)")
    s = parse_seconds(start or "0", "--window START")
    d = parse_seconds(dur, "--window DURATION") if dur.strip() else None
    if d is not None and d <= 0:
        raise UsageError(f"--window {text!r}: DURATION must be > 0")
    return s, d


@dataclass
class SourceRows:
    """The rows of the window, as compact arrays (times relative to the window start)."""

    time_ns: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    hash_flat: np.ndarray | None  # every row's hash ids, concatenated
    hash_start: np.ndarray | None  # row i's ids are hash_flat[hash_start[i]:hash_start[i+1]]
    span_ns: int  # observation span of the window (for the mean rate)
    truncated: bool  # reading stopped at the window's end

    def __len__(self) -> int:
        return len(self.time_ns)


def load_window(rows: Iterable[TraceRow], start_s: float = 0.0, duration_s: float | None = None) -> SourceRows:
    """Keep the rows inside the window. Memory: a few bytes per row of the window only.

    The rows after the window are still read (not kept): the reader checks on every row that the file is sorted
    by time, so an unsorted trace is refused with or without ``--window``, never silently cut to the rows before
    the first out-of-order one. (Reading the rest costs about a second per million rows.)"""
    start = round(start_s * NS)
    end = None if duration_s is None else start + round(duration_s * NS)
    t, n_in, n_out = array("q"), array("q"), array("q")
    flat, starts = array("q"), array("q", [0])
    any_hash = False
    truncated = False
    for r in rows:
        if r.time_ns < start:
            continue
        if end is not None and r.time_ns >= end:
            truncated = True
            continue
        t.append(r.time_ns - start)
        n_in.append(r.input_tokens)
        n_out.append(r.output_tokens)
        if r.hash_ids:
            any_hash = True
            flat.extend(r.hash_ids)
        starts.append(len(flat))
    times = np.frombuffer(t, dtype=np.int64).copy()
    if not len(times):
        where = f"{start_s:g} s" + (f" to {start_s + duration_s:g} s" if duration_s is not None else " on")
        raise UsageError(f"--window: no trace rows from {where} of the trace; check --window against the trace span "
                         "(`loadgen traces info FILE`)")
    span = (end - start) if (truncated and end is not None) else int(times[-1])
    return SourceRows(times, np.frombuffer(n_in, dtype=np.int64).astype(np.int32),
                      np.frombuffer(n_out, dtype=np.int64).astype(np.int32),
                      np.frombuffer(flat, dtype=np.int64).copy() if any_hash else None,
                      np.frombuffer(starts, dtype=np.int64).copy() if any_hash else None, span, truncated)


# -- timestamp buckets ---------------------------------------------------------------------------------------
def bucketed_fraction(time_ns: np.ndarray, bucket_ns: int) -> float:
    """Share of steps between distinct timestamps that are a whole number (>= 1) of buckets, within 1 %."""
    distinct = np.unique(time_ns)
    if len(distinct) < 3:
        return 0.0
    steps = np.diff(distinct) / bucket_ns
    whole = np.rint(steps)
    ok = (whole >= 1) & (np.abs(steps - whole) <= 0.01 * np.maximum(whole, 1))
    return float(ok.mean())


def spread_buckets(time_ns: np.ndarray, bucket_ns: int, rng: np.random.Generator) -> np.ndarray:
    """Spread each group of equal timestamps uniformly over its bucket, never reaching the next group's time.

    Groups keep their order (each stays inside ``[t, next t)``), and within a group the rows keep their file order
    and take the group's sorted random times, so the result is sorted and row i still replays row i.
    """
    distinct, counts = np.unique(time_ns, return_counts=True)
    nxt = np.append(distinct[1:], distinct[-1] + bucket_ns)
    width = np.minimum(bucket_ns, nxt - distinct)
    group = np.repeat(np.arange(len(distinct)), counts)
    out = distinct[group] + np.floor(rng.random(len(time_ns)) * width[group]).astype(np.int64)
    return np.sort(out)


# -- bursts ----------------------------------------------------------------------------------------------
def burst_ids(time_ns: np.ndarray, gap_s: float) -> np.ndarray:
    """Burst number of each arrival: a new burst starts after a gap >= ``gap_s`` (0: every arrival its own)."""
    if gap_s <= 0:
        return np.arange(len(time_ns), dtype=np.int64)
    gaps = np.diff(time_ns)
    return np.concatenate(([0], np.cumsum(gaps >= round(gap_s * NS)))).astype(np.int64)


def expected_thinned_iod(time_ns: np.ndarray, bursts: np.ndarray, keep: float, window_ns: int, span_ns: int) -> float:
    """Expected index of dispersion after keeping each burst with probability ``keep`` (see module docstring)."""
    n_windows = int(span_ns // window_ns)
    if n_windows < 2:
        return math.nan
    w = time_ns // window_ns
    inside = w < n_windows
    w, b = w[inside], bursts[inside]
    counts = np.bincount(w, minlength=n_windows).astype(np.float64)
    mean = counts.mean()
    if mean == 0:
        return math.nan
    var = counts.var(ddof=1)
    key = w * (int(b.max()) + 1 if len(b) else 1) + b
    _, sizes = np.unique(key, return_counts=True)
    q = float((sizes.astype(np.float64) ** 2).sum()) / n_windows
    return keep * var / mean + (1.0 - keep) * q / mean


def choose_burst_gap(time_ns: np.ndarray, keep: float, window_s: float, span_ns: int) -> tuple[float, float]:
    """The ladder gap whose expected dispersion after thinning best matches the trace's at 1 s and ``window_s``.

    Matching only the long window would pick large artificial "bursts" in a smooth trace and make its short-scale
    structure burstier than it was; scoring both scales keeps single-request thinning for such traces.
    Returns (gap, expected dispersion at ``window_s``).
    """
    scales = [round(w * NS) for w in sorted({SHORT_WINDOW_S, window_s})]
    targets = [_iod(time_ns, w, int(span_ns // w)) for w in scales]
    if not all(math.isfinite(x) and x > 0 for x in targets):
        return 0.0, math.nan
    best = (math.inf, 0.0, math.nan)
    for gap in GAP_LADDER_S:
        ids = burst_ids(time_ns, gap)
        exp = [expected_thinned_iod(time_ns, ids, keep, w, span_ns) for w in scales]
        if all(math.isfinite(x) and x > 0 for x in exp):
            err = sum(abs(math.log(e / t)) for e, t in zip(exp, targets, strict=True))
            if err < best[0] - 1e-9:
                best = (err, gap, exp[-1])
    return best[1], best[2]


def thin_bursts(bursts: np.ndarray, target_count: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask keeping whole bursts, chosen in a seeded random order until ``target_count`` arrivals are kept."""
    n_bursts = int(bursts.max()) + 1 if len(bursts) else 0
    sizes = np.bincount(bursts, minlength=n_bursts)
    order = rng.permutation(n_bursts)
    cum = np.cumsum(sizes[order])
    k = int(np.searchsorted(cum, target_count, side="left")) + 1 if target_count > 0 else 0
    # take the burst that crosses the target only if that lands closer to it
    if 0 < k <= n_bursts and k >= 2 and abs(cum[k - 2] - target_count) < abs(cum[k - 1] - target_count):
        k -= 1
    chosen = np.zeros(n_bursts, dtype=bool)
    chosen[order[:k]] = True
    return chosen[bursts]


# -- the plan --------------------------------------------------------------------------------------------
@dataclass
class TracePlan:
    offsets_ns: np.ndarray  # int64, sorted: the replay schedule
    input_tokens: np.ndarray  # int32 after length scaling
    output_tokens: np.ndarray  # int32 after length scaling
    rows: np.ndarray  # int32: which window row each request replays (for its hash ids)
    copy: np.ndarray  # int16: which superposed copy (0 = the trace itself)
    source: SourceRows
    block_tokens: int = MOONCAKE_BLOCK
    facts: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.offsets_ns)


def build_plan(src: SourceRows, opts: ReplayOptions) -> TracePlan:
    """Apply steps 2-6 of the module docstring to the window's rows; ``facts`` says what was done."""
    opts.validate()
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([opts.seed, 0x7472])))
    n = len(src)
    times = src.time_ns.copy()
    span = max(int(src.span_ns), 1)
    facts: dict[str, Any] = {"options": asdict(opts), "window_rows": n, "window_span_s": span / NS,
                             "window_rate_rps": n / (span / NS)}
    # 2. buckets
    bucket_ns = round(opts.bucket_s * NS)
    frac = bucketed_fraction(times, bucket_ns)
    is_bucketed = frac >= 0.9 and len(np.unique(times)) < 0.9 * n
    if opts.buckets == "spread":
        if not is_bucketed:
            raise UsageError(f"--trace-buckets spread: this trace's timestamps are not in {opts.bucket_s:g} s buckets "
                             f"({frac:.0%} of steps are whole buckets); replay it as recorded (together)")
        times = spread_buckets(times, bucket_ns, rng)
    facts["buckets"] = {"bucketed": bool(is_bucketed), "bucket_s": opts.bucket_s, "mode": opts.buckets,
                        "text": (f"timestamps in {opts.bucket_s:g} s buckets, "
                                 + ("spread uniformly over each bucket" if opts.buckets == "spread"
                                    else "each bucket fired together as recorded")) if is_bucketed
                        else "timestamps not bucketed: replayed as recorded"}
    # 3. rate scaling
    rows = np.arange(n, dtype=np.int32)
    copy = np.zeros(n, dtype=np.int16)
    trace_rate = n / (span / NS) * opts.speedup  # the replay's rate before rate scaling
    factor = 1.0 if opts.target_rate is None else opts.target_rate / trace_rate
    rate_facts: dict[str, Any] = {"rate_before_rps": trace_rate, "target_rps": opts.target_rate, "factor": factor,
                                  "method": "none", "text": "rate as recorded"}
    if opts.target_rate is not None and abs(factor - 1.0) > 1e-9:
        times, rows, copy, rate_facts = _scale_rate(times, span, factor, opts, rng, rate_facts)
    facts["rate"] = rate_facts
    # 4. time scaling
    offsets = np.rint(times / opts.speedup).astype(np.int64) if opts.speedup != 1 else times.astype(np.int64)
    facts["speedup"] = opts.speedup
    # 5. lengths
    n_in = np.maximum(src.input_tokens[rows], 1).astype(np.int32)
    n_out = np.maximum(src.output_tokens[rows], 1).astype(np.int32)
    raised = {"input": int((src.input_tokens[rows] < 1).sum()), "output": int((src.output_tokens[rows] < 1).sum())}
    n_in, f_in, clipped_in = _limit(n_in, opts.max_input_tokens, opts.length_mode)
    n_out, f_out, clipped_out = _limit(n_out, opts.max_output_tokens, opts.length_mode)
    block = max(1, round(MOONCAKE_BLOCK * f_in))
    facts["lengths"] = {"mode": opts.length_mode, "max_input_tokens": opts.max_input_tokens,
                        "max_output_tokens": opts.max_output_tokens, "input_scale": f_in, "output_scale": f_out,
                        "input_clipped": clipped_in, "output_clipped": clipped_out, "raised_to_1": raised,
                        "block_tokens": block, "text": _length_text(opts, f_in, f_out, clipped_in, clipped_out,
                                                                    len(rows))}
    # 6. caps
    keep = len(offsets)
    if opts.max_duration_s is not None:
        keep = int(np.searchsorted(offsets, round(opts.max_duration_s * NS), side="left"))
    if opts.max_requests is not None:
        keep = min(keep, opts.max_requests)
    if keep == 0:
        raise UsageError("the replay is empty: --duration/--requests leave no request of the trace window")
    plan = TracePlan(offsets[:keep], n_in[:keep], n_out[:keep], rows[:keep], copy[:keep], src, block, facts)
    facts["requests"] = keep
    facts["replay_span_s"] = float(plan.offsets_ns[-1]) / NS if keep else 0.0
    # the replay's observation span: the window's, time-scaled (the last request need not sit at its end)
    window_s = span / NS / opts.speedup
    if opts.max_duration_s is not None:
        window_s = min(window_s, opts.max_duration_s)
    facts["replay_window_s"] = window_s
    facts["replay_rate_rps"] = keep / window_s if window_s > 0 else None
    return plan


def _iod(t: np.ndarray, window_ns: int, n_windows: int) -> float:
    """Index of dispersion over complete windows (same definition as ``loadgen.core.stats``; any order of t)."""
    if n_windows < 2:
        return math.nan
    w = t // window_ns
    counts = np.bincount(w[w < n_windows], minlength=n_windows)
    m = counts.mean()
    return float(counts.var(ddof=1) / m) if m > 0 else math.nan


def _scale_rate(times: np.ndarray, span: int, factor: float, opts: ReplayOptions, rng: np.random.Generator,
                facts: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Thinning / superposition; each random choice is the best of ``CANDIDATES`` seeded draws by dispersion."""
    n = len(times)
    whole = int(math.floor(factor)) if factor >= 1 else 0
    part = factor - whole
    if part < 1e-9:
        part = 0.0
    window_ns = round(opts.dispersion_window_s * NS)
    n_windows = int(span // window_ns)
    trace_iod = _iod(times, window_ns, n_windows)
    scales = [(w, int(span // w)) for w in sorted({round(SHORT_WINDOW_S * NS), window_ns})]
    targets = [_iod(times, w, k) for w, k in scales]
    gap, expected = 0.0, math.nan
    if part:
        if opts.burst_gap == "auto":
            gap, expected = choose_burst_gap(times, part, opts.dispersion_window_s, span)
        else:
            gap = float(opts.burst_gap)
            expected = expected_thinned_iod(times, burst_ids(times, gap), part, window_ns, span)
    bursts = burst_ids(times, gap)

    scored = all(math.isfinite(x) and x > 0 for x in targets)

    def miss(t: np.ndarray) -> float:
        """How far the dispersion of ``t`` is from the trace's, at 1 s and at the long window (log ratios)."""
        got = [_iod(t, w, k) for w, k in scales]
        if not scored or not all(math.isfinite(x) and x > 0 for x in got):
            return 0.0
        return sum(abs(math.log(g / x)) for g, x in zip(got, targets, strict=True))

    tries = CANDIDATES if scored else 1
    parts_t, parts_r, parts_c, shifts = [times], [np.arange(n, dtype=np.int32)], [np.zeros(n, dtype=np.int16)], []
    if whole == 0:
        parts_t, parts_r, parts_c = [], [], []
    acc = times if whole else np.empty(0, dtype=np.int64)
    for c in range(1, whole):
        cands = [int(rng.integers(0, span)) for _ in range(tries)]
        best = min(cands, key=lambda s: miss(np.concatenate((acc, (times + s) % span))))
        shifted = (times + best) % span
        acc = np.concatenate((acc, shifted))
        shifts.append(best / NS)
        parts_t.append(shifted)
        parts_r.append(np.arange(n, dtype=np.int32))
        parts_c.append(np.full(n, c, dtype=np.int16))
    if part:
        draws = []
        for _ in range(tries):
            mask = thin_bursts(bursts, round(part * n), rng)
            s = int(rng.integers(0, span)) if whole else 0
            t = (times[mask] + s) % span if s else times[mask]
            draws.append((miss(np.concatenate((acc, t))), mask, s, t))
        _, mask, s, t = min(draws, key=lambda d: d[0])
        shifts.append(s / NS)
        parts_t.append(t)
        parts_r.append(np.nonzero(mask)[0].astype(np.int32))
        parts_c.append(np.full(int(mask.sum()), whole, dtype=np.int16))
    t = np.concatenate(parts_t)
    r = np.concatenate(parts_r)
    c = np.concatenate(parts_c)
    order = np.lexsort((c, r, t))
    t, r, c = t[order], r[order], c[order]
    n_bursts = int(bursts.max()) + 1 if len(bursts) else 0
    burst_text = "single requests" if gap == 0 else f"whole bursts (gap < {gap:g} s; {n_bursts} bursts)"
    pick = (f", best of {tries} seeded draws by 1-s and {opts.dispersion_window_s:g}-s dispersion"
            if tries > 1 else "")
    if factor < 1:
        method = "thinning"
        text = f"thinned to {factor:.3g}x by keeping {burst_text}{pick}"
    else:
        method = "superposition"
        extra = [f"{whole - 1} circularly shifted cop{'y' if whole == 2 else 'ies'}"] if whole > 1 else []
        if part:
            extra.append(f"{part:.3g} of a shifted copy thinned by keeping {burst_text}")
        text = f"scaled {factor:.3g}x by superposition: the trace plus " + " and ".join(extra) + pick
    after = _iod(t, window_ns, n_windows)
    facts.update({"method": method, "burst_gap_s": gap, "bursts": n_bursts, "copies": whole + (part > 0),
                  "shifts_s": shifts, "candidates": tries, "dispersion_window_s": opts.dispersion_window_s,
                  "trace_dispersion": _num(trace_iod), "expected_dispersion_after_thinning": _num(expected),
                  "dispersion_after": _num(after), "rate_after_rps": len(t) / (span / NS) * opts.speedup,
                  "text": text})
    return t.astype(np.int64), r, c, facts


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 4)


def _limit(values: np.ndarray, limit: int | None, mode: str) -> tuple[np.ndarray, float, int]:
    """(lengths, scale factor, how many were clipped)."""
    if limit is None or not len(values):
        return values, 1.0, 0
    top = int(values.max())
    if top <= limit:
        return values, 1.0, 0
    if mode == "clip":
        return np.minimum(values, limit).astype(np.int32), 1.0, int((values > limit).sum())
    f = limit / top
    return np.clip(np.rint(values * f), 1, limit).astype(np.int32), f, 0


def _length_text(opts: ReplayOptions, f_in: float, f_out: float, c_in: int, c_out: int, n: int) -> str:
    parts = []
    for what, lim, f, c in (("input", opts.max_input_tokens, f_in, c_in), ("output", opts.max_output_tokens, f_out,
                                                                           c_out)):
        if lim is None:
            continue
        if opts.length_mode == "clip":
            parts.append(f"{what} clipped to {lim} tokens ({c} of {n} requests, {c / max(n, 1):.1%})")
        else:
            parts.append(f"{what} scaled by {f:.4g} so the longest is {lim} tokens" if f != 1
                         else f"{what} within {lim} tokens (not scaled)")
    return "; ".join(parts) if parts else "lengths as recorded"
