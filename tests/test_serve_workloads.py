"""Realistic-workload features of the real embedded server (issue 14, server side): the prefix cache (a shared
prefix is served faster and shows on the metrics page), a client that disconnects mid-stream (the engine frees the
request and counts it), and reasoning deltas from the OpenAI front end.

One server for the module: OPT-1.3B (its prefill of a long prompt is clearly slower than of a short one) with one
replica (a prefix cache is per engine) at speed 0.1, so the gaps asserted below are tens of milliseconds wide.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import urllib.request
from collections.abc import Iterator

import aiohttp
import orjson
import pytest
import tritonclient.grpc.aio as grpcclient

from loadgen.serve.launcher import EmbeddedServer
from loadgen.serve.openai_frontend import FrontendThread
from loadgen.telemetry.prometheus import parse_samples
from loadgen.telemetry.vocabulary import CommonReader
from tests.conftest import start_server, stop_all
from tests.test_serve_stream import grpc_request

pytestmark = pytest.mark.integration
MODEL = "ensemble"


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedServer]:
    srv = start_server(profile="opt-1.3b", replicas=1, max_batch=8, speed=0.1, prefix_cache=True)
    try:
        yield srv
    finally:
        stop_all([srv])


def scrape(server: EmbeddedServer) -> list:
    return parse_samples(urllib.request.urlopen(server.metrics_url, timeout=5).read().decode())


def value(samples: list, name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == w for k, w in labels.items()))


async def generate(session: aiohttp.ClientSession, server: EmbeddedServer, prompt: str) -> tuple[float, dict]:
    """(client TTFT in s, the last event) of one streamed Triton request with the engine's perf outputs."""
    body = {"text_input": prompt, "max_tokens": 4, "stream": True, "return_perf_metrics": True}
    t0 = time.perf_counter()
    ttft, last = None, {}
    async with session.post(f"{server.http_url}/v2/models/{MODEL}/generate_stream", json=body) as resp:
        assert resp.status == 200
        async for line in resp.content:
            if line.startswith(b"data:"):
                ttft = ttft if ttft is not None else time.perf_counter() - t0
                last = orjson.loads(line[5:])
    assert "error" not in last, last
    return ttft, last


async def test_a_shared_prefix_is_served_from_the_cache(server: EmbeddedServer) -> None:
    shared = f"{secrets.token_hex(4)} " + " ".join(f"w{i}" for i in range(1500))  # unique to this test
    reader = CommonReader()
    reader.read(scrape(server))
    async with aiohttp.ClientSession() as session:
        ttft_a, a = await generate(session, server, shared + " first question here?")
        ttft_b, b = await generate(session, server, shared + " second question there?")
    assert a["kv_cache_reused_blocks"] == 0
    assert b["kv_cache_reused_blocks"] == 1501 // 16  # every full block of the shared prefix
    # the engine's own clock: B's prefill step computed ~10 tokens instead of ~1,500
    prefill_a = a["first_token_time_ns"] - a["first_scheduled_time_ns"]
    prefill_b = b["first_token_time_ns"] - b["first_scheduled_time_ns"]
    assert prefill_b < 0.6 * prefill_a, (prefill_a, prefill_b)
    assert ttft_b < ttft_a, (ttft_a, ttft_b)  # ~60 ms apart at speed 0.1
    deadline = time.monotonic() + 5  # replicas publish their metrics every 100 ms
    while True:
        samples = scrape(server)
        if value(samples, "loadgen_emulated_prefix_cache_hits_total") > 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert value(samples, "loadgen_emulated_prefix_cache_hits_total") == 1501 // 16 * 16
    assert value(samples, "loadgen_emulated_prefix_cache_reused_blocks_total") == 1501 // 16
    assert value(samples, "nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="reused") == 1501 // 16
    assert 0 < value(samples, "loadgen_emulated_prefix_cache_hit_ratio") < 1
    kind, common, _ = reader.read(samples)
    assert kind == "emulator" and 0.4 < common["cache_hit_rate"] < 0.5  # 1,488 of 2 x ~1,505 prompt tokens


async def _until(server: EmbeddedServer, done, timeout: float) -> list:
    """Scrape every 0.1 s until ``done(samples)`` or the timeout; the last scrape."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(server)
        if done(samples) or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(0.1)


async def test_clients_that_disconnect_free_their_slots_and_are_counted(server: EmbeddedServer) -> None:
    """Eight long streams fill the batch (one through the OpenAI front end); a gRPC and an HTTP request wait in
    the engine's queue. Their clients leave first: the gRPC one is dropped from the queue at once (gRPC tells the
    server); Triton notices the closed HTTP connection only when it writes, so that one goes a few tokens after it
    starts. Then the running ones leave mid-stream. Every slot is freed and every request counted once."""
    before = value(scrape(server), "loadgen_emulated_requests_cancelled_total")
    front = FrontendThread(server.http_url, MODEL, "slm").start()
    grpc = grpcclient.InferenceServerClient(server.grpc_url)

    def cancelled(samples: list) -> float:
        return value(samples, "loadgen_emulated_requests_cancelled_total") - before

    def state(samples: list, name: str) -> float:
        return value(samples, "loadgen_emulated_requests", state=name)

    async def hold(session: aiohttp.ClientSession, openai: bool, started: asyncio.Event) -> None:
        if openai:
            url = f"{front.url}/v1/chat/completions"
            body = {"model": "slm", "messages": [{"role": "user", "content": "talk for a long time"}],
                    "max_tokens": 1500, "stream": True}
        else:
            url = f"{server.http_url}/v2/models/{MODEL}/generate_stream"
            body = {"text_input": "talk for a long time", "max_tokens": 1500, "stream": True}
        async with session.post(url, json=body) as resp:
            async for line in resp.content:  # runs until cancelled: leaving the block closes the connection
                if line.startswith(b"data:"):
                    started.set()

    async def hold_grpc() -> None:
        async def one_request():
            yield grpc_request("queued", "talk for a long time", 1500)
            await asyncio.sleep(3600)  # keep the stream open

        async for _ in grpc.stream_infer(one_request()):
            pass

    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            starts = [asyncio.Event() for _ in range(8)]
            running = [asyncio.create_task(hold(session, i == 0, ev)) for i, ev in enumerate(starts)]
            await asyncio.wait_for(asyncio.gather(*(ev.wait() for ev in starts)), 20)
            queued = [asyncio.create_task(hold_grpc()), asyncio.create_task(hold(session, False, asyncio.Event()))]
            samples = await _until(server, lambda s: state(s, "waiting") == 2, 10)
            assert state(samples, "waiting") == 2 and state(samples, "running") == 8
            for task in queued:
                task.cancel()
            samples = await _until(server, lambda s: state(s, "waiting") == 1 and cancelled(s) == 1, 5)
            assert cancelled(samples) == 1 and state(samples, "waiting") == 1, "a queued gRPC request outlived its client"
            assert state(samples, "running") == 8
            for task in running:
                task.cancel()
            await asyncio.gather(*running, *queued, return_exceptions=True)
        # 1,500 tokens take about a minute: seeing the batch empty here means they stopped
        samples = await _until(server, lambda s: state(s, "running") + state(s, "waiting") == 0
                               and cancelled(s) == 10, 15)
    finally:
        front.stop()
        await grpc.close()
    assert state(samples, "running") == 0 and state(samples, "waiting") == 0, "slots kept for clients that left"
    assert cancelled(samples) == 10


async def test_reasoning_deltas_come_first_and_are_counted(server: EmbeddedServer) -> None:
    front = FrontendThread(server.http_url, MODEL, "slm", reasoning_tokens=3).start()
    url = f"{front.url}/v1/chat/completions"

    async def stream(extra: dict) -> tuple[list[tuple[str, str]], dict]:
        body = {"model": "slm", "messages": [{"role": "user", "content": "think, then answer"}], "max_tokens": 12,
                "stream": True, "stream_options": {"include_usage": True}, **extra}
        deltas, usage = [], {}
        async with session.post(url, json=body) as resp:
            async for line in resp.content:
                if line.startswith(b"data: {"):
                    ev = orjson.loads(line[6:])
                    usage = ev.get("usage") or usage
                    for choice in ev["choices"]:
                        deltas += [(k, v) for k, v in choice["delta"].items() if k != "role" and v]
        return deltas, usage

    try:
        async with aiohttp.ClientSession() as session:
            (asked, asked_usage), (default, default_usage) = await asyncio.gather(
                stream({"reasoning_tokens": 5}), stream({}))
            async with session.post(url, json={"model": "slm", "max_tokens": 6,
                                               "messages": [{"role": "user", "content": "hi"}]}) as resp:
                whole = await resp.json()
    finally:
        front.stop()
    assert [k for k, _ in asked] == ["reasoning_content"] * 5 + ["content"] * 7
    assert asked_usage["completion_tokens"] == 12 and asked_usage["completion_tokens_details"] == {
        "reasoning_tokens": 5}
    assert [k for k, _ in default] == ["reasoning_content"] * 3 + ["content"] * 9
    assert default_usage["completion_tokens_details"]["reasoning_tokens"] == 3
    message = whole["choices"][0]["message"]
    assert len(message["reasoning_content"].split()) == 3 and len(message["content"].split()) == 3
    assert whole["usage"]["completion_tokens"] == 6
    assert whole["usage"]["completion_tokens_details"] == {"reasoning_tokens": 3}
