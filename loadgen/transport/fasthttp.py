"""A lean HTTP/1.1 streaming client on asyncio protocols: the generator's hot path at high request rates.

aiohttp wakes a coroutine for every network read of every stream; at 800 requests/s of 64-token streams that is
about 50,000 wake-ups a second, more than one core can give. Here a read costs one callback: stamp the time,
strip the chunked-transfer framing (sizes only, the payload is not looked at) and keep the body bytes. Parsing of
the SSE/JSON payload waits until the response has ended (``finish_http_stream``), off the timing path.

Scope: POST with a JSON body, keep-alive connection reuse, chunked / Content-Length / close-delimited bodies,
HTTP and HTTPS (certificates verified unless the user turns it off). The control plane (probing, model lists)
still goes through aiohttp, where convenience matters more than cost.
"""

from __future__ import annotations

import asyncio
import ssl
import time

from loadgen.core.records import (
    ERR_CONNECTION,
    ERR_HTTP,
    ERR_TIMEOUT,
    STATUS_CANCELLED,
    STATUS_ERROR,
    RequestRecord,
)
from loadgen.transport.common import finish_http_stream, http_target
from loadgen.transport.http import HttpTransport

_now = time.perf_counter_ns


class ProtocolError(Exception):
    pass


class ResponseFraming:
    """Tracks where an HTTP/1.1 response's body bytes are and when the response is complete.

    ``feed`` returns the body bytes contained in this read (framing removed); ``complete`` turns true at the end.
    """

    __slots__ = ("_head", "status", "headers_done", "chunked", "remaining", "complete", "keep_alive",
                 "_state", "_line")

    def __init__(self) -> None:
        self._head = b""
        self.status = 0
        self.headers_done = False
        self.chunked = False
        self.remaining = -1  # content-length left, or bytes left in the current chunk
        self.complete = False
        self.keep_alive = True
        self._state = 0  # chunked: 0 size line, 1 data, 2 CRLF after data, 3 trailers
        self._line = b""

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ProtocolError(f"not an HTTP/1.x response: {lines[0][:60]!r}")
        self.status = int(parts[1])
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip().lower()
            if name == b"transfer-encoding" and b"chunked" in value:
                self.chunked = True
            elif name == b"content-length":
                length = int(value)
            elif name == b"connection" and value == b"close":
                self.keep_alive = False
        if parts[0] == b"HTTP/1.0":
            self.keep_alive = False
        if not self.chunked:
            self.remaining = length if length is not None else -1
            if length is None:
                self.keep_alive = False  # body ends when the connection closes
            elif length == 0:
                self.complete = True

    def feed(self, data: bytes) -> bytes:
        if not self.headers_done:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > 65536:
                    raise ProtocolError("response headers larger than 64 KiB")
                return b""
            head, data = self._head[:end], self._head[end + 4:]
            self._head = b""
            self.headers_done = True
            self._parse_head(head)
            if self.complete:
                return b""
        if not self.chunked:
            if self.remaining < 0:
                return data
            take = data[: self.remaining]
            self.remaining -= len(take)
            if self.remaining == 0:
                self.complete = True
            return take
        return self._feed_chunked(data)

    def _feed_chunked(self, data: bytes) -> bytes:
        out = []
        pos, n = 0, len(data)
        while pos < n and not self.complete:
            st = self._state
            if st == 1:  # chunk payload
                take = min(self.remaining, n - pos)
                out.append(data[pos:pos + take])
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    self._state, self.remaining = 2, 2
            elif st == 2:  # the CRLF after a chunk's payload
                take = min(self.remaining, n - pos)
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    self._state = 0
            else:  # a size line (0) or a trailer line (3)
                nl = data.find(b"\n", pos)
                if nl < 0:
                    self._line += data[pos:]
                    break
                line = (self._line + data[pos:nl]).strip()
                self._line = b""
                pos = nl + 1
                if st == 3:
                    if not line:
                        self.complete = True
                    continue
                try:
                    size = int(line.split(b";", 1)[0], 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size line {line[:40]!r}") from None
                if size == 0:
                    self._state = 3
                else:
                    self._state, self.remaining = 1, size
        return out[0] if len(out) == 1 else b"".join(out)


class _Exchange:
    __slots__ = ("times", "chunks", "framing", "done", "error")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.times: list[int] = []
        self.chunks: list[bytes] = []
        self.framing = ResponseFraming()
        self.done: asyncio.Future[None] = loop.create_future()
        self.error: str | None = None


class _Conn(asyncio.Protocol):
    __slots__ = ("pool", "transport", "ex", "closed")

    def __init__(self, pool: FastHttpTransport) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.ex: _Exchange | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        t = _now()
        ex = self.ex
        if ex is None:  # bytes nobody asked for: the connection cannot be trusted any more
            self._close()
            return
        try:
            body = ex.framing.feed(data)
        except ProtocolError as err:
            ex.error = str(err)
            self._finish(ex, keep=False)
            return
        if body:
            ex.times.append(t)
            ex.chunks.append(body)
        if ex.framing.complete:
            self._finish(ex, keep=ex.framing.keep_alive)

    def _finish(self, ex: _Exchange, keep: bool) -> None:
        self.ex = None
        if not ex.done.done():
            ex.done.set_result(None)
        if keep and not self.closed:
            self.pool._release(self)
        else:
            self._close()

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._forget(self)
        ex = self.ex
        if ex is not None:
            self.ex = None
            fr = ex.framing
            if fr.headers_done and not fr.chunked and fr.remaining < 0:
                pass  # a close-delimited body ends here: that is success
            else:
                ex.error = f"connection closed by the server mid-response ({exc or 'EOF'})"
            if not ex.done.done():
                ex.done.set_result(None)

    def eof_received(self) -> bool | None:
        return False


class FastHttpTransport:
    """Same interface as ``HttpTransport`` (``start``, ``close``, ``get_json``, ``stream``)."""

    def __init__(self, base_url: str, *, headers: dict[str, str] | None = None, verify_tls: bool = True,
                 request_timeout_s: float | None = None, max_connections: int = 0) -> None:
        self.base_url = base_url.rstrip("/")
        self.host, self.port, self.prefix, self.tls, self._head_tail = http_target(self.base_url, headers)
        self.verify_tls = verify_tls
        self.request_timeout_s = request_timeout_s
        self._idle: list[_Conn] = []
        self._all: set[_Conn] = set()
        self._ssl: ssl.SSLContext | None = None
        self.control = HttpTransport(base_url, headers=headers, verify_tls=verify_tls,
                                     request_timeout_s=request_timeout_s, max_connections=max_connections)

    async def start(self) -> None:
        if self.tls:
            self._ssl = ssl.create_default_context()
            if not self.verify_tls:
                self._ssl.check_hostname = False
                self._ssl.verify_mode = ssl.CERT_NONE
        await self.control.start()

    async def close(self) -> None:
        for c in list(self._all):
            c._close()
        self._idle.clear()
        await self.control.close()

    @property
    def session(self):  # the aiohttp session, for control-plane calls (probe)
        return self.control.session

    async def get_json(self, path: str, timeout_s: float = 5.0):
        return await self.control.get_json(path, timeout_s)

    def _release(self, conn: _Conn) -> None:
        self._idle.append(conn)

    def _forget(self, conn: _Conn) -> None:
        self._all.discard(conn)
        try:
            self._idle.remove(conn)
        except ValueError:
            pass

    async def _connection(self) -> _Conn:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: _Conn(self), self.host, self.port, ssl=self._ssl)
        self._all.add(conn)
        return conn

    def _request_bytes(self, path: str, body: bytes) -> bytes:
        return (f"POST {self.prefix}{path} HTTP/1.1\r\n".encode() + self._head_tail
                + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)

    async def stream(self, path: str, body: bytes, rec: RequestRecord, parser, t0: int) -> None:
        loop = asyncio.get_running_loop()
        payload = self._request_bytes(path, body)
        ex = _Exchange(loop)
        try:
            try:
                conn = await self._connection()
            except OSError as err:
                rec.issued_ns = _now() - t0
                raise ConnectionError(err.strerror or str(err)) from err
            conn.ex = ex
            rec.issued_ns = _now() - t0
            assert conn.transport is not None
            conn.transport.write(payload)
            if self.request_timeout_s:
                await asyncio.wait_for(asyncio.shield(ex.done), self.request_timeout_s)
            else:
                await ex.done
        except asyncio.TimeoutError:
            conn.ex = None
            conn._close()
            rec.status, rec.error_kind = STATUS_ERROR, ERR_TIMEOUT
            rec.error = f"no complete response within {self.request_timeout_s} s (--request-timeout)"
        except asyncio.CancelledError:
            self._settle(rec, ex, t0, parser)
            rec.status, rec.error_kind = STATUS_CANCELLED, None
            raise
        except (ConnectionError, OSError) as err:
            rec.status, rec.error_kind = STATUS_ERROR, ERR_CONNECTION
            rec.error = f"cannot connect: {err}"[:500]
        self._settle(rec, ex, t0, parser)

    def _settle(self, rec: RequestRecord, ex: _Exchange, t0: int, parser) -> None:
        rec.end_ns = _now() - t0
        fr = ex.framing
        if fr.headers_done:
            rec.http_status = fr.status
        if ex.times:
            rec.first_byte_ns = ex.times[0] - t0
        if rec.status != STATUS_ERROR:
            if ex.error is not None:
                rec.status, rec.error_kind, rec.error = STATUS_ERROR, ERR_CONNECTION, ex.error[:500]
            elif fr.headers_done and fr.status >= 300:
                text = b"".join(ex.chunks).decode("utf-8", "replace")
                rec.status, rec.error_kind = STATUS_ERROR, ERR_HTTP
                rec.error = f"HTTP {fr.status}: {' '.join(text.split())[:300]}"
                return
        finish_http_stream(rec, parser, ex.times, ex.chunks, t0)
