"""Arrival schedules: every request's send time, decided up front from a seed.

The runner waits for absolute deadlines ``t0 + offset`` (timing rule 1), so the whole schedule is built before the
clock starts: a run is reproducible from its spec alone, its statistics can be checked before any load is sent, and
a distributed run can hand each worker a deterministic stripe of the same schedule.

Kinds:

- ``poisson``: exponential inter-arrival gaps with mean ``1/rate`` (the memoryless open-loop default).
- ``gamma``: gamma gaps with mean ``1/rate`` and coefficient of variation ``cv``. ``cv < 1`` is smoother than
  Poisson, ``cv > 1`` is burstier, ``cv = 1`` is Poisson (shape ``k = 1/cv**2``, scale ``1/(rate*k)``).
- ``constant``: one request every ``1/rate`` seconds, the first at offset 0.
- ``closed``: no schedule; ``concurrency`` users each send their next request when the previous one ends.

For the random kinds the first arrival is drawn from the process too (its gap is measured from t0), so the first
request is not artificially synchronised with the start of the run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from loadgen.errors import UsageError

KINDS = ("poisson", "gamma", "constant", "closed")
COUNT_MODES = ("exact", "random")
OPEN_KINDS = ("poisson", "gamma", "constant")

MAX_RATE = 1e6  # requests/s; beyond this the number is a typo, not a load level
MAX_CV = 50.0  # beyond this almost every gap rounds to 0 ns and the rest are hours long
MAX_SCHEDULE = 100_000_000  # requests held in one schedule (800 MB of int64 offsets)
BLOCK = 65_536  # gaps drawn per block: bounds the float temporaries whatever the run length

_NS = 1_000_000_000
SYNTHETIC_PREFIXES = ("piecewise", "diurnal", "trace-rate", "mmpp")  # loadgen.traces.synthetic builds these


def is_synthetic(arrival: str | None) -> bool:
    """True for the synthetic arrival forms of ``loadgen.traces.synthetic`` (``kind:params``)."""
    if not arrival or ":" not in str(arrival):
        return False
    return str(arrival).split(":", 1)[0].strip().lower() in SYNTHETIC_PREFIXES


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class ArrivalSpec:
    """Serialisable description of an arrival process; ``build_offsets`` turns it into a schedule."""

    kind: str = "poisson"
    rate: float | None = None  # requests per second (open loop); None for closed loop
    cv: float | None = None  # gamma only: coefficient of variation of the gaps
    concurrency: int | None = None  # closed loop: number of users; open loop: optional cap on requests in flight
    duration_s: float | None = None  # stop scheduling at this offset (None = unbounded)
    max_requests: int | None = None  # stop after this many requests (None = unbounded)
    seed: int = 0
    count: str = "exact"  # with a duration: exactly round(rate x duration) arrivals ("random": the free process)

    @property
    def is_open_loop(self) -> bool:
        return self.kind in OPEN_KINDS

    def validate(self) -> ArrivalSpec:
        """Raise ``UsageError`` naming the flag to fix; return self so it chains."""
        if self.kind not in KINDS:
            raise UsageError(f"--arrival: unknown kind {self.kind!r}; use one of {', '.join(KINDS)}")
        if self.is_open_loop:
            self._validate_rate()
        elif self.rate is not None:
            raise UsageError("--rate does not apply to --arrival closed; set --concurrency (users) instead")
        self._validate_cv()
        self._validate_concurrency()
        self._validate_bounds()
        if not _is_int(self.seed) or self.seed < 0:
            raise UsageError(f"--seed: {self.seed!r} is not a non-negative integer")
        if self.count not in COUNT_MODES:
            raise UsageError(f"--arrival-count {self.count!r}: choose exact or random")
        return self

    def _validate_rate(self) -> None:
        rate = self.rate
        if rate is None:
            raise UsageError(f"--rate is required with --arrival {self.kind} (requests per second, e.g. --rate 10)")
        if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)):
            raise UsageError(f"--rate: {rate!r} is not a number; give requests per second, e.g. --rate 10")
        if not math.isfinite(rate) or rate <= 0:
            raise UsageError(f"--rate: {rate!r} is not a positive finite number of requests per second")
        if rate > MAX_RATE:
            raise UsageError(f"--rate: {rate:g} req/s is absurd (limit {MAX_RATE:g}); check the units (requests/s)")

    def _validate_cv(self) -> None:
        if self.kind != "gamma":
            if self.cv is not None:
                raise UsageError(f"--cv applies only to --arrival gamma, not --arrival {self.kind}")
            return
        cv = self.cv
        if cv is None:
            raise UsageError("--cv is required with --arrival gamma (1 = Poisson, <1 smoother, >1 burstier)")
        if isinstance(cv, bool) or not isinstance(cv, (int, float, np.integer, np.floating)):
            raise UsageError(f"--cv: {cv!r} is not a number")
        if not math.isfinite(cv) or cv <= 0:
            raise UsageError(f"--cv: {cv!r} must be a positive finite number (1 = Poisson)")
        if cv > MAX_CV:
            raise UsageError(f"--cv: {cv:g} is absurd (limit {MAX_CV:g}); typical bursty traffic is 1 to 4")

    def _validate_concurrency(self) -> None:
        c = self.concurrency
        if c is None:
            if self.kind == "closed":
                raise UsageError("--concurrency is required with --arrival closed (number of users, e.g. 8)")
            return
        if not _is_int(c) or c < 1:
            raise UsageError(f"--concurrency: {c!r} must be a whole number >= 1")

    def _validate_bounds(self) -> None:
        d = self.duration_s
        if d is not None:
            if isinstance(d, bool) or not isinstance(d, (int, float, np.integer, np.floating)):
                raise UsageError(f"--duration: {d!r} is not a number of seconds")
            if not math.isfinite(d) or d <= 0:
                raise UsageError(f"--duration: {d!r} must be a positive finite number of seconds")
        m = self.max_requests
        if m is not None and (not _is_int(m) or m < 1):
            raise UsageError(f"--requests: {m!r} must be a whole number >= 1")
        if self.is_open_loop:
            if d is None and m is None:
                raise UsageError("--duration/--requests: an open-loop run needs at least one of them to end")
            expected = self.expected_requests()
            if expected is not None and expected > MAX_SCHEDULE:
                raise UsageError(
                    f"--duration/--requests: about {expected:,.0f} requests at --rate {self.rate:g} exceeds the "
                    f"schedule limit of {MAX_SCHEDULE:,}; shorten the run or split it"
                )

    def expected_requests(self) -> float | None:
        """Expected schedule length (None when unbounded); used to refuse schedules that would not fit memory."""
        bounds = []
        if self.max_requests is not None:
            bounds.append(float(self.max_requests))
        if self.duration_s is not None and self.rate is not None:
            bounds.append(self.rate * self.duration_s)
        return min(bounds) if bounds else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArrivalSpec:
        known = {"kind", "rate", "cv", "concurrency", "duration_s", "max_requests", "seed", "count"}
        unknown = set(d) - known
        if unknown:
            raise UsageError(f"arrival: unknown field(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
        return cls(**d)


def _gap_sampler(spec: ArrivalSpec, rng: np.random.Generator):
    """Return ``draw(n) -> gaps in ns (float64)`` for the spec's process."""
    assert spec.rate is not None
    mean_ns = _NS / spec.rate
    if spec.kind == "poisson":
        return lambda n: rng.standard_exponential(n) * mean_ns
    if spec.kind == "gamma":
        assert spec.cv is not None
        shape = 1.0 / (spec.cv * spec.cv)
        return lambda n: rng.standard_gamma(shape, n) * (mean_ns / shape)
    raise AssertionError(spec.kind)


def build_offsets(spec: ArrivalSpec) -> np.ndarray:
    """Sorted int64 nanosecond offsets from t0 for every request of an open-loop spec.

    With ``count = "exact"`` (the default) and a duration, the schedule has exactly ``round(rate x duration)``
    requests (at most ``max_requests``): a user who asks for 8 req/s for 30 s gets 240, not a count that varies by
    about its square root. The arrivals are the process conditioned on that count (``_exact_count_offsets``), so
    Poisson arrivals stay Poisson. Otherwise (``count = "random"``, or a count bound alone) the free process is
    truncated at ``duration_s`` (offsets strictly before it) and at ``max_requests``: the same spec always gives
    the same array, and a longer bound gives an array that starts with the shorter one's offsets (the gaps come
    from one seeded stream, drawn in fixed-size blocks). Closed-loop specs have no schedule: requests go out when
    a user's previous request ends, so asking for one is a programming error.
    """
    spec.validate()
    if not spec.is_open_loop:
        raise ValueError("a closed-loop spec has no arrival schedule; its users send when their last request ends")
    limit_n = spec.max_requests if spec.max_requests is not None else MAX_SCHEDULE
    limit_ns = spec.duration_s * _NS if spec.duration_s is not None else math.inf
    if spec.kind == "constant":
        return _constant_offsets(spec.rate, limit_n, limit_ns)  # type: ignore[arg-type]
    if spec.count == "exact" and spec.duration_s is not None:
        n = round(spec.rate * spec.duration_s)  # type: ignore[operator]
        if n <= limit_n:
            return _exact_count_offsets(spec, n, limit_ns)
    draw = _gap_sampler(spec, np.random.Generator(np.random.PCG64(spec.seed)))
    blocks: list[np.ndarray] = []
    produced = 0
    carry = 0.0  # absolute time of the last arrival, kept in float so that rounding never accumulates
    while produced < limit_n:
        size = min(BLOCK, limit_n - produced)  # the stream is sequential, so block sizes do not change values
        times = np.cumsum(draw(size))
        times += carry
        carry = float(times[-1])
        keep = int(np.searchsorted(times, limit_ns, side="left"))
        if keep:
            blocks.append(np.rint(times[:keep]).astype(np.int64))
            produced += keep
        if keep < size:
            break
    return np.concatenate(blocks) if blocks else np.empty(0, dtype=np.int64)


def _exact_count_offsets(spec: ArrivalSpec, n: int, limit_ns: float) -> np.ndarray:
    """``n`` arrivals in ``[0, limit_ns)``: the process conditioned on its (n+1)-th arrival falling at the end.

    With n + 1 gaps G drawn from the process and S their sum, the arrivals are ``cumsum(G[:n]) / S * limit``.
    For Poisson (exponential gaps) these are exactly the order statistics of n uniform times: a Poisson process
    conditioned on n arrivals in the window. For gamma gaps the same construction keeps the gaps' shape (their
    coefficient of variation) while fixing the count. Two passes over one seeded stream, in blocks, so memory
    stays bounded whatever n is.
    """
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    total = 0.0
    draw = _gap_sampler(spec, np.random.Generator(np.random.PCG64(spec.seed)))
    for start in range(0, n + 1, BLOCK):
        total += float(draw(min(BLOCK, n + 1 - start)).sum())
    scale = limit_ns / total
    draw = _gap_sampler(spec, np.random.Generator(np.random.PCG64(spec.seed)))
    out = np.empty(n, dtype=np.int64)
    carry = 0.0
    for start in range(0, n, BLOCK):
        size = min(BLOCK, n - start)
        times = np.cumsum(draw(size))
        times += carry
        carry = float(times[-1])
        out[start:start + size] = np.minimum(np.rint(times * scale), math.ceil(limit_ns) - 1).astype(np.int64)
    return out


def _constant_offsets(rate: float, limit_n: int, limit_ns: float) -> np.ndarray:
    period_ns = _NS / rate
    n = limit_n
    if math.isfinite(limit_ns):
        n = min(n, math.ceil(limit_ns / period_ns))  # offsets k*period < limit_ns
    offsets = np.empty(n, dtype=np.int64)
    for start in range(0, n, BLOCK):
        stop = min(n, start + BLOCK)
        offsets[start:stop] = np.rint(np.arange(start, stop, dtype=np.float64) * period_ns)
    if math.isfinite(limit_ns) and n and offsets[-1] >= limit_ns:  # float rounding at the boundary
        offsets = offsets[offsets < limit_ns]
    return offsets


def offsets_for_stripe(offsets: np.ndarray, worker: int, n_workers: int) -> tuple[np.ndarray, np.ndarray]:
    """The requests worker ``worker`` of ``n_workers`` sends: global indices ``i`` with ``i % n_workers == worker``.

    Every worker computes the same schedule from the same spec and keeps its own stripe, so no coordination is
    needed and the stripes together are exactly the whole schedule, each request sent once at its own deadline.
    """
    if not _is_int(n_workers) or n_workers < 1:
        raise ValueError(f"n_workers must be an integer >= 1, got {n_workers!r}")
    if not _is_int(worker) or not 0 <= worker < n_workers:
        raise ValueError(f"worker must be in 0..{n_workers - 1}, got {worker!r}")
    indices = np.arange(worker, len(offsets), n_workers, dtype=np.int64)
    return indices, offsets[indices]


# -- ramps ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ramp:
    """A linear ramp of the arrival rate before the measured schedule: from ``start_rate`` at t0 to the spec's
    rate at ``duration_s``, then the spec's own schedule, shifted by ``duration_s``."""

    duration_s: float
    start_rate: float = 0.0

    def expected(self, rate: float) -> float:
        """Λ(R), the expected number of the ramp's arrivals: the area under the rate line."""
        return (self.start_rate + rate) / 2 * self.duration_s

    def time_of(self, u: np.ndarray, rate: float) -> np.ndarray:
        """Λ⁻¹: the real time (s) at which the cumulative rate reaches ``u`` (expected arrivals).

        Λ(t) = r0 t + a t² with a = (r - r0) / (2R); the root is written 2u / (r0 + sqrt(r0² + 4au)), which stays
        exact when r0 = 0 (then t = sqrt(u / a)) and when a = 0 (then t = u / r0)."""
        r0 = self.start_rate
        a = (rate - r0) / (2 * self.duration_s)
        u = np.asarray(u, dtype=np.float64)
        root = np.sqrt(np.maximum(r0 * r0 + 4 * a * u, 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(r0 + root > 0, 2 * u / (r0 + root), 0.0)
        return np.minimum(t, self.duration_s)


def ramp_offsets(spec: ArrivalSpec, ramp: Ramp) -> np.ndarray:
    """The ramp's arrivals (int64 ns from t0, sorted, all before ``ramp.duration_s``), seeded from the spec.

    Time rescaling: the spec's own process (same kind, same cv) at unit rate over the ramp's expected count
    Λ(R) of "operational time", then every arrival moved to Λ⁻¹ of its time. For Poisson this is exactly the
    inhomogeneous Poisson process with the linear rate (with ``count = exact``: conditioned on round(Λ(R))
    arrivals); for gamma it keeps the gaps' shape in operational time; for constant it is one arrival per unit of
    Λ, so the gaps shrink as the rate rises. The ramp's stream is seeded apart from the measured schedule's."""
    spec.validate()
    if not spec.is_open_loop or spec.rate is None:
        raise ValueError("a ramp of arrivals needs an open-loop spec; a closed loop ramps its users instead")
    total = ramp.expected(spec.rate)
    if total <= 0:
        return np.empty(0, dtype=np.int64)
    unit = ArrivalSpec(kind=spec.kind, rate=1.0, cv=spec.cv, duration_s=total, seed=_ramp_seed(spec.seed),
                       count=spec.count)
    op = build_offsets(unit).astype(np.float64) / _NS
    real = ramp.time_of(op, spec.rate)
    out = np.rint(real * _NS).astype(np.int64)
    return np.minimum(out, int(ramp.duration_s * _NS) - 1)


def _ramp_seed(seed: int) -> int:
    return (int(seed) * 2_654_435_761 + 0x52414D50) % (1 << 63)


def build_offsets_with_ramp(spec: ArrivalSpec, ramp: Ramp | None) -> tuple[np.ndarray, int]:
    """(the whole schedule, how many of its first requests are the ramp's): the ramp's arrivals, then the spec's
    schedule shifted by the ramp's duration. Without a ramp, ``build_offsets(spec)`` and 0."""
    main = build_offsets(spec)
    if ramp is None:
        return main, 0
    head = ramp_offsets(spec, ramp)
    return np.concatenate([head, main + int(round(ramp.duration_s * _NS))]), len(head)


def user_start_offsets(users: int, ramp_s: float | None) -> list[int]:
    """Closed loop with a ramp: user k of ``users`` starts at k/users of the ramp (ns from t0), so the number of
    users in the loop rises linearly; without a ramp they all start at t0."""
    if not ramp_s or users <= 1:
        return [0] * users
    step = ramp_s * _NS / users
    return [int(round(k * step)) for k in range(users)]
