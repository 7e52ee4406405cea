"""gevent transports for the Locust front end: HTTP/1.1 streaming and Triton gRPC streaming.

They do what the asyncio transports do, with the same sans-IO pieces, so a record means the same thing from both
front ends:

- HTTP: sockets come from geventhttpclient's connection pool (keep-alive, TLS, DNS); each network read is stamped
  with ``perf_counter_ns`` and handed to the sans-IO ``ResponseFraming`` of ``loadgen.codecs.framing``, which the
  asyncio fast client uses too (chunked / length / close-delimited bodies); parsing waits until the body has ended
  (``finish_http_stream``).
- gRPC: one decoupled ``ModelStreamInfer`` stream multiplexes every request (tritonclient's generated stub, under
  ``grpc.experimental.gevent``); a reader greenlet stamps each response as it arrives and files it under its
  request id; the responses become tokens through ``GrpcStreamParser`` once the request has ended.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import gevent
import gevent.event
import gevent.queue
import orjson
from geventhttpclient.connectionpool import ConnectionPool, SSLConnectionPool

from loadgen.codecs.framing import ProtocolError, ResponseFraming
from loadgen.codecs.triton_grpc import GrpcStreamParser, Tensor
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
    finish_grpc_stream,
    finish_http_stream,
    http_target,
    response_limit,
    too_large_error,
    wait_limit,
)

_now = time.perf_counter_ns
_RECV = 65536


class _NoDelayMixin:
    """Small request writes go out at once (asyncio sets TCP_NODELAY on its TCP transports too)."""

    def after_connect(self, sock: Any) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class _Pool(_NoDelayMixin, ConnectionPool):
    pass


class _TlsPool(_NoDelayMixin, SSLConnectionPool):
    pass


class _Exchange:
    __slots__ = ("framing", "times", "chunks", "error", "limit", "size", "too_large")

    def __init__(self, limit: int = 1 << 62) -> None:
        self.framing = ResponseFraming()
        self.times: list[int] = []
        self.chunks: list[bytes] = []
        self.error: str | None = None
        self.limit = limit  # body bytes this response may bring (transport.common.response_limit)
        self.size = 0
        self.too_large = False

    def take(self, t: int, body: bytes) -> bool:
        """Keep a piece of the body; False once the response passed its bound (the caller stops reading)."""
        self.size += len(body)
        if self.size > self.limit:
            self.too_large = True
            return False
        self.times.append(t)
        self.chunks.append(body)
        return True


class GeventHttpTransport:
    """POST a JSON body and capture the streamed response into a ``RequestRecord`` (times relative to ``t0``)."""

    def __init__(self, base_url: str, *, headers: dict[str, str] | None = None, verify_tls: bool = True,
                 request_timeout_s: float | None = None, max_connections: int = 100_000,
                 max_response_bytes: int | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_response_bytes = max_response_bytes
        self.host, self.port, self.prefix, self.tls, self._head_tail = http_target(self.base_url, headers)
        self.request_timeout_s = request_timeout_s
        opts = dict(size=max_connections, connection_timeout=10.0, network_timeout=None)
        if self.tls:
            self.pool: Any = _TlsPool(self.host, self.port, self.host, self.port, insecure=not verify_tls, **opts)
        else:
            self.pool = _Pool(self.host, self.port, self.host, self.port, **opts)

    def close(self) -> None:
        self.pool.close()

    def _request(self, method: str, path: str, body: bytes) -> bytes:
        length = f"Content-Length: {len(body)}\r\n" if method == "POST" else ""
        return (f"{method} {self.prefix}{path} HTTP/1.1\r\n".encode() + self._head_tail + length.encode() + b"\r\n"
                + body)

    def _exchange(self, payload: bytes, ex: _Exchange, on_send: Any = None) -> None:
        """Send ``payload`` and read one response into ``ex`` (kept by the caller, so a cancelled or timed-out
        exchange still has what had arrived)."""
        sock = self.pool.get_socket()
        reusable = False
        try:
            if on_send is not None:
                on_send()
            if self.tls:
                self._read_greenlet(sock, payload, ex)
            else:
                self._read_callbacks(sock, payload, ex)
            reusable = ex.error is None and not ex.too_large and ex.framing.complete and ex.framing.keep_alive
        finally:
            if reusable:
                self.pool.return_socket(sock)
            else:
                self.pool.release_socket(sock)

    @staticmethod
    def _read_callbacks(sock: Any, payload: bytes, ex: _Exchange) -> None:
        """Plain TCP: a read watcher on the hub stamps and frames each read in its callback, as the asyncio client's
        ``data_received`` does. No greenlet switch per read, and every readable stream is stamped before any
        greenlet resumes to parse a finished response."""
        fd = sock.fileno()
        framing = ex.framing
        done = gevent.event.Event()
        read = os.read

        def readable() -> None:
            try:
                data = read(fd, _RECV)
            except BlockingIOError:
                return
            except OSError as err:
                ex.error = f"connection error: {err.strerror or err}"
                done.set()
                return
            t = _now()
            if not data:
                if not (framing.headers_done and not framing.chunked and framing.remaining < 0):
                    ex.error = "connection closed by the server mid-response (EOF)"
                done.set()
                return
            try:
                body = framing.feed(data)
            except (ProtocolError, ValueError) as err:  # a malformed status line or chunk size
                ex.error = f"malformed HTTP response: {err}"
                done.set()
                return
            if (body and not ex.take(t, body)) or framing.complete:
                done.set()

        watcher = gevent.get_hub().loop.io(fd, 1)
        watcher.start(readable)
        try:
            sock.sendall(payload)
            done.wait()
        finally:
            watcher.stop()
            watcher.close()

    @staticmethod
    def _read_greenlet(sock: Any, payload: bytes, ex: _Exchange) -> None:
        """TLS: the socket's own (blocking-in-a-greenlet) reads."""
        framing = ex.framing
        sock.sendall(payload)
        recv = sock.recv
        try:
            while not framing.complete:
                data = recv(_RECV)
                t = _now()
                if not data:
                    if not (framing.headers_done and not framing.chunked and framing.remaining < 0):
                        ex.error = "connection closed by the server mid-response (EOF)"
                    return
                body = framing.feed(data)
                if body and not ex.take(t, body):
                    return
        except (ProtocolError, ValueError) as err:
            ex.error = f"malformed HTTP response: {err}"

    def _simple(self, method: str, path: str, body: bytes, timeout_s: float) -> tuple[int, bytes]:
        ex = _Exchange()
        with gevent.Timeout(timeout_s, TimeoutError(f"{method} {path}: no answer within {timeout_s:g} s")):
            self._exchange(self._request(method, path, body), ex)
        if ex.error is not None:
            raise ConnectionError(ex.error)
        return ex.framing.status, b"".join(ex.chunks)

    def get_json(self, path: str, timeout_s: float = 5.0) -> tuple[int, Any]:
        """A small control-plane GET (probing): (status, parsed JSON or text)."""
        status, text = self._simple("GET", path, b"", timeout_s)
        try:
            return status, orjson.loads(text)
        except orjson.JSONDecodeError:
            return status, text.decode("utf-8", "replace")

    def post_json(self, path: str, obj: Any, timeout_s: float = 5.0) -> tuple[int, Any]:
        status, text = self._simple("POST", path, orjson.dumps(obj), timeout_s)
        try:
            return status, orjson.loads(text)
        except orjson.JSONDecodeError:
            return status, None

    def stream(self, path: str, body: bytes, rec: RequestRecord, parser: Any, t0: int) -> None:
        """Run one streamed exchange; the outcome (status, error kind, chunks) is settled into ``rec``."""
        payload = self._request("POST", path, body)
        ex = _Exchange(response_limit(rec, self.max_response_bytes))

        # --cancel-rate: this request is abandoned cancel_after_s after its issue (started when it is sent); the
        # exchange then ends unfinished, so its socket is closed and the server sees the client go.
        cancel = gevent.Timeout(rec.cancel_after_s) if rec.cancel_after_s is not None else None

        def issued() -> None:
            rec.issued_ns = _now() - t0
            if cancel is not None:
                cancel.start()

        timeout = gevent.Timeout(self.request_timeout_s) if self.request_timeout_s else None
        try:
            if timeout is not None:
                timeout.start()
            self._exchange(payload, ex, issued)
        except gevent.Timeout as err:
            if err is cancel:
                self._settle(rec, ex, parser, t0)
                cancelled_by_client(rec)
                return
            if err is not timeout:
                raise
            rec.status, rec.error_kind = STATUS_ERROR, ERR_TIMEOUT
            rec.error = f"no complete response within {self.request_timeout_s} s (--request-timeout)"
        except gevent.GreenletExit:
            # The run is stopping: keep what did arrive, then let the kill through.
            if rec.issued_ns is None:
                rec.issued_ns = _now() - t0
            self._settle(rec, ex, parser, t0)
            rec.status, rec.error_kind = STATUS_CANCELLED, None
            raise
        except OSError as err:
            connected = rec.issued_ns is not None
            if not connected:
                rec.issued_ns = _now() - t0
            rec.status, rec.error_kind = STATUS_ERROR, ERR_CONNECTION
            rec.error = (f"connection lost: {err}" if connected else f"cannot connect: {err.strerror or err}")[:500]
        finally:
            if timeout is not None:
                timeout.close()
            if cancel is not None:
                cancel.close()
        self._settle(rec, ex, parser, t0)

    @staticmethod
    def _settle(rec: RequestRecord, ex: _Exchange, parser: Any, t0: int) -> None:
        rec.end_ns = _now() - t0
        framing, times, chunks = ex.framing, ex.times, ex.chunks
        if framing.headers_done:
            rec.http_status = framing.status
        if times:
            rec.first_byte_ns = times[0] - t0
        if rec.status != STATUS_ERROR:
            if ex.too_large:
                rec.status, rec.error_kind, rec.error = STATUS_ERROR, ERR_TOO_LARGE, too_large_error(ex.limit)
            elif ex.error is not None:
                rec.status, rec.error_kind, rec.error = STATUS_ERROR, ERR_CONNECTION, ex.error[:500]
            elif framing.headers_done and framing.status >= 300:
                text = b"".join(chunks).decode("utf-8", "replace")
                rec.status, rec.error_kind = STATUS_ERROR, ERR_HTTP
                rec.error = f"HTTP {framing.status}: {' '.join(text.split())[:300]}"
                return
        finish_http_stream(rec, parser, times, chunks, t0)


# ---------------------------------------------------------------------------------------------------- gRPC
_GEVENT_GRPC = {"ready": False}


def init_grpc_gevent() -> None:
    """Make grpc cooperate with gevent; must run before the first grpc object of the process is created."""
    if not _GEVENT_GRPC["ready"]:
        from grpc.experimental import gevent as grpc_gevent

        grpc_gevent.init_gevent()
        _GEVENT_GRPC["ready"] = True


class _Pending:
    __slots__ = ("times", "responses", "done", "error", "completed", "limit", "size", "too_large")

    def __init__(self, limit: int = 1 << 62) -> None:
        self.times: list[int] = []
        self.responses: list[Any] = []
        self.done = gevent.event.Event()
        self.error: str | None = None
        self.completed = False
        self.limit = limit  # response bytes this request may bring (transport.common.response_limit)
        self.size = 0
        self.too_large = False


class GeventGrpcTransport:
    """Triton ``ModelStreamInfer`` with every request on one stream (as the asyncio gRPC transport does)."""

    def __init__(self, target: str, *, request_timeout_s: float | None = None,
                 max_response_bytes: int | None = None) -> None:
        self.max_response_bytes = max_response_bytes
        self.tls = target.startswith("grpcs://")
        self.target = target.removeprefix("grpc://").removeprefix("grpcs://")
        self.request_timeout_s = request_timeout_s
        self._channel: Any = None
        self.stub: Any = None
        self._queue: gevent.queue.Queue | None = None
        self._reader: gevent.Greenlet | None = None
        self._pending: dict[str, _Pending] = {}
        self._next_id = 0

    def start(self) -> None:
        init_grpc_gevent()
        import grpc
        from tritonclient.grpc import service_pb2_grpc

        from loadgen.transport.grpc import _MAX_MSG

        opts = [("grpc.max_send_message_length", _MAX_MSG), ("grpc.max_receive_message_length", _MAX_MSG)]
        if self.tls:
            self._channel = grpc.secure_channel(self.target, grpc.ssl_channel_credentials(), options=opts)
        else:
            self._channel = grpc.insecure_channel(self.target, options=opts)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)

    def close(self) -> None:
        if self._queue is not None:
            self._queue.put(None)
        if self._reader is not None:
            self._reader.kill(block=True, timeout=2)
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def _requests(self, queue: gevent.queue.Queue) -> Any:
        while True:
            req = queue.get()
            if req is None:
                return
            yield req

    def _open_stream(self) -> None:
        self._queue = gevent.queue.Queue()
        call = self.stub.ModelStreamInfer(self._requests(self._queue))
        self._reader = gevent.spawn(self._read_loop, call, self._queue)

    def _read_loop(self, call: Any, queue: gevent.queue.Queue) -> None:
        import grpc

        pending = self._pending
        reason = "the server closed the stream"
        try:
            for resp in call:
                t = _now()
                p = pending.get(resp.infer_response.id)
                if p is None:
                    continue  # a late response of a request that already timed out
                p.size += resp.ByteSize()
                if p.size > p.limit:  # past its bound: the request ends; the rest of its responses are dropped
                    p.too_large = True
                    p.done.set()
                    continue
                p.times.append(t)
                if resp.error_message:
                    p.error = resp.error_message
                    p.completed = True
                    p.done.set()
                    continue
                p.responses.append(resp.infer_response)
                params = resp.infer_response.parameters
                if "triton_final_response" in params and params["triton_final_response"].bool_param:
                    p.completed = True
                    p.done.set()
        except grpc.RpcError as err:
            reason = f"{err.code().name}: {err.details()}"
        except gevent.GreenletExit:
            reason = "the client closed the stream"
            call.cancel()
        finally:
            if self._queue is queue:
                self._queue, self._reader = None, None
            for p in pending.values():
                if not p.done.is_set():
                    p.error = p.error or f"stream ended: {reason}"
                    p.done.set()

    def stream(self, model: str, tensors: list[Tensor], rec: RequestRecord, parser: GrpcStreamParser,
               t0: int) -> None:
        from loadgen.transport.grpc import build_request

        if rec.cancel_after_s is not None:
            self._stream_alone(model, tensors, rec, parser, t0)
            return
        self._next_id += 1
        rid = f"{rec.index}-{self._next_id}"
        p = _Pending(response_limit(rec, self.max_response_bytes))
        self._pending[rid] = p
        req = build_request(model, rid, tensors)
        try:
            if self._queue is None:
                self._open_stream()
            rec.issued_ns = _now() - t0
            self._queue.put(req)  # type: ignore[union-attr]
            if not p.done.wait(self.request_timeout_s):
                rec.status, rec.error_kind = STATUS_ERROR, ERR_TIMEOUT
                rec.error = f"no complete response within {self.request_timeout_s} s (--request-timeout)"
        except gevent.GreenletExit:
            self._finish(rec, rid, p, parser, t0)
            rec.status, rec.error_kind = STATUS_CANCELLED, None
            raise
        self._finish(rec, rid, p, parser, t0)

    def _stream_alone(self, model: str, tensors: list[Tensor], rec: RequestRecord, parser: GrpcStreamParser,
                      t0: int) -> None:
        """A request the client abandons after ``rec.cancel_after_s`` (``--cancel-rate``), on a stream of its own
        (cancelling the shared one would end every request on it): at the deadline the stream is cancelled, which
        is how Triton learns that the client went, and the record says ``cancelled_by_client``."""
        from loadgen.transport.grpc import build_request

        self._next_id += 1
        rid = f"{rec.index}-{self._next_id}"
        p = _Pending(response_limit(rec, self.max_response_bytes))
        queue: gevent.queue.Queue = gevent.queue.Queue()
        queue.put(build_request(model, rid, tensors))
        call = self.stub.ModelStreamInfer(self._requests(queue))
        reader = gevent.spawn(_read_alone, call, p)
        wait, by_client = wait_limit(self.request_timeout_s, rec.cancel_after_s)
        rec.issued_ns = _now() - t0
        try:
            if not p.done.wait(wait):
                call.cancel()
                if by_client:
                    self._finish(rec, rid, p, parser, t0)
                    cancelled_by_client(rec)
                    rec.end_ns = _now() - t0  # when the client gave up, not its last response
                    return
                rec.status, rec.error_kind = STATUS_ERROR, ERR_TIMEOUT
                rec.error = f"no complete response within {self.request_timeout_s} s (--request-timeout)"
        except gevent.GreenletExit:
            call.cancel()
            self._finish(rec, rid, p, parser, t0)
            rec.status, rec.error_kind = STATUS_CANCELLED, None
            raise
        finally:
            queue.put(None)
            call.cancel()
            reader.kill(block=False)
        self._finish(rec, rid, p, parser, t0)

    def _finish(self, rec: RequestRecord, rid: str, p: _Pending, parser: GrpcStreamParser, t0: int) -> None:
        self._pending.pop(rid, None)
        if p.too_large and rec.status != STATUS_ERROR:
            rec.status, rec.error_kind, rec.error = STATUS_ERROR, ERR_TOO_LARGE, too_large_error(p.limit)
        finish_grpc_stream(rec, parser, p.times, p.responses, p.error, p.completed, t0, _now())


def _read_alone(call: Any, p: _Pending) -> None:
    """The reader of a stream that carries one request (``_stream_alone``): stamps its responses into ``p``."""
    import grpc

    try:
        for resp in call:
            t = _now()
            p.size += resp.ByteSize()
            if p.size > p.limit:
                p.too_large = True
                break
            p.times.append(t)
            if resp.error_message:
                p.error, p.completed = resp.error_message, True
                break
            p.responses.append(resp.infer_response)
            params = resp.infer_response.parameters
            if "triton_final_response" in params and params["triton_final_response"].bool_param:
                p.completed = True
                break
        else:
            p.error = p.error or "stream ended: the server closed the stream"
    except grpc.RpcError as err:
        p.error = p.error or f"stream ended: {err.code().name}: {err.details()}"
    except gevent.GreenletExit:
        pass
    finally:
        p.done.set()
