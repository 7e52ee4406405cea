"""The emulator reproduces the study (STUDY.md) within the issue's tolerances, in virtual time.

Reference numbers and tolerances come from benchmarks/calibrate_emulator.py (the script that writes
benchmarks/CALIBRATION.md), so the test and the published table cannot drift apart.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from loadgen.emulator.simulate import sharegpt_like_lengths, simulate_offline
from loadgen.errors import UsageError

_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "calibrate_emulator.py"
_spec = importlib.util.spec_from_file_location("calibrate_emulator", _SCRIPT)
cal = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cal)

GPU = cal.GPU


@pytest.fixture(scope="module")
def opt_sweep():
    return cal.sweep("opt-1.3b", GPU, sorted(cal.REFERENCE["opt-1.3b"]))


@pytest.fixture(scope="module")
def llama_sweep():
    return cal.sweep(
        "llama-2-7b", GPU, sorted(cal.REFERENCE["llama-2-7b"]) + list(cal.LLAMA_PREEMPTION_BATCHES)
    )


def test_workload_has_the_study_means():
    inp, out = sharegpt_like_lengths(2000)
    assert inp.mean() == pytest.approx(111, rel=0.01) and out.mean() == pytest.approx(292, rel=0.01)
    assert inp.min() >= 4 and inp.max() <= 1024 and (inp + out).max() <= 2048
    again = sharegpt_like_lengths(2000)
    assert np.array_equal(again[0], inp) and np.array_equal(again[1], out)  # seeded


@pytest.mark.parametrize("model", ["opt-1.3b", "llama-2-7b"])
def test_each_reference_point_within_tolerance(model, opt_sweep, llama_sweep):
    runs = opt_sweep if model == "opt-1.3b" else llama_sweep
    for row in cal.comparison_rows(model, runs):
        assert abs(row["tput_err"]) <= cal.TOL_THROUGHPUT, row
        assert abs(row["itl_err"]) <= cal.TOL_ITL, row
        assert row["preemptions"] == 0, row  # the study's curves only hold runs without preemption


def test_plateau_where_the_study_saw_it(opt_sweep):
    batches = sorted(cal.REFERENCE["opt-1.3b"])
    emu = [opt_sweep[b]["total_tokens_per_s"] for b in batches]
    ref = [cal.REFERENCE["opt-1.3b"][b][1] for b in batches]
    assert cal.plateau_onset(batches, emu) == cal.plateau_onset(batches, ref) == 256
    itl = [opt_sweep[b]["mean_itl_ms"] for b in batches]
    assert all(b > a for a, b in zip(itl, itl[1:], strict=False))  # latency keeps growing on the plateau
    assert emu[-1] < 1.05 * opt_sweep[256]["total_tokens_per_s"]


def test_llama_runs_out_of_kv_cache_from_256(llama_sweep):
    for b, run in llama_sweep.items():
        if b >= 256:
            assert run["preemptions"] > 0, b
            assert run["kv_peak_usage"] == pytest.approx(1.0, abs=0.02)
        else:
            assert run["preemptions"] == 0, b


def test_two_replicas_at_256_beat_one_at_768():
    single = simulate_offline("opt-1.3b", GPU, 768, 2000)
    double = simulate_offline("opt-1.3b", GPU, 256, 2000, replicas=2, mps=True)
    no_mps = simulate_offline("opt-1.3b", GPU, 256, 2000, replicas=2, mps=False)
    gain = double["total_tokens_per_s"] / single["total_tokens_per_s"] - 1
    assert 0.20 <= gain <= 0.50
    assert double["total_tokens_per_s"] == pytest.approx(cal.REFERENCE_REPLICATION["double"][1], rel=0.15)
    assert (
        no_mps["total_tokens_per_s"] < double["total_tokens_per_s"]
    )  # MPS overlaps what time slicing cannot
    assert double["preemptions"] == 0


def test_power_and_energy_per_token_in_line_with_the_study(opt_sweep):
    for b, (watts, jpt) in cal.REFERENCE_POWER.items():
        run = opt_sweep[b]
        assert run["mean_power_w"] == pytest.approx(watts, rel=0.10)
        assert run["joules_per_token"] == pytest.approx(jpt, rel=0.15)
    batches = sorted(opt_sweep)
    watts = [opt_sweep[b]["mean_power_w"] for b in batches]
    rising = [w for b, w in zip(batches, watts, strict=True) if b <= 256]
    assert all(b >= a - 1e-9 for a, b in zip(rising, rising[1:], strict=False))  # busier GPU, more watts
    # on the plateau the GPU gets no busier (same host share, same bytes and FLOPs per second), and a larger max
    # batch drains longer at the end of the run: watts stay flat, within 1 %, never fall away
    plateau = watts[len(rising) - 1:]
    assert max(plateau) <= 1.01 * min(plateau)
    assert all(run["energy_j"] > 0 for run in opt_sweep.values())


def test_fewer_requests_and_other_seeds_stay_in_tolerance():
    """The fit is not an artefact of one length sample."""
    for seed in (1, 2):
        for b in (8, 128, 512):
            run = simulate_offline("opt-1.3b", GPU, b, 1000, seed=seed)
            _, tput, itl = cal.REFERENCE["opt-1.3b"][b]
            assert run["total_tokens_per_s"] == pytest.approx(tput, rel=cal.TOL_THROUGHPUT)
            assert run["mean_itl_ms"] == pytest.approx(itl, rel=cal.TOL_ITL)


def test_simulate_rejects_bad_input():
    with pytest.raises(UsageError, match="unknown model profile"):
        simulate_offline("opt-13b", GPU, 8, 10)
    with pytest.raises(UsageError, match="does not fit: at most"):
        simulate_offline("llama-2-7b", GPU, 4096, 10)
    with pytest.raises(UsageError, match="need 10 input and output lengths"):
        simulate_offline("opt-1.3b", GPU, 8, 10, [100] * 5, [10] * 5)
