"""The asyncio load loop: issue each request at its absolute deadline, or keep N in flight (closed loop).

Scope (what the loop is responsible for, and what it is not):
- It issues requests at ``t0 + offset`` from a schedule generated up front; it never sleeps relative intervals.
- It records, for every request, the scheduled and the issued time, so latency can be reported from both and the
  schedule lag is visible (a saturated client cannot hide server queueing).
- When it falls behind, it follows the explicit ``on_late`` policy: ``issue`` (send late, the default) or
  ``drop`` (do not send a request that is later than ``late_tolerance_ns``; it is recorded as dropped). A
  concurrency cap holds requests back (issue) or drops them (drop) when the cap is reached. Both are counted.
- It stops by itself: the schedule is finite (duration and/or count), closed loops stop at the duration or count,
  and what is still in flight at the end gets ``drain_timeout_s``; what is still open then is recorded as an
  ``abandoned`` error (a Ctrl-C instead cancels it: ``cancelled``).
- It does not compute metrics, parse responses on the hot path, or write to disk on the hot path.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np

from loadgen.codecs.backend import Backend
from loadgen.core.arrivals import user_start_offsets
from loadgen.core.clock import Clock
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
from loadgen.level.recorder import Recorder
from loadgen.runner.live import LiveStats


@dataclass
class LoopSettings:
    offsets_ns: np.ndarray | None  # open loop: sorted offsets from t0; None for closed loop
    concurrency: int | None = None  # closed loop: N in flight; open loop: optional cap
    duration_s: float | None = None  # closed loop: stop issuing after this long
    max_requests: int | None = None  # closed loop: stop after this many
    on_late: str = "issue"  # "issue" | "drop"
    late_tolerance_ns: int = 10_000_000
    drain_timeout_s: float = 30.0
    start_lead_ns: int = 50_000_000  # t0 is this far after the loop starts, so the first deadlines are not late
    worker: int = 0
    stripe: np.ndarray | None = None  # open loop: the schedule indices this worker owns (None = all)
    n_workers: int = 1  # closed loop: this worker numbers its requests worker, worker + n_workers, ...
    t0_ns: int | None = None  # a t0 shared by several worker processes (monotonic ns); None: start_lead_ns from now
    ramp_s: float | None = None  # closed loop: users start one by one over this long, before the duration starts


LoopOutcome = IssueOutcome  # the one outcome type of every driver (loadgen.core.issue)


class LoadLoop:
    def __init__(self, backend: Backend, source: Any, recorder: Recorder, clock: Clock, settings: LoopSettings,
                 stats: LiveStats | None = None) -> None:
        self.backend = backend
        self.source = source
        self.recorder = recorder
        self.clock = clock
        self.s = settings
        self.stats = stats or LiveStats()
        self.stop_event = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._issued = self._dropped = self._late = 0
        self._sem: asyncio.Semaphore | None = None
        self._closed_done = False
        self._abandoning = False  # the drain ended: what is still in flight is abandoned, not cancelled
        self._unstarted: dict[int, tuple[int, Any]] = {}  # launched, not yet running: index -> (scheduled, spec)
        self.stopped_early: str | None = None  # end_early's reason

    def stop(self) -> None:
        """Stop issuing (Ctrl-C, a fatal error); in-flight requests are cancelled and recorded."""
        self.stop_event.set()

    def end_early(self, reason: str) -> None:
        """Stop issuing because the level has answered its question (e.g. a search step past saturation): like
        ``stop``, in-flight requests are cancelled and recorded, but the level is not ``interrupted``; the
        outcome carries ``stopped_early``."""
        if self.stopped_early is None:
            self.stopped_early = reason
        self.stop_event.set()

    def in_flight(self) -> int:
        """Requests issued and not yet finished (a live figure for watches)."""
        return len(self._tasks)

    async def _one(self, index: int, scheduled_ns: int, t0: int, spec: Any = None) -> None:
        self._unstarted.pop(index, None)
        if spec is None:
            spec = self.source.spec(index)
        rec = RequestRecord(index=index, scheduled_ns=scheduled_ns, input_tokens=spec.input_tokens,
                            max_tokens=spec.max_tokens, worker=self.s.worker)
        try:
            await self.backend.send(spec, rec, t0)
        except Exception as err:  # a codec or transport bug must not lose the record or stop the run
            fail_unexpected(rec, err, self.clock.now_ns() - t0)
        finally:
            if self._abandoning:
                abandon(rec, self.s.drain_timeout_s)
            self.recorder.add(rec)
            self.stats.on_done(rec)
            if self._sem is not None:
                self._sem.release()

    def _record_unstarted(self) -> None:
        """Requests launched just before a stop whose task never ran: recorded as cancelled (not sent), and not
        counted as issued, so that every scheduled request has exactly one record."""
        for index, (scheduled_ns, spec) in self._unstarted.items():
            spec = spec if spec is not None else self.source.spec(index)
            rec = RequestRecord(index=index, scheduled_ns=scheduled_ns, input_tokens=spec.input_tokens,
                                max_tokens=spec.max_tokens, worker=self.s.worker,
                                error="not sent: the run was stopped before this request's task started")
            self.recorder.add(rec)
            self.stats.on_done(rec)
            self._issued -= 1
            self.stats.issued -= 1
        self._unstarted.clear()

    def _record_dropped(self, index: int, scheduled_ns: int, now_rel: int, spec: Any = None) -> None:
        spec = spec if spec is not None else self.source.spec(index)
        rec = dropped_record(spec, scheduled_ns, now_rel - scheduled_ns, self.s.worker)
        self.recorder.add(rec)
        self.stats.on_done(rec)
        self._dropped += 1

    def _launch(self, index: int, scheduled_ns: int, t0: int, spec: Any = None) -> None:
        # A task cancelled before its first step never runs its body, so it would leave no record: it is known
        # here until it starts (see _record_unstarted).
        self._unstarted[index] = (scheduled_ns, spec)
        task = asyncio.get_running_loop().create_task(self._one(index, scheduled_ns, t0, spec))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._issued += 1
        self.stats.on_issue()

    async def _open_loop(self, t0: int) -> None:
        s = self.s
        offsets = s.offsets_ns
        assert offsets is not None
        indices = s.stripe if s.stripe is not None else range(len(offsets))
        clock = self.clock
        policy = IssuePolicy.of(s.on_late, s.late_tolerance_ns)
        decide = policy.decide
        sem = self._sem
        stop = self.stop_event
        for i in indices:
            if stop.is_set():
                break
            off = int(offsets[i])
            deadline = t0 + off
            spec = None
            if clock.now_ns() < deadline:
                # Build the request while there is time to spare, not after its deadline.
                spec = self.source.spec(int(i))
                await clock.sleep_until(deadline)
            if sem is not None:
                if sem.locked() and policy.drop_when_full():
                    self._record_dropped(int(i), off, clock.now_ns() - t0, spec)
                    continue
                await sem.acquire()
            late = clock.now_ns() - deadline
            decision = decide(late)
            if decision == DROP:
                if sem is not None:
                    sem.release()
                self._record_dropped(int(i), off, late + off, spec)
                continue
            if decision == SEND_LATE:
                self._late += 1
            self._launch(int(i), off, t0, spec)

    async def _closed_loop(self, t0: int) -> None:
        s = self.s
        n = s.concurrency or 1
        end = t0 + int(((s.ramp_s or 0.0) + s.duration_s) * 1e9) if s.duration_s else None
        # Several worker processes share the request count: worker k numbers its requests k, k + n, k + 2n, ...
        counter = iter(range(s.worker, s.max_requests if s.max_requests is not None else 2**62, s.n_workers))

        async def worker(start_ns: int = 0) -> None:
            clock = self.clock
            if start_ns:  # --ramp: this user joins later (a stop cancels the wait with the task)
                await clock.sleep_until(t0 + start_ns)
            while not self.stop_event.is_set() and not self._closed_done:
                now = clock.now_ns()
                if end is not None and now >= end:
                    return
                index = next(counter, None)
                if index is None:
                    return
                self._issued += 1
                self.stats.on_issue()
                await self._one(index, now - t0, t0)

        workers = [asyncio.get_running_loop().create_task(worker(start)) for start in user_start_offsets(n, s.ramp_s)]
        for w in workers:
            self._tasks.add(w)
            w.add_done_callback(self._tasks.discard)
        # Workers end by themselves at the count; at the duration issuing stops and what is in flight drains.
        await _wait_all_or_stop(workers, self.stop_event, self.clock, end)
        self._closed_done = True

    async def run(self) -> LoopOutcome:
        s = self.s
        if s.concurrency and s.offsets_ns is not None:
            self._sem = asyncio.Semaphore(s.concurrency)
        t0 = s.t0_ns if s.t0_ns is not None else self.clock.now_ns() + s.start_lead_ns
        if s.offsets_ns is not None:
            await self._open_loop(t0)
        else:
            await self.clock.sleep_until(t0)
            await self._closed_loop(t0)
        issue_end = self.clock.now_ns() - t0
        interrupted = self.stop_event.is_set()  # an early end skips the drain too: its answer is known
        cancelled = 0
        if self._tasks and not interrupted:
            drain_end = self.clock.now_ns() + int(s.drain_timeout_s * 1e9)
            await _wait_all_or_stop(list(self._tasks), self.stop_event, self.clock, drain_end)
        if self._tasks:
            pending = list(self._tasks)
            cancelled = len(pending)
            self._abandoning = not self.stop_event.is_set()  # Ctrl-C during the drain: cancelled by the user
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._record_unstarted()
        return LoopOutcome(t0_ns=t0, issue_end_ns=issue_end, end_ns=self.clock.now_ns() - t0,
                           issued=self._issued, dropped=self._dropped, late=self._late, cancelled=cancelled,
                           interrupted=self.stop_event.is_set() and self.stopped_early is None,
                           stopped_early=self.stopped_early)


async def _wait_all_or_stop(tasks: list[asyncio.Task[Any]], stop: asyncio.Event, clock: Clock,
                            deadline_ns: int | None = None) -> None:
    """Wait until every task is done, the stop event is set, or the clock passes ``deadline_ns``."""
    if not tasks:
        return
    loop = asyncio.get_running_loop()
    waiters = [loop.create_task(stop.wait())]
    if deadline_ns is not None:
        waiters.append(loop.create_task(clock.sleep_until(deadline_ns)))
    try:
        remaining = set(tasks)
        while remaining:
            done, _ = await asyncio.wait([*remaining, *waiters], return_when=asyncio.FIRST_COMPLETED)
            if any(w in done for w in waiters):
                return
            remaining -= done
    finally:
        for w in waiters:
            w.cancel()
