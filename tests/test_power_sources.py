"""Source plumbing that needs no GPU: the --power spec, Triton's Prometheus page (DCGM and emulated families),
and the nvidia-smi fallback driven through a FAKE nvidia-smi script that prints what the real one prints."""

from __future__ import annotations

import socket
import sys
import textwrap
import time

import pytest

from loadgen.errors import UsageError
from loadgen.power.sources import (
    EMULATED_GPU,
    NvidiaSmiSource,
    SourceUnavailable,
    TritonSource,
    make_source,
    parse_gpu_list,
    parse_smi_line,
    split_spec,
)
from loadgen.telemetry.prometheus import parse_samples

DCGM_PAGE = """\
# HELP nv_inference_request_success Number of successful inference requests
nv_inference_request_success{model="ensemble",version="1"} 12
# HELP nv_gpu_power_usage GPU power usage in watts
# TYPE nv_gpu_power_usage gauge
nv_gpu_power_usage{gpu_uuid="GPU-aaa"} 312.5
nv_gpu_power_usage{gpu_uuid="GPU-bbb"} 80.25
nv_gpu_power_limit{gpu_uuid="GPU-aaa"} 700
nv_energy_consumption{gpu_uuid="GPU-aaa"} 123456.5
nv_energy_consumption{gpu_uuid="GPU-bbb"} 999
nv_gpu_utilization{gpu_uuid="GPU-aaa"} 0.93
nv_gpu_memory_used_bytes{gpu_uuid="GPU-aaa"} 6.1e+10
nv_gpu_power_usage_extra{gpu_uuid="GPU-aaa"} 1
"""

EMULATED_PAGE = DCGM_PAGE + """\
loadgen_emulated_gpu_energy_joules_total{gpu="h100-64gb",model="ensemble"} 4521.25
loadgen_emulated_gpu_power_watts{gpu="h100-64gb",model="ensemble"} 233.75
loadgen_emulated_requests{instance="ensemble_0_1",model="ensemble",state="running",version="1"} 7
loadgen_emulated_requests{instance="ensemble_0_0",model="ensemble",state="running",version="1"} 9
loadgen_emulated_requests{instance="ensemble_0_0",model="ensemble",state="waiting",version="1"} 2
loadgen_emulated_requests_completed_total{instance="ensemble_0_0",model="ensemble",version="1"} 55
"""


def test_power_spec_and_gpu_list():
    assert split_spec("nvml") == ("nvml", None)
    assert split_spec("triton=http://h:8002/metrics") == ("triton", "http://h:8002/metrics")
    assert split_spec(" NVIDIA-SMI ") == ("nvidia-smi", None)
    with pytest.raises(UsageError, match=r"--power 'dcgm': unknown source; choose nvml"):
        split_spec("dcgm")
    with pytest.raises(UsageError, match="only triton takes a URL"):
        split_spec("nvml=http://x")
    with pytest.raises(UsageError, match="give the metrics URL"):
        make_source("triton")
    assert parse_gpu_list(None) is None and parse_gpu_list("all") is None
    assert parse_gpu_list("0, GPU-ab") == ["0", "GPU-ab"]
    with pytest.raises(UsageError, match="--power-gpu '0,,1'"):
        parse_gpu_list("0,,1")


def test_prometheus_lines_of_wanted_families_only():
    got = parse_samples('a_b{x="q\\"uote",y="2"} 1.5\na_bc 3\n# a_b 9\na_b 2 1700000000\n', {"a_b"})
    assert got == [("a_b", {"x": 'q"uote', "y": "2"}, 1.5), ("a_b", {}, 2.0)]


def test_triton_page_per_gpu_and_emulated_gpu():
    src = TritonSource("http://127.0.0.1:8002/metrics")
    gpus = src._by_gpu(DCGM_PAGE)
    assert set(gpus) == {"GPU-aaa", "GPU-bbb"}
    a = gpus["GPU-aaa"]
    assert a["power_w"] == 312.5 and a["energy_j"] == 123456.5 and a["power_limit_w"] == 700
    assert a["gpu_util"] == pytest.approx(93.0) and a["mem_used_bytes"] == 6.1e10  # % like NVML
    emu = src._by_gpu(EMULATED_PAGE)[EMULATED_GPU]
    assert emu == {"gpu": EMULATED_GPU, "power_w": 233.75, "energy_j": 4521.25, "running": 16.0, "waiting": 2.0}


def test_triton_unreachable_or_without_power_says_so():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    with pytest.raises(SourceUnavailable, match=rf"triton: cannot scrape http://127.0.0.1:{port}/metrics"):
        TritonSource(f"http://127.0.0.1:{port}/metrics").open()
    with pytest.raises(UsageError, match="expected an http URL"):
        TritonSource("https://secure:8002/metrics")


FAKE_SMI = """\
#!{python}
# FAKE nvidia-smi for tests: prints what the real one prints for the two queries the source makes.
import sys, time
args = sys.argv[1:]
if {fail!r}:
    print("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest "
          "NVIDIA driver is installed and running.")
    sys.exit(9)
if args[0] == "--query-gpu=index,uuid,name,power.limit":
    print("0, GPU-aaa, NVIDIA A100-SXM4-80GB, 400.00")
    print("1, GPU-bbb, NVIDIA A100-SXM4-80GB, [N/A]")
    sys.exit(0)
ms = int([a for a in args if a.startswith("-lms=")][0][5:])
ids = [a for a in args if a.startswith("--id=")][0][5:].split(",")
k = 0
while True:
    for i in ids:
        print(f"{{i}}, GPU-{{'ab'[int(i)] * 3}}, {{100 + k + int(i):.2f}}, 97, 40, 61000, 1410, 1593, 63, 0x0000000000000004")
    sys.stdout.flush()
    k += 1
    time.sleep(ms / 1000)
"""


def _fake_smi(tmp_path, fail: bool = False):
    path = tmp_path / ("nvidia-smi-broken" if fail else "nvidia-smi-fake")
    path.write_text(textwrap.dedent(FAKE_SMI.format(python=sys.executable, fail=fail)))
    path.chmod(0o755)
    return str(path)


def test_smi_line_parsing():
    s = parse_smi_line("0, GPU-x, 245.67, 97, 40, 61000, 1410, 1593, 63, 0x0000000000000004")
    assert s == {"gpu": "0", "power_w": 245.67, "gpu_util": 97.0, "mem_util": 40.0, "mem_used_bytes": 61000 * 2**20,
                 "sm_clock_mhz": 1410, "mem_clock_mhz": 1593, "temp_c": 63, "throttle_reasons": 4}
    s = parse_smi_line("1, GPU-y, [N/A], [Not Supported], 3, 10, 210, 405, 30, [N/A]")
    assert "power_w" not in s and "gpu_util" not in s and "throttle_reasons" not in s and s["mem_util"] == 3.0
    assert parse_smi_line("garbage") is None


def test_nvidia_smi_source_streams_samples_by_uuid(tmp_path):
    src = NvidiaSmiSource(["GPU-bbb"], binary=_fake_smi(tmp_path), interval_s=0.05)
    meta = src.open()
    try:
        assert meta["gpus"] == [{"id": "GPU-bbb", "uuid": "GPU-bbb", "name": "NVIDIA A100-SXM4-80GB",
                                 "energy_counter": False}]
        got = []
        deadline = time.monotonic() + 10
        while len(got) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
            got += src.read()
        assert len(got) >= 3
        assert all(s["gpu"] == "GPU-bbb" and s["power_w"] >= 101 for s in got)
        assert [s["t_ns"] for s in got] == sorted(s["t_ns"] for s in got)
    finally:
        src.close()
    assert src._proc.poll() is not None  # the sampling process is gone


def test_nvidia_smi_failures_say_why(tmp_path):
    with pytest.raises(SourceUnavailable, match="nvidia-smi: NVIDIA-SMI has failed because it couldn't communicate"):
        NvidiaSmiSource(binary=_fake_smi(tmp_path, fail=True)).open()
    with pytest.raises(SourceUnavailable, match="is not on PATH"):
        NvidiaSmiSource(binary=str(tmp_path / "no-such-smi")).open()
    with pytest.raises(SourceUnavailable, match="no GPU '7'; it lists 0, 1"):
        NvidiaSmiSource(["7"], binary=_fake_smi(tmp_path)).open()
