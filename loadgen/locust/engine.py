"""``--engine asyncio``: a Locust node's open-loop stripe issued by the asyncio runner's hot path, in a child
process, while the Locust process keeps everything Locust does (master link, users, stats, web UI).

Why (benchmarks/LOCUST.md, issue 17): profiling one Locust worker showed no single hot spot to cut. Its time goes
to what the asyncio runner does too (reads, HTTP framing, SSE and JSON parsing, records), plus what gevent adds per
request: a greenlet, an event, an I/O watcher, a hub hop between the deadline and the send, and ``sleep(0)`` spins
before each deadline. The asyncio runner (uvloop, timerfd deadlines, frozen GC) meets the timing targets at about
twice the rate on the same core. So rather than a second, leaner copy of that hot path under gevent, the node runs
the asyncio runner's own worker process for its stripe: ``python -m loadgen.runner.workers FD``, the same child that
``loadgen run --workers`` starts, speaking the same messages over a socket pair: ``("start", scenario, url,
run_dir, k, n)``, ``("ready", count)``, ``("go", t0_ns)``, then ``("tick", ...)`` and ``("done", outcome, client,
tripped)`` or ``("error", code, text)``. t0 is the node's monotonic t0 (one clock for all processes of a host).

The child writes ``records.w<K>.jsonl`` in the node's spool directory; the node tails that file (``RecordTail``)
into its live statistics, Locust's request events and, on a worker, the records shipped to the master. A stop is
a SIGTERM to the child (it stops issuing exactly as Ctrl-C stops ``loadgen run``). The child inherits the node's
CPU affinity, so ``taskset -c 0 locust ...`` keeps both on one core.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import gevent
import orjson

from loadgen.core.records import RequestRecord
from loadgen.errors import LoadgenError
from loadgen.locust.args import LocustLevel
from loadgen.locust.dispatch import DispatchOutcome

log = logging.getLogger("loadgen.locust")
ENGINES = ("gevent", "asyncio")
LOCAL_LEAD_NS = 50_000_000  # a local runner's t0 this far after its node is ready
TAIL_SLICE = 32  # --engine asyncio: records folded into the statistics between two pauses (about 1 ms of work)
TAIL_PAUSE_S = 0.001


class EngineFailed(LoadgenError):
    """The asyncio child failed (its exit code and line are kept)."""

    exit_code = 5


class RecordTail:
    """The complete lines appended to a records file since the last call, as ``RequestRecord`` objects."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read(self, limit_bytes: int | None = 4 << 20) -> list[RequestRecord]:
        """At most ``limit_bytes`` per call (a node's hub must not stall on a large backlog); None: all."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(-1 if limit_bytes is None else limit_bytes)
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        return [RequestRecord.from_dict(orjson.loads(line)) for line in data[:end].splitlines() if line]


PARENT_NICE = 10  # where SCHED_IDLE is refused: how much lower than the child the hub thread runs


def yield_to_child() -> None:
    """Put this thread (the gevent hub's) below the child in the CPU scheduler, once, after the child started.

    Why: with ``taskset`` both share one core, and the node's bookkeeping (tailing records into the statistics,
    about 35 us a record) would otherwise hold the core while a deadline of the child passes. ``SCHED_IDLE``: the
    kernel runs this thread when the child does not want the core and preempts it at once when the child wakes;
    it still gets a small share under full load (weight 3 against 1024), so heartbeats go on. Falls back to nice
    +10. (Both are per thread on Linux: the child, forked before, keeps its own.)"""
    if getattr(yield_to_child, "done", False):
        return
    yield_to_child.done = True  # type: ignore[attr-defined]
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (OSError, AttributeError):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, min(19, os.getpriority(os.PRIO_PROCESS, 0) + PARENT_NICE))


class AsyncioStripe:
    """One node's stripe ``k`` of ``n`` in a ``loadgen.runner.workers`` child, driven from a gevent process."""

    def __init__(self, scenario: dict[str, Any], url: str, spool_dir: Path, k: int, n: int) -> None:
        self.scenario, self.url, self.spool_dir, self.k, self.n = scenario, url, spool_dir, k, n
        self.records = spool_dir / f"records.w{k}.jsonl"
        self.proc: subprocess.Popen | None = None
        self.conn: Connection | None = None
        self.ticks = 0

    def _recv(self) -> Any:
        """One message, received in a pool thread (Connection.recv blocks; the hub must not)."""
        assert self.conn is not None
        return gevent.get_hub().threadpool.apply(self.conn.recv)

    def start(self) -> int | None:
        """Start the child and wait until it has probed the target and built its stripe; its request count."""
        parent, child = socket.socketpair()
        os.set_blocking(child.fileno(), True)  # gevent's sockets are non-blocking; Connection expects blocking
        os.set_blocking(parent.fileno(), True)
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "loadgen.runner.workers", str(child.fileno())],
                                         pass_fds=(child.fileno(),))
        finally:
            child.close()
        self.conn = Connection(parent.detach())
        yield_to_child()
        self.conn.send(("start", self.scenario, self.url, str(self.spool_dir), self.k, self.n))
        msg = self._next("ready")
        return msg[1]

    def _next(self, kind: str) -> tuple:
        while True:
            try:
                msg = self._recv()
            except (EOFError, OSError):
                code = self.proc.wait() if self.proc is not None else None
                raise EngineFailed(f"the asyncio engine of stripe {self.k} exited ({code}) before '{kind}'") from None
            if msg[0] == "error":
                raise EngineFailed(f"asyncio engine of stripe {self.k}: {msg[2]}")
            if msg[0] == "tick":
                self.ticks += 1
                if kind != "tick":
                    continue
            if msg[0] == kind:
                return msg

    def go(self, t0_ns: int) -> None:
        assert self.conn is not None
        self.conn.send(("go", int(t0_ns)))

    def wait_done(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Until the child is done: its outcome (``IssueOutcome`` fields) and client figures."""
        msg = self._next("done")
        self.close()
        return msg[1], msg[2]

    def stop(self) -> None:
        """Stop issuing (SIGTERM: in-flight requests are cancelled and recorded); ``wait_done`` still returns."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.close()
            self.conn = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ChildRecords:
    """Stands where a node's ``Recorder`` stands when the child writes the records: counts what was tailed."""

    error = None

    def __init__(self) -> None:
        self.written = 0

    def add(self, rec: RequestRecord) -> None:
        self.written += 1

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def describe_error(self) -> str | None:
        return None


class EngineNode:
    """A node's ``--engine asyncio`` path, a mixin of ``loadgen.locust.session.LocustSession``: start the child,
    fold its records into this process's statistics in small slices, and finish the node with its outcome."""

    environment: Any
    role: str

    def _start_engine(self, lv: dict, level: LocustLevel, url: str, path: Path) -> None:
        """``--engine asyncio``: the stripe goes out from the asyncio runner's worker process (``engine.py``);
        this process tails its records file into the statistics (and, on a worker, ships it)."""
        lv["recorder"].close()  # the child writes the records: records.w<K>.jsonl beside where ours would be
        if path.is_file() and path.stat().st_size == 0:
            path.unlink()
        eng = AsyncioStripe(level.scenario.model_dump(), url, path.parent, lv["stripe"], lv["n"])
        lv.update(recorder=ChildRecords(), records=eng.records, tail=RecordTail(eng.records), engine=eng)
        lv["lag_monitor"].kill(block=False)  # the child measures its own loop lag; no 10 ms wake-ups beside it
        if lv.get("shipper") is not None:
            lv["shipper"].path = eng.records
        lv["dispatch_greenlet"] = gevent.spawn(self._run_engine, lv)

    def _run_engine(self, lv: dict) -> None:
        eng = lv["engine"]
        try:
            eng.start()
            if self.role == "local":  # the child has probed and built its stripe: start now
                lv["t0"] = time.perf_counter_ns() + LOCAL_LEAD_NS
            elif time.perf_counter_ns() > lv["t0"]:
                log.warning("loadgen: the asyncio engine was ready %.0f ms after t0 (raise the lead)",
                            (time.perf_counter_ns() - lv["t0"]) / 1e6)
            eng.go(lv["t0"])
            outcome, client = eng.wait_done()
        except EngineFailed as err:
            log.error("loadgen: %s", err)
            self.environment.process_exit_code = err.exit_code
            eng.stop()
            eng.close()
            outcome, client = asdict(self._closed_outcome(lv, interrupted=True)), {}
        for rec in lv["tail"].read(None):
            self._on_record(rec)
        lv["engine_client"] = client
        self._node_finished(lv, DispatchOutcome(**outcome))

    def _take_tail(self, lv: dict) -> None:
        """The child's new records, in slices of ``TAIL_SLICE`` with a short sleep between them: this process
        shares the child's core, and one long burst of bookkeeping would hold the core past the child's next
        deadlines (the scheduler runs the child while this process sleeps)."""
        for k, rec in enumerate(lv["tail"].read(), 1):
            self._on_record(rec)
            if k % TAIL_SLICE == 0:
                gevent.sleep(TAIL_PAUSE_S)
