"""The asyncio load loop under a fake clock: absolute deadlines, the late policy, concurrency cap, closed loop,
and exact metrics end to end (fake backend with known TTFT and inter-token gap -> summary)."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson

from loadgen.core.clock import FakeClock
from loadgen.core.prompts import PromptBuilder, RequestSource
from loadgen.core.records import STATUS_CANCELLED, STATUS_DROPPED, STATUS_OK, RequestRecord
from loadgen.core.sizes import parse_size
from loadgen.core.summary import LevelContext, load_records, summarize
from loadgen.level.recorder import Recorder
from loadgen.runner.loop import LoadLoop, LoopSettings

MS = 1_000_000


class FakeBackend:
    """Streams ``max_tokens`` tokens: first after ``ttft_ns``, then one every ``itl_ns``, on the fake clock."""

    def __init__(self, clock: FakeClock, ttft_ns: int = 20 * MS, itl_ns: int = 5 * MS) -> None:
        self.clock = clock
        self.ttft_ns = ttft_ns
        self.itl_ns = itl_ns
        self.in_flight = 0
        self.max_in_flight = 0

    async def send(self, spec, rec: RequestRecord, t0: int) -> None:
        c = self.clock
        rec.issued_ns = c.now_ns() - t0
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            issued_abs = c.now_ns()
            await c.sleep_until(issued_abs + self.ttft_ns)
            rec.first_byte_ns = c.now_ns() - t0
            for k in range(spec.max_tokens):
                if k:
                    await c.sleep_until(c.now_ns() + self.itl_ns)
                rec.chunk_offsets_us.append((c.now_ns() - issued_abs) // 1000)
                rec.chunk_tokens.append(1)
            rec.end_ns = c.now_ns() - t0
            rec.status = STATUS_OK
        finally:
            self.in_flight -= 1


def source(out_tokens: str = "4") -> RequestSource:
    return RequestSource(parse_size("16", "--input-tokens"), parse_size(out_tokens, "--output-tokens"),
                         PromptBuilder(seed=1), seed=1)


async def drive(clock: FakeClock, coro, step_ns: int = 100_000, max_steps: int = 2_000_000):
    """Run ``coro`` while moving the fake clock forward in small steps (a discrete-time simulation)."""
    task = asyncio.ensure_future(coro)
    steps = 0
    while not task.done():
        for _ in range(3):
            await asyncio.sleep(0)
        if task.done():
            break
        clock.advance(step_ns)
        steps += 1
        assert steps < max_steps, "simulation did not finish"
    return task.result()


def read(path) -> list[RequestRecord]:
    return [RequestRecord.from_dict(orjson.loads(line)) for line in path.read_bytes().splitlines()]


class OvershootClock(FakeClock):
    """Every wake-up comes ``overshoot_ns`` after the deadline (a coarse timer or a busy client)."""

    def __init__(self, overshoot_ns: int) -> None:
        super().__init__(auto_advance=False)
        self.overshoot_ns = overshoot_ns

    async def sleep_until(self, deadline_ns: int) -> None:
        await super().sleep_until(deadline_ns + self.overshoot_ns)


class StampingBackend:
    def __init__(self, clock):
        self.clock = clock

    async def send(self, spec, rec, t0):
        rec.issued_ns = self.clock.now_ns() - t0
        rec.end_ns = rec.issued_ns
        rec.status = STATUS_OK


async def test_open_loop_issues_at_absolute_deadlines_without_drift(tmp_path):
    clock = OvershootClock(overshoot_ns=3 * MS)
    offsets = (np.arange(300, dtype=np.int64) * 10 * MS)
    rec = Recorder(tmp_path / "r.jsonl")
    loop = LoadLoop(StampingBackend(clock), source(), rec, clock, LoopSettings(offsets_ns=offsets), None)
    out = await drive(clock, loop.run(), step_ns=MS)
    rec.close()
    recs = sorted(read(tmp_path / "r.jsonl"), key=lambda r: r.index)
    lags = np.array([r.issued_ns - r.scheduled_ns for r in recs])
    # Each request is exactly one overshoot late: lateness never accumulates (no relative sleeps).
    assert len(recs) == 300 and out.issued == 300
    assert lags.min() == lags.max() == 3 * MS
    assert out.late == 0  # 3 ms is within the default 10 ms tolerance


async def test_late_policy_drop_counts_and_records_dropped_requests(tmp_path):
    clock = OvershootClock(overshoot_ns=15 * MS)
    offsets = np.arange(50, dtype=np.int64) * 100 * MS
    rec = Recorder(tmp_path / "r.jsonl")
    settings = LoopSettings(offsets_ns=offsets, on_late="drop", late_tolerance_ns=10 * MS)
    out = await drive(clock, LoadLoop(StampingBackend(clock), source(), rec, clock, settings).run(), step_ns=MS)
    rec.close()
    recs = read(tmp_path / "r.jsonl")
    assert out.dropped == 50 and out.issued == 0
    assert all(r.status == STATUS_DROPPED and r.issued_ns is None and "late" in r.error for r in recs)

    clock2 = OvershootClock(overshoot_ns=15 * MS)
    rec2 = Recorder(tmp_path / "r2.jsonl")
    out2 = await drive(clock2, LoadLoop(StampingBackend(clock2), source(), rec2, clock2,
                                        LoopSettings(offsets_ns=offsets, on_late="issue")).run(), step_ns=MS)
    rec2.close()
    assert out2.issued == 50 and out2.late == 50 and out2.dropped == 0


async def test_concurrency_cap_holds_back_or_drops(tmp_path):
    offsets = np.arange(20, dtype=np.int64) * 1 * MS  # 20 arrivals in 20 ms, each request lasts ~35 ms
    for policy in ("issue", "drop"):
        clock = FakeClock(auto_advance=False)
        backend = FakeBackend(clock, ttft_ns=20 * MS, itl_ns=5 * MS)
        rec = Recorder(tmp_path / f"{policy}.jsonl")
        settings = LoopSettings(offsets_ns=offsets, concurrency=4, on_late=policy, start_lead_ns=0)
        out = await drive(clock, LoadLoop(backend, source(), rec, clock, settings).run())
        rec.close()
        recs = read(tmp_path / f"{policy}.jsonl")
        assert backend.max_in_flight == 4
        if policy == "issue":
            assert out.issued == 20 and out.dropped == 0
            lags = sorted(r.issued_ns - r.scheduled_ns for r in recs)
            assert lags[0] == 0 and lags[-1] > 30 * MS  # held back until a slot freed: visible as schedule lag
        else:
            assert out.issued == 4 and out.dropped == 16
            assert sum(r.status == STATUS_DROPPED for r in recs) == 16


async def test_closed_loop_keeps_n_in_flight_and_stops_by_count(tmp_path):
    clock = FakeClock(auto_advance=False)
    backend = FakeBackend(clock, ttft_ns=10 * MS, itl_ns=2 * MS)
    rec = Recorder(tmp_path / "c.jsonl")
    settings = LoopSettings(offsets_ns=None, concurrency=3, max_requests=30, start_lead_ns=0)
    out = await drive(clock, LoadLoop(backend, source(), rec, clock, settings).run())
    rec.close()
    recs = read(tmp_path / "c.jsonl")
    assert out.issued == 30 and len(recs) == 30 and backend.max_in_flight == 3
    assert sorted(r.index for r in recs) == list(range(30))
    # In a closed loop a request is scheduled when a slot frees: no schedule lag.
    assert all(r.issued_ns == r.scheduled_ns for r in recs)


async def test_closed_loop_stops_by_duration_and_abandons_in_flight(tmp_path):
    clock = FakeClock(auto_advance=False)
    backend = FakeBackend(clock, ttft_ns=10 * MS, itl_ns=10 * MS)
    rec = Recorder(tmp_path / "d.jsonl")
    settings = LoopSettings(offsets_ns=None, concurrency=2, duration_s=0.5, start_lead_ns=0, drain_timeout_s=0.0)
    out = await drive(clock, LoadLoop(backend, source("100"), rec, clock, settings).run())
    rec.close()
    recs = read(tmp_path / "d.jsonl")
    # Each request takes ~1 s, so the two first are still running when the (zero) drain ends: abandoned errors
    # (never a silent 'cancelled', which is for a stop by the user), keeping their tokens.
    assert out.issued == 2 and {(r.status, r.error_kind) for r in recs} == {("error", "abandoned")}
    assert all(40 <= len(r.chunk_offsets_us) <= 60 for r in recs)


async def test_fake_backend_metrics_are_exact(tmp_path):
    clock = FakeClock(auto_advance=False)
    backend = FakeBackend(clock, ttft_ns=20 * MS, itl_ns=5 * MS)
    offsets = np.arange(40, dtype=np.int64) * 50 * MS  # 20 req/s for 2 s
    rec = Recorder(tmp_path / "m.jsonl")
    out = await drive(clock, LoadLoop(backend, source("8"), rec, clock,
                                      LoopSettings(offsets_ns=offsets, start_lead_ns=0)).run())
    rec.close()
    ctx = LevelContext(name="fake", target_rate=20.0, run_end_ns=out.issue_end_ns, min_completed=10)
    summary = summarize(load_records(tmp_path / "m.jsonl"), ctx)
    flat = orjson.dumps(summary).decode()
    assert summary["completed_requests"] == 40, flat
    assert abs(summary["ttft_ms"]["p50"] - 20.0) < 0.01 and abs(summary["ttft_ms"]["p99"] - 20.0) < 0.01
    assert abs(summary["itl_ms"]["p50"] - 5.0) < 0.01 and abs(summary["tpot_ms"]["mean"] - 5.0) < 0.01
    assert abs(summary["e2e_ms"]["max"] - 55.0) < 0.01
    assert summary["schedule_lag_ms"]["p99"] < 0.2


async def test_a_stop_during_the_drain_cancels_rather_than_abandons(tmp_path):
    """Ctrl-C while requests drain: they were stopped by the user, so 'cancelled' (the level is interrupted)."""
    clock = FakeClock(auto_advance=False)
    backend = FakeBackend(clock, ttft_ns=10 * MS, itl_ns=10 * MS)
    rec = Recorder(tmp_path / "s.jsonl")
    loop = LoadLoop(backend, source("100"), rec, clock,
                    LoopSettings(offsets_ns=None, concurrency=2, duration_s=0.5, start_lead_ns=0, drain_timeout_s=5.0))

    async def stop_later() -> None:
        await clock.sleep_until(clock.now_ns() + 700 * MS)
        loop.stop()

    stopper = asyncio.ensure_future(stop_later())
    out = await drive(clock, loop.run())
    await stopper
    rec.close()
    assert out.interrupted and {r.status for r in read(tmp_path / "s.jsonl")} == {STATUS_CANCELLED}


async def test_an_unexpected_exception_in_a_request_is_a_protocol_error(tmp_path):
    """A codec or transport bug ends its request as a protocol error with its text (it stayed 'cancelled'), the
    same in every driver (loadgen.core.issue.fail_unexpected), and the run goes on."""
    clock = FakeClock(auto_advance=False)

    class Buggy(FakeBackend):
        async def send(self, spec, rec, t0):
            if spec.index == 1:
                rec.issued_ns = self.clock.now_ns() - t0
                raise KeyError("no such field")
            await super().send(spec, rec, t0)

    rec = Recorder(tmp_path / "b.jsonl")
    offsets = np.arange(3, dtype=np.int64) * 10 * MS
    out = await drive(clock, LoadLoop(Buggy(clock), source("2"), rec, clock,
                                      LoopSettings(offsets_ns=offsets, start_lead_ns=0)).run())
    rec.close()
    recs = sorted(read(tmp_path / "b.jsonl"), key=lambda r: r.index)
    assert out.issued == 3 and [r.status for r in recs] == ["ok", "error", "ok"]
    assert recs[1].error_kind == "protocol" and "KeyError" in recs[1].error and recs[1].end_ns is not None


async def test_requests_stopped_before_their_task_ran_still_get_a_record(tmp_path):
    """A task cancelled before its first step never runs its body: those requests used to vanish (client.issued
    was one more than the records after a server died). Each now has a 'cancelled', never-sent record."""
    from loadgen.runner.live import LiveStats

    clock = FakeClock(auto_advance=False)
    rec = Recorder(tmp_path / "u.jsonl")
    stats = LiveStats()
    loop = LoadLoop(FakeBackend(clock), source("2"), rec, clock,
                    LoopSettings(offsets_ns=np.zeros(10, dtype=np.int64), start_lead_ns=0), stats)
    on_issue = stats.on_issue

    def stop_at_five() -> None:
        on_issue()
        if stats.issued == 5:
            loop.stop()  # like Ctrl-C or a dead server, right after five launches and before any of them ran

    stats.on_issue = stop_at_five  # type: ignore[method-assign]
    out = await drive(clock, loop.run())
    rec.close()
    recs = read(tmp_path / "u.jsonl")
    assert out.interrupted and out.issued == 0 and len(recs) == 5
    assert all(r.status == STATUS_CANCELLED and r.issued_ns is None and "not sent" in r.error for r in recs)


async def test_a_watch_ends_an_overloaded_level_early_without_calling_it_interrupted(tmp_path):
    """A server that serves one request at a time at 4x the schedule: the queue grows, the search's saturation
    watch ends the level long before its 600 requests (not a Ctrl-C: ``stopped_early``, no drain), and every
    request scheduled has its record."""
    from loadgen.runner.live import LiveStats
    from loadgen.search.saturation import SaturationWatch

    class OneAtATime(FakeBackend):
        def __init__(self, clock):
            super().__init__(clock, ttft_ns=40 * MS, itl_ns=MS)
            self.lock = asyncio.Lock()

        async def send(self, spec, rec, t0):
            async with self.lock:
                await super().send(spec, rec, t0)

    clock = FakeClock(auto_advance=False)
    rec = Recorder(tmp_path / "w.jsonl")
    stats = LiveStats()
    offsets = np.arange(600, dtype=np.int64) * 10 * MS  # 100 req/s against ~24 req/s of service
    loop = LoadLoop(OneAtATime(clock), source("2"), rec, clock,
                    LoopSettings(offsets_ns=offsets, start_lead_ns=0, drain_timeout_s=30.0), stats)
    watch = SaturationWatch(loop.end_early, loop.in_flight, rate=100.0, window=10)
    stats.add_observer(watch)
    out = await drive(clock, loop.run(), step_ns=MS)
    rec.close()
    recs = read(tmp_path / "w.jsonl")
    assert watch.tripped and out.stopped_early == watch.tripped and not out.interrupted
    assert out.issued < 200 and out.end_ns < 3_000 * MS  # 600 requests would take 6 s to schedule, 25 s to serve
    statuses = [r.status for r in recs]
    assert sorted(r.index for r in recs) == list(range(len(recs))) and len(recs) >= out.issued
    assert STATUS_CANCELLED in statuses and STATUS_OK in statuses
