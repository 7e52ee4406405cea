"""The backend seam: the sans-IO probe (every mistake one line, in each front end's flags), the registry (every
backend builds on both transports), the KServe codec, the non-streaming Triton parse, and, against the embedded
server, the two backends added through the seam (``triton-generate``, ``kserve-infer``) on every transport."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import gevent
import orjson
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from loadgen.codecs import probe
from loadgen.codecs.backend import Backend, BlockingBackend
from loadgen.codecs.framing import ResponseFraming
from loadgen.codecs.kserve_infer import KServeInferCodec, KServeInferParser
from loadgen.codecs.probe import (
    LOCUST_FLAGS,
    RUNNER_FLAGS,
    GrpcCall,
    GrpcError,
    HttpGet,
    HttpPost,
    Target,
    Unreachable,
)
from loadgen.codecs.registry import BACKENDS, WIRES, BackendOptions, backend_kind
from loadgen.codecs.triton_http import TritonGenerateCodec
from loadgen.core.records import (
    ERR_HTTP,
    ERR_PROTOCOL,
    ERR_STREAM,
    STATUS_ERROR,
    STATUS_OK,
    RequestRecord,
    RequestSpec,
)
from loadgen.errors import TargetError, UsageError
from loadgen.locust import backends as locust_backends
from loadgen.runner import backends as runner_backends
from loadgen.serve.repository import EmulatedModelSpec, write_emulated_repository
from loadgen.transport.common import finish_http_stream

URL = "http://h:8000"
FLAGS = [pytest.param(RUNNER_FLAGS, "--url", id="runner"), pytest.param(LOCUST_FLAGS, "--host", id="locust")]
META = {"name": "m", "versions": ["1"], "inputs": [{"name": "text_input", "datatype": "BYTES"},
                                                   {"name": "max_tokens", "datatype": "INT32"},
                                                   {"name": "exclude_input_in_output", "datatype": "BOOL"},
                                                   {"name": "return_num_output_tokens", "datatype": "BOOL"}]}
INDEX = [{"name": "m"}, {"name": "m_infer"}]
CONFIG = {"name": "m", "max_batch_size": 32, "model_transaction_policy": {"decoupled": False}}


# ------------------------------------------------------------------------------------------------ canned answers
def run(gen: probe.ProbeGen, answers: dict) -> probe.TargetFacts:
    """Drive a probe with canned answers; a question with no canned answer fails the test."""
    def answer(req: probe.Request):
        key = req.method if isinstance(req, GrpcCall) else (type(req).__name__, req.path)
        assert key in answers, f"unexpected question {req!r}"
        return answers[key]
    return probe.drive(gen, answer)


def fails(gen: probe.ProbeGen, answers: dict) -> str:
    with pytest.raises(TargetError) as err:
        run(gen, answers)
    text = str(err.value)
    assert "\n" not in text and err.value.exit_code == 3
    return text


def triton_answers(over: dict | None = None) -> dict:
    a = {("HttpGet", "/v2/health/ready"): (200, ""), ("HttpGet", "/v2/models/m"): (200, META),
         ("HttpPost", "/v2/repository/index"): (200, INDEX), ("HttpGet", "/v2/models/m/config"): (200, CONFIG)}
    a.update(over or {})
    return a


def G(path: str) -> tuple[str, str]:
    return ("HttpGet", path)


@pytest.mark.parametrize(("flags", "url_flag"), FLAGS)
@pytest.mark.parametrize("which", [probe.triton_http, probe.kserve_http])
def test_triton_http_probe_errors(which, flags, url_flag) -> None:
    t = Target(URL, "m", flags)
    text = fails(which(t), {G("/v2/health/ready"): Unreachable("Connection refused")})
    assert text == f"cannot reach {URL} (connection refused); is the server running and is {url_flag} right?"
    text = fails(which(t), triton_answers({G("/v2/health/ready"): (404, "")}))
    assert "is not a Triton server (GET /v2/health/ready -> 404)" in text and "--backend openai-chat" in text
    text = fails(which(t), triton_answers({G("/v2/health/ready"): (503, "")}))
    assert text == f"Triton at {URL} is not ready (GET /v2/health/ready -> 503); wait or check its log"
    text = fails(which(t), triton_answers({G("/v2/models/m"): (400, {"error": "unknown model"})}))
    assert text == f"model 'm' is not served at {URL}; models there: m, m_infer; pass --model NAME"
    unlisted = triton_answers({G("/v2/models/m"): (404, "")})
    unlisted[("HttpPost", "/v2/repository/index")] = Unreachable("reset")
    assert "the server did not list its models; pass --model NAME" in fails(which(t), unlisted)
    bare = {**META, "inputs": [{"name": "prompt", "datatype": "BYTES"}]}
    text = fails(which(t), triton_answers({G("/v2/models/m"): (200, bare)}))
    assert "has no text_input input (inputs: prompt)" in text and "pass --model ensemble or tensorrt_llm_bls" in text


def test_triton_http_probe_good() -> None:
    facts = run(probe.triton_http(Target(URL, "m")), triton_answers())
    assert facts.inputs == {i["name"]: i["datatype"] for i in META["inputs"]}
    assert facts.info == {"server": "triton", "model": "m", "model_inputs": sorted(facts.inputs),
                          "model_versions": ["1"]}


@pytest.mark.parametrize(("flags", "url_flag"), FLAGS)
def test_kserve_probe_decoupled_and_config(flags, url_flag) -> None:
    t = Target(URL, "m", flags)
    decoupled = {**CONFIG, "model_transaction_policy": {"decoupled": True}}
    text = fails(probe.kserve_http(t), triton_answers({G("/v2/models/m/config"): (200, decoupled)}))
    assert text == (f"model 'm' at {URL} is decoupled (model_transaction_policy.decoupled) and KServe /infer rejects "
                    "decoupled models; pass --model m_infer (this server's one-response sibling of 'm')")
    alone = triton_answers({G("/v2/models/m/config"): (200, decoupled)})
    alone[("HttpPost", "/v2/repository/index")] = (200, [{"name": "m"}])
    text = fails(probe.kserve_http(t), alone)
    assert "pass --model NAME of a non-decoupled model" in text and flags.triton_http in text
    text = fails(probe.kserve_http(t), triton_answers({G("/v2/models/m/config"): (500, None)}))
    assert "cannot read the config of model 'm'" in text and "-> 500" in text
    facts = run(probe.kserve_http(t), triton_answers())
    assert facts.batched and facts.decoupled is False and facts.info["max_batch_size"] == 32
    unbatched = run(probe.kserve_http(t), triton_answers({G("/v2/models/m/config"): (200, {"max_batch_size": 0})}))
    assert not unbatched.batched


def grpc_meta(*names: str):
    return SimpleNamespace(inputs=[SimpleNamespace(name=n, datatype="BYTES" if n == "text_input" else "INT32")
                                   for n in names])


def grpc_config(decoupled: bool = True, max_batch: int = 32):
    return SimpleNamespace(config=SimpleNamespace(model_transaction_policy=SimpleNamespace(decoupled=decoupled),
                                                  max_batch_size=max_batch))


def grpc_answers(**over) -> dict:
    a = {"ServerReady": SimpleNamespace(ready=True), "ModelMetadata": grpc_meta("text_input", "max_tokens"),
         "ModelConfig": grpc_config(), "RepositoryIndex": SimpleNamespace(models=[SimpleNamespace(name="m")])}
    a.update(over)
    return a


@pytest.mark.parametrize(("flags", "url_flag"), FLAGS)
def test_grpc_probe(flags, url_flag) -> None:
    t = Target("h:8001", "m", flags)
    text = fails(probe.triton_grpc(t), grpc_answers(ServerReady=GrpcError("UNAVAILABLE", "connection refused")))
    assert text == ("cannot reach a Triton gRPC endpoint at h:8001 (connection refused); is the server running, and "
                    f"is {url_flag} its gRPC port (HOST:8001 by default, no http://)?")
    text = fails(probe.triton_grpc(t), grpc_answers(ServerReady=GrpcError("UNIMPLEMENTED", "")))
    assert "does not speak Triton's gRPC protocol (UNIMPLEMENTED)" in text and flags.triton_http in text
    text = fails(probe.triton_grpc(t), grpc_answers(ServerReady=SimpleNamespace(ready=False)))
    assert text == "Triton at h:8001 is not ready yet; wait or check its log"
    text = fails(probe.triton_grpc(t), grpc_answers(ModelMetadata=GrpcError("NOT_FOUND", "unknown model 'm'")))
    assert text == "model 'm' is not served at h:8001 (unknown model 'm'); models there: m; pass --model NAME"
    text = fails(probe.triton_grpc(t), grpc_answers(ModelMetadata=grpc_meta("prompt")))
    assert "has no text_input input (inputs: prompt)" in text
    text = fails(probe.triton_grpc(t), grpc_answers(ModelConfig=grpc_config(decoupled=False)))
    assert "is not decoupled, so it cannot stream over gRPC" in text and "--backend kserve-infer" in text
    facts = run(probe.triton_grpc(t), grpc_answers())
    assert facts.batched and facts.decoupled and facts.inputs == {"text_input": "BYTES", "max_tokens": "INT32"}


@pytest.mark.parametrize(("flags", "url_flag"), FLAGS)
def test_openai_probe(flags, url_flag) -> None:
    t = Target(URL, "m", flags)
    assert "cannot reach" in fails(probe.openai_http(t), {G("/v1/models"): Unreachable("timed out")})
    text = fails(probe.openai_http(t), {G("/v1/models"): (404, ""), G("/v2/health/ready"): (200, "")})
    assert text == f"{URL} is a Triton server, not an OpenAI-compatible one; use {flags.triton}"
    text = fails(probe.openai_http(t), {G("/v1/models"): (404, ""), G("/v2/health/ready"): Unreachable("x")})
    assert text.startswith(f"{URL} has no OpenAI-compatible API (GET /v1/models -> 404); check {url_flag} ")
    text = fails(probe.openai_http(t), {G("/v1/models"): (401, "")})
    assert text == f"{URL} refused the credentials (GET /v1/models -> 401); set {flags.api_key}"
    text = fails(probe.openai_http(t), {G("/v1/models"): (200, {"data": [{"id": "a"}, {"id": "b"}]})})
    assert text == f"model 'm' is not served at {URL}; models there: a, b; pass --model NAME"
    facts = run(probe.openai_http(t), {G("/v1/models"): (200, {"data": [{"id": "m"}]})})
    assert facts.info == {"server": "openai", "model": "m", "models": ["m"]}


def test_runner_and_locust_flag_words() -> None:
    assert RUNNER_FLAGS.api_key.startswith("--api-key or the OPENAI_API_KEY")
    assert "TritonHttp*" in LOCUST_FLAGS.triton and LOCUST_FLAGS.url == "--host"


def test_drive_async_walks_the_same_questions() -> None:
    asked = []
    answers = triton_answers()

    async def answer(req):
        asked.append(req)
        await asyncio.sleep(0)
        return answers[(type(req).__name__, req.path)]

    facts = asyncio.run(probe.drive_async(probe.kserve_http(Target(URL, "m")), answer))
    assert facts.batched and asked == [HttpGet("/v2/health/ready"), HttpGet("/v2/models/m"),
                                       HttpGet("/v2/models/m/config")]
    assert HttpPost("/v2/repository/index", {}) not in asked  # the index is asked only to name models


# ------------------------------------------------------------------------------------------------ registry
FACTS = probe.TargetFacts(info={}, inputs={i["name"]: i["datatype"] for i in META["inputs"]}, batched=True,
                          decoupled=True)


@pytest.mark.parametrize("name", list(BACKENDS))
def test_every_backend_builds_on_both_transports(name: str) -> None:
    kind = BACKENDS[name]
    assert kind.name == name and kind.wire in WIRES
    url = "127.0.0.1:8001" if kind.is_grpc else "http://127.0.0.1:8000"
    built = []
    for client in ("fast", "aiohttp"):
        b = runner_backends.make_backend(name, BackendOptions(url=url, model="m", http_client=client))
        assert isinstance(b, Backend) and (b.name, b.url, b.model) == (name, url, "m")
        built.append(b)
    g = locust_backends.make_backend(name, BackendOptions(url=url, model="m"))
    assert isinstance(g, BlockingBackend) and g.endpoint == kind.endpoint("m")
    g.close()
    codec = kind.codec("m", BackendOptions(url=url, model="m"), FACTS)
    spec = RequestSpec(index=3, prompt="a b c", input_tokens=3, max_tokens=4, min_tokens=4)
    if kind.is_grpc:
        assert {n for n, _, _ in codec.encode(spec)} >= {"text_input", "max_tokens"}
    else:
        assert codec.path == kind.endpoint("m") and orjson.loads(codec.body(spec))
    assert hasattr(codec.parser(spec), "finish")


def test_registry_names_and_urls() -> None:
    assert list(BACKENDS)[:4] == ["triton-http", "triton-grpc", "openai-completions", "openai-chat"]
    assert runner_backends.BACKENDS is BACKENDS and locust_backends.BACKENDS is BACKENDS
    assert BACKENDS["kserve-infer"].embedded_model("ensemble") == "ensemble_infer"
    assert BACKENDS["triton-generate"].embedded_model("ensemble") == "ensemble"
    with pytest.raises(UsageError, match=r"--backend 'nope' is not known; choose one of triton-http, "):
        backend_kind("nope")
    with pytest.raises(UsageError, match=r"^--url http://h:1: triton-grpc takes HOST:PORT"):
        runner_backends.make_backend("triton-grpc", BackendOptions(url="http://h:1"))
    with pytest.raises(UsageError, match=r"^--host h:1: kserve-infer needs an http:// or https:// URL"):
        locust_backends.make_backend("kserve-infer", BackendOptions(url="h:1"))
    with pytest.raises(UsageError, match=r"--http-client 'curl'"):
        runner_backends.make_backend("triton-generate", BackendOptions(url=URL, http_client="curl"))


# ------------------------------------------------------------------------------------------------ codecs
DECLARED = {"text_input": "BYTES", "max_tokens": "INT32", "stream": "BOOL", "min_tokens": "INT32",
            "exclude_input_in_output": "BOOL", "return_num_input_tokens": "BOOL", "return_num_output_tokens": "BOOL",
            "return_perf_metrics": "BOOL", "temperature": "FP32"}
SPEC = RequestSpec(index=7, prompt="one two three", input_tokens=3, max_tokens=5, min_tokens=5)


def test_kserve_encode() -> None:
    codec = KServeInferCodec("m", model_inputs=DECLARED, batched=True, perf_metrics=True,
                             extra={"temperature": 0.0}, parameters={"emulate_error_after": 2})
    body = orjson.loads(codec.body(SPEC))
    assert codec.path == "/v2/models/m/infer" and body["id"] == "7" and body["parameters"] == {"emulate_error_after": 2}
    tensors = {t["name"]: t for t in body["inputs"]}
    assert tensors["text_input"] == {"name": "text_input", "shape": [1, 1], "datatype": "BYTES", "data": ["one two three"]}
    assert tensors["max_tokens"] == {"name": "max_tokens", "shape": [1, 1], "datatype": "INT32", "data": [5]}
    assert tensors["stream"]["data"] == [False] and tensors["min_tokens"]["data"] == [5]
    assert tensors["temperature"]["datatype"] == "FP32"
    for flag in ("exclude_input_in_output", "return_num_input_tokens", "return_num_output_tokens",
                 "return_perf_metrics"):
        assert tensors[flag]["datatype"] == "BOOL" and tensors[flag]["data"] == [True]
    bare = orjson.loads(KServeInferCodec("m", model_inputs={"text_input": "BYTES", "max_tokens": "INT32"},
                                         batched=False, perf_metrics=True).body(SPEC))
    assert [(t["name"], t["shape"]) for t in bare["inputs"]] == [("text_input", [1]), ("max_tokens", [1])]


def infer_body(text: str, **outputs: int) -> bytes:
    outs = [{"name": "text_output", "datatype": "BYTES", "shape": [1, 1], "data": [text]}]
    outs += [{"name": k, "datatype": "INT32", "shape": [1, 1], "data": [v]} for k, v in outputs.items()]
    return orjson.dumps({"model_name": "m", "model_version": "1", "outputs": outs})


def settle(parser, chunks: list[bytes]) -> RequestRecord:
    """What the transports do at the end of a 200 response: arrival stamps 1 ms apart, issued at t0."""
    rec = RequestRecord(index=0, scheduled_ns=0, issued_ns=0)
    finish_http_stream(rec, parser, [1_000_000 * (k + 1) for k in range(len(chunks))], chunks, 0)
    return rec


def test_kserve_parse_good_body_split_across_reads() -> None:
    body = infer_body(" a b c d e", num_output_tokens=5, num_input_tokens=3, first_token_time_ns=11)
    rec = settle(KServeInferParser(), [body[:10], body[10:40], body[40:]])
    assert rec.status == STATUS_OK and rec.server_output_tokens == 5 and rec.server_input_tokens == 3
    # every token arrives with the end of the body: first token time = last token time (TTFT == E2E)
    assert rec.chunk_tokens == [5] and rec.chunk_offsets_us == [3000] and rec.server_perf == {"first_token_time_ns": 11}


def test_kserve_parse_counts_text_without_the_echoed_prompt() -> None:
    echoing = KServeInferCodec("m", model_inputs={"text_input": "BYTES", "max_tokens": "INT32"})
    rec = settle(echoing.parser(SPEC), [infer_body("one two three four five six seven eight")])
    assert rec.chunk_tokens == [5] and rec.server_output_tokens is None  # the prompt's 3 words are not output
    excluding = KServeInferCodec("m", model_inputs=DECLARED)
    rec = settle(excluding.parser(SPEC), [infer_body(" four five")])
    assert rec.chunk_tokens == [2]


@pytest.mark.parametrize(("body", "kind", "text"), [
    (b'{"error":"model is busy"}', ERR_STREAM, "model is busy"),
    (b'{"model_name":"m"}', ERR_PROTOCOL, "infer response has no outputs list"),
    (orjson.dumps({"outputs": [{"name": "num_output_tokens", "data": [3]}]}), ERR_PROTOCOL,
     "infer response has no text_output (outputs: num_output_tokens)"),
    (b"<html>gateway</html>", ERR_PROTOCOL, "infer response is not JSON"),
    (b"", ERR_PROTOCOL, "infer response is not JSON"),
])
def test_kserve_parse_errors(body: bytes, kind: str, text: str) -> None:
    rec = settle(KServeInferParser(), [body] if body else [])
    assert rec.status == STATUS_ERROR and rec.error_kind == kind and text in rec.error and rec.chunk_tokens == []


def test_content_length_body_is_framed_whole() -> None:
    body = infer_body(" x y", num_output_tokens=2)
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    wire = head + body
    fr = ResponseFraming()
    parts = [fr.feed(wire[k:k + 7]) for k in range(0, len(wire), 7)]
    assert fr.complete and fr.keep_alive and b"".join(parts) == body


def test_triton_generate_non_streaming_counts() -> None:
    whole = b'{"model_name":"m","model_version":"1","text_output":"one two three four five six"}'
    echoing = TritonGenerateCodec("m", model_inputs={"text_input", "max_tokens"}, stream=False)
    assert "exclude_input_in_output" not in orjson.loads(echoing.body(SPEC))
    rec = settle(echoing.parser(SPEC), [whole[:20], whole[20:]])
    assert rec.status == STATUS_OK and rec.chunk_tokens == [3] and rec.chunk_offsets_us == [2000]
    declared = TritonGenerateCodec("m", model_inputs=set(DECLARED), stream=False)
    body = orjson.loads(declared.body(SPEC))
    assert body["exclude_input_in_output"] is True and body["stream"] is False
    rec = settle(declared.parser(SPEC), [b'{"text_output":" four five","num_output_tokens":5}'])
    assert rec.chunk_tokens == [5] and rec.server_output_tokens == 5
    rec = settle(declared.parser(SPEC), [b'{"text_output":" four five six"}'])
    assert rec.chunk_tokens == [3]
    streaming = TritonGenerateCodec("m", model_inputs=set(DECLARED))
    rec = settle(streaming.parser(SPEC), [b'data: {"text_output":" four five"}\n\n'])
    assert rec.chunk_tokens == [1]  # streamed: one response is one token unless the server counts


# ------------------------------------------------------------------------------------------------ the sibling
def _parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_sibling_model_has_the_same_interface_and_is_not_decoupled(tmp_path: Path) -> None:
    spec = EmulatedModelSpec(model_name="slm", profile="opt-125m", max_batch=16, replicas=2)
    repo = write_emulated_repository(spec, tmp_path, tmp_path / "gpu.state")
    main, sib = _parse(repo / "slm" / "config.pbtxt"), _parse(repo / "slm_infer" / "config.pbtxt")
    assert spec.served_models() == ["slm", "slm_infer"] and (repo / "slm_infer" / "1" / "model.py").is_file()
    assert main.model_transaction_policy.decoupled and not sib.model_transaction_policy.decoupled
    assert sib.name == "slm_infer" and sib.max_batch_size == main.max_batch_size == 16
    assert list(sib.input) == list(main.input) and list(sib.output) == list(main.output)
    assert sib.parameters["target_model"].string_value == "slm" and [g.count for g in sib.instance_group] == [1]
    alone = write_emulated_repository(EmulatedModelSpec(model_name="x", profile="opt-125m", max_batch=8,
                                                        infer_model=False), tmp_path / "b", tmp_path / "g2")
    assert sorted(p.name for p in alone.iterdir()) == ["x"]


# ------------------------------------------------------------------------------------------------ real server
NEW = [("triton-generate", "ensemble"), ("kserve-infer", "ensemble_infer")]
PROMPT = "Tell me why small language models are cheap to serve"


def spec_of(k: int, max_tokens: int = 8) -> RequestSpec:
    return RequestSpec(index=k, prompt=f"{PROMPT} {k}", input_tokens=11, max_tokens=max_tokens,
                       min_tokens=max_tokens)


def check_unary(recs: list[RequestRecord], max_tokens: int = 8) -> None:
    for r in recs:
        assert r.status == STATUS_OK, r.error
        assert r.server_output_tokens == max_tokens == sum(r.chunk_tokens)
        assert r.server_input_tokens == 11
        # one JSON body: all tokens at its end, so the first token time is the last (TTFT == E2E)
        assert len(r.chunk_offsets_us) == 1 and r.first_token_ns == r.last_token_ns
        assert r.issued_ns <= r.first_byte_ns <= r.end_ns
        assert r.first_byte_ns - 1000 < r.first_token_ns <= r.end_ns  # the body's last read (offsets are in µs)


@pytest.mark.integration
@pytest.mark.parametrize("client", ["fast", "aiohttp"])
@pytest.mark.parametrize(("kind", "model"), NEW)
def test_new_backends_asyncio(embedded_server, kind: str, model: str, client: str) -> None:
    async def go() -> list[RequestRecord]:
        b = runner_backends.make_backend(kind, BackendOptions(url=embedded_server.http_url, model=model,
                                                              http_client=client, perf_metrics=True))
        await b.start()
        try:
            info = await b.probe()
            assert info["server"] == "triton" and info["model"] == model
            recs = [RequestRecord(index=k, scheduled_ns=0) for k in range(6)]
            t0 = time.perf_counter_ns()
            await asyncio.gather(*(b.send(spec_of(k), recs[k], t0) for k in range(6)))
            return recs
        finally:
            await b.close()

    recs = asyncio.run(go())
    check_unary(recs)
    assert all(r.server_perf and r.server_perf["first_token_time_ns"] <= r.server_perf["last_token_time_ns"]
               for r in recs)


@pytest.mark.integration
@pytest.mark.parametrize(("kind", "model"), NEW)
def test_new_backends_gevent(embedded_server, kind: str, model: str) -> None:
    b = locust_backends.make_backend(kind, BackendOptions(url=embedded_server.http_url, model=model))
    b.start()
    try:
        assert b.probe()["model"] == model and b.endpoint.endswith(model + ("/infer" if "infer" in kind else "/generate"))
        recs = [RequestRecord(index=k, scheduled_ns=0) for k in range(6)]
        t0 = time.perf_counter_ns()
        gevent.joinall([gevent.spawn(b.send, spec_of(k), recs[k], t0) for k in range(6)], raise_error=True)
    finally:
        b.close()
    check_unary(recs)


@pytest.mark.integration
@pytest.mark.parametrize(("kind", "model", "status"), [("triton-generate", "ensemble", 400),
                                                       ("kserve-infer", "ensemble_infer", 500)])
def test_new_backends_error_body_is_an_http_error(embedded_server, kind: str, model: str, status: int) -> None:
    async def go() -> RequestRecord:
        b = runner_backends.make_backend(kind, BackendOptions(url=embedded_server.http_url, model=model,
                                                              parameters={"emulate_error_after": 0}))
        await b.start()
        try:
            await b.probe()
            rec = RequestRecord(index=0, scheduled_ns=0)
            await b.send(spec_of(0), rec, time.perf_counter_ns())
            return rec
        finally:
            await b.close()

    rec = asyncio.run(go())
    assert rec.status == STATUS_ERROR and rec.error_kind == ERR_HTTP and rec.http_status == status
    assert "emulated error after 0 tokens" in rec.error and rec.chunk_tokens == []


@pytest.mark.integration
def test_kserve_probe_on_the_decoupled_model_names_the_sibling(embedded_server) -> None:
    async def go() -> None:
        b = runner_backends.make_backend("kserve-infer", BackendOptions(url=embedded_server.http_url,
                                                                        model="ensemble"))
        await b.start()
        try:
            await b.probe()
        finally:
            await b.close()

    with pytest.raises(TargetError, match=r"is decoupled .* pass --model ensemble_infer \(this server's"):
        asyncio.run(go())


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["triton-generate", "kserve-infer"])
def test_loadgen_run_with_the_new_backend_on_the_embedded_server(tmp_path: Path, kind: str) -> None:
    p = subprocess.run([sys.executable, "-m", "loadgen", "run", "--backend", kind, "--rate", "5", "--requests", "10",
                        "--input-tokens", "16", "--output-tokens", "8", "--no-live", "--out-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=240, cwd=str(Path(__file__).resolve().parents[1]))
    assert p.returncode == 0, p.stderr[-2000:]
    (run_dir,) = [d for d in tmp_path.iterdir() if d.is_dir()]
    recs = [orjson.loads(x) for x in (run_dir / "records.jsonl").read_bytes().splitlines()]
    assert len(recs) == 10 and all(r["status"] == "ok" for r in recs), [r.get("error") for r in recs]
    assert all(r["server_output_tokens"] == 8 == sum(r["chunk_tokens"]) for r in recs)
