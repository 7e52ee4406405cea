"""A distributed Locust level on a ``NetBed``: the embedded server, the master and the workers, each in its own
network namespace, each bound to its own address. Used by ``benchmarks/distributed.py`` and the tests.

Why a module: the same orchestration (start ``loadgen serve`` in the server's namespace and wait for it, start a
master that waits for W workers, start the workers, optionally lose one mid-run, collect the exit codes and logs)
proves the distributed mode across hosts in the benchmark and in CI, and it must stop exactly what it started.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadgen.locust.netbed import NetBed

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MASTER_PORT = 5557  # Locust's default master port
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002  # Triton's defaults: each host has its own stack


def start_server(bed: NetBed, host: str, log_path: Path, server_flags: list[str], timeout: float = 90.0) -> Any:
    """``loadgen serve`` bound to ``host``'s address (the project's launcher); returns it once ready."""
    addr = bed.hosts[host].address
    log = open(log_path, "wb")  # noqa: SIM115 (the child keeps writing; closed with the bed's processes)
    proc = bed.spawn(host, [str(BIN / "loadgen"), "serve", "--address", addr, "--http-port", str(HTTP_PORT),
                            "--grpc-port", str(GRPC_PORT), "--metrics-port", str(METRICS_PORT), *server_flags],
                     stdout=log, stderr=log, cwd=REPO)
    log.close()
    end = time.monotonic() + timeout
    while b"loadgen serve: ready" not in log_path.read_bytes():
        if proc.poll() is not None:
            raise RuntimeError(f"loadgen serve exited {proc.returncode} in {host}: see {log_path}")
        if time.monotonic() > end:
            raise TimeoutError(f"loadgen serve not ready within {timeout:g} s: see {log_path}")
        time.sleep(0.2)
    return proc


def server_url(bed: NetBed, host: str) -> str:
    return f"http://{bed.hosts[host].address}:{HTTP_PORT}"


@dataclass
class DistributedRun:
    master_rc: int | None
    worker_rcs: list[int | None]
    out_dir: Path
    logs: dict[str, Path] = field(default_factory=dict)
    killed: list[str] = field(default_factory=list)

    def run_dir(self) -> Path:
        dirs = [p for p in self.out_dir.iterdir() if p.is_dir() and (p / "config.json").is_file()]
        if len(dirs) != 1:
            raise RuntimeError(f"expected one run directory in {self.out_dir}, found {dirs}; "
                               f"master log: {self.logs.get('master')}")
        return dirs[0]

    def log_text(self, name: str) -> str:
        p = self.logs.get(name)
        return p.read_text(errors="replace")[-6000:] if p is not None and p.is_file() else ""


def run_single(bed: NetBed, host: str, url: str, user_class: str, args: list[str], out_dir: Path,
               timeout: float = 180.0) -> DistributedRun:
    """The same level as one Locust process (the local runner) in ``host``'s namespace: the baseline."""
    out_dir.mkdir(parents=True, exist_ok=True)
    logs = {"single": out_dir / "single.log"}
    with open(logs["single"], "wb") as log:
        proc = bed.spawn(host, [str(BIN / "locust"), "-f", "scenarios/", user_class, "--headless", "-H", url, *args,
                                "--out-dir", str(out_dir), "--only-summary"],
                         stdout=log, stderr=log, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        rc = proc.wait(timeout=timeout)
    except Exception:
        rc = bed.stop(proc)
    return DistributedRun(rc, [], out_dir, logs)


def run_distributed(bed: NetBed, master: str, workers: list[str], url: str, user_class: str, args: list[str],
                    out_dir: Path, *, kill: dict[str, float] | None = None, env: dict[str, dict[str, str]] | None
                    = None, timeout: float = 180.0) -> DistributedRun:
    """One headless level: a master in ``master``'s namespace and one worker per host of ``workers``.

    ``kill``: worker host -> seconds after the first records reached the master's run directory (the load is
    under way) at which that worker is SIGKILLed: a host lost mid-run. ``env``: extra environment per host. Each
    worker spools its records under its own TMPDIR."""
    out_dir.mkdir(parents=True, exist_ok=True)
    logs = {name: out_dir / f"{name}.log" for name in (master, *workers)}
    addr = bed.hosts[master].address
    base_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    locust = str(BIN / "locust")

    def env_for(host: str, **extra: str) -> dict[str, str]:
        return {**base_env, **extra, **((env or {}).get(host, {}))}

    with open(logs[master], "wb") as log:
        mproc = bed.spawn(master, [locust, "-f", "scenarios/", user_class, "--master", "--master-bind-host", addr,
                                   "--master-bind-port", str(MASTER_PORT), "--expect-workers", str(len(workers)),
                                   "--headless", "-H", url, *args, "--out-dir", str(out_dir), "--only-summary"],
                          stdout=log, stderr=log, cwd=REPO, env=env_for(master))
    bed.wait_port(workers[0], addr, MASTER_PORT, timeout=30, alive=mproc)
    wprocs = {}
    for w in workers:
        spool = out_dir / f"spool-{w}"
        spool.mkdir(exist_ok=True)
        with open(logs[w], "wb") as log:
            wprocs[w] = bed.spawn(w, [locust, "-f", "scenarios/", "--worker", "--master-host", addr,
                                      "--master-port", str(MASTER_PORT)],
                                  stdout=log, stderr=log, cwd=REPO, env=env_for(w, TMPDIR=str(spool)))
    killed: list[str] = []
    end = time.monotonic() + timeout
    pending = dict(sorted((kill or {}).items(), key=lambda kv: kv[1]))
    flowing: float | None = None  # when the first shipped records reached the master
    while mproc.poll() is None and time.monotonic() < end:
        if pending and flowing is None and any(f.stat().st_size for f in out_dir.glob("*/records.w*.jsonl")):
            flowing = time.monotonic()
        for w, after in list(pending.items()):
            if flowing is not None and time.monotonic() - flowing >= after:
                os.killpg(wprocs[w].pid, signal.SIGKILL)  # the worker's own group: a host that disappears
                killed.append(w)
                del pending[w]
        time.sleep(0.05)
    mrc = mproc.returncode if mproc.poll() is not None else bed.stop(mproc)
    wrcs = []
    for w in workers:
        try:
            wrcs.append(wprocs[w].wait(timeout=15))
        except Exception:  # a worker that does not quit with the master is stopped here
            wrcs.append(bed.stop(wprocs[w]))
    return DistributedRun(mrc, wrcs, out_dir, logs, killed)
