"""Triton gRPC streaming transport: decoupled ``ModelStreamInfer``, many requests multiplexed on one stream.

Built on grpc.aio with tritonclient's generated stubs and messages (``service_pb2``) so that each request can ask
for ``triton_enable_empty_final_response`` (the last response of every request then carries
``triton_final_response=true``, which is how a request's end is known on a shared stream). A reader task stamps each
response as it arrives and files it under its request id; decoding into tensors waits until the request ends.
"""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from loadgen.codecs.triton_grpc import GrpcStreamParser, Tensor
from loadgen.core.records import (
    ERR_CONNECTION,
    ERR_TIMEOUT,
    ERR_TOO_LARGE,
    STATUS_CANCELLED,
    STATUS_ERROR,
    RequestRecord,
)
from loadgen.transport.common import (
    cancelled_by_client,
    finish_grpc_stream,
    response_limit,
    too_large_error,
    wait_limit,
)

_now = time.perf_counter_ns
_MAX_MSG = 64 * 1024 * 1024  # one gRPC message; far above any SLM response, and a bound on a hostile one


def _raw_bytes(arr: np.ndarray) -> bytes:
    parts = []
    for item in arr.reshape(-1):
        b = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


def build_request(model: str, request_id: str, tensors: list[Tensor]) -> Any:
    req = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    for name, arr, dtype in tensors:
        t = req.inputs.add()
        t.name = name
        t.datatype = dtype
        t.shape.extend(arr.shape)
        req.raw_input_contents.append(_raw_bytes(arr) if dtype == "BYTES" else arr.tobytes())
    req.parameters["triton_enable_empty_final_response"].bool_param = True
    return req


def probe_request(method: str, fields: dict[str, Any]) -> Any:
    """The request message of a probe question (``loadgen.codecs.probe.GrpcCall``), e.g. ModelConfigRequest."""
    return getattr(service_pb2, f"{method}Request")(**fields)


class _Pending:
    __slots__ = ("times", "responses", "done", "error", "limit", "size", "too_large")

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int = 1 << 62) -> None:
        self.times: list[int] = []
        self.responses: list[Any] = []
        self.done: asyncio.Future[bool] = loop.create_future()
        self.error: str | None = None
        self.limit = limit  # response bytes this request may bring (transport.common.response_limit)
        self.size = 0
        self.too_large = False


class GrpcStreamTransport:
    def __init__(self, target: str, *, request_timeout_s: float | None = None, tls: bool = False,
                 max_response_bytes: int | None = None) -> None:
        self.target = target.removeprefix("grpc://").removeprefix("grpcs://")
        self.max_response_bytes = max_response_bytes
        self.tls = tls or target.startswith("grpcs://")
        self.request_timeout_s = request_timeout_s
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[str, _Pending] = {}
        self._next_id = 0
        self._write_lock = asyncio.Lock()

    async def start(self) -> None:
        opts = [("grpc.max_send_message_length", _MAX_MSG), ("grpc.max_receive_message_length", _MAX_MSG)]
        if self.tls:
            self._channel = grpc.aio.secure_channel(self.target, grpc.ssl_channel_credentials(), options=opts)
        else:
            self._channel = grpc.aio.insecure_channel(self.target, options=opts)
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)

    async def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    @property
    def stub(self) -> Any:
        return self._stub

    def _open_stream(self) -> None:
        self._call = self._stub.ModelStreamInfer()
        self._reader = asyncio.get_running_loop().create_task(self._read_loop(self._call))

    async def _read_loop(self, call: Any) -> None:
        pending = self._pending
        reason = "the server closed the stream"
        try:
            while True:
                resp = await call.read()
                t = _now()
                if resp is grpc.aio.EOF:
                    break
                rid = resp.infer_response.id
                p = pending.get(rid)
                if p is None:
                    continue  # a late response of a request that already timed out
                p.size += resp.ByteSize()
                if p.size > p.limit:  # past its bound: the request ends; the rest of its responses are dropped
                    p.too_large = True
                    if not p.done.done():
                        p.done.set_result(False)
                    continue
                if resp.error_message:
                    p.error = resp.error_message
                    p.times.append(t)
                    if not p.done.done():
                        p.done.set_result(True)
                    continue
                p.times.append(t)
                p.responses.append(resp.infer_response)
                params = resp.infer_response.parameters
                if "triton_final_response" in params and params["triton_final_response"].bool_param:
                    if not p.done.done():
                        p.done.set_result(True)
        except grpc.aio.AioRpcError as err:
            reason = f"{err.code().name}: {err.details()}"
        except asyncio.CancelledError:
            reason = "the client closed the stream"
        finally:
            if self._call is call:
                self._call = None
            for p in pending.values():
                if not p.done.done():
                    p.done.set_result(False)
                    p.error = p.error or f"stream ended: {reason}"

    async def stream(self, model: str, tensors: list[Tensor], rec: RequestRecord, parser: GrpcStreamParser,
                     t0: int) -> None:
        if rec.cancel_after_s is not None:
            await self._stream_alone(model, tensors, rec, parser, t0)
            return
        loop = asyncio.get_running_loop()
        self._next_id += 1
        rid = f"{rec.index}-{self._next_id}"
        p = _Pending(loop, response_limit(rec, self.max_response_bytes))
        self._pending[rid] = p
        req = build_request(model, rid, tensors)
        completed = False
        try:
            if self._call is None:
                self._open_stream()
            rec.issued_ns = _now() - t0
            async with self._write_lock:
                await self._call.write(req)
            if self.request_timeout_s:
                completed = await asyncio.wait_for(p.done, self.request_timeout_s)
            else:
                completed = await p.done
        except asyncio.TimeoutError:
            rec.status, rec.error_kind = STATUS_ERROR, ERR_TIMEOUT
            rec.error = f"no complete response within {self.request_timeout_s} s (--request-timeout)"
        except asyncio.CancelledError:
            self._finish(rec, rid, p, parser, t0, completed=False)
            rec.status, rec.error_kind = STATUS_CANCELLED, None
            raise
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, OSError) as err:
            _connection_error(rec, err)
        self._finish(rec, rid, p, parser, t0, completed)

    async def _stream_alone(self, model: str, tensors: list[Tensor], rec: RequestRecord, parser: GrpcStreamParser,
                            t0: int) -> None:
        """A request the client abandons after ``rec.cancel_after_s`` (``--cancel-rate``) on a stream of its own:
        cancelling a shared stream would end every request on it, and Triton learns of a client going away from
        the stream's cancellation. When the deadline passes first the stream is cancelled and the record says
        ``cancelled_by_client``; otherwise the request ends as on the shared stream."""
        self._next_id += 1
        rid = f"{rec.index}-{self._next_id}"
        p = _Pending(asyncio.get_running_loop(), response_limit(rec, self.max_response_bytes))
        call = self._stub.ModelStreamInfer()
        wait, by_client = wait_limit(self.request_timeout_s, rec.cancel_after_s)
        completed = False
        rec.issued_ns = _now() - t0
        try:
            await call.write(build_request(model, rid, tensors))
            completed = await asyncio.wait_for(_read_one(call, p), wait)
        except asyncio.TimeoutError:
            if by_client:
                call.cancel()
                self._finish(rec, rid, p, parser, t0, completed=False)
                cancelled_by_client(rec)
                rec.end_ns = _now() - t0  # when the client gave up, not its last response
                return
            rec.status, rec.error_kind = STATUS_ERROR, ERR_TIMEOUT
            rec.error = f"no complete response within {self.request_timeout_s} s (--request-timeout)"
        except asyncio.CancelledError:
            call.cancel()
            self._finish(rec, rid, p, parser, t0, completed=False)
            rec.status, rec.error_kind = STATUS_CANCELLED, None
            raise
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, OSError) as err:
            _connection_error(rec, err)
        call.cancel()  # its one request is over: release the stream
        self._finish(rec, rid, p, parser, t0, completed)

    def _finish(self, rec: RequestRecord, rid: str, p: _Pending, parser: GrpcStreamParser, t0: int,
                completed: bool) -> None:
        self._pending.pop(rid, None)
        if p.too_large and rec.status != STATUS_ERROR:
            rec.status, rec.error_kind, rec.error = STATUS_ERROR, ERR_TOO_LARGE, too_large_error(p.limit)
        finish_grpc_stream(rec, parser, p.times, p.responses, p.error, completed, t0, _now())


async def _read_one(call: Any, p: _Pending) -> bool:
    """Read a stream that carries one request into ``p``, stamping each response; True when the request
    completed (its final response came), False when the stream ended before it (``p.error`` says why)."""
    while True:
        resp = await call.read()
        t = _now()
        if resp is grpc.aio.EOF:
            p.error = p.error or "stream ended: the server closed the stream"
            return False
        p.size += resp.ByteSize()
        if p.size > p.limit:
            p.too_large = True
            return False
        p.times.append(t)
        if resp.error_message:
            p.error = resp.error_message
            return True
        p.responses.append(resp.infer_response)
        params = resp.infer_response.parameters
        if "triton_final_response" in params and params["triton_final_response"].bool_param:
            return True


def _connection_error(rec: RequestRecord, err: BaseException) -> None:
    """A gRPC failure as the record's connection error, on one line (an AioRpcError's str() spans several:
    details, then a debug string)."""
    rec.status, rec.error_kind = STATUS_ERROR, ERR_CONNECTION
    text = f"{err.code().name}: {err.details()}" if isinstance(err, grpc.aio.AioRpcError) else str(err)
    rec.error = " ".join(f"{type(err).__name__}: {text}".split())[:500]
