"""Multi-turn sessions in the Locust front end's gevent driver (``loadgen.locust.sessions``), without Locust itself
(importing it would monkey-patch the whole test process; gevent's own primitives work without patching): turns
wait for their answers and the think time, every turn has one record, a stop records the rest as never sent."""

from __future__ import annotations

import time

import gevent
import numpy as np

from loadgen.core.prompts import PromptBuilder
from loadgen.core.records import STATUS_CANCELLED, STATUS_OK, RequestRecord
from loadgen.core.sessions import NOT_SENT_STOPPED, SessionSetup, SyntheticSessions, parse_think
from loadgen.core.sizes import parse_size
from loadgen.locust.sessions import SessionDispatcher, run_session

MS = 1_000_000


class GeventBackend:
    """Answers ``spec.max_tokens`` tokens after ``service_s`` of gevent time; keeps every prompt."""

    name, endpoint = "fake", "/fake"

    def __init__(self, service_s: float) -> None:
        self.service_s = service_s
        self.prompts: dict[int, str] = {}

    def send(self, spec, rec: RequestRecord, t0: int) -> None:
        rec.issued_ns = time.perf_counter_ns() - t0
        self.prompts[spec.index] = spec.prompt
        try:
            gevent.sleep(self.service_s)
            rec.chunk_offsets_us, rec.chunk_tokens = [500], [spec.max_tokens]
            rec.status = STATUS_OK
        except gevent.GreenletExit:
            rec.status = STATUS_CANCELLED
            raise
        finally:
            rec.end_ns = time.perf_counter_ns() - t0


def setup(turns: str = "3", think: str = "30ms") -> SessionSetup:
    src = SyntheticSessions(parse_size(turns), parse_size("10"), parse_size("3"), parse_think(think), seed=2)
    return SessionSetup(src, PromptBuilder(seed=2))


def test_the_dispatcher_runs_each_session_turn_after_turn():
    backend = GeventBackend(0.02)
    records: list[RequestRecord] = []
    offsets = np.array([0, 20, 40], dtype=np.int64) * MS
    d = SessionDispatcher(backend, setup(), records.append, offsets, np.arange(3), time.perf_counter_ns() + 10 * MS)
    outcome = gevent.spawn(d.run).get(timeout=20)
    assert outcome.issued == 9 == len(records) and all(r.status == STATUS_OK for r in records)
    by = {(r.session_id, r.turn): r for r in records}
    for sid in range(3):
        for k in (1, 2):
            prev, cur = by[(sid, k - 1)], by[(sid, k)]
            # due at the answer's end + 30 ms think time; sent then (gevent's timers: a few ms on a busy machine)
            assert cur.scheduled_ns == prev.end_ns + 30 * MS
            assert 0 <= cur.issued_ns - cur.scheduled_ns < 250 * MS
            assert backend.prompts[cur.index].startswith(backend.prompts[prev.index] + "\n")
            assert cur.input_tokens == prev.input_tokens + 3 + 10
    assert outcome.issue_end_ns >= max(r.scheduled_ns for r in records)  # the window keeps every turn


def test_a_stop_records_the_turn_in_flight_and_the_turns_never_sent():
    backend = GeventBackend(5.0)
    records: list[RequestRecord] = []
    d = SessionDispatcher(backend, setup("4"), records.append, np.array([0], dtype=np.int64), np.arange(1),
                          time.perf_counter_ns())
    g = gevent.spawn(d.run)
    gevent.sleep(0.1)
    d.stop()
    outcome = g.get(timeout=20)
    assert outcome.interrupted and outcome.issued == 1 and outcome.cancelled == 1
    assert sorted((r.turn, r.status, r.issued_ns is None) for r in records) == [
        (0, STATUS_CANCELLED, False), (1, STATUS_CANCELLED, True), (2, STATUS_CANCELLED, True),
        (3, STATUS_CANCELLED, True)]
    assert all(r.error == NOT_SENT_STOPPED for r in records if r.turn)


def test_a_closed_loop_user_runs_a_whole_session_until_the_end_time():
    backend = GeventBackend(0.02)
    records: list[RequestRecord] = []
    t0 = time.perf_counter_ns()
    # the end comes during the think time after turn 0: turn 1 and 2 are never sent
    gevent.spawn(run_session, backend, setup("3", think="200ms"), 5, 0, t0, 0, records.append,
                 end_abs_ns=t0 + 100 * MS).get(timeout=20)
    assert [(r.session_id, r.turn, r.status) for r in records] == [
        (5, 0, STATUS_OK), (5, 1, STATUS_CANCELLED), (5, 2, STATUS_CANCELLED)]
    assert records[1].issued_ns is None and records[1].error == NOT_SENT_STOPPED
