"""Metric definitions: each metric is defined once, here, with the sentence that the report legend and ``--help``
print, so that a number and its explanation cannot drift apart (METRICS.md).

Per-request metrics are computed from a ``RequestRecord`` alone. All times are nanoseconds internally; the summary
reports milliseconds. Decisions the definitions leave open, taken here and stated in the legend:

- A chunk carrying 0 tokens is not token-bearing and is ignored everywhere (it neither starts TTFT nor ends E2E).
- The first token-bearing chunk has no preceding token, so its tokens (all k of them) give no ITL sample; a later
  chunk carrying k tokens gives k samples of (its gap to the previous token-bearing chunk) / k.
- Latency percentiles use completed requests only (status ``ok``). Requests that failed, even after HTTP 200 with
  some tokens received, count in the error rates but add nothing to TTFT, TPOT, ITL or E2E.
- TPOT uses the reported output token count (server count where given), so (E2E - TTFT) / (tokens - 1).

ITL has one value per output token, which can reach tens of millions per level, so it is accumulated in blocks
(``ItlAccumulator``): exact below a cap, in a mergeable log histogram (``LogHistogram``) above it.
"""

from __future__ import annotations

import textwrap
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from loadgen.core.records import RequestRecord

PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0, 99.9)
PERCENTILE_KEYS: tuple[str, ...] = ("p50", "p90", "p95", "p99", "p99_9")
STAT_KEYS: tuple[str, ...] = ("mean", "min", "max", *PERCENTILE_KEYS)
NS_PER_MS = 1_000_000


@dataclass(slots=True)
class RequestTimes:
    """The few numbers every per-request metric needs, extracted once per record (ns; offsets from issue)."""

    scheduled_ns: int
    issued_ns: int
    first_token_ns: int | None  # first token-bearing chunk, after issue
    last_token_ns: int | None  # last token-bearing chunk, after issue
    end_ns: int | None  # end of the response, after issue
    output_tokens: int  # server count where given, else client count
    first_reasoning_ns: int | None = None  # reasoning models: first chunk with reasoning tokens, after issue
    first_answer_ns: int | None = None  # reasoning models: first chunk with answer tokens, after issue

    @property
    def lag_ns(self) -> int:
        return self.issued_ns - self.scheduled_ns


def token_chunks(record: RequestRecord) -> tuple[Sequence[int], Sequence[int]]:
    """(offsets µs, tokens) of the token-bearing chunks only: a chunk with 0 tokens carries no token time."""
    offsets, tokens = record.chunk_offsets_us, record.chunk_tokens
    if len(offsets) != len(tokens):
        raise ValueError(
            f"record {record.index}: {len(offsets)} chunk offsets but {len(tokens)} chunk token counts"
        )
    if 0 in tokens:
        kept = [(o, k) for o, k in zip(offsets, tokens, strict=True) if k > 0]
        return [o for o, _ in kept], [k for _, k in kept]
    return offsets, tokens


def request_times(record: RequestRecord) -> RequestTimes | None:
    """None for a request that was never issued (dropped, or cancelled before its turn)."""
    issued = record.issued_ns
    if issued is None:
        return None
    offsets, _ = token_chunks(record)
    first = last = None
    if offsets:
        first = offsets[0] * 1000
        last = offsets[-1] * 1000
    end = None if record.end_ns is None else record.end_ns - issued
    fr, fa = record.first_reasoning_ns, record.first_answer_ns
    return RequestTimes(record.scheduled_ns, issued, first, last, end, record.output_tokens,
                        None if fr is None else fr - issued, None if fa is None else fa - issued)


# -- per-request metric functions (over RequestTimes, ns) ------------------------------------------------------
def _schedule_lag(t: RequestTimes) -> float | None:
    return float(t.lag_ns)


def _ttft(t: RequestTimes) -> float | None:
    return None if t.first_token_ns is None else float(t.first_token_ns)


def _ttft_sched(t: RequestTimes) -> float | None:
    return None if t.first_token_ns is None else float(t.first_token_ns + t.lag_ns)


def _ttfrt(t: RequestTimes) -> float | None:
    return None if t.first_reasoning_ns is None else float(t.first_reasoning_ns)


def _ttfat(t: RequestTimes) -> float | None:
    if t.first_reasoning_ns is None or t.first_answer_ns is None:
        return None
    return float(t.first_answer_ns)


def _e2e(t: RequestTimes) -> float | None:
    end = t.last_token_ns if t.last_token_ns is not None else t.end_ns
    return None if end is None else float(end)


def _e2e_sched(t: RequestTimes) -> float | None:
    e2e = _e2e(t)
    return None if e2e is None else e2e + t.lag_ns


def _tpot(t: RequestTimes) -> float | None:
    if t.output_tokens < 2 or t.first_token_ns is None:
        return None
    e2e = _e2e(t)
    if e2e is None:
        return None
    return (e2e - t.first_token_ns) / (t.output_tokens - 1)


def _output_tokens(t: RequestTimes) -> float | None:
    return float(t.output_tokens)


def itl_values_ns(record: RequestRecord) -> np.ndarray:
    """Per-token inter-token latencies of one request (ns); the reference for ``ItlAccumulator``'s block path."""
    offsets, tokens = token_chunks(record)
    if len(offsets) < 2:
        return np.empty(0)
    offs = np.asarray(offsets, dtype=np.int64) * 1000
    toks = np.asarray(tokens, dtype=np.int64)
    spread = np.diff(offs) / toks[1:]
    return np.repeat(spread, toks[1:])


@dataclass(frozen=True)
class RequestMetric:
    """A per-request metric: ``of_times`` gives its value (ns, or tokens) or None when undefined ("n/a")."""

    name: str  # short name used in tables and --fail-on (e.g. "ttft")
    key: str  # summary.json key holding its distribution (e.g. "ttft_ms")
    unit: str  # unit as reported in the summary
    definition: str  # one sentence, printed in the report legend and --help
    of_times: Callable[[RequestTimes], float | None] | None  # None for the per-token ITL (see itl_values_ns)

    def of_record(self, record: RequestRecord) -> float | np.ndarray | None:
        """The metric for one record: a float (ns or tokens), None when undefined, an array for ITL."""
        if self.of_times is None:
            return itl_values_ns(record)
        times = request_times(record)
        return None if times is None else self.of_times(times)


SCHEDULE_LAG = RequestMetric(
    "schedule_lag", "schedule_lag_ms", "ms",
    "issued - scheduled time; over every issued request of the window (any outcome). Large values mean the "
    "client fell behind its schedule.", _schedule_lag)
TTFT = RequestMetric(
    "ttft", "ttft_ms", "ms",
    "time to first token: first token-bearing chunk - issued time (chunks with 0 tokens do not count). "
    "Completed requests only; n/a when no token arrived.", _ttft)
TTFT_SCHED = RequestMetric(
    "ttft_from_scheduled", "ttft_from_scheduled_ms", "ms",
    "TTFT measured from the scheduled time instead of the issued time: includes client lag and queueing, "
    "so a saturated client cannot hide server queueing.", _ttft_sched)
TTFRT = RequestMetric(
    "ttfrt", "ttfrt_ms", "ms",
    "reasoning models: time to first reasoning token (a reasoning_content delta) - issued time. Completed "
    "requests whose stream carried reasoning; n/a for the others.", _ttfrt)
TTFAT = RequestMetric(
    "ttfat", "ttfat_ms", "ms",
    "reasoning models: time to first answer token (the first content delta after the reasoning) - issued time; "
    "TTFT stays the first token of either kind. Completed requests whose stream carried reasoning and an answer.",
    _ttfat)
E2E = RequestMetric(
    "e2e", "e2e_ms", "ms",
    "end-to-end latency: last token-bearing chunk (or the end of the response when no token came) - issued "
    "time. Completed requests only.", _e2e)
E2E_SCHED = RequestMetric(
    "e2e_from_scheduled", "e2e_from_scheduled_ms", "ms",
    "E2E measured from the scheduled time (includes client lag).", _e2e_sched)
TPOT = RequestMetric(
    "tpot", "tpot_ms", "ms",
    "time per output token after the first, per request: (E2E - TTFT) / (output tokens - 1); excludes TTFT. "
    "Undefined (n/a, never 0) for outputs of fewer than 2 tokens.", _tpot)
ITL = RequestMetric(
    "itl", "itl_ms", "ms",
    "inter-token latency, one value per token, pooled over completed requests (token-weighted). A chunk of k "
    "tokens gives k values of (its gap to the previous token-bearing chunk) / k; the first chunk's tokens give "
    "none (no preceding token), so TTFT is never part of ITL.", None)
OUTPUT_TOKENS = RequestMetric(
    "output_tokens", "output_tokens_per_request", "tokens",
    "output tokens per completed request: the server's count where it gives one (usage.completion_tokens, "
    "num_output_tokens), else the tokens counted in the stream; never includes the prompt.", _output_tokens)

REQUEST_METRICS: tuple[RequestMetric, ...] = (
    SCHEDULE_LAG, TTFT, TTFT_SCHED, TPOT, ITL, E2E, E2E_SCHED, OUTPUT_TOKENS, TTFRT, TTFAT,
)
LATENCY_METRICS: tuple[RequestMetric, ...] = tuple(m for m in REQUEST_METRICS if m.unit == "ms")
REQUEST_METRICS_BY_NAME: dict[str, RequestMetric] = {m.name: m for m in REQUEST_METRICS}


@dataclass(frozen=True)
class LevelMetric:
    """A per-level scalar of the summary (computed in ``loadgen.core.summary``); ``kind`` drives --fail-on units."""

    key: str  # summary.json key and --fail-on name
    unit: str
    kind: str  # "rate" | "fraction" | "count" | "seconds" | "number"
    definition: str


LEVEL_METRICS: tuple[LevelMetric, ...] = (
    LevelMetric("window_s", "s", "seconds",
                "measurement window: requests scheduled in [w0, w1] are measured; w0 ends the warm-up, w1 is the "
                "end of issuing minus cool-down (open loop) or the last completion (closed loop)"),
    LevelMetric("target_rate_rps", "req/s", "rate", "the arrival rate asked for (open loop only)"),
    LevelMetric("achieved_rate_rps", "req/s", "rate", "requests issued inside the window / window"),
    LevelMetric("scheduled_rate_rps", "req/s", "rate",
                "requests the seeded schedule placed inside the window / window (target plus sampling noise)"),
    LevelMetric("achieved_ratio", "", "fraction", "achieved rate / scheduled rate (valid when >= 95 %)"),
    LevelMetric("request_throughput_rps", "req/s", "rate", "measured completed requests / window"),
    LevelMetric("output_token_throughput_tps", "tok/s", "rate", "output tokens of completed requests / window"),
    LevelMetric("input_token_throughput_tps", "tok/s", "rate",
                "input tokens of completed requests / window (server count where given)"),
    LevelMetric("total_token_throughput_tps", "tok/s", "rate",
                "(input + output tokens of completed requests) / window: the study's throughput"),
    LevelMetric("goodput_rps", "req/s", "rate",
                "completed requests meeting every --slo threshold (latencies from issued time) / window; a TTFT "
                "threshold fails when no token came, TPOT/ITL hold when undefined, ITL must hold for every token"),
    LevelMetric("goodput_from_scheduled_rps", "req/s", "rate",
                "goodput with TTFT and E2E measured from the scheduled time"),
    LevelMetric("goodput_ratio", "", "fraction", "completed requests meeting the SLO / completed requests"),
    LevelMetric("mean_running_requests", "", "number",
                "time-average number of requests in flight (issued, not yet ended) over the window: the study's batch"),
    LevelMetric("measured_requests", "", "count", "requests scheduled inside the window (any outcome)"),
    LevelMetric("completed_requests", "", "count", "measured requests that completed without error"),
    LevelMetric("error_count", "", "count", "measured requests that ended in an error (any kind)"),
    LevelMetric("error_rate", "", "fraction", "errors / (completed + errors) of the window"),
    LevelMetric("dropped_count", "", "count", "measured requests never issued (client late with --on-late drop)"),
    LevelMetric("cancelled_count", "", "count", "measured requests still in flight when the run stopped"),
    LevelMetric("cancelled_by_client_count", "", "count",
                "measured requests the client abandoned on purpose (--cancel-rate): neither completed nor errors"),
    LevelMetric("cancelled_by_client_share", "", "fraction", "requests cancelled by the client / issued measured requests"),
    LevelMetric("late_count", "", "count", "measured requests issued more than late_threshold_ms after schedule"),
    LevelMetric("late_share", "", "fraction", "late requests / issued measured requests"),
    LevelMetric("short_output_count", "", "count", "completed requests that got fewer output tokens than asked"),
    LevelMetric("short_output_share", "", "fraction", "short outputs / completed requests (valid when < 5 %)"),
    LevelMetric("token_count_mismatches", "", "count",
                "completed requests whose server output-token count differs from the tokens counted in the stream"),
    LevelMetric("output_tokens_total", "tokens", "count", "output tokens of the completed measured requests"),
    LevelMetric("input_tokens_total", "tokens", "count", "input tokens of the completed measured requests"),
    LevelMetric("reasoning_tokens_total", "tokens", "count",
                "reasoning models: the reasoning (thinking) part of output_tokens_total (server count where given)"),
    LevelMetric("answer_tokens_total", "tokens", "count",
                "reasoning models: output_tokens_total - reasoning_tokens_total, the answer's tokens"),
)
LEVEL_METRICS_BY_KEY: dict[str, LevelMetric] = {m.key: m for m in LEVEL_METRICS}


def legend() -> list[tuple[str, str, str]]:
    """(name, unit, definition) of every metric, per-request first: the report legend and ``--help`` text."""
    rows = [(m.name, m.unit, m.definition) for m in REQUEST_METRICS]
    rows += [(m.key, m.unit, m.definition) for m in LEVEL_METRICS]
    return rows


def metrics_help(width: int = 100) -> str:
    """Plain-text metric definitions for an argparse epilog (wrapped: the epilog is printed verbatim)."""
    lines = ["metric definitions:"]
    for name, unit, text in legend():
        head = f"{name} [{unit}]: " if unit else f"{name}: "
        lines.extend(textwrap.wrap(head + text, width=width, initial_indent="  ", subsequent_indent="      "))
    return "\n".join(lines)


# -- distributions ---------------------------------------------------------------------------------------------
def distribution_stats(values: np.ndarray, na: int = 0, scale: float = 1.0) -> dict:
    """Exact count/mean/min/max/percentiles (numpy's linear interpolation) of ``values * scale``.

    ``na`` counts requests for which the metric is undefined; they are reported, never folded in as zeros.
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    out: dict = {"count": int(values.size), "na": int(na), "exact": True}
    if values.size == 0:
        out.update({k: None for k in STAT_KEYS})
        return out
    pct = np.percentile(values, PERCENTILES)
    out.update({
        "mean": _num(values.mean() * scale),
        "min": _num(values.min() * scale),
        "max": _num(values.max() * scale),
    })
    out.update({k: _num(v * scale) for k, v in zip(PERCENTILE_KEYS, pct, strict=True)})
    return out


def histogram_stats(hist, na: int = 0, scale: float = 1.0) -> dict:
    """The same fields as ``distribution_stats`` from a ``LogHistogram`` (>= 3 significant digits); not exact."""
    out: dict = {"count": int(hist.count), "na": int(na), "exact": False}
    if hist.count == 0:
        out.update({k: None for k in STAT_KEYS})
        return out
    out.update({"mean": _num(hist.mean * scale), "min": _num(hist.min * scale), "max": _num(hist.max * scale)})
    out.update({k: _num(hist.percentile(q) * scale) for k, q in zip(PERCENTILE_KEYS, PERCENTILES, strict=True)})
    return out


def _num(x: float) -> float:
    return round(float(x), 6)


class ItlAccumulator:
    """Per-token ITL over many requests without a Python object per token.

    ``add`` appends a request's chunks to flat buffers; every ``block_chunks`` chunks the buffers are turned into
    ITL values with numpy. Values are kept exactly while their total stays at or below ``exact_cap``; past it,
    everything goes into a ``LogHistogram`` and the result is marked ``exact: false``. It also keeps each request's
    largest ITL (NaN when it has none), in ``add`` order, for the ITL goodput threshold.
    """

    def __init__(self, exact_cap: int = 5_000_000, block_chunks: int = 1 << 18) -> None:
        self.exact_cap = exact_cap
        self.block_chunks = block_chunks
        self._offs = array("q")
        self._toks = array("q")
        self._starts = array("q")
        self._exact: list[np.ndarray] = []
        self._n_values = 0
        self._hist = None
        self._max_blocks: list[np.ndarray] = []

    @property
    def exact(self) -> bool:
        return self._hist is None

    def add(self, record: RequestRecord) -> None:
        offsets, tokens = token_chunks(record)
        self._starts.append(len(self._offs))
        self._offs.extend(offsets)
        self._toks.extend(tokens)
        if len(self._offs) >= self.block_chunks:
            self._flush()

    def _flush(self) -> None:
        if not self._starts:
            return
        offs = np.frombuffer(self._offs, dtype=np.int64).astype(np.float64) * 1000.0
        toks = np.frombuffer(self._toks, dtype=np.int64).copy()
        starts = np.frombuffer(self._starts, dtype=np.int64).copy()
        self._offs, self._toks, self._starts = array("q"), array("q"), array("q")
        n = offs.size
        counts = np.diff(np.append(starts, n))
        nonempty = counts > 0
        spread = np.full(n, np.nan)
        if n > 1:
            spread[1:] = np.diff(offs) / toks[1:]
        spread[starts[nonempty]] = np.nan  # a request's first chunk has no preceding token
        valid = ~np.isnan(spread)
        self._record(np.repeat(spread[valid], toks[valid]))
        per_request = np.full(starts.size, np.nan)
        if nonempty.any():
            masked = np.where(valid, spread, -np.inf)
            per_request[nonempty] = np.maximum.reduceat(masked, starts[nonempty])
            per_request[per_request == -np.inf] = np.nan
        self._max_blocks.append(per_request)

    def _record(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        if self._hist is None and self._n_values + values.size <= self.exact_cap:
            self._exact.append(values)
            self._n_values += values.size
            return
        if self._hist is None:
            from loadgen.core.histogram import LogHistogram

            self._hist = LogHistogram()
            for block in self._exact:
                self._hist.record_many(np.rint(block).astype(np.int64))
            self._exact = []
        self._hist.record_many(np.rint(values).astype(np.int64))
        self._n_values += values.size

    def finish(self) -> tuple[dict, np.ndarray]:
        """(ITL stats in ms, per-request largest ITL in ns in ``add`` order)."""
        self._flush()
        if self._hist is not None:
            stats = histogram_stats(self._hist, scale=1.0 / NS_PER_MS)
        else:
            values = np.concatenate(self._exact) if self._exact else np.empty(0)
            stats = distribution_stats(values, scale=1.0 / NS_PER_MS)
        maxima = np.concatenate(self._max_blocks) if self._max_blocks else np.empty(0)
        return stats, maxima
