"""The asyncio driver of multi-turn sessions: one task per session that sends its turns one after the other.

Sessions start at the plan's offsets (open loop: an arrival process or a trace) or when one of ``--concurrency``
users is free (closed loop). Inside a session each turn waits for the previous answer, adds it to the history,
waits the think time (an absolute deadline: answer end + think) and sends the next turn
(``loadgen.core.sessions.SessionCursor`` decides all of that; this module only awaits).

Every turn ends in one record: ok or an error as usual; a failed turn ends its session and the turns after it are
recorded as cancelled, never sent; when issuing stops (the closed loop's ``--duration``, Ctrl-C, the drain's end)
the turns not yet sent are recorded the same way. Sessions still in progress when issuing stops get
``--drain-timeout`` to finish, like requests in flight.
"""

from __future__ import annotations

import asyncio
from typing import Any

from loadgen.codecs.answers import keep_answers
from loadgen.core.issue import abandon, fail_unexpected
from loadgen.core.sessions import NOT_SENT_FAILED, NOT_SENT_STOPPED, SessionCursor
from loadgen.runner.loop import LoadLoop, LoopOutcome, _wait_all_or_stop


class SessionLoop(LoadLoop):
    """``LoadLoop`` for a plan with sessions (``plan.sessions``): ``source`` is the ``SessionSetup``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.setup = self.source
        keep_answers(self.backend)  # the next turn resends the answer's text (loadgen.codecs.answers)
        self._pending_sessions: dict[int, int] = {}  # spawned, not yet running: sid -> start offset
        self._in_turn = 0  # turns in flight
        self._last_issue_ns = 0  # when the last turn went (relative to t0): where issuing really ended

    def _record(self, rec: Any) -> None:
        self.recorder.add(rec)

    def _unsent(self, cur: SessionCursor, reason: str) -> None:
        for rec in cur.unsent(self.clock.now_ns() - self._t0, reason):
            self._record(rec)

    async def _session(self, sid: int, start_ns: int, end_abs: int | None = None) -> None:
        self._pending_sessions.pop(sid, None)
        t0, clock, stop = self._t0, self.clock, self.stop_event
        cur = self.setup.cursor(sid, start_ns, self.s.worker)
        try:
            while not cur.done:
                due = cur.due_ns()
                if cur.turn > 0:
                    if stop.is_set() or (end_abs is not None and t0 + due >= end_abs):
                        break
                    await clock.sleep_until(t0 + due)
                    if stop.is_set():
                        break
                spec, rec = cur.begin(due)
                self._issued += 1
                self.stats.on_issue()
                self._last_issue_ns = max(self._last_issue_ns, clock.now_ns() - t0)
                if clock.now_ns() - (t0 + due) > self.s.late_tolerance_ns:
                    self._late += 1
                self._in_turn += 1
                try:
                    await self.backend.send(spec, rec, t0)
                except Exception as err:  # a codec or transport bug must not lose the record or stop the run
                    fail_unexpected(rec, err, clock.now_ns() - t0)
                finally:
                    self._in_turn -= 1
                    if self._abandoning:
                        abandon(rec, self.s.drain_timeout_s)
                    self._record(rec)
                    self.stats.on_done(rec)
                    ok = cur.finish(rec, clock.now_ns() - t0)
                if not ok:
                    self._unsent(cur, NOT_SENT_FAILED)
        finally:
            if not cur.done:
                self._unsent(cur, NOT_SENT_STOPPED)
            if self._sem is not None:
                self._sem.release()

    def _spawn(self, sid: int, start_ns: int, end_abs: int | None = None) -> asyncio.Task[None]:
        self._pending_sessions[sid] = start_ns
        task = asyncio.get_running_loop().create_task(self._session(sid, start_ns, end_abs))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _open_sessions(self) -> None:
        s, t0, clock, stop = self.s, self._t0, self.clock, self.stop_event
        offsets = s.offsets_ns
        assert offsets is not None
        for i in (s.stripe if s.stripe is not None else range(len(offsets))):
            if stop.is_set():
                break
            off = int(offsets[i])
            await clock.sleep_until(t0 + off)
            if self._sem is not None:
                await self._sem.acquire()  # a cap on sessions in progress (--concurrency with --rate)
            if stop.is_set():
                if self._sem is not None:
                    self._sem.release()
                break
            self._spawn(int(i), off)

    async def _closed_sessions(self) -> None:
        s, t0, clock = self.s, self._t0, self.clock
        end = t0 + int(s.duration_s * 1e9) if s.duration_s else None
        limit = self.setup.max_sessions if self.setup.max_sessions is not None else 2**62
        counter = iter(range(s.worker, limit, s.n_workers))  # worker k of n: sessions k, k + n, ...

        async def user() -> None:
            while not self.stop_event.is_set():
                now = clock.now_ns()
                if end is not None and now >= end:
                    return
                sid = next(counter, None)
                if sid is None:
                    return
                self._pending_sessions.pop(sid, None)
                await self._session(sid, now - t0, end)

        users = [asyncio.get_running_loop().create_task(user()) for _ in range(s.concurrency or 1)]
        for u in users:
            self._tasks.add(u)
            u.add_done_callback(self._tasks.discard)
        await _wait_all_or_stop(users, self.stop_event, clock, end)

    async def run(self) -> LoopOutcome:
        s = self.s
        self._t0 = t0 = s.t0_ns if s.t0_ns is not None else self.clock.now_ns() + s.start_lead_ns
        if s.offsets_ns is not None:
            if s.concurrency:
                self._sem = asyncio.Semaphore(s.concurrency)
            await self._open_sessions()
        else:
            await self.clock.sleep_until(t0)
            await self._closed_sessions()
        issue_end = self.clock.now_ns() - t0
        interrupted = self.stop_event.is_set()
        if self._tasks and not interrupted:
            drain_end = self.clock.now_ns() + int(s.drain_timeout_s * 1e9)
            await _wait_all_or_stop(list(self._tasks), self.stop_event, self.clock, drain_end)
        cancelled = 0
        if self._tasks:
            interrupted = self.stop_event.is_set()  # Ctrl-C during the drain: cancelled by the user
            cancelled = self._in_turn
            self._abandoning = not self.stop_event.is_set()
            self.stop_event.set()  # no session sends another turn; what is left is recorded as not sent
            pending = list(self._tasks)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for sid, start in list(self._pending_sessions.items()):  # spawned, never ran: every turn not sent
            self._unsent(self.setup.cursor(sid, start, s.worker), NOT_SENT_STOPPED)
        self._pending_sessions.clear()
        stopped_early = getattr(self, "stopped_early", None)
        issue_end = max(issue_end, self._last_issue_ns)  # later turns of a session go after the last start
        outcome = LoopOutcome(t0_ns=t0, issue_end_ns=issue_end, end_ns=self.clock.now_ns() - t0,
                              issued=self._issued, dropped=self._dropped, late=self._late, cancelled=cancelled,
                              interrupted=interrupted and stopped_early is None)
        if stopped_early is not None:
            outcome.stopped_early = stopped_early
        return outcome
