"""Backends of the Locust front end: the registered codecs (``loadgen.codecs.registry``) on the gevent transports.

The probe is the shared sans-IO one (``loadgen.codecs.probe``), answered here with blocking calls (gevent yields
to the hub meanwhile) and naming this front end's flags (``--host``, the ``TritonHttp*`` classes); it also reads
the model's declared inputs, which decide what the codec sends (``min_tokens``, token counts, perf metrics).
"""

from __future__ import annotations

from typing import Any

from loadgen.codecs.backend import BackendState, BlockingBackend
from loadgen.codecs.probe import (
    LOCUST_FLAGS,
    GrpcCall,
    GrpcError,
    HttpPost,
    Request,
    Target,
    Unreachable,
    drive,
)
from loadgen.codecs.registry import BACKENDS, BackendKind, BackendOptions, backend_kind
from loadgen.core.records import RequestRecord, RequestSpec
from loadgen.locust.transports import GeventGrpcTransport, GeventHttpTransport

__all__ = ["BACKENDS", "BackendOptions", "make_backend"]


class GeventHttpBackend(BackendState):
    """Any HTTP kind of the registry over ``GeventHttpTransport``."""

    def __init__(self, kind: BackendKind, opts: BackendOptions) -> None:
        super().__init__(kind, opts)
        self.transport = GeventHttpTransport(opts.url, headers=opts.headers, verify_tls=opts.verify_tls,
                                             request_timeout_s=opts.request_timeout_s,
                                             max_response_bytes=opts.max_response_bytes)

    @property
    def endpoint(self) -> str:
        """The label of this backend's requests in Locust's statistics."""
        return self.kind.endpoint(self.model)

    def start(self) -> None:
        pass

    def close(self) -> None:
        self.transport.close()

    def _answer(self, req: Request) -> Any:
        try:
            if isinstance(req, HttpPost):
                return self.transport.post_json(req.path, req.json)
            return self.transport.get_json(req.path)  # type: ignore[union-attr]
        except (OSError, TimeoutError) as err:
            return Unreachable(getattr(err, "strerror", None) or str(err) or type(err).__name__)

    def probe(self) -> dict[str, Any]:
        facts = drive(self.kind.probe(Target(self.url, self.model, LOCUST_FLAGS)), self._answer)
        return self.adopt(facts)

    def send(self, spec: RequestSpec, rec: RequestRecord, t0: int) -> None:
        codec = self.codec
        rec.cancel_after_s = spec.cancel_after_s  # --cancel-rate: the transport abandons it then
        self.transport.stream(codec.path, codec.body(spec), rec, codec.parser(spec), t0)


class GeventGrpcBackend(BackendState):
    """Triton gRPC streaming over ``GeventGrpcTransport``."""

    def __init__(self, kind: BackendKind, opts: BackendOptions) -> None:
        super().__init__(kind, opts)
        self.transport = GeventGrpcTransport(opts.url, request_timeout_s=opts.request_timeout_s,
                                             max_response_bytes=opts.max_response_bytes)

    @property
    def endpoint(self) -> str:
        return self.kind.endpoint(self.model)

    def start(self) -> None:
        self.transport.start()

    def close(self) -> None:
        self.transport.close()

    def _answer(self, req: Request) -> Any:
        import grpc

        from loadgen.transport.grpc import probe_request

        assert isinstance(req, GrpcCall)
        try:
            return getattr(self.transport.stub, req.method)(probe_request(req.method, req.request), timeout=5)
        except grpc.RpcError as err:
            return GrpcError(err.code().name, err.details() or "")

    def probe(self) -> dict[str, Any]:
        facts = drive(self.kind.probe(Target(self.url, self.model, LOCUST_FLAGS)), self._answer)
        return self.adopt(facts)

    def send(self, spec: RequestSpec, rec: RequestRecord, t0: int) -> None:
        assert self.codec is not None, "probe() first"
        rec.cancel_after_s = spec.cancel_after_s  # --cancel-rate: the transport abandons it then
        self.transport.stream(self.model, self.codec.encode(spec), rec, self.codec.parser(spec), t0)


def make_backend(kind: str, opts: BackendOptions) -> BlockingBackend:
    """The registered backend ``kind`` aimed at ``opts.url`` (``HOST:PORT`` for gRPC, an http(s) URL otherwise)."""
    k = backend_kind(kind)
    k.check_url(opts.url, "--host")
    return GeventGrpcBackend(k, opts) if k.is_grpc else GeventHttpBackend(k, opts)
