"""The one Prometheus text parser (loadgen.telemetry.prometheus): real Triton and vLLM pages, a histogram, escaped
label values, NaN/+Inf, timestamps, and malformed lines that must cost only themselves."""

from __future__ import annotations

import math

from loadgen.power.sources import TRITON_GPU
from loadgen.sweep.scrape import KV_USAGE, PREEMPTIONS, RUNNING, WANTED, pick
from loadgen.telemetry.prometheus import parse_samples

# What Triton 24.x with the TensorRT-LLM backend and DCGM serves on :8002/metrics (trimmed, one GPU).
# Note the counters without a _total suffix (nv_inference_request_success, nv_energy_consumption).
TRITON_PAGE = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="ensemble",version="1"} 1204
nv_inference_request_success{model="tensorrt_llm",version="1"} 1204
# HELP nv_inference_request_failure Number of failed inference requests, all batch sizes
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="ensemble",reason="OTHER",version="1"} 0
# HELP nv_inference_count Number of inferences performed (does not include cached requests)
# TYPE nv_inference_count counter
nv_inference_count{model="ensemble",version="1"} 1204
# HELP nv_inference_request_duration_us Cumulative inference request duration in microseconds (includes cached requests)
# TYPE nv_inference_request_duration_us counter
nv_inference_request_duration_us{model="ensemble",version="1"} 9.8211e+08
# HELP nv_inference_pending_request_count Instantaneous number of pending requests awaiting execution per-model.
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="ensemble",version="1"} 3
# HELP nv_trt_llm_request_metrics TRT LLM request metrics
# TYPE nv_trt_llm_request_metrics gauge
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="context",version="1"} 1
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="scheduled",version="1"} 14
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="max",version="1"} 64
# HELP nv_trt_llm_kv_cache_block_metrics TRT LLM KV cache block metrics
# TYPE nv_trt_llm_kv_cache_block_metrics gauge
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction",model="tensorrt_llm",version="1"} 0.4375
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="used",model="tensorrt_llm",version="1"} 1792
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="max",model="tensorrt_llm",version="1"} 4096
# HELP nv_gpu_utilization GPU utilization rate [0.0 - 1.0)
# TYPE nv_gpu_utilization gauge
nv_gpu_utilization{gpu_uuid="GPU-5b1e6f0c-3a3e-2f4d-9e37-1d0a7c8b9f21"} 0.97
# HELP nv_gpu_power_usage GPU power usage in watts
# TYPE nv_gpu_power_usage gauge
nv_gpu_power_usage{gpu_uuid="GPU-5b1e6f0c-3a3e-2f4d-9e37-1d0a7c8b9f21"} 612.417
# HELP nv_gpu_power_limit GPU power management limit in watts
# TYPE nv_gpu_power_limit gauge
nv_gpu_power_limit{gpu_uuid="GPU-5b1e6f0c-3a3e-2f4d-9e37-1d0a7c8b9f21"} 700
# HELP nv_energy_consumption GPU energy consumption in joules since the Triton Server started
# TYPE nv_energy_consumption counter
nv_energy_consumption{gpu_uuid="GPU-5b1e6f0c-3a3e-2f4d-9e37-1d0a7c8b9f21"} 183422.731
"""
UUID = "GPU-5b1e6f0c-3a3e-2f4d-9e37-1d0a7c8b9f21"

# vLLM's page: names with a colon, a counter with _total, a histogram, a gauge in NaN.
VLLM_PAGE = """\
# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 12.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 0.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} NaN
# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{model_name="m"} 4.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{le="0.01",model_name="m"} 2.0
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} 90.0
vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="m"} 100.0
vllm:time_to_first_token_seconds_count{model_name="m"} 100.0
vllm:time_to_first_token_seconds_sum{model_name="m"} 4.25
"""


def test_triton_page_every_sample_with_names_as_written():
    got = parse_samples(TRITON_PAGE)
    m, t = {"model": "ensemble", "version": "1"}, {"model": "tensorrt_llm", "version": "1"}
    gpu = {"gpu_uuid": UUID}
    assert got == [
        ("nv_inference_request_success", m, 1204.0),
        ("nv_inference_request_success", t, 1204.0),
        ("nv_inference_request_failure", {"model": "ensemble", "reason": "OTHER", "version": "1"}, 0.0),
        ("nv_inference_count", m, 1204.0),
        ("nv_inference_request_duration_us", m, 9.8211e8),
        ("nv_inference_pending_request_count", m, 3.0),
        ("nv_trt_llm_request_metrics", {**t, "request_type": "context"}, 1.0),
        ("nv_trt_llm_request_metrics", {**t, "request_type": "scheduled"}, 14.0),
        ("nv_trt_llm_request_metrics", {**t, "request_type": "max"}, 64.0),
        ("nv_trt_llm_kv_cache_block_metrics", {**t, "kv_cache_block_type": "fraction"}, 0.4375),
        ("nv_trt_llm_kv_cache_block_metrics", {**t, "kv_cache_block_type": "used"}, 1792.0),
        ("nv_trt_llm_kv_cache_block_metrics", {**t, "kv_cache_block_type": "max"}, 4096.0),
        ("nv_gpu_utilization", gpu, 0.97),
        ("nv_gpu_power_usage", gpu, 612.417),
        ("nv_gpu_power_limit", gpu, 700.0),
        # a "# TYPE ... counter" family without _total: prometheus_client alone would rename it *_total
        ("nv_energy_consumption", gpu, 183422.731),
    ]
    assert all(type(v) is float for *_, v in got)


def test_triton_page_wanted_sample_names_only():
    got = parse_samples(TRITON_PAGE, set(TRITON_GPU))
    gpu = {"gpu_uuid": UUID}
    assert got == [("nv_gpu_utilization", gpu, 0.97), ("nv_gpu_power_usage", gpu, 612.417),
                   ("nv_gpu_power_limit", gpu, 700.0), ("nv_energy_consumption", gpu, 183422.731)]
    used = parse_samples(TRITON_PAGE, ["nv_trt_llm_kv_cache_block_metrics"])
    assert [(lab["kv_cache_block_type"], v) for _, lab, v in used] == [("fraction", 0.4375), ("used", 1792.0),
                                                                         ("max", 4096.0)]
    assert parse_samples(TRITON_PAGE, set()) == []
    assert parse_samples(TRITON_PAGE, {"nv_gpu_power"}) == []  # a prefix of a name is not the name
    assert parse_samples(TRITON_PAGE, {"nv_energy_consumption_total"}) == []  # the page's name, not munged


def test_vllm_page_colon_names_histogram_nan_inf():
    got = parse_samples(VLLM_PAGE)
    m = {"model_name": "m"}
    assert [(n, lab) for n, lab, _ in got] == [
        ("vllm:num_requests_running", m),
        ("vllm:num_requests_waiting", m),
        ("vllm:gpu_cache_usage_perc", m),
        ("vllm:num_preemptions_total", m),
        ("vllm:time_to_first_token_seconds_bucket", {"le": "0.01", **m}),
        ("vllm:time_to_first_token_seconds_bucket", {"le": "0.1", **m}),
        ("vllm:time_to_first_token_seconds_bucket", {"le": "+Inf", **m}),
        ("vllm:time_to_first_token_seconds_count", m),
        ("vllm:time_to_first_token_seconds_sum", m),
    ]
    values = [v for *_, v in got]
    assert math.isnan(values[2])
    assert values[:2] + values[3:] == [12.0, 0.0, 4.0, 2.0, 90.0, 100.0, 100.0, 4.25]
    # a histogram's parts are asked for by their sample names
    assert parse_samples(VLLM_PAGE, {"vllm:time_to_first_token_seconds_sum",
                                     "vllm:time_to_first_token_seconds_count"}) == [
        ("vllm:time_to_first_token_seconds_count", m, 100.0), ("vllm:time_to_first_token_seconds_sum", m, 4.25)]
    assert parse_samples(VLLM_PAGE, {"vllm:time_to_first_token_seconds"}) == []
    # what the sweep's server watch reads from it
    s = parse_samples(VLLM_PAGE, WANTED)
    assert pick(s, RUNNING) == [12.0] and pick(s, PREEMPTIONS) == [4.0] and math.isnan(pick(s, KV_USAGE)[0])


def test_escapes_infinities_timestamps_and_spacing():
    page = (
        '# a free comment\n'
        '#\n'
        '\n'
        'loadgen_x{path="C:\\\\models\\\\m",msg="say \\"hi\\"\\nbye",empty=""} +Inf 1700000000123\n'
        'loadgen_x{path="a,b}=c"} -Inf\n'
        'loadgen_y 1.5e-3\n'
        'loadgen_y{instance="r1",} 7 1700000000000\n'
        'loadgen_z{a="1"}\t42\r\n'
    )
    assert parse_samples(page) == [
        ("loadgen_x", {"path": "C:\\models\\m", "msg": 'say "hi"\nbye', "empty": ""}, math.inf),
        ("loadgen_x", {"path": "a,b}=c"}, -math.inf),
        ("loadgen_y", {}, 0.0015),
        ("loadgen_y", {"instance": "r1"}, 7.0),
        ("loadgen_z", {"a": "1"}, 42.0),
    ]


def test_malformed_lines_cost_only_themselves():
    bad = [
        'nv_gpu_power_usage{gpu_uuid="GPU-aaa"} not-a-number',
        'nv_gpu_power_usage{gpu_uuid="GPU-aaa", ="x"} 5',  # an empty label name: IndexError inside the library
        'nv_gpu_power_usage{gpu_uuid=GPU-aaa} 5',  # unquoted label value
        'nv_gpu_power_usage{gpu_uuid="GPU-aaa"}',  # no value
        'nv_gpu_power_usage',
        '# TYPE nv_gpu_power_usage',  # a TYPE line without its type: dropped like every comment
    ]
    good_before = 'nv_gpu_power_usage{gpu_uuid="GPU-aaa"} 312.5\n'
    good_after = 'nv_energy_consumption{gpu_uuid="GPU-aaa"} 999\nnv_gpu_power_usage{gpu_uuid="GPU-bbb"} 80.25\n'
    want = [("nv_gpu_power_usage", {"gpu_uuid": "GPU-aaa"}, 312.5),
            ("nv_energy_consumption", {"gpu_uuid": "GPU-aaa"}, 999.0),
            ("nv_gpu_power_usage", {"gpu_uuid": "GPU-bbb"}, 80.25)]
    for line in bad:
        page = good_before + line + "\n" + good_after
        assert parse_samples(page) == want, line
        assert parse_samples(page, set(TRITON_GPU)) == want, line
    # a body cut off in the middle of a line (the connection dropped): the lines before it survive
    cut = TRITON_PAGE[:TRITON_PAGE.index(UUID + '"} 700') + 10]
    assert parse_samples(cut, set(TRITON_GPU)) == [("nv_gpu_utilization", {"gpu_uuid": UUID}, 0.97),
                                                   ("nv_gpu_power_usage", {"gpu_uuid": UUID}, 612.417)]
    assert parse_samples("") == [] and parse_samples("# only comments\n\n") == []
