"""The NVML source against a FAKE NVML library object (this machine has no NVIDIA driver): the fake has the real
pynvml function names, raises the real ``pynvml.NVMLError`` codes and returns what pynvml returns (ints in mW, mJ,
MHz and °C; pynvml's own ctypes structs for utilisation and memory). The real library is exercised only on a GPU
machine (benchmarks/POWER.md)."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter

import pynvml
import pytest

from loadgen.power.energy import level_energy, load_power_file
from loadgen.power.sidecar import run_sidecar
from loadgen.power.sources import NvmlSource, SourceError, SourceUnavailable, throttle_names

UUIDS = ["GPU-11111111-2222-3333-4444-555555555555", "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"]


def watts(t_s: float) -> float:
    return 200.0 + 100.0 * math.sin(2 * math.pi * t_s / 0.37)


def joules(t_s: float) -> float:
    """Exact integral of ``watts`` from 0."""
    return 200.0 * t_s - 100.0 * 0.37 / (2 * math.pi) * (math.cos(2 * math.pi * t_s / 0.37) - 1)


class FakeNvmlLibrary:
    """FAKE stand-in for the ``pynvml`` module, for tests only. GPU i draws ``watts(t) * (i + 1)`` on the
    perf_counter clock; its energy counter is the exact integral (plus ``counter_offset_mj``)."""

    NVMLError = pynvml.NVMLError
    NVML_ERROR_NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
    NVML_ERROR_NO_PERMISSION = pynvml.NVML_ERROR_NO_PERMISSION
    NVML_ERROR_NOT_FOUND = pynvml.NVML_ERROR_NOT_FOUND
    NVML_ERROR_INVALID_ARGUMENT = pynvml.NVML_ERROR_INVALID_ARGUMENT
    NVML_ERROR_DRIVER_NOT_LOADED = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    NVML_ERROR_LIBRARY_NOT_FOUND = pynvml.NVML_ERROR_LIBRARY_NOT_FOUND
    NVML_ERROR_FUNCTION_NOT_FOUND = pynvml.NVML_ERROR_FUNCTION_NOT_FOUND
    NVML_ERROR_GPU_IS_LOST = pynvml.NVML_ERROR_GPU_IS_LOST
    NVML_CLOCK_SM = pynvml.NVML_CLOCK_SM
    NVML_CLOCK_MEM = pynvml.NVML_CLOCK_MEM
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU

    def __init__(self, count: int = 2, init_error: int | None = None, energy_supported: bool = True,
                 counter_offset_mj: int = 0) -> None:
        self.count = count
        self.init_error = init_error
        self.energy_supported = energy_supported
        self.counter_offset_mj = counter_offset_mj
        self.t0 = time.perf_counter_ns()
        self.calls: Counter[str] = Counter()
        self.initialised = False
        self.lost: set[int] = set()
        self.frozen_t: float | None = None  # set: every reading is taken at this time (s)

    def _t(self) -> float:
        if self.frozen_t is not None:
            return self.frozen_t
        return (time.perf_counter_ns() - self.t0) / 1e9

    def _call(self, name: str) -> None:
        self.calls[name] += 1
        if not self.initialised:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)

    def nvmlInit(self) -> None:
        self.calls["nvmlInit"] += 1
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self._call("nvmlShutdown")
        self.initialised = False

    def nvmlDeviceGetCount(self) -> int:
        self._call("nvmlDeviceGetCount")
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._call("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < self.count:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return index

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:
        self._call("nvmlDeviceGetHandleByUUID")
        if uuid not in UUIDS[: self.count]:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return UUIDS.index(uuid)

    def nvmlDeviceGetUUID(self, h: int) -> str:
        self._call("nvmlDeviceGetUUID")
        return UUIDS[h]

    def nvmlDeviceGetName(self, h: int) -> str:
        self._call("nvmlDeviceGetName")
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int:
        self._call("nvmlDeviceGetEnforcedPowerLimit")
        return 700_000

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        self._call("nvmlDeviceGetPowerUsage")
        if h in self.lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return int(watts(self._t()) * (h + 1) * 1000)

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:
        self._call("nvmlDeviceGetTotalEnergyConsumption")
        if not self.energy_supported:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self.counter_offset_mj + int(joules(self._t()) * (h + 1) * 1000)

    def nvmlDeviceGetUtilizationRates(self, h: int) -> pynvml.c_nvmlUtilization_t:
        self._call("nvmlDeviceGetUtilizationRates")
        u = pynvml.c_nvmlUtilization_t()
        u.gpu, u.memory = 87, 41
        return u

    def nvmlDeviceGetMemoryInfo(self, h: int) -> pynvml.c_nvmlMemory_t:
        self._call("nvmlDeviceGetMemoryInfo")
        m = pynvml.c_nvmlMemory_t()
        m.total, m.used = 80 * 2**30, 61 * 2**30
        m.free = m.total - m.used
        return m

    def nvmlDeviceGetClockInfo(self, h: int, clock_type: int) -> int:
        self._call("nvmlDeviceGetClockInfo")
        return {pynvml.NVML_CLOCK_SM: 1980, pynvml.NVML_CLOCK_MEM: 2619}[clock_type]

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        self._call("nvmlDeviceGetTemperature")
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return 61 + h

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: int) -> int:
        self._call("nvmlDeviceGetCurrentClocksEventReasons")
        return pynvml.nvmlClocksEventReasonSwPowerCap | pynvml.nvmlClocksEventReasonGpuIdle


def test_open_describes_gpus_by_index_and_uuid():
    lib = FakeNvmlLibrary()
    src = NvmlSource(["1", UUIDS[0]], lib=lib)
    meta = src.open()
    assert [g["id"] for g in meta["gpus"]] == ["1", UUIDS[0]]
    assert meta["gpus"][0]["uuid"] == UUIDS[1] and meta["gpus"][0]["name"] == "NVIDIA H100 80GB HBM3"
    assert meta["gpus"][0]["power_limit_w"] == 700.0 and meta["gpus"][0]["energy_counter"] is True
    src.close()
    assert lib.calls["nvmlShutdown"] == 1 and not lib.initialised
    assert [g["id"] for g in NvmlSource(None, lib=FakeNvmlLibrary()).open()["gpus"]] == ["0", "1"]


def test_read_converts_units_and_every_field():
    lib = FakeNvmlLibrary()
    lib.frozen_t = t = 1.3
    src = NvmlSource(["0", "1"], lib=lib)
    src.open()
    s0, s1 = src.read()
    assert s0["gpu"] == "0" and s1["gpu"] == "1"
    assert s0["power_w"] == pytest.approx(watts(t), abs=0.001)  # W from mW
    assert s1["energy_j"] == pytest.approx(2 * joules(t), abs=0.001)  # J from mJ
    assert (s0["gpu_util"], s0["mem_util"], s0["mem_used_bytes"]) == (87.0, 41.0, 61 * 2**30)
    assert (s0["sm_clock_mhz"], s0["mem_clock_mhz"], s0["temp_c"], s1["temp_c"]) == (1980, 2619, 61, 62)
    assert throttle_names(s0["throttle_reasons"]) == ["sw_power_cap"]  # GPU idle is not a slowdown


def test_gpu_without_energy_counter_is_asked_once_and_sampled_without_it():
    lib = FakeNvmlLibrary(energy_supported=False)
    src = NvmlSource(["0"], lib=lib)
    assert src.open()["gpus"][0]["energy_counter"] is False
    for _ in range(5):
        [s] = src.read()
        assert "energy_j" not in s and s["power_w"] > 0
    assert lib.calls["nvmlDeviceGetTotalEnergyConsumption"] == 1


@pytest.mark.parametrize(("code", "expected"), [
    (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "libnvidia-ml.so.1 was not found"),
    (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "the NVIDIA driver is not loaded"),
    (pynvml.NVML_ERROR_NO_PERMISSION, "no permission to query the GPU"),
])
def test_init_failures_say_why_in_one_line(code, expected):
    with pytest.raises(SourceUnavailable, match=expected) as info:
        NvmlSource(None, lib=FakeNvmlLibrary(init_error=code)).open()
    assert "\n" not in str(info.value) and "--power" in str(info.value)


def test_wrong_gpu_index_or_uuid_is_named():
    lib = FakeNvmlLibrary(count=2)
    with pytest.raises(SourceUnavailable, match=r"no GPU at index 3: this machine has 2 \(indexes 0-1\)"):
        NvmlSource(["3"], lib=lib).open()
    assert not lib.initialised  # shut down again after the failure
    with pytest.raises(SourceUnavailable, match="no GPU with UUID or index 'GPU-nope'"):
        NvmlSource(["GPU-nope"], lib=FakeNvmlLibrary()).open()


def test_a_lost_gpu_is_a_read_error_not_a_crash():
    lib = FakeNvmlLibrary()
    src = NvmlSource(["0"], lib=lib)
    src.open()
    lib.lost.add(0)
    with pytest.raises(SourceError, match="GPU 0: power"):
        src.read()


def test_side_car_with_nvml_counter_against_the_exact_integral(tmp_path):
    lib = FakeNvmlLibrary(counter_offset_mj=2**40)  # a counter that started long before us
    out = tmp_path / "power.jsonl"
    stop = threading.Event()
    threading.Timer(0.8, stop.set).start()
    assert run_sidecar(NvmlSource(["0", "1"], lib=lib), out, interval_s=0.02, stop=stop) == 0
    data = load_power_file(out)
    assert data.start["source"] == "nvml" and data.stop["reason"] == "stopped"
    s0 = data.series["0"]
    assert s0.t_ns.size >= 10 and (s0.t_ns[1:] > s0.t_ns[:-1]).all()
    assert data.stop["samples"] == 2 * data.stop["ticks"]
    a, b = int(s0.t_ns[1]), int(s0.t_ns[-2])
    e = level_energy(data, a, b, None, 10, 1000, 0)
    ta, tb = (a - lib.t0) / 1e9, (b - lib.t0) / 1e9
    truth = 3 * (joules(tb) - joules(ta))  # GPU 0 plus GPU 1 (twice the power)
    assert e["method"] == "counter"
    # the counter is read within microseconds of the stamp, mJ resolution: exact to well under 1 %
    assert e["counter_energy_j"] == pytest.approx(truth, rel=0.005)
    assert e["integral_energy_j"] == pytest.approx(truth, rel=0.05)
    assert e["per_gpu"]["1"]["energy_j"] == pytest.approx(2 * e["per_gpu"]["0"]["energy_j"], rel=0.005)


def test_side_car_bridges_a_driver_reload(tmp_path):
    lib = FakeNvmlLibrary(count=1, counter_offset_mj=10**9)
    out = tmp_path / "power.jsonl"
    stop = threading.Event()

    def reload_driver() -> None:
        lib.counter_offset_mj = -int(joules(lib._t()) * 1000)  # the counter restarts from 0 now

    threading.Timer(0.3, reload_driver).start()
    threading.Timer(0.7, stop.set).start()
    run_sidecar(NvmlSource(["0"], lib=lib), out, interval_s=0.02, stop=stop)
    data = load_power_file(out)
    s0 = data.series["0"]
    a, b = int(s0.t_ns[1]), int(s0.t_ns[-2])
    e = level_energy(data, a, b, None, 1, 1, 0)
    truth = joules((b - lib.t0) / 1e9) - joules((a - lib.t0) / 1e9)
    assert e["counter_resets"] == 1
    assert e["counter_energy_j"] == pytest.approx(truth, rel=0.03)
