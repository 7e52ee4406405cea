"""What ``loadgen run`` does with ``--power SOURCE``: start the side-car once the run directory exists, measure
idle power before the load, stop the side-car after it, and turn the samples into ``summary["energy"]`` and the
power trace plot.

Nothing here may fail the run: a source that cannot start, a side-car that dies, a plot that cannot be drawn
all end up as a note in the energy block (and so in the report), and the load goes on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from loadgen.errors import UsageError
from loadgen.power.energy import STATUS_MISSING, empty_energy, energy_for_summary, load_power_file, t0_abs_ns
from loadgen.power.sources import parse_gpu_list, split_spec

POWER_FILE, POWER_LOG, POWER_PLOT = "power.jsonl", "power.log", "power.png"
READY_TIMEOUT_S = 30.0


def default_metrics_url(url: str | None) -> str | None:
    """Triton's metrics endpoint on the host of ``--url`` (port 8002, Triton's default)."""
    if not url:
        return None
    host = urlsplit(url if "://" in url else f"http://{url}").hostname
    return f"http://{host}:8002/metrics" if host else None


def check_power(spec: str, interval_s: float, gpus: str | None, idle_s: float) -> tuple[str, str | None]:
    """The power flags, checked before anything starts: (source name, its URL argument)."""
    name, url_arg = split_spec(spec)
    if not 0 < interval_s <= 60:
        raise UsageError(f"--power-interval {interval_s:g} s: use more than 0 and at most 60 s (default 0.1 s)")
    if not 0 <= idle_s <= 600:
        raise UsageError(f"--idle-seconds {idle_s:g}: use 0 (no idle measurement) to 600")
    parse_gpu_list(gpus)
    return name, url_arg


class PowerMonitor:
    """One side-car for one run directory; see the module docstring."""

    def __init__(self, spec: str, interval_s: float = 0.1, gpus: str | None = None, idle_s: float = 5.0,
                 console: Any = None) -> None:
        self.name, self.url_arg = check_power(spec, interval_s, gpus, idle_s)
        self.spec = spec
        self.interval_s = interval_s
        self.gpus = parse_gpu_list(gpus)
        self.idle_s = idle_s
        self.console = console
        self.proc: subprocess.Popen | None = None
        self.path: Path | None = None
        self.idle: tuple[int, int] | None = None
        self.failure: str | None = None
        self.start_line: dict[str, Any] | None = None
        self.exited_early: int | None = None

    # ------------------------------------------------------------------------------------------- start
    def start(self, run_dir: Path, metrics_url: str | None = None, url: str | None = None) -> None:
        """Start the side-car writing ``run_dir/power.jsonl``, wait until it samples, then measure idle power
        for ``idle_s`` (blocking: nothing else runs yet). ``metrics_url`` is the embedded server's, else the
        Triton metrics URL is derived from ``url``."""
        self.path = run_dir / POWER_FILE
        spec = self.name
        if self.name == "triton":
            target = self.url_arg or metrics_url or default_metrics_url(url)
            spec = f"triton={target}" if target else "triton"
        cmd = [sys.executable, "-m", "loadgen", "power", "--source", spec, "--out", str(self.path),
               "--interval", repr(self.interval_s), "--parent-pid", str(os.getpid())]
        if self.gpus:
            cmd += ["--gpu", ",".join(self.gpus)]
        with open(run_dir / POWER_LOG, "ab") as log:
            # Its own session: a Ctrl-C at the terminal is the runner's to handle; the side-car is stopped by the
            # runner, or by the parent-death signal if the runner dies.
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        self._wait_ready()
        if self.failure is not None:
            self._say(f"[yellow]power: {self.failure}; the run goes on without energy figures[/]")
            return
        gpus = ", ".join(str(g.get("id")) for g in (self.start_line or {}).get("gpus", []))
        rate = (self.start_line or {}).get("interval_s", self.interval_s)
        msg = f"power: sampling {self.name} ({gpus}) every {rate:g} s into {POWER_FILE}"
        if self.idle_s > 0:
            msg += f"; measuring idle power for {self.idle_s:g} s before the load"
        self._say(msg)
        if self.idle_s > 0:
            i0 = time.perf_counter_ns()
            time.sleep(self.idle_s)
            self.idle = (i0, time.perf_counter_ns())

    def _wait_ready(self) -> None:
        assert self.proc is not None and self.path is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            first = self._first_line()
            if first is not None:
                if first.get("type") == "error":
                    self.failure = str(first.get("message"))
                    return
                if first.get("type") == "start":
                    self.start_line = first
                    if self._has_sample() or self.proc.poll() is not None:
                        return
            code = self.proc.poll()
            if code is not None and self.start_line is None:
                first = self._first_line()
                self.failure = (str(first.get("message")) if first and first.get("type") == "error" else
                                f"the power side-car exited at start (status {code}); see {POWER_LOG}")
                return
            time.sleep(0.02)
        self.failure = f"the power side-car did not start sampling within {READY_TIMEOUT_S:g} s; see {POWER_LOG}"
        self.stop()

    def _first_line(self) -> dict[str, Any] | None:
        try:
            with open(self.path, "rb") as fh:  # type: ignore[arg-type]
                line = fh.readline()
            return orjson.loads(line) if line.endswith(b"\n") else None
        except (OSError, orjson.JSONDecodeError):
            return None

    def _has_sample(self) -> bool:
        try:
            with open(self.path, "rb") as fh:  # type: ignore[arg-type]
                return any(b'"type":"sample"' in line for line in fh)
        except OSError:
            return False

    def _say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text)

    # -------------------------------------------------------------------------------------------- stop
    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the side-car (SIGTERM: it takes a last sample and writes its stop line); idempotent."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def finish(self, run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
        """Stop the side-car once the window's last counter update can have been seen, then compute the
        level's energy and draw the power trace. Never raises for power trouble: it becomes the note."""
        if self.failure is not None or self.proc is None:
            self.stop()
            return empty_energy(self.name, STATUS_MISSING, self.failure or "the power side-car was not started")
        if self.proc.poll() is not None:
            self.exited_early = self.proc.returncode
        else:
            t0 = t0_abs_ns(summary)
            settle = float((self.start_line or {}).get("settle_s", 0.3)) + self.interval_s
            if t0 is not None and summary.get("window_end_s") is not None:
                end = t0 + int(summary["window_end_s"] * 1e9) + int(settle * 1e9)
                wait = (end - time.perf_counter_ns()) / 1e9
                if wait > 0:
                    time.sleep(min(wait, 5.0))
            self.stop()
        try:
            data = load_power_file(run_dir / POWER_FILE)
        except UsageError as err:
            return empty_energy(self.name, STATUS_MISSING, str(err))
        energy = energy_for_summary(data, summary, self.idle)
        if self.exited_early is not None:
            died = f"the power side-car exited during the run (status {self.exited_early})"
            energy["note"] = f"{died}; {energy['note']}" if energy.get("note") else died
        try:
            from loadgen.power.plot import write_power_plot

            write_power_plot(run_dir / POWER_PLOT, data, {**summary, "energy": energy}, self.idle,
                             run_dir / "records.jsonl")
        except Exception as err:  # a plot is a convenience: never lose the run over it
            self._say(f"[yellow]power: no plot ({type(err).__name__}: {err})[/]")
        return energy

    def describe(self) -> dict[str, Any]:
        """The ``power`` block of config.json (``loadgen power --analyze`` reads the idle window from it)."""
        return {
            "source": self.spec, "interval_s": self.interval_s, "gpus": self.gpus, "idle_s": self.idle_s,
            "idle_start_ns": self.idle[0] if self.idle else None, "idle_end_ns": self.idle[1] if self.idle else None,
            "pid": self.proc.pid if self.proc is not None else None, "file": POWER_FILE, "plot": POWER_PLOT,
            "failure": self.failure,
        }


def power_monitor(power: Any, console: Any = None) -> PowerMonitor | None:
    """The monitor asked for by a scenario's ``power`` section (None for ``--power none``)."""
    spec = power.source or "none"
    if split_spec(spec)[0] == "none":
        return None
    return PowerMonitor(spec, power.interval, power.gpus, power.idle, console)
