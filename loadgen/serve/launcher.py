"""Starting and stopping a real Triton Inference Server that hosts the emulated SLM (``EmbeddedServer``).

What the launcher guarantees, and how:

* No orphans. The server runs in its own session (``start_new_session``), so it and its Python-backend stubs form
  one process group that ``stop()`` can signal as a whole: SIGTERM to the server first (a graceful unload lets each
  stub stop its engine), then SIGKILL to whatever of the group is left. ``PR_SET_PDEATHSIG`` (set with ``prctl`` in
  the child before exec) makes the kernel send SIGTERM to the server when the thread that started it dies, so a
  crashed or killed parent does not leave a server behind; the emulated model also exits when its server is gone.
  Because the signal follows the *thread*, start the server from a thread that outlives it (the main thread).
* Ports are checked before starting: a port in use is one clear line naming the flag; port 0 picks a free port
  (tests run several servers side by side this way). Everything binds to 127.0.0.1 unless told otherwise.
* Shared memory: the Python backend keeps one /dev/shm region per model instance and removes it only on a graceful
  unload. Each server gets its own region prefix, so whatever a crashed or killed server left is removed by name.
* Readiness is Triton's own ``/v2/health/ready`` plus the model's ready endpoint; a server that exits or does not
  become ready in time is reported with its log path and the log's last relevant lines.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import glob
import http.client
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadgen.errors import TargetError, UsageError
from loadgen.serve.repository import EmulatedModelSpec, write_emulated_repository
from loadgen.serve.triton_binary import build_backend_dir, find_triton, server_environment

_PR_SET_PDEATHSIG = 1
_LIVE: weakref.WeakSet[EmbeddedServer] = weakref.WeakSet()
_ATEXIT_REGISTERED = False


@dataclass
class ServerConfig:
    """How to run the embedded server. Ports default to 0 (= pick a free one); the CLI defaults to Triton's."""

    model_name: str = "ensemble"  # Triton model name that clients address
    profile: str = "opt-1.3b"  # emulated model profile
    gpu: str = "h100-64gb"  # emulated GPU profile
    max_batch: int = 256
    replicas: int = 1
    speed: float = 1.0
    gpu_memory_fraction: float = 0.9
    mps: bool = True  # replicas share the emulated GPU as under NVIDIA MPS; False = time slicing
    spread: str = "even"  # requests over replicas: even (round robin) or triton (Triton's own scheduling)
    replica_memory: float | None = None  # share of the memory budget per replica (default 1 / replicas)
    prefix_cache: bool = False  # automatic prefix caching in the emulated engines (--server-prefix-cache on)
    kv_block_tokens: int = 16  # KV block size in tokens (the prefix cache's unit)
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    http_address: str = "127.0.0.1"
    grpc_address: str = "127.0.0.1"
    metrics_address: str = "127.0.0.1"
    metrics_interval_ms: int = 100  # how often each replica publishes its custom metrics
    workdir: str | None = None  # kept after stop() when given; else a temporary one, removed after a clean stop
    keep_workdir: bool = False  # keep the temporary workdir (log, repository) after stop()
    tritonserver: str | None = None  # binary override (else $LOADGEN_TRITONSERVER, else nvidia-pytriton's)
    repository: str | None = None  # serve this ready-made model repository instead of the emulated one
    log_verbose: int = 0
    exit_timeout_s: int = 5
    extra_args: list[str] = field(default_factory=list)

    def model_spec(self) -> EmulatedModelSpec:
        return EmulatedModelSpec(model_name=self.model_name, profile=self.profile, gpu=self.gpu,
                                 max_batch=self.max_batch, replicas=self.replicas, speed=self.speed,
                                 gpu_memory_fraction=self.gpu_memory_fraction, mps=self.mps,
                                 spread=self.spread, replica_memory=self.replica_memory,
                                 prefix_cache=self.prefix_cache, kv_block_tokens=self.kv_block_tokens,
                                 metrics_interval_ms=self.metrics_interval_ms)


# ---------------------------------------------------------------------------------------------------- ports
def free_port(address: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def check_port_free(address: str, port: int, flag: str) -> None:
    """UsageError naming ``flag`` when something already listens on ``address:port``."""
    if not 0 < port < 65536:
        raise UsageError(f"{flag} {port} is invalid: use 1-65535, or 0 to pick a free port")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR: a port with only TIME_WAIT leftovers is free for tritonserver too.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError as exc:
            raise UsageError(f"{flag} {port}: port already in use on {address} ({exc.strerror}); choose another "
                             f"port or 0 to pick a free one") from None


def _connect_host(address: str) -> str:
    return "127.0.0.1" if address in ("0.0.0.0", "") else address


# ---------------------------------------------------------------------------------------------------- processes
def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) of a live process, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[2])


def _all_pids() -> list[int]:
    try:
        return [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants (Linux /proc); [] when ``root`` is gone."""
    if _proc_stat(root) is None:
        return []
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        st = _proc_stat(pid)
        if st is not None:
            children.setdefault(st[1], []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone: it holds no resources and cannot act)."""
    st = _proc_stat(pid)
    return st is not None and st[0] != "Z"


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    out = []
    for pid in _all_pids():
        st = _proc_stat(pid)
        if st is not None and st[2] == pgid and st[0] != "Z":
            out.append(pid)
    return out


def _make_preexec(parent: int):
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before fork: nothing to resolve in the child

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl
            os._exit(1)

    return preexec


def _log_tail(path: Path, lines: int = 4) -> str:
    """The log's last relevant lines on one line: error lines first, never Triton's ASCII tables."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    useful = [ln.strip() for ln in text if ln.strip() and not ln.lstrip().startswith(("+", "|"))]
    errors = [ln for ln in useful if ln[:1] == "E" and ln[1:2].isdigit() or "Error" in ln or "error:" in ln]
    picked = (errors or useful)[-lines:]
    return " | ".join(ln[:400] for ln in picked) or "(empty log)"


def _stop_at_exit() -> None:
    for server in list(_LIVE):
        server.stop()


# ---------------------------------------------------------------------------------------------------- server
class EmbeddedServer:
    """A tritonserver process hosting the emulated model; a context manager (``with EmbeddedServer(cfg) as s``)."""

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._own_workdir = False
        self.workdir: Path | None = None
        self.log_path: Path | None = None
        self.repository: Path | None = None
        self.http_port = self.grpc_port = self.metrics_port = 0
        self.seen_pids: set[int] = set()  # every server/stub pid observed (for leak checks)
        self.shm_prefix = f"loadgen_{os.getpid()}_{secrets.token_hex(4)}_"  # this server's /dev/shm regions
        self.startup_s: float | None = None

    # -- endpoints ---------------------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"http://{_connect_host(self.config.http_address)}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{_connect_host(self.config.grpc_address)}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{_connect_host(self.config.metrics_address)}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def describe(self) -> dict[str, Any]:
        """What a run directory records about the server it measured."""
        cfg = asdict(self.config)
        cfg.pop("extra_args", None)
        return {**cfg, "http_url": self.http_url, "grpc_url": self.grpc_url, "metrics_url": self.metrics_url,
                "pid": self.pid, "log_path": str(self.log_path) if self.log_path else None,
                "startup_s": self.startup_s}

    def log_tail(self, lines: int = 4) -> str:
        return _log_tail(self.log_path, lines) if self.log_path else "(not started)"

    def process_tree(self) -> list[int]:
        """The server and its stub processes now (also remembered in ``seen_pids``)."""
        tree = process_tree(self.pid) if self.pid else []
        self.seen_pids.update(tree)
        return tree

    # -- lifecycle ----------------------------------------------------------------------------------------
    def __enter__(self) -> EmbeddedServer:
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> EmbeddedServer:
        """Validate, fill the repository, start tritonserver and wait until it and the model are ready."""
        global _ATEXIT_REGISTERED
        if self._proc is not None:
            raise UsageError("this EmbeddedServer was already started: create a new one")
        cfg = self.config
        if not timeout > 0:
            raise UsageError(f"startup timeout {timeout!r} is invalid: use a positive number of seconds")
        install = find_triton(cfg.tritonserver)
        if cfg.repository is None:
            cfg.model_spec().validate()
        elif not Path(cfg.repository).is_dir():
            raise UsageError(f"model repository {cfg.repository} is not a directory")
        fixed = {"--http-port": cfg.http_port, "--grpc-port": cfg.grpc_port, "--metrics-port": cfg.metrics_port}
        addresses = {"--http-port": cfg.http_address, "--grpc-port": cfg.grpc_address,
                     "--metrics-port": cfg.metrics_address}
        for flag, port in fixed.items():
            if port:
                check_port_free(addresses[flag], port, flag)
        self._prepare_workdir(install)
        if not _ATEXIT_REGISTERED:
            atexit.register(_stop_at_exit)
            _ATEXIT_REGISTERED = True
        t0 = time.monotonic()
        for attempt in range(3):
            self._pick_ports(fixed, addresses)
            log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                self._spawn(install)
            except UsageError:
                self._remove_workdir()
                raise
            _LIVE.add(self)
            ok, message = self._wait_ready(t0 + timeout)
            if ok:
                self.startup_s = time.monotonic() - t0
                self.process_tree()
                return self
            picked = not all(fixed.values())
            self.stop(_failed=True)
            with open(self.log_path, "rb") as log:
                log.seek(log_start)
                this_attempt = log.read().decode(errors="replace")
            if picked and attempt < 2 and "already in use" in this_attempt:
                continue  # another process took a port we picked between probing and binding: pick again
            if self._own_workdir:
                shutil.rmtree(self.workdir / "backends", ignore_errors=True)  # keep the log and the repository
            raise TargetError(message)
        raise TargetError("tritonserver could not bind its ports after 3 attempts")  # pragma: no cover

    def _prepare_workdir(self, install) -> None:
        cfg = self.config
        if cfg.workdir:
            self.workdir = Path(cfg.workdir).resolve()
            self.workdir.mkdir(parents=True, exist_ok=True)
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix="loadgen-serve-"))
            self._own_workdir = True
        backends = build_backend_dir(install, self.workdir / "backends")
        self._backends = backends
        if cfg.repository is not None:
            self.repository = Path(cfg.repository).resolve()
        else:
            gpu_file = self.workdir / "emulated-gpu.state"
            for stale in (gpu_file, gpu_file.with_name(gpu_file.name + ".spread")):
                if stale.exists():
                    stale.unlink()  # a fresh shared GPU (energy counter from 0) and spread counts per server
            self.repository = write_emulated_repository(cfg.model_spec(), self.workdir / "models", gpu_file)
        self.log_path = self.workdir / "tritonserver.log"

    def _pick_ports(self, fixed: dict[str, int], addresses: dict[str, str]) -> None:
        chosen: dict[str, int] = {}
        for flag, port in fixed.items():
            while not port or port in chosen.values():
                port = free_port(addresses[flag])
            chosen[flag] = port
        self.http_port, self.grpc_port, self.metrics_port = (chosen["--http-port"], chosen["--grpc-port"],
                                                             chosen["--metrics-port"])

    def command(self, server: str | os.PathLike[str]) -> list[str]:
        cfg = self.config
        return [
            str(server), "--model-repository", str(self.repository), "--backend-directory", str(self._backends),
            "--http-address", cfg.http_address, "--http-port", str(self.http_port),
            "--grpc-address", cfg.grpc_address, "--grpc-port", str(self.grpc_port),
            "--metrics-address", cfg.metrics_address, "--metrics-port", str(self.metrics_port),
            "--exit-timeout-secs", str(cfg.exit_timeout_s), "--log-verbose", str(cfg.log_verbose),
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            # The emulated model has a complete config: skip the auto-complete pass (it starts an extra stub).
            "--disable-auto-complete-config",
            *cfg.extra_args,
        ]

    def _spawn(self, install) -> None:
        assert self.log_path is not None
        cmd = self.command(install.server)
        env = server_environment(install)
        with open(self.log_path, "ab") as log:
            log.write(("# " + " ".join(cmd) + "\n").encode())
            log.flush()
            try:
                self._proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                    cwd=str(self.workdir), start_new_session=True, preexec_fn=_make_preexec(os.getpid()),
                )
            except OSError as exc:
                raise UsageError(f"cannot run tritonserver {install.server}: {exc.strerror or exc}; "
                                 "reinstall with `pip install --force-reinstall nvidia-pytriton`") from None

    def _get(self, path: str) -> int:
        conn = http.client.HTTPConnection(_connect_host(self.config.http_address), self.http_port, timeout=2.0)
        try:
            conn.request("GET", path)
            return conn.getresponse().status
        except OSError:
            return 0
        finally:
            conn.close()

    def _wait_ready(self, deadline: float) -> tuple[bool, str]:
        assert self._proc is not None
        models = [] if self.config.repository is not None else self.config.model_spec().served_models()
        while True:
            rc = self._proc.poll()
            if rc is not None:
                return False, (f"tritonserver exited with code {rc} before it was ready; log {self.log_path}: "
                               f"{self.log_tail()}")
            if self._get("/v2/health/ready") == 200 and all(
                    self._get(f"/v2/models/{name}/ready") == 200 for name in models):
                return True, ""
            if time.monotonic() > deadline:
                return False, (f"tritonserver did not become ready in time (pass a longer startup timeout if the "
                               f"machine is busy); log {self.log_path}: {self.log_tail()}")
            time.sleep(0.1)

    def stop(self, timeout: float | None = None, _failed: bool = False) -> None:
        """Stop the server and every process of its group; idempotent; removes a temporary workdir."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.poll() is None:
                self.process_tree()
                grace = timeout if timeout is not None else self.config.exit_timeout_s + 5.0
                log_from = self._log_size()
                try:
                    proc.send_signal(signal.SIGTERM)
                    self._wait_unloaded(proc, log_from, grace)
                except subprocess.TimeoutExpired:
                    self._kill_group(proc.pid)
                    proc.wait(5.0)
            self._reap_group(proc.pid)
            self._remove_shm()
            _LIVE.discard(self)
            if _failed:
                self._proc = None  # start() may retry with new ports
                return
            self._remove_workdir()

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size if self.log_path is not None else 0
        except OSError:
            return 0

    def _wait_unloaded(self, proc: subprocess.Popen, log_from: int, grace: float) -> None:
        """Wait for tritonserver to exit after SIGTERM, or only until it has unloaded every model it loaded.

        Why: Triton checks its shutdown only once a second and then takes another second to exit, about 3 s in
        all, while the graceful part (each model's finalize, the stubs exiting and removing their shared memory)
        is over in well under one. Once the log says every loaded model is unloaded and no stub is left, nothing
        remains to clean up: the server itself is stopped by its pid (SIGKILL), and ``stop()`` takes 1 s, not 3.
        Raises ``subprocess.TimeoutExpired`` after ``grace`` like ``Popen.wait``."""
        end = time.monotonic() + grace
        loaded = self._log_count(b"successfully loaded '", 0)
        while True:
            try:
                proc.wait(0.05)
                return
            except subprocess.TimeoutExpired:
                if time.monotonic() >= end:
                    raise
            if loaded and self._log_count(b"successfully unloaded '", log_from) >= loaded and \
                    [p for p in group_members(proc.pid) if p != proc.pid] == []:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5.0)
                return

    def _log_count(self, needle: bytes, start: int) -> int:
        if self.log_path is None:
            return 0
        try:
            with open(self.log_path, "rb") as f:
                f.seek(start)
                return f.read().count(needle)
        except OSError:
            return 0

    def _remove_workdir(self) -> None:
        if self._own_workdir and not self.config.keep_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def leftover_shm(self) -> list[str]:
        """/dev/shm regions of this server that still exist."""
        return glob.glob(os.path.join("/dev/shm", glob.escape(self.shm_prefix) + "*"))

    def _remove_shm(self) -> None:
        for path in self.leftover_shm():
            try:
                os.unlink(path)
            except OSError:
                pass

    @staticmethod
    def _kill_group(pgid: int) -> None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _reap_group(self, pgid: int, grace: float = 3.0) -> None:
        """Stubs exit on their own right after a graceful unload; whatever is left after ``grace`` is killed."""
        leftover = set(group_members(pgid))
        leftover |= {p for p in self.seen_pids if (st := _proc_stat(p)) is not None and st[2] == pgid and st[0] != "Z"}
        end = time.monotonic() + grace
        while leftover and time.monotonic() < end:
            time.sleep(0.05)
            leftover = {p for p in leftover if pid_alive(p)}
        if leftover:
            self._kill_group(pgid)
            end = time.monotonic() + 2.0
            while group_members(pgid) and time.monotonic() < end:
                time.sleep(0.05)
