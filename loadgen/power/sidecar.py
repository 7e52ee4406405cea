"""The side-car: a separate process that samples one power source on absolute deadlines and appends each tick's
samples to ``power.jsonl`` (flushed as they come, so a crash of anything loses at most one tick).

Why a process of its own: sampling (a scrape, NVML calls, JSON encoding) must never share the load loop's event
loop or GIL. It runs at a lower CPU priority, dies with its parent (``PR_SET_PDEATHSIG``, and a parent-pid check
every tick where prctl is not available), and the runner treats its death as "energy missing or partial", never
as a failed run.

File format, one JSON object per line, all times absolute ``time.perf_counter_ns`` (CLOCK_MONOTONIC on Linux, the
clock of the request records before they are made relative to t0):

* ``{"type": "start", "source", "t_ns", "wall_ns", "pid", "parent_pid", "interval_s", "requested_interval_s",
  "update_s", "settle_s", "gpus": [{"id", "uuid", "name", "energy_counter", ...}], ...}``
* ``{"type": "sample", "tick", "t_ns", "gpu", "power_w", "energy_j"?, "gpu_util"?, "mem_util"?,
  "mem_used_bytes"?, "sm_clock_mhz"?, "mem_clock_mhz"?, "temp_c"?, "throttle_reasons"?, "running"?, ...}``
* ``{"type": "error", "t_ns", "message", "fatal"}``: fatal when the source could not start (then nothing else);
  otherwise a failed read (the first 10, then every 100th).
* ``{"type": "stop", "t_ns", "reason", "ticks", "samples", "missed_ticks", "read_errors", "cpu_s", "wall_s"}``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from loadgen.power.sources import SourceError, SourceUnavailable

PR_SET_PDEATHSIG = 1
EXIT_UNAVAILABLE = 3


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent exits (Linux); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class _Writer:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "ab")  # noqa: SIM115 - held for the process's life, closed in close()

    def write(self, objs: list[dict[str, Any]]) -> None:
        if objs:
            self._fh.write(b"".join(orjson.dumps(o) + b"\n" for o in objs))
            self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def run_sidecar(source: Any, out_path: str | Path, interval_s: float = 0.1, duration_s: float | None = None,
                parent_pid: int | None = None, stop: threading.Event | None = None,
                clock: Callable[[], int] = time.perf_counter_ns) -> int:
    """Sample ``source`` into ``out_path`` until ``stop`` is set, ``duration_s`` passes or the parent exits.

    Returns 0, or ``EXIT_UNAVAILABLE`` when the source could not start (a fatal error line says why). Ticks are
    on absolute deadlines ``t_start + k * interval``; a tick that cannot be kept is skipped and counted, never
    made up with a burst.
    """
    stop = stop or threading.Event()
    writer = _Writer(Path(out_path))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    try:
        try:
            meta = source.open()
        except SourceUnavailable as err:
            writer.write([{"type": "error", "t_ns": clock(), "message": str(err), "fatal": True}])
            return EXIT_UNAVAILABLE
        interval = max(float(interval_s), float(source.min_interval_s))
        start = {"type": "start", "source": source.name, "t_ns": clock(), "wall_ns": time.time_ns(),
                 "pid": os.getpid(), "parent_pid": parent_pid, "interval_s": interval,
                 "requested_interval_s": float(interval_s), "update_s": float(source.update_s), "settle_s": float(source.settle_s),
                 "clock": "time.perf_counter_ns (CLOCK_MONOTONIC)", **meta}
        if interval > interval_s:
            start["note"] = (f"{source.name} updates at most every {source.min_interval_s:g} s: sampling at that "
                             f"rate instead of every {interval_s:g} s")
        writer.write([start])
        stats = {"ticks": 0, "samples": 0, "missed_ticks": 0, "read_errors": 0}
        reason = "stopped"
        step = int(interval * 1e9)
        t_start = clock()
        deadline = t_start
        while True:
            if stop.is_set():
                reason = "stopped"
                break
            if parent_pid is not None and os.getppid() != parent_pid:
                reason = "parent exited"
                break
            if duration_s is not None and clock() - t_start >= duration_s * 1e9:
                reason = "duration"
                break
            _tick(source, writer, clock, stats)
            deadline += step
            now = clock()
            if now >= deadline:
                skipped = (now - deadline) // step + 1
                stats["missed_ticks"] += int(skipped)
                deadline += skipped * step
            stop.wait((deadline - now) / 1e9)
        _tick(source, writer, clock, stats)  # a last sample after the end, so a window ending now is covered
        writer.write([{"type": "stop", "t_ns": clock(), "reason": reason, **stats,
                       "cpu_s": round(time.process_time() - cpu0, 4),
                       "wall_s": round(time.perf_counter() - wall0, 4)}])
        return 0
    finally:
        try:
            source.close()
        finally:
            writer.close()


def _tick(source: Any, writer: _Writer, clock: Callable[[], int], stats: dict[str, int]) -> None:
    t_before = clock()
    try:
        rows = source.read()
    except SourceError as err:
        stats["read_errors"] += 1
        n = stats["read_errors"]
        if n <= 10 or n % 100 == 0:
            writer.write([{"type": "error", "t_ns": t_before, "message": str(err), "fatal": False}])
        return
    t = (t_before + clock()) // 2  # the middle of the read: a scrape can take a few milliseconds
    tick = stats["ticks"]
    stats["ticks"] += 1
    out = []
    for row in rows:
        line = {"type": "sample", "tick": tick, "t_ns": t}
        line.update(row)  # a source that knows when its value was taken (nvidia-smi's stream) overrides t_ns
        out.append(line)
    stats["samples"] += len(out)
    writer.write(out)


def install_stop_handlers(stop: threading.Event) -> None:
    """SIGTERM (the runner, or the parent-death signal) and SIGINT end the loop cleanly with a stop line."""
    # The handler runs in the main thread, possibly while it holds the Event's internal lock inside wait():
    # setting the Event from a short-lived thread cannot deadlock on that lock.
    def handler(*_: object) -> None:
        threading.Thread(target=stop.set, daemon=True).start()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
