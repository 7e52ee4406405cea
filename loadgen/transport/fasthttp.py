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

from loadgen.codecs.framing import ProtocolError, ResponseFraming
from loadgen.core.records import (
    ERR_CONNECTION,
    ERR_HTTP,
    ERR_TIMEOUT,
    ERR_TOO_LARGE,
    STATUS_CANCELLED,
    STATUS_ERROR,
    RequestRecord,
)
from loadgen.transport.common import (
    cancelled_by_client,
    finish_http_stream,
    http_target,
    response_limit,
    too_large_error,
    wait_limit,
)
from loadgen.transport.http import HttpTransport

_now = time.perf_counter_ns


class _Exchange:
    __slots__ = ("times", "chunks", "framing", "done", "error", "limit", "size", "too_large")

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self.times: list[int] = []
        self.chunks: list[bytes] = []
        self.framing = ResponseFraming()
        self.done: asyncio.Future[None] = loop.create_future()
        self.error: str | None = None
        self.limit = limit  # body bytes this response may bring (transport.common.response_limit)
        self.size = 0
        self.too_large = False


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
            ex.size += len(body)
            if ex.size > ex.limit:
                ex.too_large = True
                self._finish(ex, keep=False)  # closing the connection stops the server's stream
                return
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
    """Same interface as ``HttpTransport`` (``start``, ``close``, ``get_json``, ``post_json``, ``stream``)."""

    def __init__(self, base_url: str, *, headers: dict[str, str] | None = None, verify_tls: bool = True,
                 request_timeout_s: float | None = None, max_connections: int = 0,
                 max_response_bytes: int | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_response_bytes = max_response_bytes
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

    async def post_json(self, path: str, obj, timeout_s: float = 5.0):
        return await self.control.post_json(path, obj, timeout_s)

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
        ex = _Exchange(loop, response_limit(rec, self.max_response_bytes))
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
            wait, by_client = wait_limit(self.request_timeout_s, rec.cancel_after_s)
            if wait is not None:
                await asyncio.wait_for(asyncio.shield(ex.done), wait)
            else:
                await ex.done
        except asyncio.TimeoutError:
            if not ex.done.done():  # (else the response ended at the very deadline: it completed)
                conn.ex = None
                conn._close()  # the server sees the connection closed and stops generating
                if by_client:
                    self._settle(rec, ex, t0, parser)
                    cancelled_by_client(rec)
                    return
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
            if ex.too_large:
                rec.status, rec.error_kind, rec.error = STATUS_ERROR, ERR_TOO_LARGE, too_large_error(ex.limit)
            elif ex.error is not None:
                rec.status, rec.error_kind, rec.error = STATUS_ERROR, ERR_CONNECTION, ex.error[:500]
            elif fr.headers_done and fr.status >= 300:
                text = b"".join(ex.chunks).decode("utf-8", "replace")
                rec.status, rec.error_kind = STATUS_ERROR, ERR_HTTP
                rec.error = f"HTTP {fr.status}: {' '.join(text.split())[:300]}"
                return
        finish_http_stream(rec, parser, ex.times, ex.chunks, t0)
