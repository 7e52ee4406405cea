"""The asyncio backends of ``loadgen run``: a registered codec (``loadgen.codecs.registry``) on an asyncio transport.

HTTP kinds (streamed or one JSON body) run on the lean ``FastHttpTransport`` or on aiohttp; gRPC on
``tritonclient.grpc.aio``'s stubs. The probe is the shared sans-IO one (``loadgen.codecs.probe``): this module
only answers its questions over the network, naming this front end's flags (``--url``) in its messages.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from loadgen.codecs.backend import Backend, BackendState
from loadgen.codecs.probe import (
    RUNNER_FLAGS,
    GrpcCall,
    GrpcError,
    HttpPost,
    Request,
    Target,
    Unreachable,
    drive_async,
)
from loadgen.codecs.registry import BACKENDS, BackendKind, BackendOptions, backend_kind
from loadgen.core.records import RequestRecord, RequestSpec
from loadgen.errors import UsageError
from loadgen.transport.fasthttp import FastHttpTransport
from loadgen.transport.http import HttpTransport

__all__ = ["BACKENDS", "HTTP_CLIENTS", "BackendOptions", "make_backend"]

# "fast": the lean asyncio-protocol client (the default: one callback per network read); "aiohttp": aiohttp's
# client, for comparison or where a proxy or an unusual server needs its fuller HTTP support.
HTTP_CLIENTS = ("fast", "aiohttp")


def _why(err: BaseException) -> str:
    os_err = getattr(err, "os_error", None)
    return (os_err.strerror if os_err is not None and os_err.strerror else None) or str(err) or type(err).__name__


class AsyncHttpBackend(BackendState):
    """Any HTTP kind of the registry (Triton generate / generate_stream, KServe infer, OpenAI)."""

    def __init__(self, kind: BackendKind, opts: BackendOptions, transport: HttpTransport | FastHttpTransport) -> None:
        super().__init__(kind, opts)
        self.transport = transport

    async def start(self) -> None:
        await self.transport.start()

    async def close(self) -> None:
        await self.transport.close()

    async def _answer(self, req: Request) -> Any:
        try:
            if isinstance(req, HttpPost):
                return await self.transport.post_json(req.path, req.json)
            return await self.transport.get_json(req.path)  # type: ignore[union-attr]
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            return Unreachable(_why(err))

    async def probe(self) -> dict[str, Any]:
        facts = await drive_async(self.kind.probe(Target(self.url, self.model, RUNNER_FLAGS)), self._answer)
        return self.adopt(facts)

    async def send(self, spec: RequestSpec, rec: RequestRecord, t0: int) -> None:
        codec = self.codec
        rec.cancel_after_s = spec.cancel_after_s  # --cancel-rate: the transport abandons it then
        await self.transport.stream(codec.path, codec.body(spec), rec, codec.parser(spec), t0)


class AsyncGrpcBackend(BackendState):
    """Triton gRPC streaming: every request on one ``ModelStreamInfer`` stream."""

    def __init__(self, kind: BackendKind, opts: BackendOptions) -> None:
        from loadgen.transport.grpc import GrpcStreamTransport

        super().__init__(kind, opts)
        self.transport = GrpcStreamTransport(opts.url, request_timeout_s=opts.request_timeout_s,
                                             max_response_bytes=opts.max_response_bytes)

    async def start(self) -> None:
        await self.transport.start()

    async def close(self) -> None:
        await self.transport.close()

    async def _answer(self, req: Request) -> Any:
        import grpc

        from loadgen.transport.grpc import probe_request

        assert isinstance(req, GrpcCall)
        try:
            return await getattr(self.transport.stub, req.method)(probe_request(req.method, req.request), timeout=5)
        except grpc.aio.AioRpcError as err:
            return GrpcError(err.code().name, err.details() or "")

    async def probe(self) -> dict[str, Any]:
        facts = await drive_async(self.kind.probe(Target(self.url, self.model, RUNNER_FLAGS)), self._answer)
        return self.adopt(facts)

    async def send(self, spec: RequestSpec, rec: RequestRecord, t0: int) -> None:
        assert self.codec is not None, "probe() first"
        rec.cancel_after_s = spec.cancel_after_s  # --cancel-rate: the transport abandons it then
        await self.transport.stream(self.model, self.codec.encode(spec), rec, self.codec.parser(spec), t0)


def make_backend(kind: str, opts: BackendOptions) -> Backend:
    """The registered backend ``kind`` on asyncio transports, aimed at ``opts.url`` / ``opts.model``."""
    k = backend_kind(kind)
    k.check_url(opts.url, "--url")
    if k.is_grpc:
        return AsyncGrpcBackend(k, opts)
    if opts.http_client not in HTTP_CLIENTS:
        raise UsageError(f"--http-client {opts.http_client!r}: choose one of {', '.join(HTTP_CLIENTS)}")
    cls = FastHttpTransport if opts.http_client == "fast" else HttpTransport
    transport = cls(opts.url, headers=opts.headers, verify_tls=opts.verify_tls,
                    request_timeout_s=opts.request_timeout_s, max_response_bytes=opts.max_response_bytes)
    return AsyncHttpBackend(k, opts, transport)
