"""The server behind each sweep configuration: start it, say where it listens, stop it.

* embedded: an ``EmbeddedServer`` per configuration (model/GPU profile, max batch, replicas, speed), started from
  the main thread (its parent-death signal follows the starting thread) and stopped in the background while the
  next configuration starts: a graceful Triton stop takes seconds that a sweep need not wait for.
* external: a server the user runs; the sweep only measures it (one configuration per endpoint).
* command: the user's command restarts the server with each configuration (``{max_batch}``, ``{replicas}``,
  ``{profile}``, ``{gpu}``, ``{label}``, ``{speed}`` are filled in). It may exit once the server is up (a restart
  script) or keep running (the server itself, stopped after the configuration's points); either way the sweep
  waits until ``url`` + ``ready_path`` answers 200 (a TCP connect for gRPC). Its output goes to
  ``servers/<label>.log`` in the sweep directory.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from loadgen.errors import TargetError, UsageError
from loadgen.sweep.grid import Target

READY_PATHS = {"triton-http": "/v2/health/ready", "openai-completions": "/v1/models", "openai-chat": "/v1/models"}


class Running:
    """A configuration's server, ready: ``url`` for the load, ``metrics_url`` for ``ServerWatch`` (or None)."""

    def __init__(self, target: Target, url: str, metrics_url: str | None, server: Any = None,
                 proc: subprocess.Popen | None = None) -> None:
        self.target = target
        self.url = url
        self.metrics_url = metrics_url
        self.server = server
        self.proc = proc

    def describe(self) -> dict[str, Any]:
        if self.server is not None:
            return self.server.describe()
        return {"kind": self.target.kind, "url": self.url, "metrics_url": self.metrics_url,
                "command": self.target.command.format(**self.target.params()) if self.target.command else None}

    def stop(self) -> threading.Thread | None:
        """Stop what the sweep started; returns the thread doing it (join before exiting)."""
        if self.server is not None:
            th = threading.Thread(target=self.server.stop, name="sweep-server-stop")
            th.start()
            return th
        if self.proc is not None and self.proc.poll() is None:
            _stop_group(self.proc)
        return None


def _stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace_s)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5.0)


def start_target(t: Target, log_dir: Path) -> Running:
    if t.kind == "embedded":
        return _start_embedded(t)
    if t.kind == "external":
        return Running(t, str(t.url), t.metrics_url)
    return _start_command(t, log_dir)


def _start_embedded(t: Target) -> Running:
    from loadgen.serve.launcher import EmbeddedServer, ServerConfig

    cfg = ServerConfig(model_name=t.model, profile=str(t.profile), gpu=str(t.gpu), max_batch=int(t.max_batch or 1),
                       replicas=int(t.replicas or 1), speed=float(t.speed), mps=t.mps == "on", spread=t.spread,
                       replica_memory=t.replica_memory, prefix_cache=t.prefix_cache == "on",
                       kv_block_tokens=t.kv_block_tokens, http_port=0, grpc_port=0, metrics_port=0)
    server = EmbeddedServer(cfg)
    server.start()
    url = server.grpc_url if t.backend == "triton-grpc" else server.http_url
    return Running(t, url, server.metrics_url, server=server)


def _start_command(t: Target, log_dir: Path) -> Running:
    try:
        cmd = str(t.command).format(**t.params())
    except (KeyError, IndexError) as err:
        raise UsageError(f"restart command {t.command!r}: unknown placeholder {err}; use {{max_batch}}, "
                         "{replicas}, {profile}, {gpu}, {label}, {speed} or {mps}") from None
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{t.slug}.log"
    with open(log_path, "ab") as log:
        log.write(f"# {cmd}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, shell=True, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + t.ready_timeout_s
    while True:
        code = proc.poll()
        if code not in (None, 0):
            raise TargetError(f"restart command for {t.label} exited with status {code}; see {log_path}")
        if _ready(str(t.url), t.backend, t.ready_path):
            return Running(t, str(t.url), t.metrics_url, proc=proc)
        if time.monotonic() > deadline:
            if proc.poll() is None:
                _stop_group(proc)
            raise TargetError(f"{t.url} did not become ready within {t.ready_timeout_s:g} s after the restart "
                              f"command for {t.label}; see {log_path} (raise [server].ready_timeout)")
        time.sleep(0.5)


def _ready(url: str, backend: str, path: str | None) -> bool:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    host, port = parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)
    path = path or READY_PATHS.get(backend)
    if path is None:  # gRPC: a listening socket is all a restart command can promise
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return True
        except OSError:
            return False
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(host, port, timeout=2.0)
    try:
        conn.request("GET", parts.path.rstrip("/") + path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()
