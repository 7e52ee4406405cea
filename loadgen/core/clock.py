"""Clocks. All durations come from one monotonic nanosecond clock; one wall-clock anchor per run is kept for reports.

The runner never sleeps relative intervals: it waits for absolute deadlines ``t0 + offset`` so that drift does not
accumulate (timing rule 1). ``FakeClock`` lets the schedule, the late policy and the metrics be tested exactly.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now_ns(self) -> int: ...

    async def sleep_until(self, deadline_ns: int) -> None: ...


class MonotonicClock:
    """``time.perf_counter_ns`` (CLOCK_MONOTONIC on Linux, the same clock the power side-car stamps with)."""

    # Wake this much before the deadline on the event loop's coarse timer, then yield until it has passed.
    # The loop's timer resolution on Linux is about 1 ms; spinning on 0-second sleeps for the last stretch keeps the
    # issue time within tens of microseconds of the deadline without blocking other tasks.
    spin_ns = 1_000_000

    def now_ns(self) -> int:
        return time.perf_counter_ns()

    async def sleep_until(self, deadline_ns: int) -> None:
        remaining = deadline_ns - time.perf_counter_ns()
        if remaining > self.spin_ns:
            await asyncio.sleep((remaining - self.spin_ns) / 1e9)
        while time.perf_counter_ns() < deadline_ns:
            await asyncio.sleep(0)


class FakeClock:
    """A clock that only moves when told to. ``sleep_until`` advances time to the deadline immediately.

    With ``auto_advance=False``, sleepers block until ``advance`` moves time past their deadline, which lets a test
    interleave the schedule with simulated server responses.
    """

    def __init__(self, start_ns: int = 1_000_000_000, auto_advance: bool = True) -> None:
        self._now = start_ns
        self.auto_advance = auto_advance
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def now_ns(self) -> int:
        return self._now

    def advance(self, delta_ns: int) -> None:
        self.set(self._now + delta_ns)

    def set(self, t_ns: int) -> None:
        if t_ns < self._now:
            raise ValueError("a monotonic clock cannot go backwards")
        self._now = t_ns
        still = []
        for deadline, fut in self._waiters:
            if deadline <= self._now:
                if not fut.done():
                    fut.set_result(None)
            else:
                still.append((deadline, fut))
        self._waiters = still

    async def sleep_until(self, deadline_ns: int) -> None:
        if deadline_ns <= self._now:
            await asyncio.sleep(0)
            return
        if self.auto_advance:
            self.set(deadline_ns)
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((deadline_ns, fut))
        await fut


def wall_anchor() -> dict[str, int | float]:
    """Pair the monotonic clock with the wall clock once, at the start of a run, for reports and joins."""
    mono = time.perf_counter_ns()
    wall = time.time_ns()
    return {"monotonic_ns": mono, "wall_ns": wall, "wall_iso_s": wall / 1e9}
