"""One load level's ``summary.json``: computed in one pass over its records, after the run (or on a crashed run's
records.jsonl by ``loadgen report``).

Measurement window (all times relative to the run's t0):

- A request is *measured* when its index >= ``warmup_requests``, its scheduled time >= ``warmup_s`` and its
  scheduled time <= ``run_end_ns - cooldown_s`` (when ``run_end_ns`` is known). Other records are counted as
  excluded (warm-up or cool-down) and only contribute to the in-flight average and the achieved rate.
- Window [w0, w1]: w0 = ``warmup_s``, or the first measured scheduled time when it is later (warm-up by request
  count). w1 = ``run_end_ns - cooldown_s`` for open loop (the end of issuing; the last measured scheduled time when
  an interrupted run left ``run_end_ns`` unknown); for closed loop / offline it is the last end of a measured
  request (every measured request's work lies inside the window).
- Counts in the summary (completed, errors, dropped, ...) are of measured requests; rates divide them by the window.

Memory: per completed request only a few numbers go into compact ``array`` buffers; ITL goes through
``ItlAccumulator``. A JSONL of 720k records is never held as Python objects.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from loadgen.core.metrics import (
    NS_PER_MS,
    OUTPUT_TOKENS,
    REQUEST_METRICS,
    ItlAccumulator,
    distribution_stats,
    request_times,
)
from loadgen.core.records import (
    ERROR_KINDS,
    STATUS_CANCELLED,
    STATUS_CANCELLED_BY_CLIENT,
    STATUS_DROPPED,
    STATUS_ERROR,
    STATUS_OK,
    RequestRecord,
)
from loadgen.core.slo import slo_mask
from loadgen.core.turn_stats import TurnStats
from loadgen.errors import UsageError

SCHEMA = "slm-loadgen/summary/1"
SHORT_OUTPUT = "short_output"


@dataclass
class LevelContext:
    """What the runner knows about a level that the records do not say; copied into the summary.

    Beyond the brief's fields: ``open_loop`` (None: open loop iff ``target_rate`` is set; trace replay sets True),
    the validity thresholds (``min_achieved_ratio``, ``max_schedule_lag_p99_ms``, ``min_completed``,
    ``max_short_share``), ``late_threshold_ms`` (lag above which an issued request counts as late),
    ``itl_exact_cap`` (ITL values kept exactly before switching to the histogram) and ``extra`` (passed through).
    ``client`` is passed through too; ``client["saturated"]`` (bool) and ``client["saturation_reason"]`` (str)
    make the level invalid.
    """

    name: str = "level"
    backend: str = ""
    url: str = ""
    model: str = ""
    target_rate: float | None = None
    concurrency: int | None = None
    arrival: dict[str, Any] = field(default_factory=dict)
    warmup_s: float = 0.0
    warmup_requests: int = 0
    cooldown_s: float = 0.0
    slo: dict[str, float] = field(default_factory=dict)  # seconds, from parse_slo
    prompt_method: str = ""
    on_late: str = "issue"
    run_end_ns: int | None = None
    client: dict[str, Any] = field(default_factory=dict)
    open_loop: bool | None = None
    min_achieved_ratio: float = 0.95
    max_schedule_lag_p99_ms: float = 10.0
    min_completed: int = 30
    max_short_share: float = 0.05
    max_error_share: float = 0.5  # more failed requests than this: the level measured a failure, not a load
    late_threshold_ms: float = 1.0
    itl_exact_cap: int = 5_000_000
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_open_loop(self) -> bool:
        return self.open_loop if self.open_loop is not None else self.target_rate is not None

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "level_context") -> LevelContext:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UsageError(f"{source}: unknown level_context key(s) {', '.join(unknown)}; expected some of "
                             f"{', '.join(sorted(known))}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Pass:
    """The single pass: counters plus compact per-request buffers."""

    def __init__(self, ctx: LevelContext) -> None:
        self.ctx = ctx
        self.warm_ns = int(ctx.warmup_s * 1e9)
        # Without run_end_ns (an interrupted run) the cool-down cannot be placed: the level is flagged in
        # validity_warnings rather than its summary lost.
        self.sched_end = math.inf if ctx.run_end_ns is None else ctx.run_end_ns - int(ctx.cooldown_s * 1e9)
        self.late_ns = ctx.late_threshold_ms * NS_PER_MS
        self.total = 0
        self.excluded = Counter()
        self.status = Counter()
        self.errors = Counter()
        self.measured = 0
        self.late = 0
        self.first_measured_sched: int | None = None
        self.last_measured_sched: int | None = None
        self.last_end: int | None = None  # of measured finished requests
        # every issued record (any window): for the in-flight average and the achieved rate
        self.all_issued = array("q")
        self.all_end = array("q")  # -1: no end (cancelled)
        self.all_sched = array("q")  # every record's scheduled time: the schedule's own rate in the window
        # measured issued requests
        self.lag = array("d")
        # measured completed requests
        self.ttft = array("d")
        self.e2e = array("d")
        self.tpot = array("d")
        self.c_lag = array("d")
        self.out_tok = array("q")
        self.in_tok = array("q")
        self.max_tok = array("q")
        self.server_counts = 0
        self.out_mismatch = 0
        self.ttfrt = array("d")  # reasoning models: NaN for a completed request without reasoning
        self.ttfat = array("d")
        self.reasoning_tokens = 0
        self.in_mismatch = 0
        self.itl = ItlAccumulator(exact_cap=ctx.itl_exact_cap)
        self.turns = TurnStats()  # multi-turn sessions: figures by turn

    def add(self, r: RequestRecord) -> None:
        self.total += 1
        self.all_sched.append(r.scheduled_ns)
        if r.issued_ns is not None:
            self.all_issued.append(r.issued_ns)
            self.all_end.append(-1 if r.end_ns is None else r.end_ns)
        sched = r.scheduled_ns
        if r.index < self.ctx.warmup_requests or sched < self.warm_ns:
            self.excluded["warmup"] += 1
            return
        if sched > self.sched_end:
            self.excluded["cooldown"] += 1
            return
        self.measured += 1
        if r.turn is not None:
            self.turns.add(r)
        if self.first_measured_sched is None or sched < self.first_measured_sched:
            self.first_measured_sched = sched
        if self.last_measured_sched is None or sched > self.last_measured_sched:
            self.last_measured_sched = sched
        status = r.status
        if status not in _STATUSES:
            raise UsageError(f"record {r.index}: unknown status {status!r}; expected one of {', '.join(_STATUSES)}")
        self.status[status] += 1
        times = request_times(r)
        if times is None:
            return  # dropped, or cancelled before being issued
        lag = times.lag_ns
        self.lag.append(lag)
        if lag > self.late_ns:
            self.late += 1
        if status == STATUS_CANCELLED:
            return
        end = r.end_ns if r.end_ns is not None else r.last_token_ns
        if end is not None and (self.last_end is None or end > self.last_end):
            self.last_end = end
        if status == STATUS_CANCELLED_BY_CLIENT:  # abandoned on purpose: counted, never in the latency figures
            return
        if status == STATUS_ERROR:
            self.errors[r.error_kind or "unknown"] += 1
            return
        ttft, e2e, tpot = _ms_fns
        self.ttft.append(_nan(ttft(times)))
        self.ttfrt.append(_nan(_ttfrt(times)))
        self.ttfat.append(_nan(_ttfat(times)))
        if r.reasoning_tokens:
            self.reasoning_tokens += r.reasoning_tokens
        self.e2e.append(_nan(e2e(times)))
        self.tpot.append(_nan(tpot(times)))
        self.c_lag.append(lag)
        self.out_tok.append(times.output_tokens)
        self.in_tok.append(r.server_input_tokens if r.server_input_tokens is not None else r.input_tokens)
        self.max_tok.append(r.max_tokens)
        if r.server_output_tokens is not None:
            self.server_counts += 1
            if r.server_output_tokens != r.client_output_tokens:
                self.out_mismatch += 1
        if r.server_input_tokens is not None and r.server_input_tokens != r.input_tokens:
            self.in_mismatch += 1
        self.itl.add(r)


_STATUSES = (STATUS_OK, STATUS_ERROR, STATUS_DROPPED, STATUS_CANCELLED, STATUS_CANCELLED_BY_CLIENT)
_BY_NAME = {m.name: m for m in REQUEST_METRICS}
_ms_fns = (_BY_NAME["ttft"].of_times, _BY_NAME["e2e"].of_times, _BY_NAME["tpot"].of_times)
_ttfrt, _ttfat = _BY_NAME["ttfrt"].of_times, _BY_NAME["ttfat"].of_times


def _nan(x: float | None) -> float:
    return math.nan if x is None else x


def _arr(a: array) -> np.ndarray:
    return np.frombuffer(a, dtype=np.float64 if a.typecode == "d" else np.int64).copy()


def _rate(n: float, window_s: float | None) -> float | None:
    return None if not window_s else round(n / window_s, 6)


def _share(n: int, d: int) -> float | None:
    return None if d == 0 else round(n / d, 6)


def summarize(records: Iterable[RequestRecord], ctx: LevelContext) -> dict:
    """The summary of one load level (see docs/SUMMARY_SCHEMA.md for every key)."""
    p = _Pass(ctx)
    for r in records:
        p.add(r)
    skipped = int(getattr(records, "skipped_lines", 0))
    w0, w1 = measurement_window(ctx, p.first_measured_sched, p.last_measured_sched, p.last_end)
    ttft, e2e, tpot, c_lag = _arr(p.ttft), _arr(p.e2e), _arr(p.tpot), _arr(p.c_lag)
    out_tok, in_tok, max_tok = _arr(p.out_tok), _arr(p.in_tok), _arr(p.max_tok)
    itl_stats, itl_max = p.itl.finish()
    to_ms = 1.0 / NS_PER_MS
    lag = _arr(p.lag)
    dists = {
        "schedule_lag_ms": distribution_stats(lag, scale=to_ms),
        "ttft_ms": distribution_stats(ttft, na=int(np.isnan(ttft).sum()), scale=to_ms),
        "ttft_from_scheduled_ms": distribution_stats(ttft + c_lag, na=int(np.isnan(ttft).sum()), scale=to_ms),
        "tpot_ms": distribution_stats(tpot, na=int(np.isnan(tpot).sum()), scale=to_ms),
        "itl_ms": itl_stats,
        "e2e_ms": distribution_stats(e2e, na=int(np.isnan(e2e).sum()), scale=to_ms),
        "e2e_from_scheduled_ms": distribution_stats(e2e + c_lag, na=int(np.isnan(e2e).sum()), scale=to_ms),
        OUTPUT_TOKENS.key: distribution_stats(out_tok.astype(np.float64)),
        **_reasoning_dists(p, to_ms),
    }
    counts = _counts(p, ctx, out_tok, in_tok, max_tok, int(lag.size), w0, w1)
    if ctx.slo:
        counts.good = int(slo_mask(ctx.slo, ttft, tpot, itl_max, e2e).sum())
        counts.good_sched = int(slo_mask(ctx.slo, ttft + c_lag, tpot, itl_max, e2e + c_lag).sum())
    return assemble_summary(ctx, w0, w1, counts, dists, records_total=p.total, records_skipped=skipped,
                            sessions=p.turns.to_dict() if p.turns else None)


def assemble_summary(ctx: LevelContext, w0: float, w1: float, counts: LevelCounts, dists: dict[str, dict],
                     records_total: int, records_skipped: int = 0, sessions: dict | None = None) -> dict:
    """The summary dict from its parts, with its verdict: ``summarize`` (one pass over the records) and Locust's
    master (merged counters and histograms, ``loadgen.locust.report``) both build theirs here, so the two carry
    the same keys, computed the same way."""
    window_ns = max(0, int(w1) - int(w0))
    window_s = window_ns / 1e9 if window_ns > 0 else None
    summary: dict[str, Any] = {
        "schema": SCHEMA, "name": ctx.name, "backend": ctx.backend, "url": ctx.url, "model": ctx.model,
        "mode": "open_loop" if ctx.is_open_loop else "closed_loop", "target_rate_rps": ctx.target_rate,
        "concurrency": ctx.concurrency, "arrival": ctx.arrival, "prompt_method": ctx.prompt_method,
        "on_late": ctx.on_late, "slo_s": dict(ctx.slo), "warmup_s": ctx.warmup_s,
        "warmup_requests": ctx.warmup_requests, "cooldown_s": ctx.cooldown_s,
        "window_start_s": round(w0 / 1e9, 9), "window_end_s": round(w1 / 1e9, 9), "window_s": window_s,
        "records_total": records_total, "records_skipped": records_skipped,
        **count_keys(counts, ctx, window_ns), **dists,
        "client": dict(ctx.client), "energy": None, "extra": dict(ctx.extra),
    }
    if sessions:
        summary["sessions"] = sessions
    warnings = validity_warnings(summary, ctx)
    summary["valid"] = not warnings
    summary["warnings"] = warnings
    summary["validity_thresholds"] = {
        "min_achieved_ratio": ctx.min_achieved_ratio,
        "max_schedule_lag_p99_ms": ctx.max_schedule_lag_p99_ms,
        "min_completed": ctx.min_completed,
        "max_short_share": ctx.max_short_share,
        "max_error_share": ctx.max_error_share,
    }
    return summary


def _reasoning_dists(p: _Pass, to_ms: float) -> dict[str, dict]:
    """TTFRT and TTFAT (reasoning models): over the completed requests whose stream carried reasoning; the
    others are their ``na``."""
    out = {}
    for key, values in (("ttfrt_ms", p.ttfrt), ("ttfat_ms", p.ttfat)):
        a = _arr(values)
        out[key] = distribution_stats(a, na=int(np.isnan(a).sum()), scale=to_ms)
    return out


def measurement_window(ctx: LevelContext, first_measured_sched: int | None, last_measured_sched: int | None,
                       last_end: int | None) -> tuple[float, float]:
    """The measurement window [w0, w1] in ns from t0 (docs/SUMMARY_SCHEMA.md, "Measurement window"), from the
    first and last scheduled times of the measured requests and the last end of a measured finished one."""
    w0 = int(ctx.warmup_s * 1e9)
    if ctx.warmup_requests > 0 and first_measured_sched is not None:
        w0 = max(w0, first_measured_sched)
    if ctx.is_open_loop:
        if ctx.run_end_ns is not None:
            w1 = ctx.run_end_ns - int(ctx.cooldown_s * 1e9)
        else:
            w1 = last_measured_sched if last_measured_sched is not None else w0
    else:
        w1 = last_end if last_end is not None else (ctx.run_end_ns if ctx.run_end_ns is not None else w0)
    return w0, w1


@dataclass
class LevelCounts:
    """The plain numbers behind a summary's counts, shares and rates (of the measured requests unless said).

    Filled by ``summarize``'s pass over the records, or by Locust's master from the counters its workers merged;
    ``count_keys`` turns either into the same summary keys."""

    measured: int = 0
    issued: int = 0  # measured requests that were issued
    completed: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # by kind
    dropped: int = 0
    cancelled: int = 0
    cancelled_by_client: int = 0
    late: int = 0
    short: int = 0  # completed requests with fewer output tokens than asked
    output_tokens: int = 0  # of the completed requests (likewise the next four)
    input_tokens: int = 0
    requested_tokens: int = 0
    reasoning_tokens: int = 0
    server_counts: int = 0
    out_mismatch: int = 0
    in_mismatch: int = 0
    excluded_warmup: int = 0
    excluded_cooldown: int = 0
    issued_in_window: int = 0  # every issued request (any window, any state) issued inside [w0, w1]
    scheduled_in_window: int | None = None  # open loop: scheduled times inside [w0, w1]; None: closed loop
    running_ns: float | None = None  # request-time in flight inside the window; None: no window
    good: int | None = None  # completed requests meeting every --slo threshold; None: no SLO
    good_sched: int | None = None  # the same, TTFT and E2E from the scheduled time


def count_keys(c: LevelCounts, ctx: LevelContext, window_ns: float) -> dict[str, Any]:
    """Counts, shares and rates of the measured requests (every request is in exactly one state), then goodput."""
    window_s = window_ns / 1e9 if window_ns > 0 else None
    n_errors = sum(c.errors.values())
    finished = c.completed + n_errors
    errors_by_kind = {k: c.errors.get(k, 0) for k in ERROR_KINDS}
    errors_by_kind.update({k: v for k, v in c.errors.items() if k not in errors_by_kind})
    errors_by_kind[SHORT_OUTPUT] = c.short
    achieved = _rate(c.issued_in_window, window_s)
    # The client is judged against the schedule it was given: a seeded Poisson schedule's realised rate differs
    # from the nominal --rate by sampling noise (about 1/sqrt(N)), which is not the client's doing.
    scheduled = _rate(c.scheduled_in_window, window_s) if c.scheduled_in_window is not None else None
    mean_running = None
    if window_ns > 0 and c.running_ns is not None:
        mean_running = round(float(c.running_ns) / window_ns, 6)
    return {
        "scheduled_rate_rps": scheduled,
        "excluded_warmup": c.excluded_warmup,
        "excluded_cooldown": c.excluded_cooldown,
        "measured_requests": c.measured,
        "issued_requests": c.issued,
        "completed_requests": c.completed,
        "error_count": n_errors,
        "error_rate": _share(n_errors, finished),
        "errors_by_kind": errors_by_kind,
        "error_rate_by_kind": {k: _share(v, finished) for k, v in errors_by_kind.items()},
        "dropped_count": c.dropped,
        "cancelled_count": c.cancelled,
        "cancelled_by_client_count": c.cancelled_by_client,
        "cancelled_by_client_share": _share(c.cancelled_by_client, c.issued),
        "late_count": c.late,
        "late_share": _share(c.late, c.issued),
        "late_threshold_ms": ctx.late_threshold_ms,
        "short_output_count": c.short,
        "short_output_share": _share(c.short, c.completed),
        "output_tokens_total": c.output_tokens,
        "input_tokens_total": c.input_tokens,
        "reasoning_tokens_total": c.reasoning_tokens,
        "answer_tokens_total": c.output_tokens - c.reasoning_tokens,
        "requested_tokens_total": c.requested_tokens,
        "server_token_counts": c.server_counts,
        "token_count_mismatches": c.out_mismatch,
        "input_token_mismatches": c.in_mismatch,
        "achieved_rate_rps": achieved,
        "achieved_ratio": None if (achieved is None or not scheduled) else round(achieved / scheduled, 6),
        "request_throughput_rps": _rate(c.completed, window_s),
        "output_token_throughput_tps": _rate(c.output_tokens, window_s),
        "input_token_throughput_tps": _rate(c.input_tokens, window_s),
        "total_token_throughput_tps": _rate(c.output_tokens + c.input_tokens, window_s),
        "mean_running_requests": mean_running,
        "goodput_rps": None if not ctx.slo or c.good is None else _rate(c.good, window_s),
        "goodput_from_scheduled_rps": None if not ctx.slo or c.good_sched is None else _rate(c.good_sched, window_s),
        "goodput_ratio": None if not ctx.slo or c.good is None else _share(c.good, c.completed),
    }


def _counts(p: _Pass, ctx: LevelContext, out_tok: np.ndarray, in_tok: np.ndarray, max_tok: np.ndarray,
            issued_measured: int, w0: float, w1: float) -> LevelCounts:
    """The pass's numbers for ``count_keys``."""
    issued_all, end_all = _arr(p.all_issued), _arr(p.all_end)
    window_ns = w1 - w0
    running_ns = None
    if window_ns > 0:
        ends = np.where(end_all < 0, w1, end_all)
        running_ns = float(np.clip(np.minimum(ends, w1) - np.maximum(issued_all, w0), 0, None).sum())
    sched_all = _arr(p.all_sched)
    return LevelCounts(
        measured=p.measured, issued=issued_measured, completed=int(out_tok.size), errors=dict(p.errors),
        dropped=p.status[STATUS_DROPPED], cancelled=p.status[STATUS_CANCELLED],
        cancelled_by_client=p.status[STATUS_CANCELLED_BY_CLIENT], late=p.late,
        short=int(((max_tok > 0) & (out_tok < max_tok)).sum()), output_tokens=int(out_tok.sum()),
        input_tokens=int(in_tok.sum()), requested_tokens=int(max_tok.sum()), reasoning_tokens=p.reasoning_tokens,
        server_counts=p.server_counts, out_mismatch=p.out_mismatch, in_mismatch=p.in_mismatch,
        excluded_warmup=p.excluded["warmup"], excluded_cooldown=p.excluded["cooldown"],
        issued_in_window=int(((issued_all >= w0) & (issued_all <= w1)).sum()),
        scheduled_in_window=int(((sched_all >= w0) & (sched_all <= w1)).sum()) if ctx.is_open_loop else None,
        running_ns=running_ns)


def validity_warnings(summary: dict, ctx: LevelContext) -> list[str]:
    """One sentence per failed validity condition (METRICS.md): an invalid level is marked, never hidden."""
    out: list[str] = []
    client = ctx.client
    if client.get("interrupted"):
        out.append("interrupted before the schedule was done: the level is incomplete")
    if client.get("stopped_early"):
        out.append(f"stopped early: {client['stopped_early']}")
    if client.get("server_gone"):
        out.append(f"the server stopped answering mid-run ({client['server_gone']})")
    if client.get("results_error"):
        out.append("the records could not all be written: the level is incomplete")
    rate = summary.get("error_rate")
    if rate is not None and rate > ctx.max_error_share:
        kinds = {k: v for k, v in summary["errors_by_kind"].items() if v and k != SHORT_OUTPUT}
        top = max(kinds, key=lambda k: kinds[k]) if kinds else "error"
        out.append(f"{rate:.0%} of the finished requests failed (most: {top}, {kinds.get(top, 0)}; needs <= "
                   f"{ctx.max_error_share:.0%})")
    if ctx.cooldown_s > 0 and ctx.run_end_ns is None:
        out.append(f"cool-down of {ctx.cooldown_s:g} s not applied: the end of issuing is unknown (interrupted run?)")
    if not summary["window_s"]:
        out.append("empty measurement window: nothing was measured after warm-up and before cool-down")
    ratio, scheduled = summary["achieved_ratio"], summary["scheduled_rate_rps"]
    if ratio is not None and ratio < ctx.min_achieved_ratio:
        out.append(f"achieved rate {summary['achieved_rate_rps']:.3g} req/s is {ratio:.1%} of the scheduled "
                   f"{scheduled:.3g} req/s (target {summary['target_rate_rps']:.3g}; needs >= "
                   f"{ctx.min_achieved_ratio:.0%})")
    lag_p99 = summary["schedule_lag_ms"]["p99"]
    if lag_p99 is not None and lag_p99 > ctx.max_schedule_lag_p99_ms:
        out.append(f"schedule lag p99 {lag_p99:.3g} ms exceeds {ctx.max_schedule_lag_p99_ms:g} ms: the client "
                   "fell behind its schedule")
    if summary["completed_requests"] < ctx.min_completed:
        out.append(f"only {summary['completed_requests']} completed requests in the window "
                   f"(needs >= {ctx.min_completed})")
    if ctx.client.get("saturated"):
        reason = ctx.client.get("saturation_reason") or "the load generator reported saturation"
        out.append(f"client saturated: {reason}")
    share = summary["short_output_share"]
    if share is not None and share >= ctx.max_short_share:
        out.append(f"{share:.1%} of completed requests got fewer output tokens than asked "
                   f"(needs < {ctx.max_short_share:.0%})")
    return out


class RecordFile(Iterator[RequestRecord]):
    """Iterates the records of a records.jsonl. A truncated or corrupt *last* line (a crash mid-write) is skipped
    and counted in ``skipped_lines``; a bad line anywhere else is an error, since it means a corrupt file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.skipped_lines = 0
        self.read = 0
        try:
            self._fh = open(self.path, "rb")  # closed when the iteration ends
        except OSError as err:
            raise UsageError(f"{self.path}: cannot read records ({err.strerror}); check the run directory") from err
        self._gen = self._iterate()

    def __next__(self) -> RequestRecord:
        return next(self._gen)

    def _iterate(self) -> Iterator[RequestRecord]:
        with self._fh as fh:
            lineno = 0
            pending: tuple[int, bytes] | None = None
            for raw in fh:
                lineno += 1
                if not raw.strip():
                    continue
                if pending is not None:
                    yield self._parse(*pending, last=False)
                pending = (lineno, raw)
            if pending is not None:
                rec = self._parse(*pending, last=True)
                if rec is not None:
                    yield rec

    def _parse(self, lineno: int, raw: bytes, last: bool) -> RequestRecord | None:
        try:
            rec = RequestRecord.from_dict(orjson.loads(raw))
        except (orjson.JSONDecodeError, ValueError, TypeError) as err:
            if last:
                self.skipped_lines += 1
                return None
            raise UsageError(f"{self.path}:{lineno}: not a request record ({err}); the file is corrupt") from err
        self.read += 1
        return rec


def load_records(path: str | Path) -> RecordFile:
    """Records of ``path`` (records.jsonl); ``.skipped_lines`` tells after iteration whether a last line was cut."""
    return RecordFile(path)


RECORDS_GLOB = "records*.jsonl"


def level_records_files(run_dir: str | Path) -> list[Path]:
    """Every records file of one level: ``records.jsonl`` of a one-process run, or ``records.w<K>.jsonl`` of each
    worker process K (``loadgen run --workers N``, a distributed Locust level)."""
    return sorted(Path(run_dir).glob(RECORDS_GLOB))


class MultiRecords:
    """Several records files read as one stream (the workers' stripes of one level); ``skipped_lines`` is summed
    over the files once iterated."""

    def __init__(self, paths: Iterable[str | Path]) -> None:
        self.paths = [Path(p) for p in paths]
        self.files: list[RecordFile] = []

    def __iter__(self) -> Iterator[RequestRecord]:
        for path in self.paths:
            f = RecordFile(path)
            self.files.append(f)
            yield from f

    @property
    def skipped_lines(self) -> int:
        return sum(f.skipped_lines for f in self.files)


def load_level_records(run_dir: str | Path) -> MultiRecords:
    """The records of every file of the level in ``run_dir``."""
    return MultiRecords(level_records_files(run_dir))
