"""Request-size distributions in tokens (``--input-tokens`` / ``--output-tokens``).

Accepted forms (parameters in tokens):

==========================  =====================================================================
``128``                     fixed
``uniform:LO,HI``           whole numbers LO..HI inclusive, equally likely
``normal:MEAN,SD``          normal, rounded to the nearest whole number
``lognormal:MEDIAN,SIGMA``  exp(N(ln MEDIAN, SIGMA)), rounded (SIGMA is the log-space std)
``choice:A,B,...``          one of the listed sizes, equally likely
``exp:MEAN``                exponential with that mean, rounded
==========================  =====================================================================

Every sample is clipped to ``[1, MAX_TOKENS]``: a request of 0 tokens is not a request, and a heavy lognormal tail
must not overflow int64. ``mean`` is the expected value *after* rounding and clipping, so the expected token
throughput of a run can be compared with what it achieved without a bias from the clipping at 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from loadgen.errors import UsageError

MAX_TOKENS = 1_000_000
MAX_SIGMA = 4.0  # lognormal log-space std; beyond this the distribution is almost all clipping
_EXACT_TERMS = 100_000  # sum P(X >= k - 1/2) term by term this far, then integrate the smooth tail

FORMS = "N, uniform:LO,HI, normal:MEAN,SD, lognormal:MEDIAN,SIGMA, choice:A,B,... or exp:MEAN"
_ARITY = {"uniform": 2, "normal": 2, "lognormal": 2, "exp": 1}


@dataclass(frozen=True)
class SizeDist:
    """A parsed size distribution. Build it with ``parse_size``; ``text`` is what the user wrote."""

    kind: str  # fixed | uniform | normal | lognormal | choice | exp
    params: tuple[float, ...]
    text: str

    # -- sampling ------------------------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` sizes (int64, each in 1..MAX_TOKENS)."""
        p = self.params
        if self.kind == "fixed":
            return np.full(n, int(p[0]), dtype=np.int64)
        if self.kind == "uniform":
            return rng.integers(int(p[0]), int(p[1]), endpoint=True, size=n, dtype=np.int64)
        if self.kind == "choice":
            return np.asarray(p, dtype=np.int64)[rng.integers(0, len(p), size=n)]
        if self.kind == "normal":
            x = rng.normal(p[0], p[1], size=n)
        elif self.kind == "lognormal":
            x = p[0] * np.exp(p[1] * rng.standard_normal(n))
        elif self.kind == "exp":
            x = rng.exponential(p[0], size=n)
        else:  # pragma: no cover - parse_size only makes the kinds above
            raise AssertionError(self.kind)
        return np.clip(np.rint(x), 1, MAX_TOKENS).astype(np.int64)

    # -- description ---------------------------------------------------------------------------------------
    @cached_property
    def mean(self) -> float:
        """Expected value of ``sample`` (after rounding and clipping)."""
        p = self.params
        if self.kind == "fixed":
            return float(p[0])
        if self.kind == "uniform":
            return (p[0] + p[1]) / 2.0
        if self.kind == "choice":
            return float(np.mean(p))
        return _rounded_clipped_mean(self._continuous())

    def _continuous(self) -> Any:
        # Imported here: scipy costs ~0.5 s at start-up and only ``mean`` needs it.
        from scipy import stats as _st

        p = self.params
        if self.kind == "normal":
            return _st.norm(loc=p[0], scale=p[1])
        if self.kind == "lognormal":
            return _st.lognorm(s=p[1], scale=p[0])
        return _st.expon(scale=p[0])

    def describe(self) -> str:
        p = [_fmt(v) for v in self.params]
        body = {
            "fixed": lambda: f"fixed {p[0]}",
            "uniform": lambda: f"uniform {p[0]}..{p[1]}",
            "normal": lambda: f"normal(mean {p[0]}, sd {p[1]}), rounded, >= 1",
            "lognormal": lambda: f"lognormal(median {p[0]}, sigma {p[1]}), rounded, >= 1",
            "choice": lambda: f"one of {', '.join(p)}",
            "exp": lambda: f"exponential(mean {p[0]}), rounded, >= 1",
        }[self.kind]()
        if self.kind == "fixed":
            return f"{body} tokens"
        return f"{body} tokens (mean {self.mean:.1f})"

    def to_dict(self) -> dict[str, Any]:
        names = {
            "fixed": ("value",),
            "uniform": ("low", "high"),
            "normal": ("mean", "sd"),
            "lognormal": ("median", "sigma"),
            "exp": ("mean",),
        }
        d: dict[str, Any] = {"kind": self.kind, "text": self.text}
        if self.kind == "choice":
            d["values"] = [int(v) for v in self.params]
        else:
            for name, v in zip(names[self.kind], self.params, strict=True):
                d[name] = int(v) if float(v).is_integer() else v
        d["expected"] = self.mean
        return d


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _rounded_clipped_mean(dist: Any) -> float:
    """E[clip(round(X), 1, MAX_TOKENS)] for a continuous X with survival function ``dist.sf``.

    For Y on 1..U: E[Y] = sum_{j=1..U} P(Y >= j) = 1 + sum_{j=2..U} P(X >= j - 1/2). The first terms are summed
    exactly; past ``_EXACT_TERMS`` the summand is smooth, so the rest is its integral (midpoint rule), which is
    the integral of the survival function from J to U (quadrature).
    """
    hi = float(dist.isf(1e-15))
    j_last = int(min(MAX_TOKENS, max(1.0, math.ceil(hi)) + 1, _EXACT_TERMS))
    total = 1.0
    if j_last >= 2:
        total += float(np.sum(dist.sf(np.arange(2, j_last + 1, dtype=np.float64) - 0.5)))
    if j_last < MAX_TOKENS and hi > j_last:
        from scipy import integrate

        tail, _ = integrate.quad(dist.sf, j_last, min(hi, MAX_TOKENS), limit=200)
        total += float(tail)
    return total


def _number(text: str, flag: str, whole: bool) -> float:
    try:
        v = float(text)
    except ValueError:
        raise UsageError(f"{flag}: {text!r} is not a number; use {FORMS}") from None
    if not math.isfinite(v):
        raise UsageError(f"{flag}: {text!r} is not a finite number; use {FORMS}")
    if whole and not v.is_integer():
        raise UsageError(f"{flag}: {text!r} must be a whole number of tokens; use {FORMS}")
    return v


def _in_range(v: float, lo: float, hi: float, what: str, flag: str, text: str) -> None:
    if not lo <= v <= hi:
        raise UsageError(f"{flag}: in {text!r} the {what} must be in {_fmt(lo)}..{_fmt(hi)}")


def parse_size(text: str, flag: str = "--input-tokens") -> SizeDist:
    """Parse a size form (see the module docstring); ``flag`` names the option in error messages."""
    if not isinstance(text, str):
        text = str(text)
    raw = text.strip()
    if not raw:
        raise UsageError(f"{flag}: empty size; use {FORMS}")
    kind, sep, rest = raw.partition(":")
    if not sep:
        v = _number(raw, flag, whole=True)
        _in_range(v, 1, MAX_TOKENS, "size", flag, raw)
        return SizeDist("fixed", (v,), raw)
    kind = kind.strip().lower()
    if kind not in (*_ARITY, "choice"):
        raise UsageError(f"{flag}: unknown size form {kind!r} in {raw!r}; use {FORMS}")
    parts = [s.strip() for s in rest.split(",")]
    if kind == "choice":
        if not parts or any(not s for s in parts):
            raise UsageError(f"{flag}: {raw!r} needs a list of sizes, e.g. choice:16,64,256")
    elif len(parts) != _ARITY[kind]:
        example = {"uniform": "uniform:64,256", "normal": "normal:128,32", "lognormal": "lognormal:128,0.5",
                   "exp": "exp:128"}[kind]
        raise UsageError(f"{flag}: {raw!r} needs {_ARITY[kind]} number(s), e.g. {example}")
    if kind == "uniform":
        lo, hi = (_number(s, flag, whole=True) for s in parts)
        _in_range(lo, 1, MAX_TOKENS, "low end", flag, raw)
        _in_range(hi, lo, MAX_TOKENS, "high end", flag, raw)
        return SizeDist(kind, (lo, hi), raw)
    if kind == "choice":
        values = tuple(_number(s, flag, whole=True) for s in parts)
        for v in values:
            _in_range(v, 1, MAX_TOKENS, "sizes", flag, raw)
        return SizeDist(kind, values, raw)
    nums = [_number(s, flag, whole=False) for s in parts]
    if kind == "normal":
        _in_range(nums[0], 1, MAX_TOKENS, "mean", flag, raw)
        _in_range(nums[1], 0, MAX_TOKENS, "sd", flag, raw)
    elif kind == "lognormal":
        _in_range(nums[0], 1, MAX_TOKENS, "median", flag, raw)
        _in_range(nums[1], 0, MAX_SIGMA, "sigma", flag, raw)
    else:
        _in_range(nums[0], 1e-3, MAX_TOKENS, "mean", flag, raw)
    if kind in ("normal", "lognormal") and nums[1] == 0:  # degenerate: a fixed size written another way
        return SizeDist("fixed", (float(min(MAX_TOKENS, max(1, round(nums[0])))),), raw)
    return SizeDist(kind, tuple(nums), raw)
