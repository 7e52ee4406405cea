"""The open-loop dispatcher of the Locust front end: each request goes out at its absolute deadline, in its own
greenlet, whatever Locust's users are doing.

Locust's own model is closed-loop (a user waits ``wait_time`` after each task), which cannot produce a Poisson
arrival process: a slow response delays the next request. Here the schedule comes from the core
(``build_offsets`` / a trace replay) and this worker's stripe of it; the dispatcher waits for ``t0 + offset`` (an
absolute deadline, never a relative sleep) and spawns the request. The late policy, the concurrency cap and the
drain at the end are the asyncio ``LoadLoop``'s, and the records it produces are the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import gevent
import gevent.event
import gevent.lock
import numpy as np
from gevent.socket import wait_read

from loadgen.core.clock import MonotonicClock, TimerFd, set_timer_slack_ns, timerfd_available
from loadgen.core.issue import (
    DROP,
    SEND_LATE,
    IssueOutcome,
    IssuePolicy,
    abandon,
    dropped_record,
    fail_unexpected,
)
from loadgen.core.records import RequestRecord

_now = time.perf_counter_ns


DispatchOutcome = IssueOutcome  # the one outcome type of every driver (loadgen.core.issue)

TIMER_LEAD_NS = MonotonicClock.timer_lead_ns  # the timerfd fires this long before the deadline (see clock.py)
COARSE_MARGIN_NS = 2_000_000  # with a timerfd: the hub's own timer (about 1 ms coarse) until this long before
_IDLE_TIMERS: list[TimerFd] = []  # timerfds not in use (one hub thread per process: no lock needed)


def _timerfd_wait(deadline_ns: int) -> None:
    """Block this greenlet (not the hub) until a timerfd armed at ``deadline_ns`` fires."""
    if _IDLE_TIMERS:
        timer = _IDLE_TIMERS.pop()
    else:
        timer = TimerFd.create()
        if timer is None:
            return
        set_timer_slack_ns()  # (a new timer is rare: the pool only grows to the most greenlets waiting at once)
    timer.arm(deadline_ns)
    fired = False
    try:
        while not fired:
            wait_read(timer.fd)
            fired = timer.consume()
    finally:
        if not fired:  # killed while waiting (GreenletExit): the next user must not be woken by this expiry
            timer.reset()
        _IDLE_TIMERS.append(timer)


def sleep_until(deadline_ns: int, stop: gevent.event.Event | None = None, spin_ns: int = 1_000_000) -> bool:
    """Wait for an absolute ``perf_counter_ns`` deadline; False when ``stop`` was set first.

    The hub's timers are coarse (about 1 ms). On Linux the wait goes on the hub's timer until 2 ms before the
    deadline, then on a timerfd (which the hub watches like a socket) until ``TIMER_LEAD_NS`` before it, and
    yields with ``sleep(0)`` for that last stretch. Without timerfds the last ``spin_ns`` are spent yielding. Other
    greenlets (responses streaming in) keep running throughout.
    """
    remaining = deadline_ns - _now()
    precise = remaining > TIMER_LEAD_NS and timerfd_available()
    coarse = COARSE_MARGIN_NS if precise else spin_ns
    if remaining > coarse:
        if stop is not None:
            if stop.wait((remaining - coarse) / 1e9):
                return False
        else:
            gevent.sleep((remaining - coarse) / 1e9)
    if precise and deadline_ns - _now() > TIMER_LEAD_NS:
        _timerfd_wait(deadline_ns - TIMER_LEAD_NS)
    while _now() < deadline_ns:
        if stop is not None and stop.is_set():
            return False
        gevent.sleep(0)
    return True


def run_request(backend: Any, source: Any, index: int, scheduled_ns: int, t0: int, worker: int,
                on_done: Callable[[RequestRecord], None]) -> RequestRecord:
    """One request from its spec to its finished record; the record reaches ``on_done`` even when the greenlet is
    killed (it is then recorded as cancelled by the transport)."""
    spec = source.spec(index)
    rec = RequestRecord(index=index, scheduled_ns=scheduled_ns, input_tokens=spec.input_tokens,
                        max_tokens=spec.max_tokens, worker=worker)
    try:
        send_guarded(backend, spec, rec, t0)
    finally:
        on_done(rec)
    return rec


def drain(live: set, stop: Any, timeout_s: float) -> None:
    """Wait until the greenlets in ``live`` (a set they remove themselves from) are done, ``stop`` is set, or
    ``timeout_s`` has passed: a level's drain after issuing ended."""
    end = time.monotonic() + timeout_s
    while live and not stop.is_set() and time.monotonic() < end:
        gevent.wait(list(live), timeout=min(0.2, max(0.0, end - time.monotonic())), count=1)


def send_guarded(backend: Any, spec: Any, rec: RequestRecord, t0: int) -> None:
    """``backend.send`` where a codec or transport bug ends the request as a protocol error
    (``core.issue.fail_unexpected``) instead of losing the record or stopping the run; a kill goes through."""
    try:
        backend.send(spec, rec, t0)
    except (gevent.GreenletExit, KeyboardInterrupt):
        raise
    except Exception as err:  # noqa: BLE001 - any bug inside one request
        fail_unexpected(rec, err, _now() - t0)


class OpenLoopDispatcher:
    """Issues ``indices`` of the schedule ``offsets_ns`` (ns after ``t0_ns``) through ``backend``."""

    def __init__(self, backend: Any, source: Any, on_done: Callable[[RequestRecord], None], offsets_ns: np.ndarray,
                 indices: Sequence[int] | np.ndarray, t0_ns: int, *, on_late: str = "issue",
                 late_tolerance_ns: int = 10_000_000, concurrency: int | None = None, drain_timeout_s: float = 60.0,
                 worker: int = 0, on_issue: Callable[[], None] | None = None) -> None:
        self.backend = backend
        self.source = source
        self.on_done = on_done
        self.offsets = offsets_ns
        self.indices = indices
        self.t0 = t0_ns
        self.policy = IssuePolicy.of(on_late, late_tolerance_ns)
        self.sem = gevent.lock.BoundedSemaphore(concurrency) if concurrency else None
        self.drain_timeout_s = drain_timeout_s
        self.worker = worker
        self.on_issue = on_issue
        self.stop_event = gevent.event.Event()
        self._live: set[gevent.Greenlet] = set()
        self.issued = self.dropped = self.late = 0
        self._abandoning = False
        self._unstarted: dict[int, int] = {}  # spawned, not yet running: index -> offset

    def stop(self) -> None:
        """Stop issuing; what is in flight is cancelled (and recorded so) when ``run`` returns."""
        self.stop_event.set()

    def _finished(self, rec: RequestRecord) -> None:
        if self.sem is not None:
            self.sem.release()
        if self._abandoning:
            abandon(rec, self.drain_timeout_s)
        self.on_done(rec)

    def _record_unstarted(self) -> None:
        """Requests spawned just before a stop whose greenlet never ran: cancelled (not sent), not issued."""
        for index, offset in self._unstarted.items():
            spec = self.source.spec(index)
            self.on_done(RequestRecord(index=index, scheduled_ns=offset, input_tokens=spec.input_tokens,
                                       max_tokens=spec.max_tokens, worker=self.worker,
                                       error="not sent: the run was stopped before this request started"))
            self.issued -= 1
        self._unstarted.clear()

    def _record_dropped(self, index: int, offset: int, late_ns: int) -> None:
        rec = dropped_record(self.source.spec(index), offset, late_ns, self.worker)
        self.dropped += 1
        self.on_done(rec)

    def _start(self, index: int, offset: int) -> None:
        self._unstarted.pop(index, None)
        run_request(self.backend, self.source, index, offset, self.t0, self.worker, self._finished)

    def _launch(self, index: int, offset: int) -> None:
        # A greenlet killed before it first runs never runs its body, so it would leave no record: it is known
        # here until it starts (see _record_unstarted).
        self._unstarted[index] = offset
        g = gevent.spawn(self._start, index, offset)
        self._live.add(g)
        g.link(self._live.discard)
        self.issued += 1
        if self.on_issue is not None:
            self.on_issue()

    def run(self) -> DispatchOutcome:
        t0, offsets, sem, stop = self.t0, self.offsets, self.sem, self.stop_event
        policy = self.policy
        for i in self.indices:
            if stop.is_set():
                break
            index = int(i)
            off = int(offsets[index])
            deadline = t0 + off
            if _now() < deadline and not sleep_until(deadline, stop):
                break
            if sem is not None:
                if sem.locked() and policy.drop_when_full():
                    self._record_dropped(index, off, _now() - deadline)
                    continue
                sem.acquire()
            late = _now() - deadline
            decision = policy.decide(late)
            if decision == DROP:
                if sem is not None:
                    sem.release()
                self._record_dropped(index, off, late)
                continue
            if decision == SEND_LATE:
                self.late += 1
            self._launch(index, off)
        issue_end = _now() - t0
        interrupted = stop.is_set()
        if self._live and not interrupted:
            drain(self._live, stop, self.drain_timeout_s)
        cancelled = len(self._live)
        if self._live:
            self._abandoning = not stop.is_set()  # the drain ended; a stop (Ctrl-C) cancels instead
            gevent.killall(list(self._live), block=True, timeout=10)
        self._record_unstarted()
        return IssueOutcome(t0, issue_end, _now() - t0, self.issued, self.dropped, self.late, cancelled,
                            stop.is_set())
