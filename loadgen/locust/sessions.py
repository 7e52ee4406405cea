"""Multi-turn sessions in the Locust front end (gevent): the same sessions, turns and records as ``loadgen run``.

Open loop (``--rate`` or a trace with ``--session-key``): ``SessionDispatcher`` starts each session of this
worker's stripe at its absolute deadline, in its own greenlet. Closed loop (``--concurrency``, the closed-loop user
classes): each Locust user task runs one whole session (``run_session``); Locust's own ``--think-time`` applies
between sessions, the session's think time between its turns.

Inside a session the turns go one after the other, each at the previous answer's end plus the think time
(``loadgen.core.sessions.SessionCursor``); a failed turn ends its session, and the turns never sent (that, or the
run stopping) are recorded as cancelled, never issued, as in the asyncio driver.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import gevent
import gevent.event
import gevent.lock
import numpy as np

from loadgen.codecs.answers import keep_answers
from loadgen.core.issue import IssueOutcome, abandon
from loadgen.core.records import RequestRecord
from loadgen.core.sessions import NOT_SENT_FAILED, NOT_SENT_STOPPED, SessionSetup
from loadgen.locust.dispatch import drain, send_guarded, sleep_until

_now = time.perf_counter_ns


def is_sessions(source: Any) -> bool:
    return isinstance(source, SessionSetup)


def run_session(backend: Any, setup: SessionSetup, sid: int, start_ns: int, t0: int, worker: int,
                on_done: Callable[[RequestRecord], None], stop: gevent.event.Event | None = None,
                end_abs_ns: int | None = None, on_issue: Callable[[], None] | None = None,
                on_unsent: Callable[[RequestRecord], None] | None = None) -> None:
    """Send every turn of session ``sid`` (started at ``start_ns`` after ``t0``); each turn's record reaches
    ``on_done``, each turn never sent ``on_unsent`` (default: ``on_done``), also when the greenlet is killed."""
    unsent = on_unsent or on_done
    keep_answers(backend)  # the next turn resends the answer's text (loadgen.codecs.answers)
    cur = setup.cursor(sid, start_ns, worker)
    try:
        while not cur.done:
            due = cur.due_ns()
            if cur.turn > 0:
                if (stop is not None and stop.is_set()) or (end_abs_ns is not None and t0 + due >= end_abs_ns):
                    break
                if _now() < t0 + due and not sleep_until(t0 + due, stop):
                    break
            spec, rec = cur.begin(due)
            if on_issue is not None:
                on_issue()
            try:
                send_guarded(backend, spec, rec, t0)
            finally:
                ok = cur.finish(rec, _now() - t0)
                on_done(rec)
            if not ok:
                for r in cur.unsent(_now() - t0, NOT_SENT_FAILED):
                    unsent(r)
    finally:
        if not cur.done:
            for r in cur.unsent(_now() - t0, NOT_SENT_STOPPED):
                unsent(r)


class SessionDispatcher:
    """Starts the sessions ``indices`` of ``offsets_ns`` (session starts, ns after ``t0_ns``); the same arguments
    as ``OpenLoopDispatcher`` with the plan's ``SessionSetup`` as ``source``. ``concurrency`` caps the sessions
    in progress; ``on_late`` does not apply (the scenario check refuses ``drop`` with sessions)."""

    def __init__(self, backend: Any, source: SessionSetup, on_done: Callable[[RequestRecord], None],
                 offsets_ns: np.ndarray, indices: Sequence[int] | np.ndarray, t0_ns: int, *, on_late: str = "issue",
                 late_tolerance_ns: int = 10_000_000, concurrency: int | None = None, drain_timeout_s: float = 60.0,
                 worker: int = 0, on_issue: Callable[[], None] | None = None, **_ignored: Any) -> None:
        self.backend, self.setup, self.on_done = backend, source, on_done
        self.offsets, self.indices, self.t0 = offsets_ns, indices, t0_ns
        self.late_tolerance_ns = late_tolerance_ns
        self.sem = gevent.lock.BoundedSemaphore(concurrency) if concurrency else None
        self.drain_timeout_s, self.worker, self.on_issue = drain_timeout_s, worker, on_issue
        self.stop_event = gevent.event.Event()
        self._live: set[gevent.Greenlet] = set()
        self._unstarted: dict[int, int] = {}  # sid -> start offset: spawned, not yet running
        self.issued = self.late = self.in_turn = 0
        self._abandoning = False
        self._last_issue_ns = 0  # when the last turn went (relative to t0): where issuing really ended

    def stop(self) -> None:
        self.stop_event.set()

    def _issue(self) -> None:
        self.issued += 1
        self.in_turn += 1
        self._last_issue_ns = max(self._last_issue_ns, _now() - self.t0)
        if self.on_issue is not None:
            self.on_issue()

    def _turn_done(self, rec: RequestRecord) -> None:
        self.in_turn -= 1
        if rec.issued_ns is not None and rec.issued_ns - rec.scheduled_ns > self.late_tolerance_ns:
            self.late += 1
        if self._abandoning:
            abandon(rec, self.drain_timeout_s)
        self.on_done(rec)

    def _session(self, sid: int, start_ns: int) -> None:
        self._unstarted.pop(sid, None)
        try:
            run_session(self.backend, self.setup, sid, start_ns, self.t0, self.worker, self._turn_done,
                        self.stop_event, on_issue=self._issue, on_unsent=self.on_done)
        finally:
            if self.sem is not None:
                self.sem.release()

    def run(self) -> IssueOutcome:
        t0, stop = self.t0, self.stop_event
        for i in self.indices:
            if stop.is_set():
                break
            sid = int(i)
            off = int(self.offsets[sid])
            if _now() < t0 + off and not sleep_until(t0 + off, stop):
                break
            if self.sem is not None:
                self.sem.acquire()
            self._unstarted[sid] = off
            g = gevent.spawn(self._session, sid, off)
            self._live.add(g)
            g.link(self._live.discard)
        issue_end = _now() - t0
        interrupted = stop.is_set()
        if self._live and not interrupted:
            drain(self._live, stop, self.drain_timeout_s)
        cancelled = self.in_turn
        if self._live:
            interrupted = stop.is_set()
            self._abandoning = not interrupted
            stop.set()  # no session sends another turn; the rest are recorded as not sent
            gevent.killall(list(self._live), block=True, timeout=10)
        for sid, off in list(self._unstarted.items()):
            for rec in self.setup.cursor(sid, off, self.worker).unsent(_now() - t0, NOT_SENT_STOPPED):
                self.on_done(rec)
        self._unstarted.clear()
        issue_end = max(issue_end, self._last_issue_ns)  # later turns of a session go after the last start
        return IssueOutcome(t0, issue_end, _now() - t0, self.issued, 0, self.late, cancelled, interrupted)
