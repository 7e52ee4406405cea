"""Performance model, profiles, memory sizing and power model: monotonic physics and clear errors."""

from __future__ import annotations

import dataclasses

import pytest

from loadgen.emulator.perfmodel import (
    StepShape,
    decode_step_time,
    prefill_time,
    steady_decode_throughput,
    step_cost,
)
from loadgen.emulator.power import EnergyCounter, PowerModel
from loadgen.emulator.profiles import (
    GIB,
    GPUS,
    MODELS,
    check_batch_fits,
    get_gpu,
    get_model,
    kv_pool_bytes,
    largest_batch_that_fits,
)
from loadgen.errors import UsageError

H100 = get_gpu("h100-64gb")
BATCHES = [1, 2, 4, 8, 16, 32, 64, 96, 128, 192, 256, 384, 512, 640, 768]


@pytest.mark.parametrize("model", sorted(MODELS))
def test_step_time_grows_with_batch_and_context(model):
    m = get_model(model)
    times = [decode_step_time(m, H100, b, 400) for b in BATCHES]
    assert all(b > a for a, b in zip(times, times[1:], strict=False))
    ctx = [decode_step_time(m, H100, 64, c) for c in (100, 400, 1600)]
    assert ctx[0] < ctx[1] < ctx[2]


@pytest.mark.parametrize("model", ["opt-1.3b", "llama-2-7b", "opt-125m"])
def test_throughput_rises_then_plateaus(model):
    m = get_model(model)
    tput = [steady_decode_throughput(m, H100, b, 400) for b in BATCHES]
    assert all(b > a for a, b in zip(tput, tput[1:], strict=False))  # never falls in the steady state ...
    assert tput[BATCHES.index(64)] > 1.25 * tput[BATCHES.index(32)]
    # ... but the last doublings buy little: the memory-bound KV reads and per-sequence host time dominate
    assert tput[-1] < 1.10 * tput[BATCHES.index(384)]
    assert tput[BATCHES.index(8)] > 5 * tput[0]


def test_host_share_matches_the_study_profile_for_opt():
    m = get_model("opt-1.3b")
    small = step_cost(m, H100, StepShape(decode_seqs=1, decode_ctx_tokens=250))
    large = step_cost(m, H100, StepShape(decode_seqs=400, decode_ctx_tokens=400 * 400))
    assert small.host_s / small.total_s == pytest.approx(0.25, abs=0.05)
    assert large.host_s / large.total_s == pytest.approx(0.37, abs=0.05)
    assert large.mem_s > large.compute_s  # large-batch decode stays memory-bound


def test_roofline_switches_to_compute_for_prefill():
    m = get_model("llama-2-7b")
    decode = step_cost(m, H100, StepShape(decode_seqs=1, decode_ctx_tokens=100))
    prefill = step_cost(
        m, H100, StepShape(prefill_seqs=1, prefill_tokens=2048, prefill_pairs=2048 * 2049 / 2)
    )
    # batch 1: the weight read dwarfs the only SM-bound work left (per-sequence attention work)
    # about one FLOP per byte read: far below the roofline's ridge (effective FLOP/s over effective bytes/s)
    assert decode.mem_s > 100 * decode.compute_s and decode.flops / decode.bytes < 2 < H100.flops / H100.bandwidth
    assert prefill.compute_s > prefill.mem_s
    # compute-bound: time about proportional to prompt length once past the weights-read time
    assert prefill_time(m, H100, 2048) / prefill_time(m, H100, 1024) == pytest.approx(2.0, rel=0.25)


def test_faster_memory_means_faster_decode():
    m = get_model("llama-2-7b")
    t = {g: decode_step_time(m, get_gpu(g), 1, 300) for g in ("h100-64gb", "h100-80gb", "h200")}
    assert t["h200"] < t["h100-80gb"] < t["h100-64gb"]
    doubled = dataclasses.replace(H100, hbm_bandwidth=2 * H100.hbm_bandwidth)
    assert decode_step_time(m, doubled, 1, 300) < decode_step_time(m, H100, 1, 300)


def test_kv_pools_match_the_study():
    assert kv_pool_bytes(get_model("opt-1.3b"), H100) / GIB == pytest.approx(54, abs=0.5)
    assert kv_pool_bytes(get_model("llama-2-7b"), H100) / GIB == pytest.approx(44, abs=0.5)
    two = kv_pool_bytes(get_model("opt-1.3b"), H100, replicas=2)
    assert two / GIB == pytest.approx((0.9 * 64 / 2) - 2.45 - 1.1, abs=0.1)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UsageError, match="unknown model profile 'gpt-5'.*opt-1.3b"):
        get_model("gpt-5")
    with pytest.raises(UsageError, match="unknown GPU profile 'tpu'.*h100-64gb"):
        get_gpu("tpu")
    assert get_model("OPT-1.3B") is MODELS["opt-1.3b"]
    assert get_gpu(H100) is H100


def test_weights_that_do_not_fit_are_refused():
    with pytest.raises(UsageError, match="llama-2-13b does not fit on h100-64gb with 4 replica"):
        kv_pool_bytes(get_model("llama-2-13b"), H100, replicas=4)


def test_batch_that_does_not_fit_names_the_largest():
    largest = largest_batch_that_fits("llama-2-7b", "h100-64gb")
    assert 256 < largest < 768  # the study ran 256-512 (with preemption), so those must be accepted
    check_batch_fits("llama-2-7b", "h100-64gb", largest)
    with pytest.raises(UsageError, match=f"max batch {largest + 1} does not fit: at most {largest}"):
        check_batch_fits("llama-2-7b", "h100-64gb", largest + 1)
    assert largest_batch_that_fits("llama-2-7b", "h100-64gb", replicas=2) < largest
    with pytest.raises(UsageError, match="whole number"):
        check_batch_fits("opt-1.3b", "h100-64gb", 0)


def test_every_profile_pair_has_a_positive_pool_at_one_replica():
    for g in GPUS:
        for m in MODELS:
            assert largest_batch_that_fits(m, g) >= 256


def test_power_levels_and_energy_counter():
    p = PowerModel.for_gpu(H100)
    assert p.total_w(False) == H100.idle_w
    floor = p.total_w(True)
    # static draw while the engine has work (clocks up), fitted: about a fifth of the range above idle
    assert H100.idle_w + 0.1 * (H100.max_w - H100.idle_w) < floor < H100.idle_w + 0.3 * (H100.max_w - H100.idle_w)
    m = get_model("opt-1.3b")
    decode = step_cost(m, H100, StepShape(decode_seqs=256, decode_ctx_tokens=256 * 400))
    prefill = step_cost(
        m, H100, StepShape(prefill_seqs=8, prefill_tokens=2048, prefill_pairs=8 * 256 * 257 / 2)
    )
    assert (
        p.total_w(True, [p.phase_dynamic_w(prefill)]) > p.total_w(True, [p.phase_dynamic_w(decode)]) > floor
    )
    assert p.total_w(True, [1e6]) == H100.max_w  # capped at the board limit
    shared = p.total_w(True, [p.phase_dynamic_w(decode)] * 2, stretch=2.0)
    assert shared == pytest.approx(
        p.total_w(True, [p.phase_dynamic_w(decode)])
    )  # saturated GPU: average, not sum
    e = EnergyCounter(0.0, 100.0)
    readings = [e.read(0.5), e.read(1.0)]
    e.set_power(1.0, 300.0)
    readings += [e.read(0.9), e.read(2.0)]  # a stale timestamp never decreases the counter
    assert readings == [50.0, 100.0, 100.0, 400.0]


# ------------------------------------------------------------------------------------------ the physical parts
DATASHEET = {"name", "memory_bytes", "hbm_bandwidth", "fp16_flops", "idle_w", "max_w"}


def test_every_constant_is_named_and_sourced():
    import importlib.util
    from pathlib import Path

    from loadgen.emulator.profiles import CONSTANTS, FITTED_CONSTANTS, GpuProfile

    fields = {f.name for f in dataclasses.fields(GpuProfile)} - DATASHEET
    assert fields == set(CONSTANTS)
    for name, (value, source, why) in CONSTANTS.items():
        assert source in ("fitted", "assumed") and len(why) > 20, name
        assert all(getattr(g, name) == value for g in GPUS.values()), name
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "calibrate_emulator.py"
    spec = importlib.util.spec_from_file_location("calibrate_emulator", script)
    cal = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cal)
    assert set(FITTED_CONSTANTS) == set(cal.PERF_CONSTANTS) | set(cal.POWER_CONSTANTS)  # the fit sets exactly these


def test_gemm_rate_grows_with_its_rows():
    rates = [H100.gemm_flops(m) for m in (1, 32, 128, 512, 4096)]
    assert all(b > a for a, b in zip(rates, rates[1:], strict=False))
    assert rates[2] == pytest.approx(H100.flops / 2) and rates[-1] < H100.flops


def test_lone_prompt_prefill_is_launch_bound_for_a_small_model():
    opt, llama = get_model("opt-1.3b"), get_model("llama-2-7b")
    small = step_cost(opt, H100, StepShape(prefill_seqs=1, prefill_tokens=111, prefill_pairs=111 * 112 / 2))
    # the CPU issues every kernel (no CUDA graph): the step lasts at least the launches
    assert small.total_s >= H100.host_base_s + opt.layers * H100.eager_layer_s
    assert small.host_s > H100.host_base_s  # the GPU waited for launches
    big = step_cost(llama, H100, StepShape(prefill_seqs=1, prefill_tokens=111, prefill_pairs=111 * 112 / 2))
    assert big.gpu_s > llama.layers * H100.eager_layer_s  # a 7B model's weight read hides the launches
    assert big.total_s > small.total_s
    assert prefill_time(opt, H100, 111) > decode_step_time(opt, H100, 1, 111)  # slower than a decode step


def test_decodes_beside_a_prefill_chunk_pay_for_it():
    m = get_model("opt-1.3b")
    decode = StepShape(decode_seqs=64, decode_ctx_tokens=64 * 400)
    chunk = dict(prefill_seqs=4, prefill_tokens=1024, prefill_pairs=4 * 256 * 257 / 2)
    mixed = step_cost(m, H100, StepShape(decode_seqs=64, decode_ctx_tokens=64 * 400, **chunk))
    alone = step_cost(m, H100, decode)
    lone_chunk = step_cost(m, H100, StepShape(**chunk))
    assert mixed.total_s > alone.total_s  # the running sequences wait for the chunk's work
    assert mixed.total_s < alone.total_s + lone_chunk.total_s  # one weight read and one launch for both
    assert mixed.compute_s > alone.compute_s and mixed.bytes > alone.bytes  # its GEMMs, attention, KV writes


def test_energy_is_static_plus_bytes_plus_flops():
    p = PowerModel.for_gpu(H100)
    m = get_model("opt-1.3b")
    cost = step_cost(m, H100, StepShape(decode_seqs=128, decode_ctx_tokens=128 * 400))
    expected = (H100.idle_w + H100.active_w) * cost.total_s + H100.j_per_byte * cost.bytes + H100.j_per_flop * cost.flops
    assert p.step_energy_j(cost) == pytest.approx(expected)
    # batch-1 power follows the bytes a model streams per second, far from the board limit
    watts = []
    for name in ("opt-125m", "opt-1.3b", "llama-2-7b"):
        c = step_cost(get_model(name), H100, StepShape(decode_seqs=1, decode_ctx_tokens=300))
        watts.append(p.step_energy_j(c) / c.total_s)
    assert watts[0] < watts[1] < watts[2] < 0.5 * H100.max_w
