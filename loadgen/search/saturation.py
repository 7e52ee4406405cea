"""Over-saturation: a load the server cannot keep up with, recognised from the step's own figures (pure).

Past saturation a queue grows for as long as the level lasts, so every latency percentile depends on the level's
length rather than on the load: such a step is a fail whatever its percentiles say. Two signs, either enough:

- **the queue grows through the step**: the latency measured from the *scheduled* time of the requests scheduled
  in the last third of the step is more than ``growth`` times that of the first third (and at least
  ``min_growth_ms`` longer);
- **completions fall behind the schedule**: fewer than ``min_completed_share`` of the requests sent completed
  (the rest timed out, were abandoned at the drain or failed).

``SaturationWatch`` applies the first rule live, record by record (a ``LiveStats`` observer handed to the
asyncio driver through ``LevelOptions.watches``), and ends the level early once the in-flight count has grown as
well, so that a failing step costs seconds rather than its whole length plus a drain; ``judge_records`` judges
every step again from its records afterwards (``loadgen/search/step.py``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SaturationRule:
    growth: float = 3.0
    min_growth_ms: float = 250.0
    min_completed_share: float = 0.9
    min_requests: int = 30  # per third: fewer and the trend is noise


def queue_growth(sched_ns: np.ndarray, from_sched_ms: np.ndarray, rule: SaturationRule) -> str | None:
    """The queue-growth rule over completed requests: scheduled times and latencies from the scheduled time."""
    if len(sched_ns) < 3 * rule.min_requests:
        return None
    order = np.argsort(sched_ns)
    lat = np.asarray(from_sched_ms, dtype=float)[order]
    third = len(lat) // 3
    first, last = float(np.median(lat[:third])), float(np.median(lat[-third:]))
    if last > rule.growth * max(first, 1e-9) and last - first >= rule.min_growth_ms:
        return f"queue grows: latency from schedule {first:.0f} -> {last:.0f} ms"
    return None


def completion_shortfall(sent: int, completed: int, rule: SaturationRule) -> str | None:
    if sent >= rule.min_requests and completed < rule.min_completed_share * sent:
        return f"only {completed} of {sent} sent completed"
    return None


def judge_records(sched_ns: np.ndarray, from_sched_ms: np.ndarray, sent: int, completed: int,
                  rule: SaturationRule | None = None) -> str | None:
    """Why the step is past saturation, or None."""
    rule = rule or SaturationRule()
    return completion_shortfall(sent, completed, rule) or queue_growth(sched_ns, from_sched_ms, rule)


class SaturationWatch:
    """A live observer: ``watch(rec)`` for every finished record (``LiveStats.add_observer``). It keeps the
    first ``window`` successes' latency from the schedule as the baseline and ends the level
    (``end_early(reason)``) once the last ``window`` successes wait ``growth`` times longer (and
    ``min_growth_ms`` more) while the requests in flight have grown past the bound: ``in_flight_bound`` when
    given, else twice what Little's law gives at the baseline latency and the scheduled ``rate``
    (at least ``min_in_flight``). Both signs together: a slow server with a short queue is not saturated."""

    def __init__(self, end_early: Callable[[str], None], in_flight: Callable[[], int],
                 in_flight_bound: int | None = None, rule: SaturationRule | None = None, window: int = 30,
                 rate: float | None = None, min_in_flight: int = 8) -> None:
        self.end_early, self.in_flight = end_early, in_flight
        self.fixed_bound, self.rate, self.min_in_flight = in_flight_bound, rate, min_in_flight
        self.rule = rule or SaturationRule()
        self.window = window
        self.baseline: list[float] = []
        self.recent: deque[float] = deque(maxlen=window)
        self.tripped: str | None = None

    def bound(self) -> int:
        if self.fixed_bound is not None:
            return self.fixed_bound
        little = (self.rate or 0.0) * float(np.median(self.baseline)) / 1000 if self.baseline else 0.0
        return max(self.min_in_flight, int(2 * little) + 1)

    def __call__(self, rec) -> None:  # noqa: ANN001 - a RequestRecord
        if self.tripped is not None or rec.status != "ok" or rec.last_token_ns is None:
            return
        lat_ms = (rec.last_token_ns - rec.scheduled_ns) / 1e6
        if len(self.baseline) < self.window:
            self.baseline.append(lat_ms)
            return
        self.recent.append(lat_ms)
        if len(self.recent) < self.window:
            return
        in_flight = self.in_flight()
        if in_flight <= self.bound():
            return
        first, last = float(np.median(self.baseline)), float(np.median(self.recent))
        if last > self.rule.growth * max(first, 1e-9) and last - first >= self.rule.min_growth_ms:
            self.tripped = (f"past saturation: latency from schedule {first:.0f} -> {last:.0f} ms, "
                            f"{in_flight} in flight (bound {self.bound()})")
            self.end_early(self.tripped)
