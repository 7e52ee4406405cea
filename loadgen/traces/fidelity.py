"""Replay fidelity measured at the server: how late did each request *arrive* compared with its trace time?

A tiny Triton-compatible streaming server (``serve``) stamps the first bytes of every request twice on the
monotonic clock the runner stamps t0 with (``time.perf_counter_ns``, CLOCK_MONOTONIC, shared by all processes of
the machine): when the kernel received them (SO_TIMESTAMPNS, converted from the real-time clock on the spot) and
when the server's loop read them, and remembers a digest of its prompt. After a ``loadgen run --trace ...`` against it, ``measure`` maps each
stamp back to its request (prompts are unique per request and rebuilt from the run's settings) and reports the
issue error ``server arrival - (t0 + scheduled offset)``: client scheduling, the HTTP client, the loopback network
and the server's own wake-up, everything that stands between the trace and the server.

Used by ``tests/test_trace_replay.py`` and ``benchmarks/trace_replay_fidelity.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import orjson

_META = orjson.dumps({"name": "m", "versions": ["1"], "inputs": [
    {"name": "text_input", "datatype": "BYTES"}, {"name": "max_tokens", "datatype": "INT32"},
    {"name": "stream", "datatype": "BOOL"}]})


def digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


SO_TIMESTAMPNS = 35  # Linux: ask the kernel for the receive time (CLOCK_REALTIME) of the data read by recvmsg
_TIMESPEC = struct.Struct("@qq")


class _Conn:
    """One HTTP/1.1 keep-alive connection, one request at a time; stamped before any parsing.

    Two stamps per request: ``user`` (perf_counter_ns when the server's loop read the first bytes) and ``kernel``
    (the kernel's receive time of those bytes, converted to the monotonic clock at once): the latter excludes the
    server's own wake-up delay, so it is when the request reached the server machine's network stack.
    """

    def __init__(self, sock: socket.socket, stamps: list[tuple[int, int | None, str]], tokens: int) -> None:
        self.sock = sock
        self.stamps = stamps
        self.tokens = tokens
        self.buf = b""
        self.user = 0
        self.kernel: int | None = None

    def readable(self) -> None:
        try:
            data, anc, _, _ = self.sock.recvmsg(1 << 16, socket.CMSG_SPACE(_TIMESPEC.size))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, anc = b"", []
        if not data:
            asyncio.get_running_loop().remove_reader(self.sock)
            self.sock.close()
            return
        if not self.buf:
            self.user = time.perf_counter_ns()
            self.kernel = None
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= _TIMESPEC.size:
                    sec, nsec = _TIMESPEC.unpack(raw[:_TIMESPEC.size])
                    offset = time.time_ns() - time.perf_counter_ns()  # realtime - monotonic, now
                    self.kernel = sec * 1_000_000_000 + nsec - offset
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4:end + 4 + length]
            self.buf = self.buf[end + 4 + length:]
            method, path = head.split(" ")[:2]
            self._handle(method, path, body)
            self.user, self.kernel = time.perf_counter_ns(), None  # a pipelined next request (not expected)

    def _write(self, data: bytes) -> None:
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            asyncio.get_running_loop().create_task(asyncio.get_running_loop().sock_sendall(self.sock, data[sent:]))

    def _send(self, status: str, body: bytes, ctype: str = "application/json") -> None:
        self._write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
                    .encode() + body)

    def _handle(self, method: str, path: str, body: bytes) -> None:
        if path == "/v2/health/ready":
            self._send("200 OK", b"")
        elif path == "/v2/models/m":
            self._send("200 OK", _META)
        elif path == "/_stamps":
            self._send("200 OK", orjson.dumps(self.stamps))
        elif method == "POST" and path == "/v2/models/m/generate_stream":
            req = orjson.loads(body)
            self.stamps.append((self.user, self.kernel, digest(req.get("text_input", ""))))
            n = max(1, min(int(req.get("max_tokens", 1)), self.tokens))
            events = b'data: {"model_name":"m","text_output":" tok"}\n\n' * n
            self._write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked"
                        b"\r\n\r\n" + f"{len(events):x}\r\n".encode() + events + b"\r\n0\r\n\r\n")
        else:
            self._send("404 Not Found", b'{"error":"not found"}')


async def _serve(port: int, tokens: int) -> None:
    stamps: list[tuple[int, int | None, str]] = []
    loop = asyncio.get_running_loop()
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", port))
    lsock.listen(512)
    lsock.setblocking(False)

    def accept() -> None:
        try:
            conn, _ = lsock.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(OSError):  # no kernel stamps then: the user-space stamp still works
            conn.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        loop.add_reader(conn, _Conn(conn, stamps, tokens).readable)

    loop.add_reader(lsock, accept)
    print(f"PORT {lsock.getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


def serve_main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="stamping Triton-like server for replay fidelity")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tokens", type=int, default=4, help="tokens streamed per response (at most max_tokens)")
    a = ap.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_serve(a.port, a.tokens))


class StampServer:
    """The stamping server in its own process (so it does not share a CPU scheduler slot or GIL with the client)."""

    def __init__(self, tokens: int = 4) -> None:
        self.tokens = tokens
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def __enter__(self) -> StampServer:
        self.proc = subprocess.Popen([sys.executable, "-m", "loadgen.traces.fidelity", "--tokens", str(self.tokens)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.__exit__()
            raise RuntimeError(f"stamp server did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stamps(self) -> list[tuple[int, int | None, str]]:
        """(user-space arrival, kernel arrival or None, prompt digest) per request, monotonic ns."""
        with urllib.request.urlopen(self.url + "/_stamps", timeout=10) as r:
            return [tuple(x) for x in orjson.loads(r.read())]  # type: ignore[misc]

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def run_replay(url: str, trace: str, out_dir: Path, args: list[str], timeout_s: float = 900) -> Path:
    """``loadgen run --trace`` in a subprocess against ``url``; returns the run directory."""
    before = set(out_dir.iterdir()) if out_dir.exists() else set()
    cmd = [sys.executable, "-m", "loadgen", "run", "--url", url, "--model", "m", "--trace", trace, "--no-live",
           "--out-dir", str(out_dir), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen run failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    new = [p for p in out_dir.iterdir() if p.is_dir() and p not in before]
    if len(new) != 1:
        raise RuntimeError(f"expected one new run directory in {out_dir}, found {new}")
    return new[0]


def issue_errors(run_dir: Path, stamps: list[tuple[int, int | None, str]]) -> dict[str, Any]:
    """Server arrival - (t0 + offset) for every request of the run, matched by prompt digest.

    The headline figures use the kernel's receive stamp (arrival at the server machine) where the platform gives
    one, else the server loop's own stamp; ``user_*`` always use the latter (it adds the server's wake-up delay).
    """
    from loadgen.level.plan import plan_level
    from loadgen.scenario.check import build

    config = orjson.loads((run_dir / "config.json").read_bytes())
    summary = orjson.loads((run_dir / "summary.json").read_bytes())
    sc = build(config["scenario"], f"{run_dir}/config.json")
    assert sc.replaying, "not a trace replay"
    work = plan_level(sc)
    client = summary["client"]
    t0 = int(client["anchor"]["monotonic_ns"]) + int(client["t0_offset_ns"])
    index = {digest(work.source.spec(i).prompt): i for i in range(len(work.offsets))}
    user, kern = [], []
    for u, k, dig in stamps:
        i = index.get(dig)
        if i is not None:
            due = t0 + int(work.offsets[i])
            user.append(u - due)
            kern.append((k if k is not None else u) - due)
    e = np.array(kern, dtype=np.float64) / 1e6
    eu = np.array(user, dtype=np.float64) / 1e6
    res: dict[str, Any] = {"requests": len(work.offsets), "matched": len(kern), "unmatched": len(stamps) - len(kern),
                           "stamp": "kernel receive" if all(k is not None for _, k, _ in stamps) else "server loop"}
    for prefix, arr in (("", e), ("user_", eu)):
        res.update({f"{prefix}p50_ms": float(np.percentile(arr, 50)) if len(arr) else None,
                    f"{prefix}p99_ms": float(np.percentile(arr, 99)) if len(arr) else None,
                    f"{prefix}max_ms": float(arr.max()) if len(arr) else None,
                    f"{prefix}min_ms": float(arr.min()) if len(arr) else None})
    res["errors_ms"] = e
    return res


def measure(trace: str, out_dir: Path, args: list[str], tokens: int = 4) -> dict[str, Any]:
    """One replay against a fresh stamping server: issue errors at the server, and the run directory."""
    with StampServer(tokens) as srv:
        run_dir = run_replay(srv.url, trace, out_dir, args)
        stamps = srv.stamps()
    res = issue_errors(run_dir, stamps)
    res["run_dir"] = str(run_dir)
    return res


if __name__ == "__main__":
    serve_main()
