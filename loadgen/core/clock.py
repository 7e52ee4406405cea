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
_LIBC: list[ctypes.CDLL | None] = []  # looked up once


def _timerfd_libc() -> ctypes.CDLL | None:
    """libc with timerfd_create/settime, or None where there is none or perf_counter is not CLOCK_MONOTONIC."""
    if not _LIBC:
        libc = None
        if sys.platform.startswith("linux") and "CLOCK_MONOTONIC" in time.get_clock_info("perf_counter").implementation:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
                libc.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_ITimerSpec),
                                                 ctypes.c_void_p]
            except (OSError, AttributeError):
                libc = None
        _LIBC.append(libc)
    return _LIBC[0]


def timerfd_available() -> bool:
    return _timerfd_libc() is not None


def set_timer_slack_ns(ns: int = 1_000) -> None:
    """The kernel may defer this thread's timers by its timer slack (50 µs by default) to batch wake-ups; a late
    wake-up is schedule lag, so ask for less. Best effort: without it the timers are still right."""
    libc = _timerfd_libc()
    if libc is not None:
        with contextlib.suppress(AttributeError, OSError):
            libc.prctl(_PR_SET_TIMERSLACK, ctypes.c_ulong(ns), 0, 0, 0)


class TimerFd:
    """One Linux timerfd on CLOCK_MONOTONIC (``time.perf_counter_ns``): armed at an absolute time, it becomes
    readable when that time has come, so an event loop (asyncio or gevent) can wait for it like for a socket."""

    __slots__ = ("_libc", "fd")

    def __init__(self, libc: ctypes.CDLL) -> None:
        self._libc = libc
        fd = libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self.fd = fd

    @classmethod
    def create(cls) -> TimerFd | None:
        libc = _timerfd_libc()
        if libc is None:
            return None
        try:
            return cls(libc)
        except OSError:
            return None

    def arm(self, deadline_ns: int) -> None:
        """Fire at ``deadline_ns`` (absolute); 0 disarms."""
        spec = _ITimerSpec(0, 0, *divmod(deadline_ns, 1_000_000_000)) if deadline_ns else _ITimerSpec(0, 0, 0, 0)
        if self._libc.timerfd_settime(self.fd, _TFD_TIMER_ABSTIME if deadline_ns else 0, ctypes.byref(spec), None):
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def consume(self) -> bool:
        """True when the timer has fired (and reset it), False when it has not yet."""
        try:
            os.read(self.fd, 8)
            return True
        except BlockingIOError:
            return False

    def reset(self) -> None:
        """Disarm and forget a pending expiry, so that the next wait is not woken by this one."""
        self.arm(0)
        self.consume()

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


class _TimerFds:
    """A small pool of timerfds for asyncio, one per concurrent waiter (the open loop needs one; a drain timer a
    second).

    A timer goes back to the pool reset, so a wait that was cancelled never wakes a later one early. ``close``
    closes the idle timers at once and each busy one when its wait ends (a cancelled wait may finish after the
    run has closed its clock); a wait that starts after ``close`` uses the loop's timer.
    """

    def __init__(self) -> None:
        self._free: list[TimerFd] = []
        self._all: list[TimerFd] = []
        self._closed = False
        self._finalizer = weakref.finalize(self, _close_timers, self._all)

    @classmethod
    def create(cls) -> _TimerFds | None:
        """A pool, or None where timerfds are missing (then: spin)."""
        first = TimerFd.create()
        if first is None:
            return None
        pool = cls()
        pool._all.append(first)
        pool._free.append(first)
        set_timer_slack_ns()
        return pool

    def _take(self) -> TimerFd:
        if self._free:
            return self._free.pop()
        timer = TimerFd.create()
        if timer is None:
            raise OSError("timerfd_create failed")
        self._all.append(timer)
        return timer

    async def sleep_until(self, deadline_ns: int) -> None:
        if self._closed:
            await asyncio.sleep(max(0, deadline_ns - time.perf_counter_ns()) / 1e9)
            return
        timer = self._take()
        loop = asyncio.get_running_loop()
        fired = loop.create_future()

        def on_ready() -> None:
            if timer.consume() and not fired.done():
                fired.set_result(None)

        timer.arm(deadline_ns)
        loop.add_reader(timer.fd, on_ready)
        try:
            await fired
        finally:
            loop.remove_reader(timer.fd)
            if self._closed:
                timer.close()
                with contextlib.suppress(ValueError):
                    self._all.remove(timer)
            else:
                if not fired.done() or fired.cancelled():  # cancelled while armed
                    timer.reset()
                self._free.append(timer)

    def close(self) -> None:
        self._closed = True
        for timer in self._free:
            timer.close()
            with contextlib.suppress(ValueError):
                self._all.remove(timer)
        self._free.clear()


def _close_timers(timers: list[TimerFd]) -> None:
    for timer in timers:
        timer.close()
    timers.clear()


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
