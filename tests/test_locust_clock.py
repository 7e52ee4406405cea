"""The Locust dispatcher's deadline wait under gevent: never early, a stop event still ends it, and a greenlet
killed while it waits on a timerfd leaves nothing armed for the next one."""

from __future__ import annotations

import os
import sys
import time

import gevent
import gevent.event
import numpy as np
import pytest

from loadgen.locust import dispatch

MS = 1_000_000


def test_never_wakes_before_its_deadline():
    rng = np.random.default_rng(3)
    deadline = time.perf_counter_ns() + 3 * MS
    for gap in rng.exponential(600_000, size=200).astype(np.int64):  # gaps below and above the 2-ms coarse part
        deadline += int(gap)
        assert dispatch.sleep_until(deadline) is True
        assert time.perf_counter_ns() >= deadline


def test_many_greenlets_each_wake_at_their_own_deadline():
    base = time.perf_counter_ns() + 5 * MS
    deadlines = [base + k * 700_000 for k in (5, 1, 4, 0, 3, 2)]
    woke = []

    def waiter(d):
        dispatch.sleep_until(d)
        woke.append((d, time.perf_counter_ns()))

    gevent.joinall([gevent.spawn(waiter, d) for d in deadlines], timeout=5)
    assert sorted(d for d, _ in woke) == sorted(deadlines) and all(t >= d for d, t in woke)  # all, never early
    # Each wakes at its own deadline, not at another's: every pair whose deadlines lie further apart than the
    # worst lateness seen wakes in deadline order. (On a quiet machine that is every pair; a CPU stall longer
    # than the 0.7 ms spacing makes the wake-ups of the stalled ones race, which says nothing about the clock.)
    late = max(t - d for d, t in woke)
    order = {d: i for i, (d, _) in enumerate(woke)}
    for a in deadlines:
        for b in deadlines:
            if b - a > late:
                assert order[a] < order[b], (a - base, b - base, late)


def test_a_stop_event_ends_the_wait():
    stop = gevent.event.Event()
    gevent.spawn_later(0.01, stop.set)
    start = time.perf_counter_ns()
    assert dispatch.sleep_until(start + 5_000 * MS, stop) is False
    assert time.perf_counter_ns() - start < 2_000 * MS  # long before the 5-s deadline


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timerfds are Linux only")
def test_a_killed_waiter_leaves_its_timer_reset():
    deadline = time.perf_counter_ns() + 1 * MS  # inside the timerfd stretch from the start
    g = gevent.spawn(dispatch._timerfd_wait, deadline + 20 * MS)
    gevent.sleep(0.002)
    g.kill()
    gevent.sleep((deadline + 30 * MS - time.perf_counter_ns()) / 1e9)  # past the killed wait's deadline
    assert dispatch._IDLE_TIMERS
    for timer in dispatch._IDLE_TIMERS:
        with pytest.raises(BlockingIOError):
            os.read(timer.fd, 8)
    later = time.perf_counter_ns() + 3 * MS
    assert dispatch.sleep_until(later) and time.perf_counter_ns() >= later
