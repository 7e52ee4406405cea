"""Shared fixtures: real Triton servers hosting the emulated SLM, started through the project's launcher.

* ``embedded_server`` (session): ONE server for the whole session, small and fast (OPT-125m, 2 replicas, max batch
  32) at ``FIXTURE_SPEED``, the emulated-GPU speed this 2-core machine streams faithfully with a load generator and
  other tests beside it (chosen from benchmarks/SERVER_CAPACITY.md). Always stopped, even when tests fail.
* ``server_factory`` (function): ``make(**ServerConfig overrides)`` for tests that need their own configuration;
  everything it started is stopped after the test (in parallel: a graceful Triton stop takes a few seconds).
* An autouse session finaliser stops anything still running and fails the session if any tritonserver or
  Python-backend stub process that these fixtures started (tracked by pid tree) is still alive, or if any of their
  shared-memory regions is left in /dev/shm.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from loadgen.serve.launcher import EmbeddedServer, ServerConfig, pid_alive

FIXTURE_SPEED = 0.2
FAST_SERVER = dict(profile="opt-125m", gpu="h100-64gb", replicas=2, max_batch=32, speed=FIXTURE_SPEED)

_STARTED: list[EmbeddedServer] = []


def start_server(timeout: float = 60.0, **overrides: object) -> EmbeddedServer:
    """Start a server with the fast defaults plus ``overrides``; tracked for the leak check."""
    server = EmbeddedServer(ServerConfig(**{**FAST_SERVER, **overrides}))
    _STARTED.append(server)
    server.start(timeout=timeout)
    return server


def stop_all(servers: list[EmbeddedServer]) -> None:
    threads = [threading.Thread(target=s.stop) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@pytest.fixture(scope="session")
def embedded_server() -> Iterator[EmbeddedServer]:
    server = start_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def server_factory() -> Iterator[Callable[..., EmbeddedServer]]:
    made: list[EmbeddedServer] = []

    def make(timeout: float = 60.0, **overrides: object) -> EmbeddedServer:
        server = EmbeddedServer(ServerConfig(**{**FAST_SERVER, **overrides}))
        _STARTED.append(server)
        made.append(server)
        server.start(timeout=timeout)
        return server

    try:
        yield make
    finally:
        stop_all(made)


def is_triton_process(pid: int) -> bool:
    """Alive and still a tritonserver or stub (a recycled pid of some other program does not count)."""
    if not pid_alive(pid):
        return False
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"tritonserver" in cmd or b"triton_python_backend_stub" in cmd


@pytest.fixture(scope="session", autouse=True)
def _no_stray_triton_processes() -> Iterator[None]:
    yield
    stop_all(_STARTED)
    leftovers = sorted({pid for s in _STARTED for pid in s.seen_pids if is_triton_process(pid)})
    assert not leftovers, f"tritonserver / stub processes started by the tests are still running: {leftovers}"
    regions = [path for s in _STARTED for path in s.leftover_shm()]
    assert not regions, f"shared-memory regions of the tests' servers left in /dev/shm: {regions}"
