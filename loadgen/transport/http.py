"""HTTP streaming transport on aiohttp (Triton generate_stream and OpenAI-compatible SSE).

One ``ClientSession`` with a keep-alive pool for the whole run. While a body streams in, each network read is
stamped with ``perf_counter_ns`` and kept as bytes; parsing waits until the response ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from typing import Any

import aiohttp

from loadgen.core.records import (
    ERR_CONNECTION,
    ERR_HTTP,
    ERR_TIMEOUT,
    ERR_TOO_LARGE,
    STATUS_CANCELLED,
    STATUS_ERROR,
    RequestRecord,
)
from loadgen.transport.common import cancelled_by_client, finish_http_stream, response_limit, too_large_error

_now = time.perf_counter_ns


class HttpTransport:
    def __init__(self, base_url: str, *, headers: dict[str, str] | None = None, verify_tls: bool = True,
                 request_timeout_s: float | None = None, max_connections: int = 0,
                 max_response_bytes: int | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_response_bytes = max_response_bytes
        # identity: aiohttp would ask for gzip by default, and Triton then compresses /infer bodies, which this
        # transport (auto_decompress off: nothing but stamping on the timing path) would hand to the codec as is.
        self.headers = {"Content-Type": "application/json", "Accept": "text/event-stream, application/json",
                        "Accept-Encoding": "identity"}
        self.headers.update(headers or {})
        self.verify_tls = verify_tls
        self.request_timeout_s = request_timeout_s
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        ssl_ctx: Any = None if self.verify_tls else False
        if self.verify_tls and self.base_url.startswith("https"):
            ssl_ctx = ssl.create_default_context()
        connector = aiohttp.TCPConnector(limit=self.max_connections, ssl=ssl_ctx, ttl_dns_cache=300,
                                         enable_cleanup_closed=True)
        timeout = aiohttp.ClientTimeout(total=self.request_timeout_s)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, headers=self.headers,
                                              auto_decompress=False, read_bufsize=2**16)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("transport not started")
        return self._session

    async def get_json(self, path: str, timeout_s: float = 5.0) -> tuple[int, Any]:
        """A small control-plane GET (probing): returns (status, parsed JSON or text)."""
        async with self.session.get(self.base_url + path, timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
            text = await r.text()
            try:
                import orjson

                return r.status, orjson.loads(text)
            except Exception:
                return r.status, text

    async def post_json(self, path: str, obj: Any, timeout_s: float = 5.0) -> tuple[int, Any]:
        """A small control-plane POST (probing, e.g. Triton's repository index): (status, parsed JSON or None)."""
        import orjson

        async with self.session.post(self.base_url + path, data=orjson.dumps(obj),
                                     timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
            raw = await r.read()
            try:
                return r.status, orjson.loads(raw)
            except orjson.JSONDecodeError:
                return r.status, None

    async def stream(self, path: str, body: bytes, rec: RequestRecord, parser: Any, t0: int) -> None:
        """POST ``body`` and capture the streamed response into ``rec`` (times relative to ``t0``).

        A request the client abandons (``rec.cancel_after_s``, ``--cancel-rate``) runs under a deadline from its
        issue time; when it passes, the response is closed (its connection with it, so the server sees the
        client go) and the record says ``cancelled_by_client``."""
        times: list[int] = []
        chunks: list[bytes] = []
        held: list[aiohttp.ClientResponse] = []  # the response once its head arrived, to close it on a cancel
        rec.issued_ns = _now() - t0
        scope = asyncio.timeout(rec.cancel_after_s) if rec.cancel_after_s is not None else None
        try:
            async with scope if scope is not None else contextlib.nullcontext():
                if await self._exchange(self.base_url + path, body, rec, times, chunks, held, t0):
                    return
        except asyncio.CancelledError:
            # The run is stopping: keep every chunk that did arrive, then let the cancellation through.
            _close(held)
            self._settle(rec, parser, times, chunks, t0)
            rec.status, rec.error_kind = STATUS_CANCELLED, None
            raise
        except asyncio.TimeoutError:
            _close(held)  # closes the connection: the server stops generating
            if scope is not None and scope.expired():
                self._settle(rec, parser, times, chunks, t0)
                cancelled_by_client(rec)
                return
            rec.status, rec.error_kind = STATUS_ERROR, ERR_TIMEOUT
            rec.error = f"no complete response within {self.request_timeout_s} s (--request-timeout)"
        except (aiohttp.ClientError, OSError) as err:
            rec.status, rec.error_kind = STATUS_ERROR, ERR_CONNECTION
            rec.error = f"{type(err).__name__}: {err}"[:500]
        self._settle(rec, parser, times, chunks, t0)

    async def _exchange(self, url: str, body: bytes, rec: RequestRecord, times: list[int], chunks: list[bytes],
                        held: list[aiohttp.ClientResponse], t0: int) -> bool:
        """Read the response into ``times``/``chunks``; True when it settled the record itself (an HTTP error)."""
        limit, size = response_limit(rec, self.max_response_bytes), 0
        async with self.session.post(url, data=body) as resp:
            held.append(resp)
            rec.http_status = resp.status
            if resp.status >= 300:
                text = (await resp.content.read(16384)).decode("utf-8", "replace")  # bounded, like bodies
                rec.first_byte_ns = _now() - t0
                rec.status, rec.error_kind = STATUS_ERROR, ERR_HTTP
                rec.error = f"HTTP {resp.status}: {_short(text)}"
                rec.end_ns = rec.first_byte_ns
                return True
            content = resp.content
            while True:
                data = await content.readany()
                if not data:
                    break
                t = _now()
                size += len(data)
                if size > limit:
                    resp.close()  # closing the connection stops the server's stream
                    rec.status, rec.error_kind, rec.error = STATUS_ERROR, ERR_TOO_LARGE, too_large_error(limit)
                    break
                times.append(t)
                chunks.append(data)
        return False

    @staticmethod
    def _settle(rec: RequestRecord, parser: Any, times: list[int], chunks: list[bytes], t0: int) -> None:
        rec.end_ns = _now() - t0
        if times:
            rec.first_byte_ns = times[0] - t0
        finish_http_stream(rec, parser, times, chunks, t0)


def _close(held: list[Any]) -> None:
    for resp in held:
        resp.close()


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."
