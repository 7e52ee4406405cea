"""Client cancellation, planned before the run: which requests the client abandons, and after how long.

Real users close the tab: a share of requests is dropped by the client mid-stream, and the server must free the
slot. ``--cancel-rate P --cancel-after DIST`` asks for that. The decision is a pure function of the request's index
and the seed (``CancelPlan.delay_s``), not of a random stream consumed in order, so that:

- every driver (the asyncio loop, its worker processes, Locust's dispatcher and users) gets the same answer for
  the same request whatever order it builds requests in, and only has to honour ``RequestSpec.cancel_after_s``;
- closed loops, whose number of requests is unknown up front, are planned the same way as open loops.

The delay is measured from the request's issue time. Forms of DIST (durations as ``30``, ``2s``, ``500ms``):

- ``D``: a fixed delay;
- ``uniform:A,B``: uniform between A and B;
- ``exp:MEAN``: exponential with that mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from loadgen.core.units import parse_seconds
from loadgen.errors import UsageError

FORMS = "a duration (2s), uniform:A,B (uniform:500ms,3s) or exp:MEAN (exp:2s)"
MAX_DELAY_S = 86_400.0  # a day: beyond this the number is a typo, and no request lives that long
_MASK = (1 << 64) - 1
_SALT = 0x43414E43454C  # "CANCEL": keeps these draws apart from any other use of the seed


@dataclass(frozen=True)
class DelayDist:
    kind: str  # fixed | uniform | exp
    params: tuple[float, ...]
    text: str

    @property
    def mean_s(self) -> float:
        if self.kind == "uniform":
            return (self.params[0] + self.params[1]) / 2
        return self.params[0]

    def quantile(self, u: float) -> float:
        """The delay at probability ``u`` in [0, 1): the inverse CDF, so one uniform draw gives one delay."""
        if self.kind == "fixed":
            return self.params[0]
        if self.kind == "uniform":
            lo, hi = self.params
            return lo + (hi - lo) * u
        return -self.params[0] * math.log1p(-u)


def _duration(text: str, flag: str, raw: str) -> float:
    try:
        v = parse_seconds(text.strip(), flag)
    except UsageError:
        raise UsageError(f"{flag} {raw!r}: {text.strip()!r} is not a duration; use {FORMS}") from None
    if not (0 <= v <= MAX_DELAY_S):
        raise UsageError(f"{flag} {raw!r}: delays must be between 0 and {MAX_DELAY_S:g} s; use {FORMS}")
    return v


def parse_delay(text: Any, flag: str = "--cancel-after") -> DelayDist:
    """Parse a delay form (module docstring); one ``UsageError`` line naming ``flag`` when it is wrong."""
    raw = str(text).strip()
    if not raw:
        raise UsageError(f"{flag}: empty; use {FORMS}")
    kind, sep, rest = raw.partition(":")
    if not sep:
        return DelayDist("fixed", (_duration(raw, flag, raw),), raw)
    kind = kind.strip().lower()
    parts = rest.split(",")
    if kind == "uniform":
        if len(parts) != 2:
            raise UsageError(f"{flag} {raw!r}: uniform needs two durations, e.g. uniform:500ms,3s")
        lo, hi = (_duration(p, flag, raw) for p in parts)
        if hi < lo:
            raise UsageError(f"{flag} {raw!r}: the high end is below the low end")
        return DelayDist("uniform", (lo, hi), raw)
    if kind == "exp":
        if len(parts) != 1:
            raise UsageError(f"{flag} {raw!r}: exp needs one duration (the mean), e.g. exp:2s")
        mean = _duration(parts[0], flag, raw)
        if mean <= 0:
            raise UsageError(f"{flag} {raw!r}: the mean must be positive")
        return DelayDist("exp", (mean,), raw)
    raise UsageError(f"{flag} {raw!r}: unknown form {kind!r}; use {FORMS}")


def _mix(x: int) -> int:
    """splitmix64's finaliser: a cheap, well-spread 64-bit hash (a counter-based generator, no state)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def _uniform(seed: int, index: int, stream: int) -> float:
    """A uniform in [0, 1) that depends only on (seed, index, stream)."""
    h = _mix(_mix(_mix(seed ^ _SALT) ^ (index & _MASK)) ^ stream)
    return (h >> 11) * (1.0 / (1 << 53))


@dataclass(frozen=True)
class CancelPlan:
    """``rate``: the share of requests the client abandons; ``after``: the delay distribution."""

    rate: float
    after: DelayDist
    seed: int = 0

    def delay_s(self, index: int) -> float | None:
        """The delay after which request ``index`` is abandoned, or None when it runs to its end."""
        if self.rate <= 0 or _uniform(self.seed, index, 1) >= self.rate:
            return None
        return self.after.quantile(_uniform(self.seed, index, 2))

    def describe(self) -> str:
        return f"client cancellation: {self.rate:.0%} of requests abandoned after {self.after.text} from issue"

    def to_dict(self) -> dict[str, Any]:
        return {"rate": self.rate, "after": self.after.text, "mean_after_s": self.after.mean_s}


def check_cancel(rate: float | None, after: str | None, seed: int = 0) -> CancelPlan | None:
    """The two flags together (one line each for what is wrong); None when no cancellation is asked for."""
    if rate is None or rate == 0:
        if after is not None:
            raise UsageError("--cancel-after applies with --cancel-rate P (the share of requests to abandon, 0..1)")
        return None
    if not (math.isfinite(rate) and 0 < rate <= 1):
        raise UsageError(f"--cancel-rate {rate:g}: give the share of requests to abandon, between 0 and 1 (e.g. 0.1)")
    if after is None:
        raise UsageError("--cancel-rate needs --cancel-after DIST: when to abandon, e.g. --cancel-after uniform:1s,5s")
    return CancelPlan(float(rate), parse_delay(after), seed)


class CancellingSource:
    """A request source whose specs carry their planned cancellation delay (everything else is the wrapped
    source's: attributes not defined here are looked up on it)."""

    def __init__(self, source: Any, plan: CancelPlan) -> None:
        self._source = source
        self.cancel_plan = plan

    def spec(self, index: int) -> Any:
        spec = self._source.spec(index)
        spec.cancel_after_s = self.cancel_plan.delay_s(index)
        return spec

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)
