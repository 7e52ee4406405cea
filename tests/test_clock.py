"""The real clock's waits: never before the deadline, each concurrent waiter at its own deadline, a cancelled wait
leaves nothing armed behind, and the timerfd pool is released. (How late the wake-ups are is a benchmark figure,
not a test: see benchmarks/RESULTS.md.)"""

from __future__ import annotations

import asyncio
import os
import sys
import time

import numpy as np
import pytest

from loadgen.core.clock import MonotonicClock

MS = 1_000_000


@pytest.fixture(params=[True, False], ids=["timerfd", "spin"])
def clock(request):
    c = MonotonicClock(precise=request.param)
    yield c
    c.close()


def test_linux_uses_timerfds():
    c = MonotonicClock()
    try:
        assert c.wake_method == ("timerfd" if sys.platform.startswith("linux") else "spin")
    finally:
        c.close()
    assert MonotonicClock(precise=False).wake_method == "spin"


async def test_never_wakes_before_its_deadline(clock):
    rng = np.random.default_rng(7)
    deadline = time.perf_counter_ns() + 2 * MS
    for gap in rng.exponential(400_000, size=300).astype(np.int64):  # some gaps shorter than the timer lead
        deadline += int(gap)
        await clock.sleep_until(deadline)
        assert time.perf_counter_ns() >= deadline


async def test_a_past_deadline_returns_at_once(clock):
    before = time.perf_counter_ns()
    await clock.sleep_until(before - 5 * MS)
    assert time.perf_counter_ns() - before < 5 * MS  # far less than any timer: it did not wait


async def test_concurrent_waiters_each_wake_at_their_own_deadline(clock):
    base = time.perf_counter_ns() + 5 * MS
    deadlines = [base + k * 3 * MS for k in (4, 0, 3, 1, 2)]
    woke: list[tuple[int, int]] = []

    async def waiter(d: int) -> None:
        await clock.sleep_until(d)
        woke.append((d, time.perf_counter_ns()))

    await asyncio.gather(*(waiter(d) for d in deadlines))
    assert [d for d, _ in woke] == sorted(deadlines)
    assert all(t >= d for d, t in woke)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timerfds are Linux only")
async def test_a_cancelled_wait_leaves_its_timer_disarmed():
    clock = MonotonicClock()
    try:
        deadline = time.perf_counter_ns() + 30 * MS
        task = asyncio.get_running_loop().create_task(clock.sleep_until(deadline))
        await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        pool = clock._timers
        assert pool is not None and pool._free
        await asyncio.sleep((deadline - time.perf_counter_ns()) / 1e9 + 0.01)  # past the cancelled deadline
        for timer in pool._free:
            with pytest.raises(BlockingIOError):  # it never fired: a later wait cannot be woken early by it
                os.read(timer.fd, 8)
        later = time.perf_counter_ns() + 2 * MS
        await clock.sleep_until(later)
        assert time.perf_counter_ns() >= later
    finally:
        clock.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timerfds are Linux only")
async def test_close_releases_the_timerfds():
    clock = MonotonicClock()
    await asyncio.gather(*(clock.sleep_until(time.perf_counter_ns() + k * MS) for k in (1, 2, 3)))
    fds = [timer.fd for timer in clock._timers._all]
    assert len(fds) >= 2  # concurrent waiters got their own timers
    clock.close()
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timerfds are Linux only")
async def test_a_wait_cancelled_just_before_close_ends_cleanly():
    # The run closes its clock right after the load loop returns, while a drain timer it cancelled has not yet
    # run its clean-up: that clean-up must neither touch a closed descriptor nor leak one.
    clock = MonotonicClock()
    pool = clock._timers
    task = asyncio.get_running_loop().create_task(clock.sleep_until(time.perf_counter_ns() + 50 * MS))
    await asyncio.sleep(0.002)
    busy = [timer.fd for timer in pool._all if timer not in pool._free]
    assert len(busy) == 1
    task.cancel()
    clock.close()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool._all == [] and pool._free == []
    with pytest.raises(OSError):
        os.fstat(busy[0])
    later = time.perf_counter_ns() + 2 * MS  # a wait after close still waits (on the loop's timer)
    await clock.sleep_until(later)
    assert time.perf_counter_ns() >= later
