"""``loadgen run --workers N``: one load level issued by N worker processes that share one schedule.

Why: one Python event loop issues about 2,000 streamed requests a second within the timing targets
(benchmarks/RESULTS.md); past that, one core is the limit and the fix is more processes, not a faster loop.

How the schedule is shared (the same scheme as the Locust master/worker path):

- Every worker rebuilds the same seeded workload (schedule, sizes, prompts, or the trace replay) from the same
  settings, so nothing large crosses a process boundary, and keeps the requests ``i % N == K``
  (``offsets_for_stripe``). The stripes together are exactly the one schedule: each request is sent once, by one
  process, at its own deadline. A closed loop splits ``--concurrency`` as evenly as it goes and numbers the
  requests ``K, K + N, ...`` so ``--requests`` is shared too.
- All workers issue from one t0. ``time.perf_counter_ns`` is CLOCK_MONOTONIC, one clock for every process of the
  machine, so the parent hands out t0 itself once every worker has probed the target and built its stripe
  (a barrier: slow start-up of one worker costs nothing but start-up time).
- Worker K appends its records to ``records.w<K>.jsonl``; the summary reads every ``records*.jsonl`` of the
  directory. The parent draws the live display from the workers' figures (sent twice a second) and merges their
  client figures (CPU, event-loop lag, saturation) into the summary's ``client`` object, per worker too.

Process control: workers ignore SIGINT; the parent turns the first Ctrl-C (or a SIGTERM) into one SIGTERM per
worker, which stops issuing exactly as Ctrl-C does in one process, and still waits for their records; a second
Ctrl-C kills them. A worker that finds the server gone, or dies, makes the parent stop the others; the records
already written are kept and the summary is still written.

Each worker is ``python -m loadgen.runner.workers FD``, talking to the parent over one socket pair with
multiprocessing's message framing. Parent -> worker: ``("start", settings, url, run_dir, k, n)``, then
``("go", t0_ns)``; worker -> parent: ``("ready", n)``, ``("tick", figures)``, ``("done", outcome, client,
tripped)`` or ``("error", exit_code, text)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from loadgen.core.arrivals import offsets_for_stripe
from loadgen.core.clock import wall_anchor
from loadgen.core.histogram import LogHistogram
from loadgen.errors import LoadgenError
from loadgen.level.pipeline import Driven, LevelRun
from loadgen.runner.driver import drive_level, install_uvloop, probe_target
from loadgen.runner.live import LiveDisplay, LiveStats
from loadgen.runner.loop import LoopOutcome, LoopSettings
from loadgen.scenario.check import MAX_WORKERS

READY_TIMEOUT_S = 300.0  # building a large trace replay in every worker can take a while
START_LEAD_NS = 300_000_000  # t0 this long after the last worker is ready: the "go" message and a collection
TICK_S = 0.5
__all__ = ["MAX_WORKERS", "WorkersDriver", "WorkerFailed"]


class WorkerFailed(LoadgenError):
    """A worker process of ``--workers`` died or failed mid-run: exit code 5 (the run directory is kept)."""

    exit_code = 5


def share(total: int, worker: int, n: int) -> int:
    """Worker ``worker``'s part of ``total`` split over ``n`` as evenly as it goes (the first ones get one more)."""
    return total // n + (1 if worker < total % n else 0)


# -- the worker side --------------------------------------------------------------------------------------------
class WorkerLink:
    """What ``run_level_async`` needs to run as worker K of N: its share, the common t0 and live reporting."""

    def __init__(self, conn: Any, worker: int, n: int) -> None:
        self.conn = conn
        self.worker = worker
        self.n = n
        self.stats: LiveStats | None = None

    def share(self, ls: LoopSettings) -> None:
        ls.worker, ls.n_workers = self.worker, self.n
        if ls.offsets_ns is not None:
            ls.stripe = offsets_for_stripe(ls.offsets_ns, self.worker, self.n)[0]
        if ls.concurrency:
            ls.concurrency = share(ls.concurrency, self.worker, self.n)

    async def ready(self, ls: LoopSettings) -> int:
        """Tell the parent this worker is ready; wait for the common t0 (monotonic ns)."""
        self.conn.send(("ready", len(ls.stripe) if ls.stripe is not None else None))
        msg = await asyncio.get_running_loop().run_in_executor(None, self.conn.recv)
        if not (isinstance(msg, tuple) and msg and msg[0] == "go"):
            raise WorkerFailed(f"worker {self.worker}: expected the start signal from the parent, got {msg!r}")
        return int(msg[1])

    async def report(self, stats: LiveStats) -> None:
        """Send the live figures twice a second. A parent that is gone stops this worker (as a SIGTERM would)."""
        self.stats = stats
        while True:
            try:
                self.conn.send(("tick", figures(stats)))
            except OSError:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            await asyncio.sleep(TICK_S)


def figures(stats: LiveStats) -> dict[str, Any]:
    return {"issued": stats.issued, "completed": stats.completed, "errors": stats.errors,
            "dropped": stats.dropped, "tokens": stats.tokens, "ttft": stats.ttft.to_dict()}


def worker_main(conn: Any, scenario: dict[str, Any], url: str, run_dir: str, worker: int, n: int) -> None:
    """Run worker ``worker`` of ``n`` in this (fresh) process, reporting over ``conn``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C means
    from loadgen.level.plan import plan_level
    from loadgen.scenario.model import Scenario

    install_uvloop()
    try:
        sc = Scenario.model_validate(scenario)
        run = LevelRun(sc, plan_level(sc), url, None, False, lambda info: Path(run_dir))
        link = WorkerLink(conn, worker, n)
        outcome, client, tripped = asyncio.run(drive_level(run, part=link))
        if link.stats is not None:  # the last figures, so the parent's display ends on the totals
            conn.send(("tick", figures(link.stats)))
        conn.send(("done", asdict(outcome), client, tripped))
    except LoadgenError as err:
        _send_quietly(conn, ("error", err.exit_code, str(err)))
    except BaseException as err:  # anything else: the parent reports it in one line and stops the others
        _send_quietly(conn, ("error", WorkerFailed.exit_code, f"{type(err).__name__}: {err}"))
    finally:
        conn.close()


def _send_quietly(conn: Any, msg: tuple) -> None:
    with contextlib.suppress(OSError):
        conn.send(msg)


def _worker_process(fd: int) -> None:
    """``python -m loadgen.runner.workers FD``: read the assignment from the socket FD, then run it."""
    conn = Connection(fd)
    try:
        kind, settings, url, run_dir, worker, n = conn.recv()
    except (EOFError, OSError):
        return  # the parent is gone before it said anything
    worker_main(conn, settings, url, run_dir, worker, n)


class _Process:
    """A worker's interpreter: ``python -m loadgen.runner.workers FD``, a fresh process that inherits nothing but
    one end of a socket pair (not multiprocessing's spawn, which re-runs the parent's ``__main__`` and so fails
    when the parent is an interactive session or a script read from stdin)."""

    def __init__(self, fd: int) -> None:
        self.popen = subprocess.Popen([sys.executable, "-m", "loadgen.runner.workers", str(fd)], pass_fds=(fd,),
                                      stdin=subprocess.DEVNULL)
        self.pid = self.popen.pid

    def is_alive(self) -> bool:
        return self.popen.poll() is None

    def join(self, timeout: float | None = None) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)

    def kill(self) -> None:
        if self.is_alive():
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()

    @property
    def exitcode(self) -> int | None:
        return self.popen.poll()


# -- the parent side --------------------------------------------------------------------------------------------
class MergedStats(LiveStats):
    """The live figures of all workers, rebuilt from their latest reports (what ``LiveDisplay`` draws)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.latest: list[dict[str, Any] | None] = [None] * n

    def update(self, worker: int, fig: dict[str, Any]) -> None:
        self.latest[worker] = fig
        figs = [f for f in self.latest if f is not None]
        for key in ("issued", "completed", "errors", "dropped", "tokens"):
            setattr(self, key, sum(f[key] for f in figs))
        ttft = LogHistogram()
        for f in figs:
            ttft.merge(LogHistogram.from_dict(f["ttft"]))
        self.ttft = ttft


class _Worker:
    def __init__(self, k: int, proc: Any, conn: Any) -> None:
        self.k = k
        self.proc = proc
        self.conn = conn
        self.ready: int | None | bool = False  # False until ready; then its request count (None: closed loop)
        self.done: tuple | None = None  # (outcome dict, client dict, tripped)
        self.error: tuple[int, str] | None = None
        self.gone = False  # its pipe closed
        self.pump: threading.Thread | None = None

    @property
    def finished(self) -> bool:
        return self.done is not None or self.error is not None or self.gone


class WorkerPool:
    """Starts, feeds and stops the worker processes of one level (parent side, inside the parent's event loop)."""

    def __init__(self, scenario: dict[str, Any], url: str, run_dir: Path, n: int) -> None:
        self.scenario = scenario
        self.url = url
        self.run_dir = run_dir
        self.n = n
        self.workers: list[_Worker] = []
        self.stats = MergedStats(n)
        self.changed = asyncio.Event()
        self.signals = 0

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for k in range(self.n):
            parent_sock, child_sock = socket.socketpair()
            try:
                proc = _Process(child_sock.fileno())
            finally:
                child_sock.close()
            parent_end = Connection(parent_sock.detach())
            parent_end.send(("start", self.scenario, self.url, str(self.run_dir), k, self.n))
            w = _Worker(k, proc, parent_end)
            self.workers.append(w)
            # One reader thread per pipe, handing each message to the event loop. (Polling the pipe from the
            # loop would not do: uvloop makes a polled descriptor non-blocking, and a message that has only
            # partly arrived then reads as an error.)
            w.pump = threading.Thread(target=self._pump, args=(w, loop), name=f"loadgen-pipe-{k}", daemon=True)
            w.pump.start()

    def _pump(self, w: _Worker, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            try:
                msg = w.conn.recv()
            except (EOFError, OSError):
                break
            loop.call_soon_threadsafe(self._on_message, w, msg)
        w.conn.close()
        with contextlib.suppress(RuntimeError):  # the loop is already closed: nobody waits any more
            loop.call_soon_threadsafe(self._closed, w)

    def _on_message(self, w: _Worker, msg: tuple) -> None:
        kind = msg[0]
        if kind == "tick":
            self.stats.update(w.k, msg[1])
            return
        if kind == "ready":
            w.ready = msg[1]
        elif kind == "done":
            w.done = tuple(msg[1:])
        elif kind == "error":
            w.error = (int(msg[1]), str(msg[2]))
        self.changed.set()

    def _closed(self, w: _Worker) -> None:
        w.gone = True
        self.changed.set()

    async def _wait(self, predicate: Any, timeout_s: float | None = None) -> bool:
        end = None if timeout_s is None else time.monotonic() + timeout_s
        while not predicate():
            self.changed.clear()
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout=left)
        return True

    def signal_all(self, sig: int) -> None:
        """Send ``sig`` to every worker still running (only to processes this pool started, by their id)."""
        for w in self.workers:
            if not w.finished and w.proc.pid is not None and w.proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.proc.pid, sig)

    def on_signal(self) -> None:
        self.signals += 1
        self.signal_all(signal.SIGTERM if self.signals == 1 else signal.SIGKILL)

    def failure(self) -> _Worker | None:
        for w in self.workers:
            if w.error is not None or (w.gone and w.done is None):
                return w
        return None

    async def wait_ready(self) -> int:
        """Wait until every worker is ready (or one fails); then hand out t0 and return it."""
        ok = await self._wait(lambda: all(w.ready is not False for w in self.workers) or self.failure() is not None
                              or self.signals > 0, READY_TIMEOUT_S)
        bad = self.failure()
        if bad is not None:
            raise self._failure_error(bad, before_start=True)
        if self.signals:
            raise KeyboardInterrupt
        if not ok:
            raise WorkerFailed(f"--workers {self.n}: not every worker was ready within {READY_TIMEOUT_S:.0f} s "
                               "(building the workload in each process); try fewer workers")
        t0 = time.perf_counter_ns() + START_LEAD_NS
        for w in self.workers:
            with contextlib.suppress(OSError):  # it died after saying ready: wait_done reports it
                w.conn.send(("go", t0))
        return t0

    async def wait_done(self) -> None:
        """Wait for every worker; when one fails or finds the server gone, stop the others."""
        def all_finished() -> bool:
            return all(w.finished for w in self.workers)

        def must_stop() -> bool:
            return self.failure() is not None or any(w.done is not None and w.done[2] for w in self.workers)

        await self._wait(lambda: all_finished() or must_stop())
        if not all_finished():
            self.signal_all(signal.SIGTERM)
            await self._wait(all_finished)
        for w in self.workers:
            await asyncio.get_running_loop().run_in_executor(None, w.proc.join, 30)
            if w.proc.is_alive():  # it ignored SIGTERM for 30 s after its pipe closed: it is stuck
                w.proc.kill()
                w.proc.join(5)
            if w.pump is not None:  # the process is gone, so its pipe is at EOF
                await asyncio.get_running_loop().run_in_executor(None, w.pump.join, 5)

    def _failure_error(self, w: _Worker, before_start: bool) -> LoadgenError:
        if w.error is not None:
            code, text = w.error
            err = LoadgenError(text if before_start else f"worker {w.k}: {text}")
            err.exit_code = code
            return err
        return WorkerFailed(f"worker process {w.k} (pid {w.proc.pid}) exited with code {w.proc.exitcode} "
                            f"without finishing; {self.run_dir} keeps every record written")

    def stop_now(self) -> None:
        """Error path: kill what still runs, reap everything."""
        for w in self.workers:
            if w.proc.is_alive():
                w.proc.kill()
        for w in self.workers:
            w.proc.join(5)
            if w.pump is not None:
                w.pump.join(5)


def merge_outcomes(outcomes: list[dict[str, Any]], t0: int) -> LoopOutcome:
    return LoopOutcome(
        t0_ns=t0, issue_end_ns=max(o["issue_end_ns"] for o in outcomes), end_ns=max(o["end_ns"] for o in outcomes),
        issued=sum(o["issued"] for o in outcomes), dropped=sum(o["dropped"] for o in outcomes),
        late=sum(o["late"] for o in outcomes), cancelled=sum(o["cancelled"] for o in outcomes),
        interrupted=any(o["interrupted"] for o in outcomes))


def merge_clients(clients: list[dict[str, Any]], outcome: LoopOutcome, info: dict, anchor: dict) -> dict[str, Any]:
    """One ``client`` object for the level: totals, the worst worker's lag, saturated when any worker was."""
    cpu = sum(c["cpu_seconds"] for c in clients)
    wall = max(c["wall_seconds"] for c in clients)
    reasons = [f"worker {k}: {c['saturation_reason']}" for k, c in enumerate(clients) if c.get("saturated")]
    per_worker = [{key: c.get(key) for key in ("cpu_seconds", "wall_seconds", "cpu_utilisation",
                                               "cpu_seconds_per_1000_requests", "loop_lag_p99_ms", "issued",
                                               "dropped", "late", "saturated")} for c in clients]
    return {
        "event_loop": clients[0].get("event_loop"), "wake_method": clients[0].get("wake_method"),
        "processes": len(clients),
        "cpu_seconds": round(cpu, 3), "wall_seconds": round(wall, 3),
        "cpu_utilisation": round(max(c["cpu_utilisation"] or 0.0 for c in clients), 3),
        "cpu_seconds_per_1000_requests": round(1000 * cpu / outcome.issued, 3) if outcome.issued else None,
        "loop_lag_p99_ms": max(c["loop_lag_p99_ms"] for c in clients), "issued": outcome.issued,
        "dropped": outcome.dropped, "late": outcome.late, "cancelled_at_end": outcome.cancelled,
        "interrupted": outcome.interrupted, "anchor": anchor, "t0_offset_ns": outcome.t0_ns - anchor["monotonic_ns"],
        "saturated": bool(reasons), "saturation_reason": "; ".join(reasons) or None, "server": info,
        "server_gone": next((c["server_gone"] for c in clients if c.get("server_gone")), None),
        "workers": per_worker,
    }


class WorkersDriver:
    """``--workers N``: N worker processes, each an asyncio driver of one stripe of the schedule."""

    name = "workers"

    def drive(self, run: LevelRun) -> Driven:
        install_uvloop()
        return asyncio.run(run_workers_async(run))


async def run_workers_async(run: LevelRun) -> Driven:
    """The parent of ``--workers N``: probe, open the run directory, run the pool, merge what the workers say.

    ``Driven.failure`` is the error of a worker that failed mid-run (the front end writes the summary first,
    then raises it).
    """
    sc = run.scenario
    info = await probe_target(sc, run.url)
    run_dir = run.open_dir(info)
    n = sc.load.workers
    pool = WorkerPool(sc.model_dump(), run.url, run_dir, n)
    aloop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        for sig in (signal.SIGINT, signal.SIGTERM):
            aloop.add_signal_handler(sig, pool.on_signal)
    try:
        pool.start()
        if run.console is not None:
            run.console.print(f"{n} worker processes share the schedule: worker K sends requests K, K+{n}, "
                              f"K+{2 * n}, ...")
        anchor = wall_anchor()
        t0 = await pool.wait_ready()
        await _show_until_done(pool, run)
    except BaseException:
        pool.stop_now()
        raise
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            for sig in (signal.SIGINT, signal.SIGTERM):
                aloop.remove_signal_handler(sig)
    return _merge(pool, run_dir, t0, info, anchor)


async def _show_until_done(pool: WorkerPool, run: LevelRun) -> None:
    sc, plan = run.scenario, run.plan
    if plan.offsets is not None or plan.sessions is not None:
        total = plan.total
    elif all(isinstance(w.ready, int) for w in pool.workers):
        total = sum(int(w.ready) for w in pool.workers)
    else:
        total = sc.load.requests
    display = LiveDisplay(pool.stats, total=total, duration_s=sc.load.duration if sc.closed_loop else None,
                          target_rate=plan.target_rate, console=run.console,
                          enabled=run.live and run.console is not None)
    with display:
        disp_task = asyncio.get_running_loop().create_task(display.run())
        try:
            await pool.wait_done()
        finally:
            disp_task.cancel()


def _merge(pool: WorkerPool, run_dir: Path, t0: int, info: dict, anchor: dict) -> Driven:
    n = pool.n
    done = [w for w in pool.workers if w.done is not None]
    bad = pool.failure()
    failure = pool._failure_error(bad, before_start=False) if bad is not None else None
    if not done:
        if failure is not None:
            raise failure
        raise WorkerFailed(f"--workers {n}: no worker finished; {run_dir} keeps every record written")
    outcome = merge_outcomes([w.done[0] for w in done], t0)  # type: ignore[index]
    if pool.signals or len(done) < n:
        outcome.interrupted = outcome.interrupted or bool(pool.signals)
    client = merge_clients([w.done[1] for w in done], outcome, info, anchor)  # type: ignore[index]
    if len(done) < n:
        client["workers_failed"] = [w.k for w in pool.workers if w.done is None]
    tripped = next((w.done[2] for w in done if w.done[2]), None)  # type: ignore[index]
    return Driven(outcome, client, tripped, failure)


if __name__ == "__main__":
    _worker_process(int(sys.argv[1]))
