"""The real-time engine (the contract with the Triton model) and the shared GPU across threads and processes.

Timing tolerances were measured on the 2-core development VM: over 600 steps the engine ends within 1 ms of
the virtual-time prediction (absolute deadlines), where sleeping relative intervals would drift by ~0.1-0.2 ms
per step (60+ ms). The asserted bound (20 ms plus any recorded late time) leaves room for a loaded machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from loadgen.emulator.engine import Engine, EngineRequest
from loadgen.emulator.gpu import GPU, HOST, IDLE, SharedGpu, stretch_factor
from loadgen.emulator.power import PowerModel
from loadgen.emulator.profiles import get_gpu
from loadgen.emulator.simulate import simulate_offline
from loadgen.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]


class Sink:
    """Collects callbacks; ``done`` is set when ``expect`` requests have finished or failed."""

    def __init__(self, expect: int) -> None:
        self.events: list[tuple[str, int, bool, int]] = []
        self.errors: list[tuple[str, str]] = []
        self.expect = expect
        self.done = threading.Event()
        self._ended = 0
        self._lock = threading.Lock()

    def on_tokens(self, req: EngineRequest, n: int, final: bool) -> None:
        with self._lock:
            self.events.append((req.request_id, n, final, time.monotonic_ns()))
            if final:
                self._end()

    def on_error(self, req: EngineRequest, message: str) -> None:
        with self._lock:
            self.errors.append((req.request_id, message))
            self._end()

    def _end(self) -> None:
        self._ended += 1
        if self._ended >= self.expect:
            self.done.set()

    def request(self, rid: str, input_tokens: int, max_tokens: int) -> EngineRequest:
        return EngineRequest(rid, input_tokens, max_tokens, self.on_tokens, self.on_error)


@pytest.fixture
def engines():
    started: list[Engine] = []

    def make(*args, **kwargs) -> Engine:
        e = Engine(*args, **kwargs)
        e.start()
        started.append(e)
        return e

    yield make
    for e in started:
        e.stop()


def test_token_counts_order_and_timestamps(engines):
    e = engines("opt-1.3b", "h100-64gb", max_batch=4, speed=4.0)
    sink = Sink(6)
    reqs = [sink.request(f"r{i}", 50, 30) for i in range(6)]
    for r in reqs:
        e.submit(r)
    assert sink.done.wait(10)
    assert not sink.errors
    for r in reqs:
        mine = [ev for ev in sink.events if ev[0] == r.request_id]
        assert sum(ev[1] for ev in mine) == 30 == r.output_tokens
        assert [ev[2] for ev in mine] == [False] * 29 + [True]  # final exactly once, last
        assert all(a[3] <= b[3] for a, b in zip(mine, mine[1:], strict=False))
        assert (
            0
            < r.arrival_time_ns
            <= r.first_scheduled_time_ns
            <= r.first_token_time_ns
            <= r.last_token_time_ns
        )
    # max batch 4: the last two wait until a slot frees, i.e. until the first four have finished
    assert min(r.first_scheduled_time_ns for r in reqs[4:]) >= min(r.last_token_time_ns for r in reqs[:4])
    st = e.stats()
    assert (st["requests_completed"], st["tokens_generated"], st["running"], st["waiting"]) == (6, 180, 0, 0)
    assert st["kv_used_blocks"] == 0 and st["kv_usage"] == 0.0 and st["preemptions"] == 0


def test_absolute_deadlines_do_not_drift(engines):
    e = engines("opt-1.3b", "h100-64gb", max_batch=1, speed=4.0)
    time.sleep(0.02)
    sink = Sink(1)
    req = sink.request("long", 100, 600)
    e.submit(req)
    assert sink.done.wait(10)
    predicted = simulate_offline("opt-1.3b", "h100-64gb", 1, 1, [100], [600])["duration_s"] / 4.0
    actual = (req.last_token_time_ns - req.arrival_time_ns) / 1e9
    st = e.stats()
    assert st["steps"] == 600
    assert abs(actual - predicted) < 0.020 + st["late_ms_total"] / 1e3


def test_slow_callbacks_show_up_as_lag(engines):
    e = engines("opt-1.3b", "h100-64gb", max_batch=1, speed=4.0)  # steps of about 1 ms

    def slow(req, n, final):
        time.sleep(0.003)
        sink.on_tokens(req, n, final)

    sink = Sink(1)
    e.submit(EngineRequest("slow", 50, 40, slow, sink.on_error))
    assert sink.done.wait(10)
    st = e.stats()
    assert st["late_steps"] > 20 and st["lag_ms_p50"] > 2.0 and st["late_ms_total"] > 40


def test_cancel_stops_a_stream_and_frees_its_kv(engines):
    e = engines("opt-1.3b", "h100-64gb", max_batch=4, speed=4.0)
    sink = Sink(1)

    def cancel_after_five(req, n, final):
        sink.on_tokens(req, n, final)
        if req.output_tokens >= 5:
            req.cancelled = True

    victim = EngineRequest("victim", 50, 500, cancel_after_five, sink.on_error)
    keeper = sink.request("keeper", 50, 60)
    e.submit(victim)
    e.submit(keeper)
    assert sink.done.wait(10)
    assert keeper.output_tokens == 60
    assert 5 <= victim.output_tokens <= 7 and not any(ev[2] for ev in sink.events if ev[0] == "victim")
    st = e.stats()
    assert st["running"] == 0 and st["kv_used_blocks"] == 0 and st["requests_completed"] == 1


def test_bad_requests_get_on_error_and_a_raising_callback_is_contained(engines):
    e = engines("opt-1.3b", "h100-64gb", max_batch=4, speed=4.0)
    sink = Sink(3)

    def boom(req, n, final):
        raise RuntimeError("client went away")

    e.submit(sink.request("too-long", 2048, 10))
    e.submit(sink.request("zero", 10, 0))
    e.submit(EngineRequest("boom", 10, 10, boom, sink.on_error))
    ok = sink.request("ok", 10, 10)
    e.submit(ok)
    assert sink.done.wait(10)
    messages = dict(sink.errors)
    assert "max_model_len 2048" in messages["too-long"]
    assert "max_tokens" in messages["zero"]
    assert "client went away" in messages["boom"]
    deadline = time.monotonic() + 5
    while ok.output_tokens < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ok.output_tokens == 10 and e.stats()["callback_errors"] == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(model="opt-9b"), "unknown model profile"),
        (dict(gpu="b200"), "unknown GPU profile"),
        (dict(max_batch=100_000), "does not fit: at most"),
        (dict(speed=0), "speed"),
        (dict(replicas=2, replica_index=2), "replica_index"),
    ],
)
def test_engine_construction_errors(kwargs, match):
    args = dict(model="opt-1.3b", gpu="h100-64gb", max_batch=8)
    args.update(kwargs)
    with pytest.raises(UsageError, match=match):
        Engine(**args)


def test_stop_fails_pending_requests():
    e = Engine("llama-2-7b", "h100-64gb", max_batch=2, speed=0.05)
    e.start()
    sink = Sink(3)
    for i in range(3):
        e.submit(sink.request(f"p{i}", 100, 100))
    time.sleep(0.05)
    e.stop()
    assert sink.done.wait(1)
    assert sorted(sink.errors) == [(f"p{i}", "engine stopped") for i in range(3)]
    late = Sink(1)
    e.submit(late.request("late", 10, 10))
    assert late.errors == [("late", "engine is stopped")]


def test_power_follows_activity_and_energy_never_decreases(engines):
    gpu = get_gpu("h100-64gb")
    e = engines("opt-1.3b", gpu, max_batch=16, speed=2.0)
    sink = Sink(16)
    for i in range(16):
        e.submit(sink.request(f"r{i}", 100, 60))
    samples = []
    while not sink.done.is_set():
        st = e.stats()
        samples.append((st["power_w"], st["energy_j"]))
        time.sleep(0.01)
    time.sleep(0.3)  # the idle loop notices there is nothing left
    after = e.stats()
    energies = [s[1] for s in samples] + [after["energy_j"]]
    assert all(b >= a for a, b in zip(energies, energies[1:], strict=False)) and energies[-1] > energies[0]
    busy = [s[0] for s in samples[1:]]
    assert min(busy) > gpu.idle_w and max(busy) < gpu.max_w
    assert after["power_w"] == gpu.idle_w


def test_shared_gpu_stretch_rules_and_file_checks(tmp_path):
    assert stretch_factor([0.3, 0.3], mps=True) == 1.0  # two light phases fit side by side under MPS
    assert stretch_factor([0.9, 0.8], mps=True) == pytest.approx(1.7)
    assert stretch_factor([0.3, 0.3], mps=False) == 2.0  # time slicing: each waits for the other
    power = PowerModel.for_gpu(get_gpu("h100-64gb"))
    path = str(tmp_path / "gpu.state")
    a = SharedGpu(2, power, path)
    b = SharedGpu(2, power, path)  # a second opener (as another process would) sees the same state
    a.attach(0)
    b.attach(1)
    a.set_state(0, GPU, 0.9, 100.0)
    b.set_state(1, GPU, 0.9, 100.0)
    assert a.stretch() == pytest.approx(1.8) and b.states() == [GPU, GPU]
    b.set_state(1, HOST)
    assert a.stretch() == pytest.approx(1.0)
    assert a.power_w() == pytest.approx(power.total_w(True, [100.0]))
    e1 = b.energy_j()
    time.sleep(0.01)
    assert a.energy_j() > e1
    a.set_state(0, IDLE)
    b.set_state(1, IDLE)
    assert b.power_w() == power.idle_w
    with pytest.raises(UsageError, match="made for 2 replica"):
        SharedGpu(3, power, path)
    a.close()
    b.close()


_CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {root!r})
    from loadgen.emulator.engine import Engine, EngineRequest
    e = Engine("llama-2-7b", "h100-64gb", max_batch=64, replicas=2, replica_index=1, speed=2.0,
               shared_path={path!r})
    e.start()
    for i in range(64):
        e.submit(EngineRequest(str(i), 300, 500, lambda r, n, f: None))
    while e.stats()["running"] < 64:
        time.sleep(0.005)
    print("busy", flush=True)
    time.sleep(30)
    """
)


def _timed_job(e: Engine, n: int = 8, tokens: int = 40) -> float:
    sink = Sink(n)
    t0 = time.monotonic()
    for i in range(n):
        e.submit(sink.request(f"j{i}", 100, tokens))
    assert sink.done.wait(15)
    return time.monotonic() - t0


def test_two_processes_share_the_gpu(engines, tmp_path):
    """A replica's steps take longer while a replica in another process keeps the same emulated GPU busy."""
    path = str(tmp_path / "shared.gpu")
    e = engines(
        "llama-2-7b", "h100-64gb", max_batch=8, replicas=2, replica_index=0, speed=2.0, shared_path=path
    )
    solo = _timed_job(e)
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD.format(root=str(ROOT), path=path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "busy"
        energy0 = e.stats()["energy_j"]
        shared = _timed_job(e)
        st = e.stats()
    finally:
        child.kill()
        child.wait()
    # measured: about 1.55x (the neighbour's decode phases are ~85 % bandwidth-bound and on the GPU ~75 % of
    # the time); solo runs within 1 % of the model
    assert shared > 1.3 * solo
    assert st["energy_j"] > energy0 and st["power_w"] > get_gpu("h100-64gb").idle_w
    assert os.path.exists(path)
