"""The search loop, pure: a bracket (start low, grow geometrically until the condition fails), then bisection
until the bracket is narrower than the precision asked, within a time budget.

It knows nothing of servers or run directories: it calls ``run_step(load, prior) -> StepResult`` (``prior``: the
same load's earlier result when the step is being extended, to pool with) and reads ``clock()`` to keep to the
budget, so the tests drive it with a simulated server and a fake clock.

Rules:
- a step whose verdict is *undecided* (too few requests for the confidence asked) is extended: the same load is
  run again and the records pooled, up to ``max_extends`` times, as long as the budget has room and the
  extensions could decide the step (``confidence.projection``: if the share of requests over the threshold seen
  so far held, would that many more requests settle every condition, or fail one? 0 errors in 30 requests can
  never show an error rate under 1 % with 60 more). A step still undecided keeps its verdict ("undecided") and the search moves on by its point
  values (``confidence.lean``), saying so; with ``strict`` an undecided step counts as a fail instead, so that
  the answer is a confirmed pass or nothing;
- far from the threshold the bracket grows faster: by ``growth`` squared while every condition's point value
  has at least ``FAST_HEADROOM`` times headroom (a p90 of 4 ms against 300 ms), and at least one is a measured
  value (0 errors says nothing about how near the limit is);
- a step is started only when the budget still has room for one more level, judged by the longest level so far
  (or ``step_estimate_s`` before the first);
- the answer is the highest load that *passed* (at the confidence asked); ``first_fail`` is the lowest load above
  it that did not.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loadgen.search.confidence import (
    FAIL,
    PASS,
    UNDECIDED,
    Judgement,
    StepData,
    combine,
    combine_verdicts,
    lean,
    projection,
)

BUDGET, PRECISION, FAILS_AT_START, MAX_LOAD, MAX_STEPS = (
    "budget spent", "precision reached", "fails at the lowest load", "no failure up to --max-load", "step limit")


FAST_HEADROOM = 4.0


def headroom(j: Judgement) -> float:
    """How far the point value is from the threshold, as a factor (inf for a share of 0, 0 with no value)."""
    if j.value is None:
        return 0.0
    if j.op in ("<", "<="):
        return math.inf if j.value <= 0 else j.threshold / j.value
    return math.inf if j.threshold <= 0 else j.value / j.threshold


@dataclass
class StepResult:
    """One load's outcome (one level, or several pooled when the step was extended)."""

    load: float
    verdict: str  # pass | fail | undecided
    judgements: list[Judgement] = field(default_factory=list)
    run_dirs: list[str] = field(default_factory=list)
    saturated: str | None = None  # why the load was judged past saturation (then the verdict is fail)
    wall_s: float = 0.0
    data: StepData | None = None  # kept to pool with an extension; not written out

    @property
    def levels(self) -> int:
        return max(1, len(self.run_dirs))

    @property
    def leaning(self) -> str:
        """The verdict, or for an undecided step what its point values say."""
        return self.verdict if self.verdict != UNDECIDED else lean(self.judgements)

    def to_dict(self) -> dict[str, Any]:
        return {"load": self.load, "verdict": self.verdict, "levels": self.levels,
                "leaning": self.leaning,
                "conditions": [j.to_dict() for j in self.judgements], "saturated": self.saturated,
                "wall_s": round(self.wall_s, 3), "run_dirs": self.run_dirs}


def step_result(load: float, judgements: list[Judgement], data: StepData | None = None,
                run_dirs: list[str] | None = None, saturated: str | None = None, wall_s: float = 0.0) -> StepResult:
    """A step's result from its judgements; a saturated step fails whatever its judgements say."""
    verdict = FAIL if saturated else combine(judgements)
    return StepResult(load, verdict, judgements, list(run_dirs or []), saturated, wall_s, data)


RunStep = Callable[[float, "StepResult | None"], StepResult]


@dataclass
class SearchSettings:
    start: float = 1.0  # the first load (req/s, or users when ``integer``)
    growth: float = 2.0  # the bracket's factor
    precision: float = 0.05  # stop when (first fail - last pass) <= precision x last pass
    budget_s: float = 600.0
    integer: bool = False  # concurrency: whole users
    max_extends: int = 2  # further levels for an undecided step
    max_load: float | None = None
    max_steps: int = 40  # levels in all, extensions included
    step_estimate_s: float = 0.0  # the cost of one level before any was run
    strict: bool = False  # an undecided step counts as a fail
    fast_growth: bool = True  # growth squared while far from every threshold


@dataclass
class SearchOutcome:
    points: list[StepResult]
    last_pass: StepResult | None
    first_fail: StepResult | None
    stop_reason: str
    elapsed_s: float

    @property
    def max_load(self) -> float | None:
        return self.last_pass.load if self.last_pass is not None else None


class _Search:
    def __init__(self, run_step: RunStep, s: SearchSettings, clock: Callable[[], float],
                 on_step: Callable[[StepResult], None] | None) -> None:
        self.run_step, self.s, self.clock, self.on_step = run_step, s, clock, on_step
        self.t0 = clock()
        self.level_costs: list[float] = []
        self.points: list[StepResult] = []
        self.levels = 0

    def elapsed(self) -> float:
        return self.clock() - self.t0

    def affordable(self) -> bool:
        estimate = max(self.level_costs) if self.level_costs else self.s.step_estimate_s
        return self.elapsed() + estimate <= self.s.budget_s and self.levels < self.s.max_steps

    def measure(self, load: float) -> StepResult | None:
        """One step at ``load``, extended while undecided; None when the budget had no room for its first level."""
        step: StepResult | None = None
        for extensions_left in range(self.s.max_extends, -1, -1):
            if not self.affordable():
                break
            started = self.clock()
            step = self.run_step(load, step)
            self.level_costs.append(self.clock() - started)
            self.levels += 1
            if step.verdict != UNDECIDED or not self.worth_extending(step, extensions_left):
                break
        if step is not None:
            self.points.append(step)
            if self.on_step is not None:
                self.on_step(step)
        return step

    @staticmethod
    def worth_extending(step: StepResult, extensions_left: int) -> bool:
        factor = (step.levels + extensions_left) / step.levels
        return extensions_left > 0 and combine_verdicts([projection(j, factor) for j in step.judgements]) != UNDECIDED

    def passes(self, step: StepResult) -> bool:
        return step.verdict == PASS or (not self.s.strict and step.leaning == PASS)

    def up(self, step: StepResult) -> float:
        load, rooms = step.load, [headroom(j) for j in step.judgements]
        far = (self.s.fast_growth and rooms and min(rooms) >= FAST_HEADROOM
               and any(math.isfinite(r) for r in rooms))
        nxt = load * (self.s.growth ** 2 if far else self.s.growth)
        if self.s.integer:
            nxt = max(load + 1, math.ceil(nxt))
        return min(nxt, self.s.max_load) if self.s.max_load is not None else nxt

    def mid(self, lo: float, hi: float) -> float | None:
        """The next load inside (lo, hi), or None when the bracket is as narrow as asked."""
        if hi - lo <= self.s.precision * lo:
            return None
        if self.s.integer:
            m = (lo + hi) // 2
            return float(m) if lo < m < hi else None
        m = (lo + hi) / 2
        tidy = float(f"{m:.4g}")  # 7.6, not 7.6000000000000005
        return tidy if lo < tidy < hi else m

    def done(self, reason: str, lo: StepResult | None, hi: StepResult | None) -> SearchOutcome:
        return SearchOutcome(self.points, lo, hi, reason, self.elapsed())


def search(run_step: RunStep, settings: SearchSettings, clock: Callable[[], float] = time.monotonic,
           on_step: Callable[[StepResult], None] | None = None) -> SearchOutcome:
    """Bracket, then bisect; see the module docstring. ``on_step(step)`` after each step (a progress line)."""
    st = _Search(run_step, settings, clock, on_step)
    first = st.measure(settings.start)
    if first is None:
        return st.done(BUDGET, None, None)
    if not st.passes(first):
        return st.done(FAILS_AT_START, None, first)
    lo, hi = first, None
    while hi is None:  # the bracket: grow until a step does not pass
        if settings.max_load is not None and lo.load >= settings.max_load:
            return st.done(MAX_LOAD, lo, None)
        step = st.measure(st.up(lo))
        if step is None:
            return st.done(BUDGET if st.levels < settings.max_steps else MAX_STEPS, lo, None)
        lo, hi = (step, None) if st.passes(step) else (lo, step)
    while (load := st.mid(lo.load, hi.load)) is not None:  # bisection inside (last pass, first fail)
        step = st.measure(load)
        if step is None:
            return st.done(BUDGET if st.levels < settings.max_steps else MAX_STEPS, lo, hi)
        lo, hi = (step, hi) if st.passes(step) else (lo, step)
    return st.done(PRECISION, lo, hi)
