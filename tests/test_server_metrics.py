"""Server telemetry in every run: the common vocabulary on each server family's page, the sampler against an
in-process vLLM-like page, one warning for a page that does not answer, the default side task of ``loadgen run``
(embedded server), ``--server-metrics off``, bad values, the sweep's ServerWatch fed by the sampler, and Locust's
sampler with the web UI's server history."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest

from loadgen.cli import main
from loadgen.serve.launcher import free_port
from loadgen.sweep.scrape import WANTED, ServerWatch
from loadgen.telemetry.prometheus import parse_samples
from loadgen.telemetry.server_metrics import (
    SERVER_METRICS_FILE,
    ServerMetricsSampler,
    read_lines,
    resolve_metrics_url,
)
from loadgen.telemetry.vocabulary import KNOWN, CommonReader
from tests.fake_servers import FaultyTriton

REPO = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------------ realistic pages
VLLM_V1 = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen2.5-0.5B"} 7.0
vllm:num_requests_running{engine="1",model_name="Qwen/Qwen2.5-0.5B"} 5.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="Qwen/Qwen2.5-0.5B"} 3.0
vllm:num_requests_waiting{engine="1",model_name="Qwen/Qwen2.5-0.5B"} 1.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="Qwen/Qwen2.5-0.5B"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="Qwen/Qwen2.5-0.5B"} 0.25
# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="Qwen/Qwen2.5-0.5B"} 2.0
vllm:num_preemptions_total{engine="1",model_name="Qwen/Qwen2.5-0.5B"} 1.0
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="Qwen/Qwen2.5-0.5B"} {queries}
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="Qwen/Qwen2.5-0.5B"} {hits}
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="Qwen/Qwen2.5-0.5B"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="Qwen/Qwen2.5-0.5B"} 120.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="Qwen/Qwen2.5-0.5B"} 120.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="Qwen/Qwen2.5-0.5B"} 3.5
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 12345.0
"""

VLLM_V0 = """\
vllm:num_requests_running{model_name="facebook/opt-125m"} 4.0
vllm:num_requests_swapped{model_name="facebook/opt-125m"} 0.0
vllm:num_requests_waiting{model_name="facebook/opt-125m"} 0.0
vllm:gpu_cache_usage_perc{model_name="facebook/opt-125m"} 0.125
vllm:num_preemptions_total{model_name="facebook/opt-125m"} 0.0
"""

SGLANG = """\
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct"} 24.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct"} 6.0
# HELP sglang:token_usage The token usage
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.28
# HELP sglang:cache_hit_rate The cache hit rate
# TYPE sglang:cache_hit_rate gauge
sglang:cache_hit_rate{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0075
# HELP sglang:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE sglang:time_to_first_token_seconds histogram
sglang:time_to_first_token_seconds_bucket{le="0.1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
"""

TGI = """\
# TYPE tgi_queue_size gauge
tgi_queue_size 9
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 32
# TYPE tgi_batch_current_max_tokens gauge
tgi_batch_current_max_tokens 16384
# TYPE tgi_request_duration histogram
tgi_request_duration_bucket{le="0.5"} 10
"""

TRTLLM = """\
# HELP nv_inference_pending_request_count Instantaneous number of pending requests awaiting execution per-model.
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="ensemble",version="1"} 5
nv_inference_pending_request_count{model="tensorrt_llm",version="1"} 5
nv_inference_pending_request_count{model="preprocessing",version="1"} 0
# HELP nv_trt_llm_request_metrics TRT LLM request metrics
# TYPE nv_trt_llm_request_metrics gauge
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="waiting",version="1"} 2
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="context",version="1"} 1
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="scheduled",version="1"} 14
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="max",version="1"} 64
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="active",version="1"} 16
# HELP nv_trt_llm_kv_cache_block_metrics TRT LLM KV cache block metrics
# TYPE nv_trt_llm_kv_cache_block_metrics gauge
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction",model="tensorrt_llm",version="1"} 0.4375
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="tokens_per",model="tensorrt_llm",version="1"} 64
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="used",model="tensorrt_llm",version="1"} 1792
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="free",model="tensorrt_llm",version="1"} 2304
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="max",model="tensorrt_llm",version="1"} 4096
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="reused",model="tensorrt_llm",version="1"} 120
# HELP nv_inference_request_duration_us Cumulative inference request duration in microseconds
# TYPE nv_inference_request_duration_us counter
nv_inference_request_duration_us{model="ensemble",version="1"} 123456789
# HELP nv_gpu_power_usage GPU power usage in watts
# TYPE nv_gpu_power_usage gauge
nv_gpu_power_usage{gpu_uuid="GPU-0"} 312.5
"""

EMULATOR = """\
nv_inference_pending_request_count{model="ensemble",version="1"} 0
loadgen_emulated_requests{instance="ensemble_0_0",model="ensemble",state="running",version="1"} 8
loadgen_emulated_requests{instance="ensemble_0_0",model="ensemble",state="waiting",version="1"} 2
loadgen_emulated_requests{instance="ensemble_0_1",model="ensemble",state="running",version="1"} 6
loadgen_emulated_requests{instance="ensemble_0_1",model="ensemble",state="waiting",version="1"} 0
loadgen_emulated_kv_cache_usage_ratio{instance="ensemble_0_0",model="ensemble",version="1"} 0.2
loadgen_emulated_kv_cache_usage_ratio{instance="ensemble_0_1",model="ensemble",version="1"} 0.1
loadgen_emulated_preemptions_total{instance="ensemble_0_0",model="ensemble",version="1"} 3
loadgen_emulated_preemptions_total{instance="ensemble_0_1",model="ensemble",version="1"} 1
loadgen_emulated_requests_completed_total{instance="ensemble_0_0",model="ensemble",version="1"} 40
nv_trt_llm_request_metrics{instance="ensemble_0_0",model="ensemble",request_type="scheduled",version="1"} 8
nv_trt_llm_kv_cache_block_metrics{instance="ensemble_0_0",kv_cache_block_type="fraction",model="ensemble",version="1"} 0.2
"""

TRITON_CORE = """\
nv_inference_request_success{model="simple",version="1"} 10
nv_inference_pending_request_count{model="simple",version="1"} 4
nv_inference_pending_request_count{model="other",version="1"} 1
nv_cpu_utilization 0.5
"""


def read(page: str, reader: CommonReader | None = None) -> tuple[str | None, dict, list]:
    reader = reader or CommonReader()
    return reader.read(parse_samples(page, KNOWN))


def test_vllm_v1_sums_engines_and_the_hit_rate_is_per_interval() -> None:
    reader = CommonReader()
    kind, common, kept = read(VLLM_V1.replace("{queries}", "1000").replace("{hits}", "400"), reader)
    assert kind == "vllm"
    assert common == {"queued": 4.0, "running": 12.0, "kv_usage": 0.375, "preemptions": 3.0, "cache_hit_rate": None}
    assert not any("_bucket" in name or name.startswith("python_") for name, _, _ in kept)  # no bloat kept
    _, later, _ = read(VLLM_V1.replace("{queries}", "1100").replace("{hits}", "475"), reader)
    assert later["cache_hit_rate"] == pytest.approx(0.75)  # 75 hits of the 100 queries since the last scrape
    _, idle, _ = read(VLLM_V1.replace("{queries}", "1100").replace("{hits}", "475"), reader)
    assert idle["cache_hit_rate"] is None  # no query in between: nothing to say


def test_vllm_v0_sglang_tgi() -> None:
    assert read(VLLM_V0)[:2] == ("vllm", {"queued": 0.0, "running": 4.0, "kv_usage": 0.125, "preemptions": 0.0,
                                          "cache_hit_rate": None})
    kind, common, kept = read(SGLANG)
    assert kind == "sglang" and common == {"queued": 6.0, "running": 24.0, "kv_usage": 0.28, "preemptions": None,
                                           "cache_hit_rate": 0.0075}
    assert len(kept) == 4
    kind, common, _ = read(TGI)
    assert kind == "tgi" and common == {"queued": 9.0, "running": 32.0, "kv_usage": None, "preemptions": None,
                                        "cache_hit_rate": None}


def test_tensorrt_llm_in_triton() -> None:
    kind, common, kept = read(TRTLLM)
    assert kind == "trtllm"
    assert common == {"queued": 2.0, "running": 14.0, "kv_usage": pytest.approx(1792 / 4096), "preemptions": None,
                      "cache_hit_rate": None}
    names = {n for n, _, _ in kept}
    assert "nv_gpu_power_usage" in names and "nv_inference_request_duration_us" not in names
    assert ("nv_trt_llm_kv_cache_block_metrics", "reused") in {(n, lab.get("kv_cache_block_type")) for n, lab, _ in kept}
    older = "\n".join(ln for ln in TRTLLM.splitlines() if 'request_type="waiting"' not in ln and '"used"' not in ln)
    _, common, _ = read(older)
    assert common["queued"] == 5.0  # the busiest model's pending count, not ensemble + its steps
    assert common["kv_usage"] == 0.4375  # the fraction, without used/max


def test_the_embedded_emulator_and_triton_core() -> None:
    kind, common, kept = read(EMULATOR)
    assert kind == "emulator"  # recognised before the TensorRT-LLM names it repeats
    assert common == {"queued": 2.0, "running": 14.0, "kv_usage": pytest.approx(0.15), "preemptions": 4.0,
                      "cache_hit_rate": None}
    assert not any(n.startswith("nv_trt_llm") for n, _, _ in kept)
    assert read(TRITON_CORE)[:2] == ("triton", {"queued": 4.0, "running": None, "kv_usage": None,
                                                "preemptions": None, "cache_hit_rate": None})
    assert read("some_other_metric 1\n")[0] is None


def test_servewatch_names_are_all_read_by_the_sampler() -> None:
    assert WANTED <= KNOWN


def test_auto_urls() -> None:
    assert resolve_metrics_url("auto", "triton-http", "http://gpu1:8000") == "http://gpu1:8002/metrics"
    assert resolve_metrics_url("auto", "triton-grpc", "gpu1:8001") == "http://gpu1:8002/metrics"
    assert resolve_metrics_url("auto", "openai-chat", "http://h:8000/") == "http://h:8000/metrics"
    assert resolve_metrics_url("auto", "triton-http", None, "http://127.0.0.1:5/metrics") == "http://127.0.0.1:5/metrics"
    assert resolve_metrics_url("off", "triton-http", "http://h:8000") is None
    assert resolve_metrics_url(" http://x:9/m ", "openai-chat", "http://h:8000") == "http://x:9/m"


# ------------------------------------------------------------------------------------------ the sampler
class FakeVLLMMetrics:
    """A vLLM-style /metrics page on 127.0.0.1 whose gauges move with time (http.server in a thread)."""

    def __init__(self) -> None:
        t0 = time.monotonic()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                k = int((time.monotonic() - t0) * 10)
                page = VLLM_V1.replace("{queries}", str(100 * k)).replace("{hits}", str(30 * k))
                page = page.replace('engine="0",model_name="Qwen/Qwen2.5-0.5B"} 7.0', f'engine="0",model_name="Qwen/Qwen2.5-0.5B"}} {k % 9}.0')
                body = page.encode()
                self.send_response(200 if self.path == "/metrics" else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeVLLMMetrics:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_sampler_writes_at_least_one_sample_a_second(tmp_path: Path) -> None:
    said: list[str] = []
    with FakeVLLMMetrics() as fake:
        sampler = ServerMetricsSampler(fake.url, 0.5, said.append).start()
        time.sleep(0.3)  # scrapes before the run directory exists are kept and written first
        sampler.open(tmp_path)
        t0 = time.perf_counter_ns()
        time.sleep(4.0)
        sampler.stop()
        t1 = time.perf_counter_ns()
    lines = read_lines(tmp_path / SERVER_METRICS_FILE)
    inside = [d for d in lines if t0 <= d["t_mono_ns"] <= t1]
    assert len(inside) >= 4 * 1 and len(inside) <= 4 * 2 + 2  # 2 Hz: at least 1 a second, bounded
    assert lines[0]["t_mono_ns"] < t0 and said == []
    assert [d["t_mono_ns"] for d in lines] == sorted(d["t_mono_ns"] for d in lines)
    for d in lines:
        assert set(d) == {"t_mono_ns", "common", "samples"}
        c = d["common"]
        assert c["queued"] == 4.0 and c["running"] is not None and c["kv_usage"] == 0.375
        assert all(isinstance(s, list) and len(s) == 3 for s in d["samples"])
    assert any(d["common"]["cache_hit_rate"] == pytest.approx(0.3) for d in lines[1:])
    size = (tmp_path / SERVER_METRICS_FILE).stat().st_size
    print(f"\nfake vLLM page: {len(inside) / ((t1 - t0) / 1e9):.2f} samples/s, {size / len(lines):.0f} bytes a line, "
          f"{size / len(lines) * 2 * 60 / 1e6:.2f} MB a minute at 2 Hz")
    summary: dict = {"extra": {}}
    sampler.contribute(tmp_path, summary)
    block = summary["extra"]["server_metrics"]
    assert block["server"] == "vllm" and block["samples"] == len(lines) and block["file"] == SERVER_METRICS_FILE
    assert block["queued"] == {"mean": 4.0, "max": 4.0} and block["kv_usage"]["max"] == 0.375


def test_an_unreachable_page_is_one_warning_and_nothing_written(tmp_path: Path) -> None:
    said: list[str] = []
    url = f"http://127.0.0.1:{free_port()}/metrics"
    sampler = ServerMetricsSampler(url, 0.1, said.append).start()
    time.sleep(0.3)
    assert said == []  # not before the run is under way (a wrong --url is the probe's to report)
    sampler.open(tmp_path)
    time.sleep(1.0)
    sampler.stop()
    assert len(said) == 1 and url in said[0] and sampler.errors >= 5
    assert not (tmp_path / SERVER_METRICS_FILE).exists()
    summary: dict = {"extra": {}}
    sampler.contribute(tmp_path, summary)
    assert summary["extra"]["server_metrics"]["file"] is None and summary["extra"]["server_metrics"]["error"]


def test_a_run_with_an_unreachable_page_succeeds_with_one_warning(tmp_path: Path, capsys) -> None:
    url = f"http://127.0.0.1:{free_port()}/metrics"
    with FaultyTriton("ok", tokens=4, gap_s=0.002) as srv:
        rc = main(["run", "--url", srv.url, "--model", "m", "--rate", "20", "--requests", "30", "--no-live",
                   "--output-tokens", "4", "--out-dir", str(tmp_path), "--server-metrics", url,
                   "--server-metrics-interval", "100ms"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.count("server metrics: cannot read") == 1, out
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    assert not (run_dir / SERVER_METRICS_FILE).exists()
    block = json.loads((run_dir / "summary.json").read_text())["extra"]["server_metrics"]
    assert block["samples"] == 0 and block["scrape_errors"] >= 5 and block["url"] == url


def test_off_writes_nothing_and_a_fake_page_is_sampled(tmp_path: Path, capsys) -> None:
    with FaultyTriton("ok", tokens=4, gap_s=0.002) as srv, FakeVLLMMetrics() as fake:
        base = ["run", "--url", srv.url, "--model", "m", "--rate", "20", "--requests", "30", "--no-live",
                "--output-tokens", "4"]
        assert main([*base, "--out-dir", str(tmp_path / "off"), "--server-metrics", "off"]) == 0
        assert main([*base, "--out-dir", str(tmp_path / "on"), "--server-metrics", fake.url]) == 0
    assert "server metrics" not in capsys.readouterr().out
    off = next((tmp_path / "off").iterdir())
    assert not (off / SERVER_METRICS_FILE).exists()
    assert "server_metrics" not in json.loads((off / "summary.json").read_text())["extra"]
    on = next((tmp_path / "on").iterdir())
    block = json.loads((on / "summary.json").read_text())["extra"]["server_metrics"]
    assert block["server"] == "vllm" and block["samples"] >= 2 and block["window_samples"] >= 1
    assert block["running"]["max"] is not None and block["queued"] == {"mean": 4.0, "max": 4.0}


@pytest.mark.parametrize("flags, flag", [
    (["--server-metrics", "ftp://host/metrics"], "--server-metrics"),
    (["--server-metrics", "sometimes"], "--server-metrics"),
    (["--server-metrics", "http://user:pw@host:8002/metrics"], "--server-metrics"),
    (["--server-metrics-interval", "50ms"], "--server-metrics-interval"),
    (["--server-metrics-interval", "30s"], "--server-metrics-interval"),
])
def test_a_bad_value_is_one_line_exit_2(tmp_path: Path, capsys, flags: list[str], flag: str) -> None:
    rc = main(["run", "--url", "http://127.0.0.1:9", "--model", "m", "--rate", "1", "--requests", "1",
               "--out-dir", str(tmp_path), *flags])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and flag in err, err
    assert "pw" not in err
    assert list(tmp_path.iterdir()) == []


def test_the_sweeps_server_watch_is_fed_by_the_sampler(tmp_path: Path) -> None:
    from loadgen.sweep.point import PointWatch

    with FakeVLLMMetrics() as fake:
        sampler = ServerMetricsSampler(fake.url, 0.5)
        point = PointWatch()
        point.watch_server_metrics(sampler)
        assert sampler.interval_s == 0.2 and sampler.settle_s == 0.3  # the sweep's 5 Hz and its last look
        sampler.start()
        assert len(point.watch.samples) == 1  # taken before the load
        sampler.open(tmp_path)
        time.sleep(1.0)
        sampler.stop()
    (tmp_path / "records.jsonl").write_text("")
    summary: dict = {"extra": {}}
    point.contribute(tmp_path, summary)
    watch = summary["extra"]["server_watch"]
    assert watch["samples"] >= 5 and watch["kv_peak"] == 0.5 and watch["preemptions"] == 0
    assert len(read_lines(tmp_path / SERVER_METRICS_FILE)) == watch["samples"]  # one scraper, not two


def test_a_point_without_a_sampler_leaves_the_columns_empty(tmp_path: Path) -> None:
    from loadgen.sweep.point import PointWatch

    (tmp_path / "records.jsonl").write_text("")
    summary: dict = {"extra": {}}
    PointWatch().contribute(tmp_path, summary)
    assert summary["extra"]["server_watch"]["samples"] == 0 and summary["extra"]["server_watch"]["error"] is None
    assert ServerWatch().result()["engine_running_mean"] is None


# ------------------------------------------------------------------------------------------ integration
@pytest.mark.integration
def test_loadgen_run_samples_the_embedded_server(tmp_path: Path, capsys) -> None:
    rc = main(["run", "--rate", "6", "--duration", "5", "--no-live", "--out-dir", str(tmp_path),
               "--server-model", "opt-125m", "--server-speed", "0.2", "--output-tokens", "32"])
    assert rc == 0, capsys.readouterr()
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [orjson.loads(x) for x in (run_dir / "records.jsonl").read_bytes().splitlines()]
    client = summary["client"]
    t0 = client["anchor"]["monotonic_ns"] + client["t0_offset_ns"]
    end = t0 + max(r["end_ns"] for r in records)
    lines = read_lines(run_dir / SERVER_METRICS_FILE)
    inside = [d for d in lines if t0 <= d["t_mono_ns"] <= end]
    span_s = (end - t0) / 1e9
    assert len(inside) >= int(span_s), (len(inside), span_s)
    for d in inside:
        assert all(d["common"][k] is not None for k in ("queued", "running", "kv_usage")), d["common"]
    assert max(d["common"]["running"] for d in inside) >= 1
    block = summary["extra"]["server_metrics"]
    assert block["server"] == "emulator" and block["samples"] == len(lines) and block["running"]["max"] >= 1
    size = (run_dir / SERVER_METRICS_FILE).stat().st_size
    print(f"\nembedded server: {len(inside) / span_s:.2f} samples/s over {span_s:.1f} s, {size / len(lines):.0f} "
          f"bytes a line, {size / len(lines) * 2 * 60 / 1e6:.2f} MB a minute at 2 Hz")


@pytest.mark.integration
def test_locust_samples_the_server_and_charts_it(embedded_server, tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    cmd = [str(bin_dir / "locust"), "-f", "scenarios/", "TritonHttpPoisson", "--headless", "-H",
           embedded_server.http_url, "--rate", "8", "--requests", "40", "--input-tokens", "32", "--output-tokens",
           "16", "--out-dir", str(tmp_path), "--only-summary", "--server-metrics", embedded_server.metrics_url]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    run_dir = next(d for d in tmp_path.iterdir() if d.is_dir())
    lines = read_lines(run_dir / SERVER_METRICS_FILE)
    assert len(lines) >= 5 and all(d["common"]["running"] is not None for d in lines)
    history = json.loads((run_dir / "llm_history.json").read_text())
    points = history if isinstance(history, list) else history.get("history", [])
    assert any(pt.get("server_running") is not None and pt.get("server_kv_usage") is not None for pt in points)
    block = json.loads((run_dir / "summary.json").read_text())["extra"]["server_metrics"]
    assert block["server"] == "emulator" and block["samples"] == len(lines)
    assert "Traceback" not in p.stderr
