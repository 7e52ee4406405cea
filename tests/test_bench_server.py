"""The generator benchmark's C server (benchmarks/stream_server.c) and its timing file: built and started briefly.

The benchmark trusts the server's stamps as the truth about TTFT, so these check that the stamps mean what the
benchmark assumes: the same clock as ``time.perf_counter_ns``, arrival after the whole body, the first token never
before arrival + TTFT, absolute inter-token deadlines, and a prompt hash the benchmark can recompute. No speed is
asserted.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import shutil
import socket
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from loadgen.codecs.triton_http import TritonStreamParser

ROOT = Path(__file__).resolve().parent.parent
TTFT_US, GAP_US = 2000, 500


def _load_bench():
    spec = importlib.util.spec_from_file_location("generator_capacity", ROOT / "benchmarks" / "generator_capacity.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["generator_capacity"] = mod
    spec.loader.exec_module(mod)
    return mod


bench = _load_bench()
pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is needed to build the server")


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bench.build_server(tmp_path_factory.mktemp("build"))


def _fnv_reference(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def _generate(conn: http.client.HTTPConnection, text: str, max_tokens: int) -> tuple[int, bytes]:
    conn.request("POST", "/v2/models/m/generate_stream",
                 body=orjson.dumps({"text_input": text, "max_tokens": max_tokens, "stream": True}),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, resp.read()


def test_endpoints_stream_and_timing_file(binary: Path, tmp_path: Path) -> None:
    texts = ["plain words here", 'quotes " and \\ backslash', "unicode caf\u00e9 \u2603 and a\nnewline"]
    with bench.StreamServer(binary, tmp_path / "timing.txt", TTFT_US, GAP_US) as srv:
        host, port = srv.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", "/v2/health/ready")
        ready = conn.getresponse()
        assert (ready.status, ready.read()) == (200, b"")
        conn.request("GET", "/v2/models/ensemble")
        meta = conn.getresponse()
        assert meta.status == 200
        names = {i["name"] for i in json.loads(meta.read())["inputs"]}
        assert {"text_input", "max_tokens", "stream"} <= names
        conn.request("GET", "/v2/nothing")
        missing = conn.getresponse()
        assert missing.status == 404
        missing.read()
        before = time.perf_counter_ns()
        bodies = [_generate(conn, t, n) for t, n in zip(texts, (1, 7, 3), strict=True)]  # one keep-alive connection
        after = time.perf_counter_ns()
        timing = srv.stop()
        assert srv.proc is not None and srv.proc.returncode == 0
    for (status, body), n in zip(bodies, (1, 7, 3), strict=True):
        assert status == 200
        parser = TritonStreamParser()
        assert parser.feed(body) == n  # every event is a token the generator's codec counts
        totals = parser.finish()
        assert totals.error is None and totals.protocol_error is None
    assert timing.params == {"ttft_us": str(TTFT_US), "gap_us": str(GAP_US), "clock": "CLOCK_MONOTONIC"}
    assert timing.tokens.tolist() == [1, 7, 3]
    assert timing.end["requests"] == 3 and timing.end["events"] == 11
    # Same clock as time.perf_counter_ns: every stamp lies between the client's before and after readings.
    assert before <= timing.arrival.min() and timing.last_write.max() <= after
    assert (timing.first_due - timing.arrival == TTFT_US * 1000).all()
    assert (timing.first_write >= timing.first_due).all()  # never early
    assert (timing.first_sent >= timing.first_write).all()
    assert (timing.last_write - timing.first_due >= (timing.tokens - 1) * GAP_US * 1000).all()
    assert (timing.arrival[1:] >= timing.last_write[:-1]).all()  # one connection: one request after another
    expected = [_fnv_reference(orjson.dumps(t)[1:-1]) for t in texts]
    assert timing.text_hash.tolist() == expected
    assert bench.fnv1a64([orjson.dumps(t)[1:-1] for t in texts]).tolist() == expected


def test_arrival_is_stamped_when_the_body_is_complete(binary: Path, tmp_path: Path) -> None:
    body = orjson.dumps({"text_input": "split body", "max_tokens": 2})
    head = (f"POST /v2/models/m/generate_stream HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
    with bench.StreamServer(binary, tmp_path / "timing.txt", TTFT_US, GAP_US) as srv:
        host, port = srv.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(head + body[:5])
            time.sleep(0.05)
            second_part = time.perf_counter_ns()
            s.sendall(body[5:])
            data = b""
            while not data.endswith(b"0\r\n\r\n"):
                chunk = s.recv(65536)
                assert chunk, "the server closed the connection mid-stream"
                data += chunk
        timing = srv.stop()
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"Transfer-Encoding: chunked" in data
    assert data.count(b"data: ") == 2
    assert timing.arrival[0] >= second_part


def test_fnv1a64_matches_the_reference() -> None:
    rng = np.random.default_rng(3)
    items = [bytes(rng.integers(0, 256, size=int(n), dtype=np.uint8)) for n in (0, 1, 2, 17, 300, 5, 64)]
    assert bench.fnv1a64(items).tolist() == [_fnv_reference(b) for b in items]


def test_read_timing_rejects_a_file_without_its_end_line(binary: Path, tmp_path: Path) -> None:
    with bench.StreamServer(binary, tmp_path / "timing.txt") as srv:
        srv.stop()
    good = (tmp_path / "timing.txt").read_text()
    assert good.splitlines()[-1].startswith("# end requests=0 ")
    cut = tmp_path / "cut.txt"
    cut.write_text("\n".join(good.splitlines()[:-1]) + "\n")
    with pytest.raises(ValueError, match="no end line"):
        bench.read_timing(cut)


def test_a_short_level_joins_every_request(binary: Path, tmp_path: Path) -> None:
    """One second of `loadgen run` at 40 req/s: every record finds its server row by prompt hash."""
    b = bench.Bench(binary, tmp_path / "runs", server_cpu=None, client_cpus=(), ttft_us=TTFT_US, gap_us=GAP_US)
    fig = b.level(40, 1.0)
    assert fig["issued"] > 10 and fig["errors"] == 0
    assert fig["joined"] == fig["issued"] and fig["unmatched"] == 0 and fig["ambiguous"] == 0
    assert fig["ttft_error_ms"]["count"] == fig["completed"]
    # The client's stamp comes after the server's write; client offsets are whole microseconds (floored).
    assert fig["ttft_error_ms"]["min"] > -0.001
    assert fig["transit_ms"]["p50"] > 0
    assert fig["server"]["events"] == 64 * fig["issued"]
    assert set(fig["meets"]) == {"rate", "cv", "ttft_error", "all"}
