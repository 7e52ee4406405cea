"""A multi-host test bed on one machine: Linux network namespaces standing in for hosts.

Why: a distributed Locust run (master, workers, server on different hosts) has to be proven over a real network
stack, with each process bound to its own address, without needing several machines. Each "host" is a network
namespace with one veth interface on a private /24; the other ends of the veths hang on a bridge that itself lives
in a namespace of the bed (the *hub*), so nothing is ever created in the machine's own network namespace and the
subnet exists only inside the bed (127.0.0.0/8 is not routable between namespaces, hence the /24).

``NetBed`` is a context manager: it creates everything on entry and ALWAYS removes it on exit (also after an error,
a KeyboardInterrupt, SIGTERM turned into one by the caller, or interpreter exit through ``atexit``). Names carry the
creating pid and a random tag, so parallel beds never clash, and a bed left by a process that was SIGKILLed is
removed by the next bed created on the machine (only names of this module's pattern whose creator is gone).
Processes started with ``spawn`` are stopped at exit, by their own process group (each runs in a new session);
nothing else is signalled. Where the kernel or the permissions refuse namespaces, entering raises
``NetBedUnavailable`` with the reason (tests skip on exactly that).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from loadgen.serve.launcher import pid_alive

PREFIX = "lgbed"
_NAME = re.compile(rf"^{PREFIX}(\d+)x([0-9a-f]+)-")
_CLONE_NEWNET = 0x40000000
_LIVE: set[NetBed] = set()
_T = TypeVar("_T")


class NetBedUnavailable(RuntimeError):
    """This machine cannot create network namespaces (not root, no ``ip``, or the kernel refuses)."""


@dataclass(frozen=True)
class Host:
    name: str  # the bed's name for it ("server", "master", "w0", ...)
    netns: str  # the namespace's name (``ip netns list``)
    address: str  # its one IPv4 address on the bed's /24


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def list_netns() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def remove_stale() -> list[str]:
    """Delete namespaces of this module's naming whose creating process is gone (a bed killed by SIGKILL)."""
    removed = []
    for name in list_netns():
        m = _NAME.match(name)
        if m and not pid_alive(int(m.group(1))):
            if _ip("netns", "del", name, check=False).returncode == 0:
                removed.append(name)
    return removed


class NetBed:
    """``with NetBed(["server", "master", "w0", "w1"]) as bed:`` -> ``bed.hosts["w0"].address``, ``bed.spawn``."""

    def __init__(self, hosts: Sequence[str], subnet: str = "10.213.17") -> None:
        if len(set(hosts)) != len(hosts) or not 0 < len(hosts) < 250:
            raise ValueError(f"host names must be distinct, 1-249 of them: {list(hosts)}")
        if not re.fullmatch(r"\d{1,3}\.\d{1,3}\.\d{1,3}", subnet):
            raise ValueError(f"subnet is the first three octets of a /24 (e.g. 10.213.17), not {subnet!r}")
        self.tag = f"{PREFIX}{os.getpid()}x{secrets.token_hex(3)}"
        self.subnet = subnet
        self.hub = f"{self.tag}-hub"
        self.hosts = {h: Host(h, f"{self.tag}-{h}", f"{subnet}.{k + 1}") for k, h in enumerate(hosts)}
        self._made: list[str] = []
        self._procs: list[subprocess.Popen] = []
        self._lock = threading.Lock()

    # -- life cycle --------------------------------------------------------------------------------------------
    def __enter__(self) -> NetBed:
        self.check_available()
        remove_stale()
        _LIVE.add(self)
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def check_available() -> None:
        """Raise ``NetBedUnavailable`` (with the reason) unless namespaces can be made here."""
        if shutil.which("ip") is None:
            raise NetBedUnavailable("the `ip` command (iproute2) is not installed")
        if os.geteuid() != 0:
            raise NetBedUnavailable("network namespaces need root (CAP_SYS_ADMIN); run as root")

    def _add_netns(self, name: str) -> None:
        p = _ip("netns", "add", name, check=False)
        if p.returncode != 0:
            raise NetBedUnavailable(f"the kernel refused a network namespace: ip netns add: {p.stderr.strip()}")
        self._made.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _create(self) -> None:
        self._add_netns(self.hub)
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "link", "set", "br0", "up")
        for k, host in enumerate(self.hosts.values()):
            self._add_netns(host.netns)
            # both ends are created inside the bed's namespaces: nothing appears in the machine's own stack
            _ip("-n", self.hub, "link", "add", f"v{k}", "type", "veth", "peer", "name", "eth0", "netns", host.netns)
            _ip("-n", self.hub, "link", "set", f"v{k}", "master", "br0", "up")
            _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
            _ip("-n", host.netns, "link", "set", "eth0", "up")

    def close(self) -> None:
        """Stop what was spawned (its process groups), then delete every namespace of the bed. Idempotent."""
        with self._lock:
            procs, self._procs = self._procs, []
            made, self._made = self._made, []
        for proc in reversed(procs):
            stop_process(proc)
        for name in reversed(made):  # hosts first, the hub (bridge, veth ends) last
            _ip("netns", "del", name, check=False)
        _LIVE.discard(self)

    def names(self) -> list[str]:
        """Every namespace this bed made and still holds."""
        return list(self._made)

    # -- using it ----------------------------------------------------------------------------------------------
    def exec_prefix(self, host: str) -> list[str]:
        return ["ip", "netns", "exec", self.hosts[host].netns]

    def spawn(self, host: str, argv: Sequence[str], **popen: Any) -> subprocess.Popen:
        """Start ``argv`` inside ``host``'s namespace (its own session: stopped as a group at ``close``)."""
        proc = subprocess.Popen([*self.exec_prefix(host), *argv], start_new_session=True, **popen)
        with self._lock:
            self._procs.append(proc)
        return proc

    def run(self, host: str, argv: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
        return subprocess.run([*self.exec_prefix(host), *argv], capture_output=True, text=True, timeout=timeout)

    def stop(self, proc: subprocess.Popen, timeout: float = 15.0) -> int | None:
        """Stop one spawned process now (SIGTERM to its group, SIGKILL after ``timeout``); its exit code."""
        with self._lock:
            if proc in self._procs:
                self._procs.remove(proc)
        return stop_process(proc, timeout)

    def inside(self, host: str, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` in a thread that joined ``host``'s network namespace (sockets it opens live there)."""
        box: dict[str, Any] = {}

        def body() -> None:
            try:
                fd = os.open(f"/run/netns/{self.hosts[host].netns}", os.O_RDONLY)
                try:
                    libc = ctypes.CDLL(None, use_errno=True)
                    if libc.setns(fd, _CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns failed")
                finally:
                    os.close(fd)
                box["value"] = fn()
            except BaseException as err:  # handed to the caller's thread
                box["error"] = err

        t = threading.Thread(target=body, name=f"netbed-{host}", daemon=True)
        t.start()
        t.join()
        if "error" in box:
            raise box["error"]
        return box["value"]

    def can_connect(self, host: str, address: str, port: int, timeout: float = 1.0) -> bool:
        """Whether a TCP connection from ``host`` to ``address:port`` is accepted."""
        def attempt() -> bool:
            try:
                with socket.create_connection((address, port), timeout=timeout):
                    return True
            except OSError:
                return False

        return self.inside(host, attempt)

    def wait_port(self, host: str, address: str, port: int, timeout: float = 60.0,
                  alive: subprocess.Popen | None = None) -> None:
        """Wait until ``address:port`` accepts connections from ``host`` (fail early if ``alive`` exits)."""
        end = time.monotonic() + timeout
        while not self.can_connect(host, address, port, timeout=0.5):
            if alive is not None and alive.poll() is not None:
                raise RuntimeError(f"the process serving {address}:{port} exited with {alive.returncode}")
            if time.monotonic() > end:
                raise TimeoutError(f"{address}:{port} did not accept connections from {host} within {timeout:g} s")
            time.sleep(0.2)


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> int | None:
    """SIGTERM to the process group that ``proc`` leads (it was started in a new session), then SIGKILL to what
    is left of the group. The leader is not reaped until then (``WNOWAIT``), so its pid, the group's id, cannot
    be reused by an unrelated process while it is signalled."""
    if proc.returncode is not None:  # reaped already: its pid may belong to someone else now
        return proc.returncode
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                break
        except ChildProcessError:
            break
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        return proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return None


@atexit.register
def _close_live() -> None:
    for bed in list(_LIVE):
        bed.close()
