"""Issue 14, client side, against the real embedded Triton server (and the OpenAI front end on top of it):
client cancellation on every transport (the fast client, aiohttp, gRPC, and Locust's gevent HTTP and gRPC
transports) with the server seeing the client go, a ramp before the measured window, and reasoning timings.
The pure parts are in ``test_cancel_ramp_reasoning.py``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from loadgen.cli import main
from loadgen.serve.openai_frontend import FrontendThread

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]


def load(out: Path) -> tuple[list[dict], dict]:
    [run_dir] = [p for p in out.iterdir() if p.is_dir()]
    recs = [orjson.loads(x) for x in (run_dir / "records.jsonl").read_bytes().splitlines()]
    return recs, json.loads((run_dir / "summary.json").read_text())


def server_figure(server, name: str, labels: str = "") -> float:
    """The sum over the replicas of one family of the embedded server's Prometheus page."""
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    pattern = re.compile(rf"^{re.escape(name)}{{([^}}]*)}} ([0-9.e+-]+)$", re.M)
    return sum(float(v) for lab, v in pattern.findall(text) if labels in lab)


def wait_until_idle(server, timeout_s: float = 15.0) -> float:
    """Seconds until no request is running in the engine (the scrape lags the engine by up to a second)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if server_figure(server, "loadgen_emulated_requests", 'state="running"') == 0:
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError("the engine still runs requests the client abandoned")


# Long answers (80 tokens: about 0.75 s on the 0.2-speed fixture), abandoned after 250 ms: the server must free
# them long before they would have ended.
CANCEL = ["--rate", "20", "--requests", "10", "--input-tokens", "32", "--output-tokens", "80", "--no-live",
          "--seed", "5", "--cancel-rate", "0.5", "--cancel-after", "250ms", "--model", "ensemble"]


def check_cancelled(recs: list[dict], summary: dict) -> int:
    planned = [r for r in recs if r.get("cancel_after_s") is not None]
    assert 1 <= len(planned) <= 9, len(planned)  # Binomial(10, 0.5): 5 with seed 5
    for r in planned:
        assert r["status"] == "cancelled_by_client" and r.get("error_kind") is None, r
        assert 0 < sum(r["chunk_tokens"]) < 80  # it stopped mid-stream, keeping what had arrived
        assert 0.24e9 <= r["end_ns"] - r["issued_ns"] < 0.6e9  # (uvloop's timers have 1 ms steps)
    assert all(r["status"] == "ok" and sum(r["chunk_tokens"]) == 80 for r in recs if r not in planned)
    assert summary["cancelled_by_client_count"] == len(planned) and summary["error_count"] == 0
    assert summary["completed_requests"] == 10 - len(planned) and summary["ttft_ms"]["count"] == 10 - len(planned)
    return len(planned)


@pytest.mark.parametrize("client", [["--backend", "triton-http"], ["--backend", "triton-http", "--http-client",
                                                                    "aiohttp"], ["--backend", "triton-grpc"]],
                         ids=["fast", "aiohttp", "grpc"])
def test_client_cancellation_frees_the_servers_slots(embedded_server, tmp_path, client):
    grpc = "triton-grpc" in client
    url = embedded_server.grpc_url if grpc else embedded_server.http_url
    before = server_figure(embedded_server, "loadgen_emulated_requests_cancelled_total")
    rc = main(["run", "--url", url, *client, "--out-dir", str(tmp_path), *CANCEL, "--fail-on", "error_rate<1%"])
    assert rc == 0  # --fail-on error_rate holds: abandoned requests are not errors
    recs, summary = load(tmp_path)
    n = check_cancelled(recs, summary)
    wait_until_idle(embedded_server)
    assert server_figure(embedded_server, "loadgen_emulated_requests_cancelled_total") - before >= n


def test_a_ramp_rises_and_is_left_out_of_the_measured_window(embedded_server, tmp_path):
    rc = main(["run", "--url", embedded_server.http_url, "--model", "ensemble", "--rate", "60", "--duration",
               "0.5", "--ramp", "1s", "--input-tokens", "16", "--output-tokens", "4", "--no-live", "--seed", "2",
               "--out-dir", str(tmp_path)])
    assert rc == 0
    recs, summary = load(tmp_path)
    ramp = [r for r in recs if r["scheduled_ns"] < 1e9]
    assert len(ramp) == 30 and len(recs) == 60  # the area under 0 -> 60 req/s over 1 s, then 60 req/s for 0.5 s
    # The schedule rises: a quarter of the ramp's requests in its first half (Binomial(30, 1/4): sd 2.4).
    assert 7.5 - 7 <= sum(r["scheduled_ns"] < 0.5e9 for r in ramp) <= 7.5 + 7
    assert summary["excluded_warmup"] == 30 and summary["measured_requests"] == 30
    assert summary["warmup_s"] == 1.0 and summary["extra"]["ramp"] == {"ramp_s": 1.0, "start_rate_rps": 0.0,
                                                                         "requests": 30}
    assert all(r["status"] == "ok" for r in recs)


GEVENT = """
from gevent import monkey; monkey.patch_all()  # as Locust does: the gRPC request iterator blocks on a gevent queue
import json, sys
from loadgen.locust.transports import GeventHttpTransport, GeventGrpcTransport, init_grpc_gevent
from loadgen.codecs.triton_http import TritonGenerateCodec
from loadgen.codecs.triton_grpc import TritonGrpcCodec
from loadgen.core.records import RequestRecord, RequestSpec

init_grpc_gevent()
http_url, grpc_url = sys.argv[1], sys.argv[2]
out = []
for kind in ("http", "grpc"):
    for i, after in enumerate((0.25, None, 0.25)):
        spec = RequestSpec(index=i, prompt="hello " * 16, input_tokens=16, max_tokens=80)
        rec = RequestRecord(index=i, scheduled_ns=0, max_tokens=80, cancel_after_s=after)
        if kind == "http":
            t = GeventHttpTransport(http_url, request_timeout_s=30)
            codec = TritonGenerateCodec("ensemble")
            t.stream(codec.path, codec.body(spec), rec, codec.parser(spec), 0)
            t.close()
        else:
            t = GeventGrpcTransport(grpc_url, request_timeout_s=30)
            t.start()
            codec = TritonGrpcCodec("ensemble", batched=True)
            t.stream("ensemble", codec.encode(spec), rec, codec.parser(spec), 0)
            t.close()
        out.append([kind, after, rec.status, sum(rec.chunk_tokens), rec.end_ns - rec.issued_ns])
print(json.dumps(out))
"""


def test_locusts_gevent_transports_abandon_on_time(embedded_server):
    before = server_figure(embedded_server, "loadgen_emulated_requests_cancelled_total")
    proc = subprocess.run([sys.executable, "-c", GEVENT, embedded_server.http_url, embedded_server.grpc_url],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    for kind, after, status, tokens, took_ns in rows:
        if after is None:
            assert (status, tokens) == ("ok", 80), (kind, status)
        else:
            assert status == "cancelled_by_client" and 0 < tokens < 80, (kind, status, tokens)
            assert 0.24e9 <= took_ns < 0.6e9
    wait_until_idle(embedded_server)
    assert server_figure(embedded_server, "loadgen_emulated_requests_cancelled_total") - before >= 4


def test_reasoning_timings_through_the_openai_front_end(embedded_server, tmp_path):
    front = FrontendThread(embedded_server.http_url, "ensemble", "r1-mini", reasoning_tokens=6).start()
    try:
        rc = main(["run", "--url", front.url, "--backend", "openai-chat", "--model", "r1-mini", "--rate", "8",
                   "--requests", "8", "--input-tokens", "16", "--output-tokens", "10", "--no-live",
                   "--out-dir", str(tmp_path)])
    finally:
        front.stop()
    assert rc in (0, 4)
    recs, summary = load(tmp_path)
    assert all(r["status"] == "ok" for r in recs), [r.get("error") for r in recs]
    for r in recs:
        assert r["reasoning_tokens"] == 6 and r["server_output_tokens"] == 10
        first = r["issued_ns"] + r["chunk_offsets_us"][0] * 1000  # TTFT: the first token of either kind
        assert abs(r["first_reasoning_ns"] - first) < 1000 and first < r["first_answer_ns"] <= r["end_ns"]
    assert summary["ttfrt_ms"]["count"] == summary["ttfat_ms"]["count"] == 8
    assert summary["ttfat_ms"]["p50"] > summary["ttfrt_ms"]["p50"] == pytest.approx(summary["ttft_ms"]["p50"], abs=0.002)
    assert summary["reasoning_tokens_total"] == 48 and summary["answer_tokens_total"] == 32
