"""Every backend in one table: which codec, which wire, which probe, which endpoint and default model.

Both front ends build their backends from ``BACKENDS`` (``loadgen.runner.backends`` on asyncio transports,
``loadgen.locust.backends`` on gevent ones), so adding a backend is one codec and one line here; the drivers and
the transports do not change. ``BackendOptions`` is what a backend is built from: plain values, not a front end's
settings object, so any front end (and the scenario model that replaces ``RunSettings``) can fill it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loadgen.codecs import probe
from loadgen.codecs.kserve_infer import KServeInferCodec
from loadgen.codecs.openai import OpenAICodec
from loadgen.codecs.triton_grpc import TritonGrpcCodec
from loadgen.codecs.triton_http import TritonGenerateCodec
from loadgen.errors import UsageError

# http-stream: one POST, a streamed (SSE) body; http-unary: one POST, one JSON body; grpc-stream: requests on
# one bidirectional ModelStreamInfer stream.
WIRES = ("http-stream", "http-unary", "grpc-stream")


@dataclass
class BackendOptions:
    """What any backend is built from (the front end resolves flags, defaults and secrets into it)."""

    url: str  # an http(s) URL, or HOST:PORT for gRPC
    model: str = "ensemble"
    headers: dict[str, str] = field(default_factory=dict)
    verify_tls: bool = True
    request_timeout_s: float | None = None
    perf_metrics: bool = False  # ask TensorRT-LLM models for their per-request perf fields
    extra: dict[str, Any] = field(default_factory=dict)  # extra body fields / input tensors (--extra)
    parameters: dict[str, Any] = field(default_factory=dict)  # Triton request parameters (--parameter)
    ignore_eos: bool = True  # OpenAI: honour the requested length
    min_tokens: bool = True  # OpenAI: send min_tokens
    continuous_usage: bool = False  # OpenAI (vLLM): usage on every chunk
    http_client: str = "fast"  # asyncio: "fast" or "aiohttp"
    max_response_bytes: int | None = None  # per-response body bound (None: derived from the tokens asked for)


CodecFactory = Callable[[str, BackendOptions, probe.TargetFacts], Any]


@dataclass(frozen=True)
class BackendKind:
    """One registered backend: everything a front end needs to build it, as data."""

    name: str
    wire: str  # one of WIRES
    probe: Callable[[probe.Target], probe.ProbeGen]
    codec: CodecFactory  # (model, options, facts from the probe) -> codec
    path: str  # the endpoint, with {model}: an HTTP path, or the gRPC method/model label
    default_model: str | None = "ensemble"  # None: the user must name it (OpenAI servers)
    embedded_suffix: str = ""  # the embedded server serves this backend's model as <model><suffix>

    @property
    def is_grpc(self) -> bool:
        return self.wire.startswith("grpc")

    def endpoint(self, model: str) -> str:
        return self.path.format(model=model)

    def embedded_model(self, model: str) -> str:
        """The model this backend addresses on the embedded server started for the run (``loadgen serve``'s
        decoupled model cannot answer KServe ``/infer``; its one-response sibling can)."""
        return model + self.embedded_suffix

    def check_url(self, url: str, flag: str) -> None:
        """UsageError (one line naming ``flag``) for a target of the wrong shape for this wire."""
        if self.is_grpc:
            if url.startswith(("http://", "https://")):
                raise UsageError(f"{flag} {url}: {self.name} takes HOST:PORT (e.g. 127.0.0.1:8001), not an http:// URL")
        elif not url.startswith(("http://", "https://")):
            raise UsageError(f"{flag} {url}: {self.name} needs an http:// or https:// URL (e.g. http://127.0.0.1:8000)")


def _triton_generate(stream: bool) -> CodecFactory:
    def make(model: str, o: BackendOptions, f: probe.TargetFacts) -> TritonGenerateCodec:
        return TritonGenerateCodec(model, model_inputs=set(f.inputs or ()), stream=stream,
                                   perf_metrics=o.perf_metrics, extra=o.extra, parameters=o.parameters)
    return make


def _triton_grpc(model: str, o: BackendOptions, f: probe.TargetFacts) -> TritonGrpcCodec:
    return TritonGrpcCodec(model, model_inputs=f.inputs, batched=f.batched, perf_metrics=o.perf_metrics,
                           extra=o.extra)


def _openai(chat: bool) -> CodecFactory:
    def make(model: str, o: BackendOptions, f: probe.TargetFacts) -> OpenAICodec:
        return OpenAICodec(model, chat=chat, ignore_eos=o.ignore_eos, send_min_tokens=o.min_tokens,
                           continuous_usage=o.continuous_usage, extra=o.extra)
    return make


def _kserve(model: str, o: BackendOptions, f: probe.TargetFacts) -> KServeInferCodec:
    return KServeInferCodec(model, model_inputs=f.inputs, batched=f.batched, perf_metrics=o.perf_metrics,
                            extra=o.extra, parameters=o.parameters)


_T = "/v2/models/{model}"
BACKENDS: dict[str, BackendKind] = {k.name: k for k in (
    BackendKind("triton-http", "http-stream", probe.triton_http, _triton_generate(True), _T + "/generate_stream"),
    BackendKind("triton-grpc", "grpc-stream", probe.triton_grpc, _triton_grpc, "ModelStreamInfer/{model}"),
    BackendKind("openai-completions", "http-stream", probe.openai_http, _openai(False), "/v1/completions",
                default_model=None),
    BackendKind("openai-chat", "http-stream", probe.openai_http, _openai(True), "/v1/chat/completions",
                default_model=None),
    BackendKind("triton-generate", "http-unary", probe.triton_http, _triton_generate(False), _T + "/generate"),
    BackendKind("kserve-infer", "http-unary", probe.kserve_http, _kserve, _T + "/infer",
                embedded_suffix=probe.INFER_SIBLING_SUFFIX),
)}


def backend_kind(name: str) -> BackendKind:
    """The registered backend ``name``, or one UsageError line listing the known ones."""
    kind = BACKENDS.get(name)
    if kind is None:
        raise UsageError(f"--backend {name!r} is not known; choose one of {', '.join(BACKENDS)}")
    return kind
