"""Backends: a codec plus a transport, and a probe that tells the user early when the target cannot be used.

The probe turns the usual first-minute mistakes into one clear line each: nothing listening at the URL, the wrong
backend for the endpoint (an OpenAI server driven as Triton or the reverse), a model name the server does not serve,
a model without the TensorRT-LLM string interface.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from loadgen.codecs.openai import OpenAICodec
from loadgen.codecs.triton_grpc import TritonGrpcCodec, codec_from_model
from loadgen.codecs.triton_http import TritonGenerateCodec
from loadgen.core.records import RequestRecord, RequestSpec
from loadgen.errors import TargetError, UsageError
from loadgen.transport.fasthttp import FastHttpTransport
from loadgen.transport.http import HttpTransport

BACKENDS = ("triton-http", "triton-grpc", "openai-completions", "openai-chat")
# "fast": the lean asyncio-protocol client (the default: one callback per network read); "aiohttp": aiohttp's
# client, for comparison or where a proxy or an unusual server needs its fuller HTTP support.
HTTP_CLIENTS = ("fast", "aiohttp")


def _unreachable(url: str, err: BaseException) -> TargetError:
    os_err = getattr(err, "os_error", None)
    why = (os_err.strerror if os_err is not None and os_err.strerror else None) or str(err) or type(err).__name__
    return TargetError(f"cannot reach {url} ({why.lower()}); is the server running and is --url right?")


class HttpBackend:
    """Shared by Triton generate_stream and the OpenAI-compatible endpoints."""

    name = "http"

    def __init__(self, url: str, model: str, transport: HttpTransport | FastHttpTransport) -> None:
        self.url = url
        self.model = model
        self.transport = transport
        self.codec: Any = None
        self.info: dict[str, Any] = {}

    async def start(self) -> None:
        await self.transport.start()

    async def close(self) -> None:
        await self.transport.close()

    async def _get(self, path: str) -> tuple[int, Any]:
        try:
            return await self.transport.get_json(path)
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            raise _unreachable(self.url, err) from err

    async def send(self, spec: RequestSpec, rec: RequestRecord, t0: int) -> None:
        await self.transport.stream(self.codec.path, self.codec.body(spec), rec, self.codec.parser(), t0)


class TritonHttpBackend(HttpBackend):
    name = "triton-http"

    def __init__(self, url: str, model: str, transport: Any, *, perf_metrics: bool = False,
                 extra: dict[str, Any] | None = None, parameters: dict[str, Any] | None = None) -> None:
        super().__init__(url, model, transport)
        self.perf_metrics = perf_metrics
        self.extra = extra
        self.parameters = parameters

    async def probe(self) -> dict[str, Any]:
        status, _ = await self._get("/v2/health/ready")
        if status == 404:
            raise TargetError(f"{self.url} is not a Triton server (GET /v2/health/ready -> 404); for an "
                              "OpenAI-compatible server use --backend openai-chat or --backend openai-completions")
        if status != 200:
            raise TargetError(f"Triton at {self.url} is not ready (GET /v2/health/ready -> {status}); wait or check its log")
        status, meta = await self._get(f"/v2/models/{self.model}")
        if status != 200 or not isinstance(meta, dict):
            raise TargetError(f"model {self.model!r} is not served at {self.url}; "
                              f"{await self._served_models()}; pass --model NAME")
        inputs = {i["name"]: i.get("datatype", "") for i in meta.get("inputs", [])}
        if "text_input" not in inputs:
            raise TargetError(f"model {self.model!r} at {self.url} has no text_input input (inputs: "
                              f"{', '.join(sorted(inputs)) or 'none'}): it is not a TensorRT-LLM ensemble/BLS model; "
                              "pass --model ensemble or tensorrt_llm_bls")
        self.codec = TritonGenerateCodec(self.model, model_inputs=set(inputs), perf_metrics=self.perf_metrics,
                                         extra=self.extra, parameters=self.parameters)
        self.info = {"server": "triton", "model_inputs": sorted(inputs), "model_versions": meta.get("versions")}
        return self.info

    async def _served_models(self) -> str:
        try:
            async with self.transport.session.post(self.url.rstrip("/") + "/v2/repository/index", json={}) as r:
                if r.status == 200:
                    names = sorted({m.get("name", "?") for m in await r.json()})
                    return "models there: " + (", ".join(names) if names else "none")
        except (aiohttp.ClientError, OSError, ValueError):
            pass
        return "the server did not list its models"


class OpenAIBackend(HttpBackend):
    def __init__(self, url: str, model: str, transport: Any, *, chat: bool, **codec_opts: Any) -> None:
        super().__init__(url, model, transport)
        self.name = "openai-chat" if chat else "openai-completions"
        self.codec = OpenAICodec(model, chat=chat, **codec_opts)

    async def probe(self) -> dict[str, Any]:
        status, body = await self._get("/v1/models")
        if status == 404:
            t_status, _ = await self._get("/v2/health/ready")
            if t_status == 200:
                raise TargetError(f"{self.url} is a Triton server, not an OpenAI-compatible one; use "
                                  "--backend triton-http (port 8000) or --backend triton-grpc (port 8001)")
            raise TargetError(f"{self.url} has no OpenAI-compatible API (GET /v1/models -> 404); check --url "
                              "(it should be the server root, without /v1)")
        if status in (401, 403):
            raise TargetError(f"{self.url} refused the credentials (GET /v1/models -> {status}); set --api-key "
                              "or the OPENAI_API_KEY environment variable")
        if status == 200 and isinstance(body, dict) and isinstance(body.get("data"), list):
            ids = [m.get("id") for m in body["data"] if isinstance(m, dict)]
            if ids and self.model not in ids:
                raise TargetError(f"model {self.model!r} is not served at {self.url}; models there: "
                                  f"{', '.join(map(str, ids[:10]))}; pass --model NAME")
            self.info = {"server": "openai", "models": ids[:20]}
        else:
            self.info = {"server": "openai", "models": None}
        return self.info


class TritonGrpcBackend:
    name = "triton-grpc"

    def __init__(self, url: str, model: str, *, request_timeout_s: float | None, perf_metrics: bool = False,
                 extra: dict[str, Any] | None = None) -> None:
        from loadgen.transport.grpc import GrpcStreamTransport

        self.url = url
        self.model = model
        self.transport = GrpcStreamTransport(url, request_timeout_s=request_timeout_s)
        self.perf_metrics = perf_metrics
        self.extra = extra
        self.codec: TritonGrpcCodec | None = None
        self.info: dict[str, Any] = {}

    async def start(self) -> None:
        await self.transport.start()

    async def close(self) -> None:
        await self.transport.close()

    async def probe(self) -> dict[str, Any]:
        import grpc
        from tritonclient.grpc import service_pb2

        stub = self.transport.stub
        try:
            ready = await stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=5)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNAVAILABLE:
                raise TargetError(f"cannot reach a Triton gRPC endpoint at {self.url} ({err.details()}); is the "
                                  "server running, and is --url its gRPC port (8001 by default, no http://)?") from err
            raise TargetError(f"{self.url} does not speak Triton's gRPC protocol ({err.code().name}); "
                              "for HTTP endpoints use --backend triton-http or openai-*") from err
        if not ready.ready:
            raise TargetError(f"Triton at {self.url} is not ready yet; wait or check its log")
        try:
            meta = await stub.ModelMetadata(service_pb2.ModelMetadataRequest(name=self.model), timeout=5)
            cfg = await stub.ModelConfig(service_pb2.ModelConfigRequest(name=self.model), timeout=5)
        except grpc.aio.AioRpcError as err:
            names = "the server did not list its models"
            try:
                index = await stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(), timeout=5)
                names = "models there: " + (", ".join(sorted({m.name for m in index.models})) or "none")
            except grpc.aio.AioRpcError:
                pass
            raise TargetError(f"model {self.model!r} is not served at {self.url} ({err.details()}); {names}; "
                              "pass --model NAME") from err
        self.codec, self.info = codec_from_model(self.model, self.url, meta, cfg.config,
                                                 perf_metrics=self.perf_metrics, extra=self.extra,
                                                 http_hint="use --backend triton-http")
        return self.info

    async def send(self, spec: RequestSpec, rec: RequestRecord, t0: int) -> None:
        assert self.codec is not None, "probe() first"
        await self.transport.stream(self.model, self.codec.encode(spec), rec, self.codec.parser(), t0)


def make_backend(kind: str, url: str, model: str, *, headers: dict[str, str] | None = None, verify_tls: bool = True,
                 request_timeout_s: float | None = None, perf_metrics: bool = False,
                 extra: dict[str, Any] | None = None, parameters: dict[str, Any] | None = None,
                 ignore_eos: bool = True, min_tokens: bool = True, continuous_usage: bool = False,
                 http_client: str = "fast") -> Any:
    if kind not in BACKENDS:
        raise UsageError(f"--backend {kind!r} is not known; choose one of {', '.join(BACKENDS)}")
    if kind == "triton-grpc":
        if url.startswith(("http://", "https://")):
            raise UsageError(f"--url {url}: triton-grpc takes HOST:PORT (e.g. 127.0.0.1:8001), not an http:// URL")
        return TritonGrpcBackend(url, model, request_timeout_s=request_timeout_s, perf_metrics=perf_metrics,
                                 extra=extra)
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--url {url}: {kind} needs an http:// or https:// URL (e.g. http://127.0.0.1:8000)")
    if http_client not in HTTP_CLIENTS:
        raise UsageError(f"--http-client {http_client!r}: choose one of {', '.join(HTTP_CLIENTS)}")
    cls = FastHttpTransport if http_client == "fast" else HttpTransport
    transport = cls(url, headers=headers, verify_tls=verify_tls, request_timeout_s=request_timeout_s)
    if kind == "triton-http":
        return TritonHttpBackend(url, model, transport, perf_metrics=perf_metrics, extra=extra,
                                 parameters=parameters)
    return OpenAIBackend(url, model, transport, chat=kind == "openai-chat", ignore_eos=ignore_eos,
                         send_min_tokens=min_tokens, continuous_usage=continuous_usage, extra=extra)
