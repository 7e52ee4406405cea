"""Backends of the Locust front end: the asyncio runner's codecs on the gevent transports, and a blocking probe.

The probe asks the same questions as ``loadgen run``'s (is a server there, the right kind, the model served, with
the TensorRT-LLM string interface) and answers each mistake with one line; it also reads the model's declared
inputs, which decide what the codec sends (``min_tokens``, token counts, perf metrics).
"""

from __future__ import annotations

from typing import Any

from loadgen.codecs.openai import OpenAICodec
from loadgen.codecs.triton_grpc import TritonGrpcCodec, codec_from_model
from loadgen.codecs.triton_http import TritonGenerateCodec
from loadgen.core.records import RequestRecord, RequestSpec
from loadgen.errors import TargetError, UsageError
from loadgen.locust.transports import GeventGrpcTransport, GeventHttpTransport
from loadgen.runner.settings import RunSettings

BACKENDS = ("triton-http", "triton-grpc", "openai-chat", "openai-completions")


def _unreachable(url: str, err: BaseException) -> TargetError:
    why = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return TargetError(f"cannot reach {url} ({why.lower()}); is the server running and is --host right?")


class GeventHttpBackend:
    """Triton generate_stream or an OpenAI-compatible endpoint over ``GeventHttpTransport``."""

    def __init__(self, kind: str, url: str, model: str, s: RunSettings) -> None:
        self.name = kind
        self.url = url
        self.model = model
        self.settings = s
        self.transport = GeventHttpTransport(url, headers=s.headers, verify_tls=s.verify_tls,
                                             request_timeout_s=s.request_timeout_s)
        self.codec: Any = None
        if kind.startswith("openai"):
            self.codec = OpenAICodec(model, chat=kind == "openai-chat", ignore_eos=s.ignore_eos,
                                     send_min_tokens=s.min_tokens, continuous_usage=s.continuous_usage)
        self.info: dict[str, Any] = {}

    @property
    def endpoint(self) -> str:
        """The label of this backend's requests in Locust's statistics."""
        return self.codec.path if self.codec is not None else f"/v2/models/{self.model}/generate_stream"

    def start(self) -> None:
        pass

    def close(self) -> None:
        self.transport.close()

    def _get(self, path: str) -> tuple[int, Any]:
        try:
            return self.transport.get_json(path)
        except (OSError, TimeoutError) as err:
            raise _unreachable(self.url, err) from err

    def probe(self) -> dict[str, Any]:
        if self.name.startswith("openai"):
            return self._probe_openai()
        status, _ = self._get("/v2/health/ready")
        if status == 404:
            raise TargetError(f"{self.url} is not a Triton server (GET /v2/health/ready -> 404); for an "
                              "OpenAI-compatible server use --backend openai-chat or openai-completions")
        if status != 200:
            raise TargetError(f"Triton at {self.url} is not ready (GET /v2/health/ready -> {status}); "
                              "wait or check its log")
        status, meta = self._get(f"/v2/models/{self.model}")
        if status != 200 or not isinstance(meta, dict):
            raise TargetError(f"model {self.model!r} is not served at {self.url}; {self._served()}; "
                              "pass --model NAME")
        inputs = {i["name"]: i.get("datatype", "") for i in meta.get("inputs", [])}
        if "text_input" not in inputs:
            raise TargetError(f"model {self.model!r} at {self.url} has no text_input input: it is not a "
                              "TensorRT-LLM ensemble/BLS model; pass --model ensemble or tensorrt_llm_bls")
        self.codec = TritonGenerateCodec(self.model, model_inputs=set(inputs),
                                         perf_metrics=self.settings.perf_metrics)
        self.info = {"server": "triton", "model_inputs": sorted(inputs), "model_versions": meta.get("versions")}
        return self.info

    def _served(self) -> str:
        try:
            status, index = self.transport.post_json("/v2/repository/index", {})
        except (OSError, TimeoutError):
            return "the server did not list its models"
        if status == 200 and isinstance(index, list):
            names = sorted({str(m.get("name", "?")) for m in index if isinstance(m, dict)})
            return "models there: " + (", ".join(names) or "none")
        return "the server did not list its models"

    def _probe_openai(self) -> dict[str, Any]:
        status, body = self._get("/v1/models")
        if status == 404:
            t_status, _ = self._get("/v2/health/ready")
            if t_status == 200:
                raise TargetError(f"{self.url} is a Triton server, not an OpenAI-compatible one; use the "
                                  "TritonHttp* classes (or --backend triton-http)")
            raise TargetError(f"{self.url} has no OpenAI-compatible API (GET /v1/models -> 404); check --host "
                              "(the server root, without /v1)")
        if status in (401, 403):
            raise TargetError(f"{self.url} refused the credentials (GET /v1/models -> {status}); set --api-key")
        ids = None
        if status == 200 and isinstance(body, dict) and isinstance(body.get("data"), list):
            ids = [m.get("id") for m in body["data"] if isinstance(m, dict)]
            if ids and self.model not in ids:
                raise TargetError(f"model {self.model!r} is not served at {self.url}; models there: "
                                  f"{', '.join(map(str, ids[:10]))}; pass --model NAME")
        self.info = {"server": "openai", "models": ids[:20] if ids else None}
        return self.info

    def send(self, spec: RequestSpec, rec: RequestRecord, t0: int) -> None:
        self.transport.stream(self.codec.path, self.codec.body(spec), rec, self.codec.parser(), t0)


class GeventGrpcBackend:
    """Triton gRPC streaming over ``GeventGrpcTransport``."""

    name = "triton-grpc"

    def __init__(self, url: str, model: str, s: RunSettings) -> None:
        self.url = url
        self.model = model
        self.settings = s
        self.transport = GeventGrpcTransport(url, request_timeout_s=s.request_timeout_s)
        self.codec: TritonGrpcCodec | None = None
        self.info: dict[str, Any] = {}

    @property
    def endpoint(self) -> str:
        return f"ModelStreamInfer/{self.model}"

    def start(self) -> None:
        self.transport.start()

    def close(self) -> None:
        self.transport.close()

    def probe(self) -> dict[str, Any]:
        import grpc
        from tritonclient.grpc import service_pb2

        stub = self.transport.stub
        try:
            ready = stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=5)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.UNAVAILABLE:
                raise TargetError(f"cannot reach a Triton gRPC endpoint at {self.url} ({err.details()}); is the "
                                  "server running, and is --host its gRPC port (HOST:8001, no http://)?") from None
            raise TargetError(f"{self.url} does not speak Triton's gRPC protocol ({err.code().name})") from None
        if not ready.ready:
            raise TargetError(f"Triton at {self.url} is not ready yet; wait or check its log")
        try:
            meta = stub.ModelMetadata(service_pb2.ModelMetadataRequest(name=self.model), timeout=5)
            cfg = stub.ModelConfig(service_pb2.ModelConfigRequest(name=self.model), timeout=5)
        except grpc.RpcError as err:
            raise TargetError(f"model {self.model!r} is not served at {self.url} ({err.details()}); "
                              "pass --model NAME") from None
        self.codec, self.info = codec_from_model(self.model, self.url, meta, cfg.config,
                                                 perf_metrics=self.settings.perf_metrics, extra=None,
                                                 http_hint="use the TritonHttp* classes")
        return self.info

    def send(self, spec: RequestSpec, rec: RequestRecord, t0: int) -> None:
        assert self.codec is not None, "probe() first"
        self.transport.stream(self.model, self.codec.encode(spec), rec, self.codec.parser(), t0)


def make_backend(s: RunSettings, url: str) -> GeventHttpBackend | GeventGrpcBackend:
    """The backend of ``s.backend`` aimed at ``url`` (``HOST:PORT`` for gRPC, an http(s) URL otherwise)."""
    if s.backend not in BACKENDS:
        raise UsageError(f"--backend {s.backend!r} is not known; choose one of {', '.join(BACKENDS)}")
    if s.backend == "triton-grpc":
        if url.startswith(("http://", "https://")):
            raise UsageError(f"--host {url}: triton-grpc takes HOST:PORT (e.g. 127.0.0.1:8001), not an http:// URL")
        return GeventGrpcBackend(url, s.model, s)
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--host {url}: {s.backend} needs an http:// or https:// URL (e.g. http://127.0.0.1:8000)")
    return GeventHttpBackend(s.backend, url, s.model, s)
