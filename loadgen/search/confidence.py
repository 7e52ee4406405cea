"""Judging one ``--fail-on`` condition at one load with a stated confidence (pure: numpy and scipy only).

- **A percentile condition** (``ttft_p90<300ms``): the order-statistic bound. With n completed requests and k of
  them above X, under the null "the q-quantile equals X" k is Binomial(n, 1 - q). The condition passes when the
  upper confidence bound of the true q-quantile is below X (too few requests above X for the quantile to be X or
  more), fails when the lower bound is above X, and is *undecided* otherwise. ``quantile_bounds`` gives the bounds
  themselves (order statistics of the sorted values); ``judge_quantile`` decides from the binomial tail directly,
  which is the same test.
- **A share condition** (``error_rate<1%``, ``error_rate_<kind>``, ``goodput_ratio``): the exact (Clopper-Pearson)
  binomial bound of the proportion, same pass / fail / undecided rule.
- **Anything else** (a mean, a throughput, a window...): the point value against the threshold, stated as
  "no confidence bound".

Each bound is one-sided at the confidence asked (0.95 by default): a pass is wrong at most 5 % of the time when
the true value sits exactly at the threshold, and so is a fail.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

PASS, FAIL, UNDECIDED = "pass", "fail", "undecided"
ORDER_STATISTIC, CLOPPER_PEARSON, POINT = "order statistic", "Clopper-Pearson", "point value (no confidence bound)"
QUANTILES = {"p50": 0.50, "p90": 0.90, "p95": 0.95, "p99": 0.99, "p99_9": 0.999}
_OPS = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal}


@dataclass
class StepData:
    """What a step measured, poolable over several levels at the same load.

    ``values``: per-request metric name (``ttft``, ``e2e``, ``tpot``...) -> its values in ms, completed requests.
    ``counts``: share name (``error_rate``, ``error_rate_timeout``, ``goodput_ratio``) -> (k, n).
    ``points``: every ``--fail-on`` name -> the level's value (the mean over pooled levels)."""

    values: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)
    points: dict[str, float | None] = field(default_factory=dict)
    levels: int = 1

    def pooled(self, other: StepData) -> StepData:
        values = {k: np.concatenate([self.values.get(k, np.empty(0)), other.values.get(k, np.empty(0))])
                  for k in {*self.values, *other.values}}
        counts = {}
        for k in {*self.counts, *other.counts}:
            a, b = self.counts.get(k, (0, 0)), other.counts.get(k, (0, 0))
            counts[k] = (a[0] + b[0], a[1] + b[1])
        points: dict[str, float | None] = {}
        for k in {*self.points, *other.points}:
            a, b = self.points.get(k), other.points.get(k)
            points[k] = b if a is None else a if b is None else (a * self.levels + b * other.levels) / (
                self.levels + other.levels)
        return StepData(values, counts, points, self.levels + other.levels)


@dataclass
class Judgement:
    """One condition at one step: the verdict, how it was reached, and the numbers behind it."""

    condition: str  # as written, e.g. "ttft_p90<300ms"
    verdict: str  # pass | fail | undecided
    method: str
    value: float | None  # the point estimate (metric's unit)
    lower: float | None = None  # confidence bounds of the true value (None: not bounded on that side)
    upper: float | None = None
    confidence: float | None = None  # the confidence asked, where a bound was used
    n: int | None = None
    k: int | None = None  # events behind a bound: requests above the threshold, or errors
    p0: float | None = None  # the events' share at the threshold: 1 - q for a q-quantile, the threshold for a share
    op: str = "<"
    threshold: float = 0.0

    @property
    def holds_at_point(self) -> bool:
        """The point value meets the condition (what an undecided step leans to)."""
        return self.value is not None and bool(_OPS[self.op](self.value, self.threshold))

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


# ---------------------------------------------------------------------------------------------------- bounds
def quantile_bounds(values: np.ndarray, q: float, confidence: float = 0.95) -> tuple[float, float]:
    """One-sided order-statistic bounds of the true q-quantile: (lower, upper), each holding with probability
    ``confidence``; -inf / inf when n is too small to bound that side (distribution-free, for continuous data).

    Upper: x(k) with k the smallest index such that P(Binomial(n, q) <= k - 1) >= confidence.
    Lower: x(j) with j the largest index such that P(Binomial(n, q) >= j) >= confidence."""
    x = np.sort(np.asarray(values, dtype=float))
    n = len(x)
    if n == 0:
        return -math.inf, math.inf
    k = int(stats.binom.ppf(confidence, n, q)) + 1
    upper = float(x[k - 1]) if k <= n else math.inf
    m = int(stats.binom.ppf(1.0 - confidence, n, q))
    if stats.binom.cdf(m, n, q) > 1.0 - confidence:
        m -= 1
    j = m + 1
    lower = float(x[j - 1]) if j >= 1 else -math.inf
    return lower, upper


def proportion_bounds(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """One-sided exact (Clopper-Pearson) bounds of a binomial proportion from k successes in n trials."""
    if n <= 0:
        return 0.0, 1.0
    alpha = 1.0 - confidence
    lower = 0.0 if k == 0 else float(stats.beta.ppf(alpha, k, n - k + 1))
    upper = 1.0 if k == n else float(stats.beta.ppf(1.0 - alpha, k + 1, n - k))
    return lower, upper


def _decide(op: str, threshold: float, lower: float, upper: float) -> str:
    """pass / fail / undecided for ``true value OP threshold`` given its confidence bounds."""
    below, above = upper < threshold, lower > threshold
    if op in ("<", "<="):
        return PASS if below else FAIL if above else UNDECIDED
    return PASS if above else FAIL if below else UNDECIDED


# ---------------------------------------------------------------------------------------------------- judges
def judge_quantile(text: str, op: str, threshold: float, values: np.ndarray, q: float,
                   confidence: float) -> Judgement:
    """A percentile condition by the order-statistic bound; no value at all fails (as ``--fail-on`` does)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return Judgement(text, FAIL, ORDER_STATISTIC, None, confidence=confidence, n=0, op=op, threshold=threshold)
    lower, upper = quantile_bounds(v, q, confidence)
    return Judgement(text, _decide(op, threshold, lower, upper), ORDER_STATISTIC, float(np.percentile(v, 100 * q)),
                     lower if math.isfinite(lower) else None, upper if math.isfinite(upper) else None,
                     confidence, len(v), int(np.sum(v > threshold)), 1.0 - q, op, threshold)


def judge_share(text: str, op: str, threshold: float, k: int, n: int, confidence: float) -> Judgement:
    """A share condition (errors / requests) by the Clopper-Pearson bound; no request at all fails."""
    if n <= 0:
        return Judgement(text, FAIL, CLOPPER_PEARSON, None, confidence=confidence, n=0, op=op, threshold=threshold)
    lower, upper = proportion_bounds(k, n, confidence)
    return Judgement(text, _decide(op, threshold, lower, upper), CLOPPER_PEARSON, k / n, lower, upper,
                     confidence, n, k, threshold, op, threshold)


def judge_point(text: str, op: str, threshold: float, value: float | None) -> Judgement:
    ok = value is not None and bool(_OPS[op](value, threshold))
    return Judgement(text, PASS if ok else FAIL, POINT, value, op=op, threshold=threshold)


def quantile_of(name: str) -> tuple[str, float] | None:
    """``ttft_p90`` -> ("ttft", 0.9); None for a name that is not a per-request percentile."""
    base, _, stat = name.rpartition("_")
    if stat == "9" and base.endswith("_p99"):  # p99_9
        base, stat = base[: -len("_p99")], "p99_9"
    return (base, QUANTILES[stat]) if stat in QUANTILES and base else None


def judge(check: Any, data: StepData, confidence: float = 0.95) -> Judgement:
    """One ``loadgen.core.slo.Check`` against a step's data, with the strongest method its metric allows."""
    quantile = quantile_of(check.name)
    if quantile is not None and quantile[0] in data.values:
        return judge_quantile(check.text, check.op, check.value, data.values[quantile[0]], quantile[1], confidence)
    if check.name in data.counts:
        k, n = data.counts[check.name]
        return judge_share(check.text, check.op, check.value, k, n, confidence)
    return judge_point(check.text, check.op, check.value, data.points.get(check.name))


def combine(judgements: list[Judgement]) -> str:
    """A step's verdict: fail when any condition fails, undecided when any is undecided, else pass."""
    return combine_verdicts([j.verdict for j in judgements])


def combine_verdicts(verdicts: list[str]) -> str:
    verdicts = set(verdicts)
    return FAIL if FAIL in verdicts else UNDECIDED if UNDECIDED in verdicts else PASS


def projection(j: Judgement, factor: float) -> str:
    """The verdict this condition would get with ``factor`` times as many requests, if the share of events it
    saw so far held. (A quantile bound is a test on the share of requests above the threshold, null 1 - q: the
    same Clopper-Pearson duality as a share.) A decided condition keeps its verdict; one without counts (a point
    value, or no request at all) stays undecided."""
    if j.verdict != UNDECIDED:
        return j.verdict
    if j.k is None or not j.n or j.p0 is None or j.confidence is None:
        return UNDECIDED
    big_n = int(math.ceil(j.n * factor))
    k = int(round(j.k * big_n / j.n))
    lower, upper = proportion_bounds(k, big_n, j.confidence)
    return _decide(j.op, j.p0, lower, upper)


def could_decide(j: Judgement, factor: float) -> bool:
    """Would ``factor`` times as many requests decide this condition (see ``projection``)?"""
    return projection(j, factor) != UNDECIDED


def lean(judgements: list[Judgement]) -> str:
    """What an undecided step's point values say: pass when every condition holds at its point value."""
    return PASS if all(j.holds_at_point for j in judgements) else FAIL
