"""The multi-host test bed (``loadgen.locust.netbed``): namespaces that stand in for hosts are created, reach each
other over the bed's private /24 and nothing else, and are always removed: after a clean exit, after an error or a
KeyboardInterrupt inside the bed, together with the processes started in them, and after a creator that was killed.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading

import pytest

from loadgen.locust.netbed import NetBed, NetBedUnavailable, list_netns, remove_stale


@pytest.fixture(scope="module", autouse=True)
def namespaces_allowed() -> None:
    """Skip (with the reason) only where this machine refuses network namespaces."""
    try:
        with NetBed(["probe"]):
            pass
    except NetBedUnavailable as err:
        pytest.skip(str(err))


def serve_once(bed: NetBed, host: str, port: int) -> tuple[socket.socket, threading.Thread, list[bytes]]:
    """A listening socket inside ``host`` answering one connection with what it read, upper-cased."""
    srv = bed.inside(host, lambda: socket.create_server((bed.hosts[host].address, port)))
    got: list[bytes] = []

    def answer() -> None:
        conn, _ = srv.accept()
        with conn:
            data = conn.recv(100)
            got.append(data)
            conn.sendall(data.upper())

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    return srv, t, got


def test_hosts_reach_each_other_on_the_private_subnet_and_nothing_outside() -> None:
    bed = NetBed(["a", "b", "c"]).__enter__()
    try:
        names = bed.names()
        assert set(names) <= set(list_netns()) and len(names) == 4  # three hosts and the hub with the bridge
        assert [h.address for h in bed.hosts.values()] == ["10.213.17.1", "10.213.17.2", "10.213.17.3"]
        srv, t, got = serve_once(bed, "a", 7001)

        def ask() -> bytes:
            with socket.create_connection((bed.hosts["a"].address, 7001), timeout=5) as s:
                s.sendall(b"ping from b")
                return s.recv(100)

        assert bed.inside("b", ask) == b"PING FROM B"
        t.join(5)
        srv.close()
        assert got == [b"ping from b"]
        assert bed.can_connect("c", bed.hosts["a"].address, 7001) is False  # nobody listens any more
        # each host has its address on eth0 and no route beyond the /24: no traffic can leave the bed
        p = bed.run("c", ["ip", "-4", "-o", "addr", "show", "eth0"])
        assert "10.213.17.3/24" in p.stdout
        p = bed.run("c", ["ip", "route", "get", "192.0.2.1"])
        assert p.returncode != 0 and "unreachable" in p.stderr.lower()
        # and the machine's own stack got no interface or address of the bed
        own = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
        assert "10.213.17." not in own and "br0" not in own
    finally:
        bed.close()
    assert not set(names) & set(list_netns())


def test_removed_after_an_error_with_the_processes_started_inside() -> None:
    bed = NetBed(["a", "b"])
    with pytest.raises(RuntimeError, match="boom"):
        with bed:
            names = bed.names()
            proc = bed.spawn("a", [sys.executable, "-c", "import time; time.sleep(60)"])
            raise RuntimeError("boom")
    assert proc.returncode == -signal.SIGTERM  # stopped by the bed (SIGTERM to its group) and reaped
    assert not set(names) & set(list_netns())


def test_removed_after_keyboard_interrupt_and_parallel_beds_do_not_clash() -> None:
    one, two = NetBed(["x"]), NetBed(["x"])  # same host names, same subnet
    with pytest.raises(KeyboardInterrupt):
        with one:
            with two:
                assert not set(one.names()) & set(two.names())
                # each bed is its own network: the same address exists twice, without conflict
                assert one.hosts["x"].address == two.hosts["x"].address
                assert two.run("x", ["true"]).returncode == 0
                raise KeyboardInterrupt
    left = set(list_netns())
    assert not (set(one.names()) | set(two.names())) & left
    assert not any(n.startswith(one.tag) or n.startswith(two.tag) for n in left)


def test_a_bed_left_by_a_killed_creator_is_removed_by_the_next_one() -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = f"lgbed{int(gone.stdout)}xdead00-w0"  # the naming of a bed whose creator no longer runs
    subprocess.run(["ip", "netns", "add", stale], check=True, capture_output=True)
    try:
        assert stale in remove_stale()
        assert stale not in list_netns()
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)
