"""Clocks. All durations come from one monotonic nanosecond clock; one wall-clock anchor per run is kept for reports.

The runner never sleeps relative intervals: it waits for absolute deadlines ``t0 + offset`` so that drift does not
accumulate (timing rule 1). ``FakeClock`` lets the schedule, the late policy and the metrics be tested exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import sys
import time
import weakref
from typing import Protocol


class Clock(Protocol):
    def now_ns(self) -> int: ...

    async def sleep_until(self, deadline_ns: int) -> None: ...


class MonotonicClock:
    """``time.perf_counter_ns`` (CLOCK_MONOTONIC on Linux, the same clock the power side-car stamps with).

    Waiting for a deadline: the event loop's own timers have about 1 ms resolution (uvloop wakes between 1.4 ms
    early and 1.6 ms late, measured), far too coarse for issuing at a deadline. On Linux each wait arms a timerfd
    at an absolute CLOCK_MONOTONIC time ``timer_lead_ns`` before the deadline and the loop watches it like a
    socket; the process sleeps until then and yields with zero-second sleeps for the last few tens of
    microseconds. Elsewhere the loop sleeps until ``spin_ns`` before the deadline and yields from there
    (as precise, but that last millisecond costs CPU: up to a whole core at 1,000 requests a second).
    """

    spin_ns = 1_000_000  # without timerfds: wake on the loop's timer this long before the deadline, then yield
    # With timerfds: wake this long before the deadline and yield for the rest. A sleeping thread wakes 30-50 µs
    # after its timer at best on the machines measured (benchmarks/RESULTS.md), so the timer alone would make
    # every request that late; 200 µs early leaves a yield of about 150 µs instead of 1 ms (see RESULTS.md).
    timer_lead_ns = 200_000

    def __init__(self, precise: bool = True) -> None:
        self._timers = _TimerFds.create() if precise else None

    @property
    def wake_method(self) -> str:
        return "timerfd" if self._timers is not None else "spin"

    def now_ns(self) -> int:
        return time.perf_counter_ns()

    async def sleep_until(self, deadline_ns: int) -> None:
        remaining = deadline_ns - time.perf_counter_ns()
        if self._timers is not None:
            if remaining > self.timer_lead_ns:
                await self._timers.sleep_until(deadline_ns - self.timer_lead_ns)
        elif remaining > self.spin_ns:
            await asyncio.sleep((remaining - self.spin_ns) / 1e9)
        while time.perf_counter_ns() < deadline_ns:
            await asyncio.sleep(0)

    def close(self) -> None:
        if self._timers is not None:
            self._timers.close()


class _ITimerSpec(ctypes.Structure):
    _fields_ = [("interval_s", ctypes.c_long), ("interval_ns", ctypes.c_long),
                ("value_s", ctypes.c_long), ("value_ns", ctypes.c_long)]


_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK, _TFD_CLOEXEC, _TFD_TIMER_ABSTIME = os.O_NONBLOCK, os.O_CLOEXEC, 1
_PR_SET_TIMERSLACK = 29


class _TimerFds:
    """A small pool of Linux timerfds, one per concurrent waiter (the open loop needs one; a drain timer a second).

    An fd goes back to the pool disarmed and drained, so a wait that was cancelled never wakes a later one early.
    ``close`` closes the idle fds at once and each busy one when its wait ends (a cancelled wait may finish after
    the run has closed its clock); a wait that starts after ``close`` uses the loop's timer.
    """

    def __init__(self, libc: ctypes.CDLL) -> None:
        self._libc = libc
        self._free: list[int] = []
        self._all: list[int] = []
        self._closed = False
        self._finalizer = weakref.finalize(self, _close_fds, self._all)

    @classmethod
    def create(cls) -> _TimerFds | None:
        """A pool, or None where timerfds are missing or perf_counter is not CLOCK_MONOTONIC (then: spin)."""
        if not sys.platform.startswith("linux"):
            return None
        if "CLOCK_MONOTONIC" not in time.get_clock_info("perf_counter").implementation:
            return None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
            libc.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_ITimerSpec),
                                             ctypes.c_void_p]
            pool = cls(libc)
            pool._free.append(pool._new())
        except (OSError, AttributeError):
            return None
        # The kernel may defer a timer by the thread's timer slack (50 µs by default) to batch wake-ups; ask
        # for 1 µs, since a late wake-up is schedule lag. Best effort: without it the timers are still right.
        with contextlib.suppress(AttributeError, OSError):
            libc.prctl(_PR_SET_TIMERSLACK, ctypes.c_ulong(1_000), 0, 0, 0)
        return pool

    def _new(self) -> int:
        fd = self._libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self._all.append(fd)
        return fd

    def _arm(self, fd: int, deadline_ns: int) -> None:
        spec = _ITimerSpec(0, 0, *divmod(deadline_ns, 1_000_000_000)) if deadline_ns else _ITimerSpec(0, 0, 0, 0)
        if self._libc.timerfd_settime(fd, _TFD_TIMER_ABSTIME if deadline_ns else 0, ctypes.byref(spec), None):
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    async def sleep_until(self, deadline_ns: int) -> None:
        if self._closed:
            await asyncio.sleep(max(0, deadline_ns - time.perf_counter_ns()) / 1e9)
            return
        fd = self._free.pop() if self._free else self._new()
        loop = asyncio.get_running_loop()
        fired = loop.create_future()

        def on_ready() -> None:
            try:
                os.read(fd, 8)
            except BlockingIOError:  # not expired after all
                return
            if not fired.done():
                fired.set_result(None)

        self._arm(fd, deadline_ns)
        loop.add_reader(fd, on_ready)
        try:
            await fired
        finally:
            loop.remove_reader(fd)
            if self._closed:
                self._release(fd)
            else:
                if not fired.done() or fired.cancelled():  # cancelled while armed: disarm, drain, then reuse
                    self._arm(fd, 0)
                    with contextlib.suppress(BlockingIOError):
                        os.read(fd, 8)
                self._free.append(fd)

    def _release(self, fd: int) -> None:
        with contextlib.suppress(OSError):
            os.close(fd)
        with contextlib.suppress(ValueError):
            self._all.remove(fd)

    def close(self) -> None:
        self._closed = True
        for fd in self._free:
            self._release(fd)
        self._free.clear()


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()


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
