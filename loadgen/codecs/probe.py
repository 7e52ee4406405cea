"""The target probe, sans-IO: the questions asked before a run, and one clear line for each first-minute mistake.

Nothing listening at the URL, the wrong backend for the endpoint (an OpenAI server driven as Triton or the
reverse), a model the server does not serve, a model without the TensorRT-LLM string interface, a decoupled model
behind KServe ``/infer``: each is a ``TargetError`` whose text names the flag to fix. The questions and the texts
are written once, here, for both front ends; only the flag names differ (``FlagNames``).

A probe is a generator: it yields a request (``HttpGet``, ``HttpPost``, ``GrpcCall``), receives the answer
(``(status, parsed JSON body)``, or ``Unreachable``; for gRPC the response message or a ``GrpcError``) and returns
the ``TargetFacts`` the codec is built from. A transport only drives it (``drive`` / ``drive_async``), so the
asyncio and the gevent backends, and the unit tests with canned answers, walk exactly the same questions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from loadgen.errors import TargetError

# The embedded server's one-response sibling of its decoupled model (loadgen.serve.repository writes it).
INFER_SIBLING_SUFFIX = "_infer"


# ----------------------------------------------------------------------------------------- requests and answers
@dataclass(frozen=True)
class HttpGet:
    path: str


@dataclass(frozen=True)
class HttpPost:
    path: str
    json: Any


@dataclass(frozen=True)
class GrpcCall:
    method: str  # "ServerReady" | "ModelMetadata" | "ModelConfig" | "RepositoryIndex"
    request: dict[str, Any] = field(default_factory=dict)  # fields of its ``<method>Request`` message


@dataclass(frozen=True)
class Unreachable:
    """An HTTP request got no answer at all (refused, reset, timed out); ``why`` in the transport's words."""

    why: str


@dataclass(frozen=True)
class GrpcError:
    code: str  # the grpc.StatusCode name, e.g. "UNAVAILABLE"
    details: str


Request = HttpGet | HttpPost | GrpcCall
ProbeGen = Generator[Request, Any, "TargetFacts"]


@dataclass(frozen=True)
class FlagNames:
    """How a front end's user fixes a target mistake: its flags, in the words of its own help text."""

    url: str = "--url"
    api_key: str = "--api-key or the OPENAI_API_KEY environment variable"
    triton: str = "--backend triton-http (port 8000) or --backend triton-grpc (port 8001)"
    triton_http: str = "--backend triton-http"


RUNNER_FLAGS = FlagNames()
LOCUST_FLAGS = FlagNames(url="--host", api_key="--api-key", triton="the TritonHttp* classes (or --backend triton-http)",
                         triton_http="the TritonHttp* classes (or --backend triton-http)")


@dataclass(frozen=True)
class Target:
    url: str
    model: str
    flags: FlagNames = RUNNER_FLAGS


@dataclass
class TargetFacts:
    """What the probe learnt: ``info`` (for config.json) and what a codec needs to know about the model."""

    info: dict[str, Any]
    inputs: dict[str, str] | None = None  # Triton: input name -> datatype ("BYTES", "INT32", ...)
    batched: bool = False  # Triton: max_batch_size > 0, so every tensor has a leading batch dimension
    decoupled: bool | None = None  # Triton: the model's transaction policy, where it was read


# ----------------------------------------------------------------------------------------- drivers
def drive(probe: ProbeGen, answer: Callable[[Request], Any]) -> TargetFacts:
    """Run a probe with a blocking ``answer(request)`` (gevent transports, tests with canned answers)."""
    try:
        req = next(probe)
        while True:
            req = probe.send(answer(req))
    except StopIteration as stop:
        return stop.value


async def drive_async(probe: ProbeGen, answer: Callable[[Request], Awaitable[Any]]) -> TargetFacts:
    """Run a probe with an asyncio ``answer(request)``."""
    try:
        req = next(probe)
        while True:
            req = probe.send(await answer(req))
    except StopIteration as stop:
        return stop.value


# ----------------------------------------------------------------------------------------- shared questions
def unreachable(t: Target, why: str) -> TargetError:
    return TargetError(f"cannot reach {t.url} ({why.lower()}); is the server running and is {t.flags.url} right?")


def _ask(req: HttpGet | HttpPost, t: Target) -> Generator[Request, Any, tuple[int, Any]]:
    """One HTTP question whose lack of an answer ends the probe."""
    ans = yield req
    if isinstance(ans, Unreachable):
        raise unreachable(t, ans.why)
    return ans


def _served_http() -> Generator[Request, Any, list[str] | None]:
    """The model names in Triton's repository index; None when the server did not say."""
    ans = yield HttpPost("/v2/repository/index", {})
    if isinstance(ans, Unreachable):
        return None
    status, body = ans
    if status == 200 and isinstance(body, list):
        return sorted({str(m.get("name", "?")) for m in body if isinstance(m, dict)})
    return None


def _served_grpc() -> Generator[Request, Any, list[str] | None]:
    ans = yield GrpcCall("RepositoryIndex", {})
    if isinstance(ans, GrpcError):
        return None
    return sorted({m.name for m in ans.models})


def _models_text(names: list[str] | None) -> str:
    if names is None:
        return "the server did not list its models"
    return "models there: " + (", ".join(names[:10]) or "none")


def _no_text_input(t: Target, inputs: dict[str, str]) -> TargetError:
    return TargetError(f"model {t.model!r} at {t.url} has no text_input input (inputs: "
                       f"{', '.join(sorted(inputs)) or 'none'}): it is not a TensorRT-LLM ensemble/BLS model; "
                       "pass --model ensemble or tensorrt_llm_bls")


def _triton_model(t: Target) -> Generator[Request, Any, tuple[dict[str, Any], dict[str, str]]]:
    """Triton over HTTP: the server is there, ready, serves the model, and the model takes ``text_input``."""
    status, _ = yield from _ask(HttpGet("/v2/health/ready"), t)
    if status == 404:
        raise TargetError(f"{t.url} is not a Triton server (GET /v2/health/ready -> 404); for an "
                          "OpenAI-compatible server use --backend openai-chat or --backend openai-completions")
    if status != 200:
        raise TargetError(f"Triton at {t.url} is not ready (GET /v2/health/ready -> {status}); wait or check its log")
    status, meta = yield from _ask(HttpGet(f"/v2/models/{t.model}"), t)
    if status != 200 or not isinstance(meta, dict):
        names = yield from _served_http()
        raise TargetError(f"model {t.model!r} is not served at {t.url}; {_models_text(names)}; pass --model NAME")
    inputs = {i["name"]: str(i.get("datatype", "")) for i in meta.get("inputs", [])
              if isinstance(i, dict) and "name" in i}
    if "text_input" not in inputs:
        raise _no_text_input(t, inputs)
    return meta, inputs


# ----------------------------------------------------------------------------------------- the probes
def triton_http(t: Target) -> ProbeGen:
    """Triton's generate extension (``generate_stream``, and ``generate``, which also takes a decoupled model
    as long as it sends one response per request, as a TensorRT-LLM model does without ``stream``)."""
    meta, inputs = yield from _triton_model(t)
    info = {"server": "triton", "model": t.model, "model_inputs": sorted(inputs), "model_versions": meta.get("versions")}
    return TargetFacts(info=info, inputs=inputs)


def kserve_http(t: Target) -> ProbeGen:
    """KServe v2 ``/infer``: as ``triton_http``, plus the model config (``/infer`` rejects decoupled models, and
    the tensor shapes depend on ``max_batch_size``)."""
    meta, inputs = yield from _triton_model(t)
    path = f"/v2/models/{t.model}/config"
    status, cfg = yield from _ask(HttpGet(path), t)
    if status != 200 or not isinstance(cfg, dict):
        raise TargetError(f"cannot read the config of model {t.model!r} at {t.url} (GET {path} -> {status}); "
                          "kserve-infer needs it for the tensor shapes; check the server's log")
    if (cfg.get("model_transaction_policy") or {}).get("decoupled"):
        names = yield from _served_http()
        raise _decoupled(t, names)
    max_batch = int(cfg.get("max_batch_size") or 0)
    info = {"server": "triton", "model": t.model, "model_inputs": sorted(inputs),
            "model_versions": meta.get("versions"), "max_batch_size": max_batch, "decoupled": False}
    return TargetFacts(info=info, inputs=inputs, batched=max_batch > 0, decoupled=False)


def _decoupled(t: Target, names: list[str] | None) -> TargetError:
    sibling = t.model + INFER_SIBLING_SUFFIX
    if names is not None and sibling in names:
        fix = f"pass --model {sibling} (this server's one-response sibling of {t.model!r})"
    else:
        fix = ("pass --model NAME of a non-decoupled model, or use --backend triton-generate (one response) or "
               f"{t.flags.triton_http} (streaming)")
    return TargetError(f"model {t.model!r} at {t.url} is decoupled (model_transaction_policy.decoupled) and KServe "
                       f"/infer rejects decoupled models; {fix}")


def triton_grpc(t: Target) -> ProbeGen:
    """Triton gRPC streaming (``ModelStreamInfer``), which needs a decoupled model."""
    ready = yield GrpcCall("ServerReady", {})
    if isinstance(ready, GrpcError):
        if ready.code == "UNAVAILABLE":
            raise TargetError(f"cannot reach a Triton gRPC endpoint at {t.url} ({ready.details}); is the server "
                              f"running, and is {t.flags.url} its gRPC port (HOST:8001 by default, no http://)?")
        raise TargetError(f"{t.url} does not speak Triton's gRPC protocol ({ready.code}); for HTTP endpoints use "
                          f"{t.flags.triton_http} or --backend openai-chat / openai-completions")
    if not ready.ready:
        raise TargetError(f"Triton at {t.url} is not ready yet; wait or check its log")
    meta = yield GrpcCall("ModelMetadata", {"name": t.model})
    cfg = meta if isinstance(meta, GrpcError) else (yield GrpcCall("ModelConfig", {"name": t.model}))
    if isinstance(cfg, GrpcError):
        names = yield from _served_grpc()
        raise TargetError(f"model {t.model!r} is not served at {t.url} ({cfg.details}); {_models_text(names)}; "
                          "pass --model NAME")
    config = cfg.config
    inputs = {i.name: i.datatype for i in meta.inputs}
    if "text_input" not in inputs:
        raise _no_text_input(t, inputs)
    if not config.model_transaction_policy.decoupled:
        raise TargetError(f"model {t.model!r} at {t.url} is not decoupled, so it cannot stream over gRPC; use "
                          "--backend kserve-infer or --backend triton-generate (one response per request), or "
                          "serve the model with decoupled: true")
    info = {"server": "triton", "model": t.model, "model_inputs": sorted(inputs),
            "max_batch_size": config.max_batch_size}
    return TargetFacts(info=info, inputs=inputs, batched=config.max_batch_size > 0, decoupled=True)


def openai_http(t: Target) -> ProbeGen:
    """An OpenAI-compatible server: ``/v1/models`` answers, accepts the credentials, and lists the model."""
    status, body = yield from _ask(HttpGet("/v1/models"), t)
    if status == 404:
        ans = yield HttpGet("/v2/health/ready")
        if not isinstance(ans, Unreachable) and ans[0] == 200:
            raise TargetError(f"{t.url} is a Triton server, not an OpenAI-compatible one; use {t.flags.triton}")
        raise TargetError(f"{t.url} has no OpenAI-compatible API (GET /v1/models -> 404); check {t.flags.url} "
                          "(it should be the server root, without /v1)")
    if status in (401, 403):
        raise TargetError(f"{t.url} refused the credentials (GET /v1/models -> {status}); set {t.flags.api_key}")
    ids = None
    if status == 200 and isinstance(body, dict) and isinstance(body.get("data"), list):
        ids = [m.get("id") for m in body["data"] if isinstance(m, dict)]
        if ids and t.model not in ids:
            raise TargetError(f"model {t.model!r} is not served at {t.url}; models there: "
                              f"{', '.join(map(str, ids[:10]))}; pass --model NAME")
    return TargetFacts(info={"server": "openai", "model": t.model, "models": ids[:20] if ids else None})
