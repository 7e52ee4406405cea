"""Streaming through the real embedded Triton server: HTTP generate / generate_stream (aiohttp) and gRPC streaming
(tritonclient.grpc.aio), token accounting, the error hook, bad input, cancellation, replicas, batching behaviour and
the metrics endpoint. One session server is shared (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import numpy as np
import orjson
import pytest
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from loadgen.core.prompts import approx_token_count
from loadgen.serve.launcher import EmbeddedServer

PROMPT = "Tell me, in a few words, why small language models are cheap to serve."
MODEL = "ensemble"


async def http_stream(session: aiohttp.ClientSession, server: EmbeddedServer, body: dict,
                      endpoint: str = "generate_stream") -> tuple[int, list[dict], list[int]]:
    """POST and return (status, events, arrival times in ns); a plain JSON body counts as one event."""
    url = f"{server.http_url}/v2/models/{MODEL}/{endpoint}"
    events, times = [], []
    async with session.post(url, data=orjson.dumps(body)) as resp:
        if resp.content_type != "text/event-stream":
            return resp.status, [orjson.loads(await resp.read())], [time.monotonic_ns()]
        async for line in resp.content:
            if line.startswith(b"data:"):
                times.append(time.monotonic_ns())
                events.append(orjson.loads(line[5:]))
    return resp.status, events, times


def metrics(server: EmbeddedServer) -> dict[str, float]:
    """Scrape the metrics endpoint into {'name{labels}': value}."""
    import urllib.request

    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def series(values: dict[str, float], name: str, **labels: str) -> dict[str, float]:
    """Series of one family whose labels include ``labels``."""
    out = {}
    for key, value in values.items():
        if key.split("{", 1)[0] != name:
            continue
        if all(f'{k}="{v}"' in key for k, v in labels.items()):
            out[key] = value
    return out


def by_instance(values: dict[str, float], name: str, **labels: str) -> dict[str, float]:
    return {re.search(r'instance="([^"]+)"', k).group(1): v for k, v in series(values, name, **labels).items()}


def _input(name: str, arr: np.ndarray) -> grpcclient.InferInput:
    t = grpcclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
    t.set_data_from_numpy(arr)
    return t


def grpc_request(rid: str, prompt: str, max_tokens: int, **params: object) -> dict:
    inputs = [
        _input("text_input", np.array([[prompt.encode()]], dtype=object)),
        _input("max_tokens", np.array([[max_tokens]], dtype=np.int32)),
        _input("stream", np.array([[True]], dtype=bool)),
        _input("return_num_output_tokens", np.array([[True]], dtype=bool)),
    ]
    req = {"model_name": MODEL, "inputs": inputs, "request_id": rid, "enable_empty_final_response": True}
    if params:
        req["parameters"] = params
    return req


# ------------------------------------------------------------------------------------------ HTTP
async def test_http_stream_honours_max_tokens(embedded_server: EmbeddedServer) -> None:
    async with aiohttp.ClientSession() as session:
        body = {"text_input": PROMPT, "max_tokens": 17, "stream": True, "return_num_output_tokens": True,
                "return_num_input_tokens": True, "temperature": 0.0, "top_k": 1, "seed": 3, "min_tokens": 17}
        status, events, _ = await http_stream(session, embedded_server, body)
    assert status == 200 and len(events) == 17
    assert sum(e["num_output_tokens"] for e in events) == 17
    assert all(e["num_input_tokens"] == approx_token_count(PROMPT) for e in events)
    assert all(approx_token_count(e["text_output"]) == 1 for e in events)
    assert approx_token_count("".join(e["text_output"] for e in events)) == 17


async def test_http_generate_returns_prompt_then_output(embedded_server: EmbeddedServer) -> None:
    async with aiohttp.ClientSession() as session:
        body = {"text_input": PROMPT, "max_tokens": 9, "return_num_output_tokens": True}
        status, [whole], _ = await http_stream(session, embedded_server, body, endpoint="generate")
        assert status == 200 and whole["num_output_tokens"] == 9
        assert whole["text_output"].startswith(PROMPT)
        assert approx_token_count(whole["text_output"][len(PROMPT):]) == 9
        body["exclude_input_in_output"] = True
        status, [bare], _ = await http_stream(session, embedded_server, body, endpoint="generate")
        assert status == 200 and approx_token_count(bare["text_output"]) == 9 and PROMPT not in bare["text_output"]
        # stream=false through generate_stream: one event with the whole text
        status, events, _ = await http_stream(session, embedded_server, {**body, "stream": False})
        assert status == 200 and len(events) == 1 and events[0]["num_output_tokens"] == 9


async def test_perf_metrics_use_this_machines_monotonic_clock(embedded_server: EmbeddedServer) -> None:
    async with aiohttp.ClientSession() as session:
        before = time.monotonic_ns()
        body = {"text_input": PROMPT, "max_tokens": 6, "stream": True, "return_perf_metrics": True}
        status, events, times = await http_stream(session, embedded_server, body)
        after = time.monotonic_ns()
    assert status == 200 and len(events) == 6
    last = events[-1]
    assert before <= last["arrival_time_ns"] <= last["first_scheduled_time_ns"] <= last["first_token_time_ns"]
    assert last["first_token_time_ns"] < last["last_token_time_ns"] <= times[-1] <= after
    assert events[0]["first_token_time_ns"] <= times[0]
    # new + reused (the prefix cache: earlier tests sent the same prompt) = the blocks the request holds
    n_in = approx_token_count(PROMPT)
    assert last["kv_cache_alloc_new_blocks"] + last["kv_cache_reused_blocks"] >= -(-(n_in + 6) // 16)
    assert 0 <= last["kv_cache_reused_blocks"] <= (n_in - 1) // 16


async def test_http_error_after_200(embedded_server: EmbeddedServer) -> None:
    async with aiohttp.ClientSession() as session:
        body = {"text_input": PROMPT, "max_tokens": 10, "stream": True, "parameters": {"emulate_error_after": 3}}
        status, events, _ = await http_stream(session, embedded_server, body)
        assert status == 200 and len(events) == 4
        assert all("text_output" in e for e in events[:3])
        assert "emulated error after 3 tokens" in events[3]["error"]
        # k >= max_tokens: the request completes normally
        body["parameters"] = {"emulate_error_after": 10}
        status, events, _ = await http_stream(session, embedded_server, body)
        assert status == 200 and len(events) == 10 and "error" not in events[-1]


@pytest.mark.parametrize(
    ("body", "pattern"),
    [
        ({"text_input": PROMPT, "max_tokens": 0}, r"max_tokens=0 is invalid"),
        ({"max_tokens": 5}, r"missing input 'text_input'"),  # Triton's own check when only 1 input is sent
        ({"text_input": "", "max_tokens": 5}, r"text_input has no tokens"),
        ({"text_input": "word " * 2040, "max_tokens": 20}, r"prompt of 2040 tokens \+ max_tokens 20 exceeds the "
                                                            r"2048-token max length of opt-125m"),
        ({"text_input": PROMPT, "max_tokens": 5, "parameters": {"emulate_error_after": "x"}},
         r"emulate_error_after='x' is invalid"),
    ],
)
async def test_bad_input_gets_a_clear_error(embedded_server: EmbeddedServer, body: dict, pattern: str) -> None:
    async with aiohttp.ClientSession() as session:
        status, events, _ = await http_stream(session, embedded_server, {**body, "stream": True})
    assert status == 400 and re.search(pattern, events[0]["error"]), events


async def test_client_disconnect_stops_generation(embedded_server: EmbeddedServer) -> None:
    before = sum(by_instance(metrics(embedded_server), "loadgen_emulated_tokens_total").values())
    async with aiohttp.ClientSession() as session:
        url = f"{embedded_server.http_url}/v2/models/{MODEL}/generate_stream"
        async with session.post(url, json={"text_input": PROMPT, "max_tokens": 1500, "stream": True}) as resp:
            got = 0
            async for line in resp.content:
                got += line.startswith(b"data:")
                if got == 3:
                    break
    # Metrics are published every 100 ms: wait until the count has moved and then stopped moving.
    deadline = time.monotonic() + 10
    previous = -1.0
    while True:
        await asyncio.sleep(0.25)
        m = metrics(embedded_server)
        running = sum(by_instance(m, "loadgen_emulated_requests", state="running").values())
        generated = sum(by_instance(m, "loadgen_emulated_tokens_total").values()) - before
        if (running == 0 and generated == previous and generated > 0) or time.monotonic() > deadline:
            break
        previous = generated
    assert running == 0, "the engine kept generating for a client that went away"
    assert 3 <= generated < 200  # stopped at the next cancellation check, not after 1,500 tokens


# ------------------------------------------------------------------------------------------ gRPC
async def test_grpc_streaming_many_requests_on_one_stream(embedded_server: EmbeddedServer) -> None:
    asked = {"a": 5, "b": 12, "c": 1}
    client = grpcclient.InferenceServerClient(embedded_server.grpc_url)

    async def requests():
        for rid, n in asked.items():
            yield grpc_request(rid, PROMPT, n)

    tokens: dict[str, int] = {k: 0 for k in asked}
    responses: dict[str, int] = {k: 0 for k in asked}
    finals: dict[str, int] = {k: 0 for k in asked}
    try:
        async for result, error in client.stream_infer(requests()):
            assert error is None, error
            resp = result.get_response()
            rid = resp.id
            if resp.outputs:
                responses[rid] += 1
                tokens[rid] += int(result.as_numpy("num_output_tokens").sum())
                assert approx_token_count(result.as_numpy("text_output").reshape(-1)[0].decode()) == 1
            finals[rid] += resp.parameters["triton_final_response"].bool_param
    finally:
        await client.close()
    assert tokens == asked and responses == asked and finals == {k: 1 for k in asked}


async def test_grpc_error_hook_and_batch_rejection(embedded_server: EmbeddedServer) -> None:
    client = grpcclient.InferenceServerClient(embedded_server.grpc_url)
    two = grpc_request("two", PROMPT, 3)
    two["inputs"][0] = _input("text_input", np.array([[b"one"], [b"two"]], dtype=object))
    two["inputs"][1] = _input("max_tokens", np.array([[3], [3]], dtype=np.int32))
    two["inputs"][2] = _input("stream", np.array([[True], [True]], dtype=bool))
    two["inputs"][3] = _input("return_num_output_tokens", np.array([[True], [True]], dtype=bool))

    async def requests():
        yield grpc_request("err", PROMPT, 8, emulate_error_after=2)
        await asyncio.sleep(0.3)
        yield two

    tokens, errors = 0, []
    try:
        async for result, error in client.stream_infer(requests()):
            if error is not None:
                assert isinstance(error, InferenceServerException)
                errors.append(error.message())
                if len(errors) == 2:
                    break
                continue
            if result.get_response().outputs:
                tokens += int(result.as_numpy("num_output_tokens").sum())
    finally:
        await client.close()
    assert tokens == 2
    assert any("emulated error after 2 tokens" in e for e in errors)
    assert any("one prompt per request" in e for e in errors)


# ------------------------------------------------------------------------------------------ replicas, batching, metrics
async def _burst(server: EmbeddedServer, n: int, max_tokens: int) -> tuple[float, list[dict]]:
    """n concurrent streams; returns (wall seconds, last event of each) with server perf metrics."""
    body = {"text_input": PROMPT, "max_tokens": max_tokens, "stream": True, "return_perf_metrics": True,
            "return_num_output_tokens": True}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        t0 = time.monotonic()
        results = await asyncio.gather(*[http_stream(session, server, body) for _ in range(n)])
        wall = time.monotonic() - t0
    for status, events, _ in results:
        assert status == 200 and sum(e["num_output_tokens"] for e in events) == max_tokens
    return wall, [events[-1] for _, events, _ in results]


def _server_itl_ms(lasts: list[dict], max_tokens: int) -> float:
    return float(np.mean([(e["last_token_time_ns"] - e["first_token_time_ns"]) / (max_tokens - 1) / 1e6
                          for e in lasts]))


async def test_replicas_share_the_load(embedded_server: EmbeddedServer) -> None:
    name = "loadgen_emulated_requests_completed_total"
    before = by_instance(metrics(embedded_server), name)
    await _burst(embedded_server, 8, 10)
    deadline = time.monotonic() + 5  # metrics are published every 100 ms
    while True:
        after = by_instance(metrics(embedded_server), name)
        done = {k: after[k] - before.get(k, 0.0) for k in after}
        if sum(done.values()) >= 8 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert len(done) == embedded_server.config.replicas == 2
    assert sum(done.values()) == 8 and min(done.values()) >= 1, done


async def test_itl_grows_with_batch_and_throughput_plateaus(embedded_server: EmbeddedServer) -> None:
    n_tok = 40
    levels = {}
    for conc in (2, 16, 64):  # per replica about 1, 8 and 32 (its max batch) running requests
        wall, lasts = await _burst(embedded_server, conc, n_tok)
        levels[conc] = (_server_itl_ms(lasts, n_tok), conc * n_tok / wall)
    itl = {c: v[0] for c, v in levels.items()}
    tput = {c: v[1] for c, v in levels.items()}
    assert itl[2] < itl[16] < itl[64], levels
    assert itl[64] > 1.5 * itl[2], levels
    assert tput[2] < tput[16] < tput[64], levels
    # sub-linear: 4x the concurrency gives well under 4x the throughput (the plateau of the study)
    assert tput[64] / tput[16] < 3.0, levels


async def test_metrics_endpoint(embedded_server: EmbeddedServer) -> None:
    first = metrics(embedded_server)
    await asyncio.sleep(0.6)
    second = metrics(embedded_server)
    power = series(second, "loadgen_emulated_gpu_power_watts", gpu="h100-64gb")
    energy1 = series(first, "loadgen_emulated_gpu_energy_joules_total")
    energy2 = series(second, "loadgen_emulated_gpu_energy_joules_total")
    assert len(power) == 1 and list(power.values())[0] >= 50.0  # at least the idle draw of an H100
    assert len(energy2) == 1 and list(energy2.values())[0] > list(energy1.values())[0] > 0
    instances = by_instance(second, "loadgen_emulated_requests", state="waiting")
    assert len(instances) == 2 and set(by_instance(second, "loadgen_emulated_kv_cache_usage_ratio")) == set(instances)
    for rtype in ("active", "max", "scheduled", "context", "waiting"):
        assert set(by_instance(second, "nv_trt_llm_request_metrics", request_type=rtype)) == set(instances)
    assert set(by_instance(second, "nv_trt_llm_request_metrics", request_type="max").values()) == {32.0}
    kv = {t: by_instance(second, "nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type=t)
          for t in ("free", "used", "max", "tokens_per")}
    for inst in instances:
        assert kv["free"][inst] + kv["used"][inst] == kv["max"][inst] > 0 and kv["tokens_per"][inst] == 16
