"""Energy arithmetic over synthetic side-car samples with known true energy: counters, integrals, wraps, resets,
stale counters, idle, per-token figures, partial and missing windows, and the schema documentation."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import orjson
import pytest

from loadgen.errors import UsageError
from loadgen.power.energy import (
    ENERGY_KEYS,
    GPU_KEYS,
    SWEEP_COLUMNS,
    energy_for_summary,
    integrate_power,
    level_energy,
    parse_power_lines,
    sweep_columns,
)

S = 1_000_000_000
T0 = 50 * S  # absolute perf_counter ns of the first sample
DOC = Path(__file__).resolve().parents[1] / "docs" / "SUMMARY_SCHEMA.md"


def power_profile(t_s: np.ndarray) -> np.ndarray:
    """100 W idle for 2 s, then a 300 W load with a 50 W, 1.7 Hz ripple, back to 100 W after 12 s."""
    load = (t_s >= 2) & (t_s < 12)
    return np.where(load, 300 + 50 * np.sin(2 * np.pi * 1.7 * t_s), 100.0)


def true_energy(a_s: float, b_s: float) -> float:
    t = np.linspace(a_s, b_s, 2_000_001)
    p = power_profile(t)
    return float(np.sum((p[1:] + p[:-1]) * np.diff(t)) / 2)


def lines(period_s: float = 0.1, end_s: float = 14.0, gpu: str = "0", counter: bool = True, power: bool = True,
          counter_update_s: float | None = None, offset_j: float = 0.0, modulus: float | None = None,
          reset_at_s: float | None = None, source: str = "nvml", update_s: float = 0.0,
          t_scale: float = 1.0) -> list[bytes]:
    """Side-car lines sampling ``power_profile``; the counter is exact at its own update instants."""
    t = np.arange(0, end_s + 1e-9, period_s)
    out = [orjson.dumps({"type": "start", "source": source, "interval_s": period_s, "update_s": update_s,
                         "gpus": [{"id": gpu, "energy_counter": counter, "counter_modulus_j": modulus}]})]
    fine = np.linspace(0, end_s, int(end_s * 10_000) + 1)
    fp = power_profile(fine)
    cum = np.concatenate(([0.0], np.cumsum((fp[1:] + fp[:-1]) * np.diff(fine) / 2)))
    for k, ts in enumerate(t):
        row = {"type": "sample", "tick": k, "t_ns": T0 + int(ts * S * t_scale), "gpu": gpu}
        if power:
            row["power_w"] = float(power_profile(np.array([ts]))[0])
        if counter:
            tc = ts if counter_update_s is None else np.floor(ts / counter_update_s) * counter_update_s
            e = offset_j + float(np.interp(tc, fine, cum))
            if reset_at_s is not None and ts >= reset_at_s:
                e = float(np.interp(tc, fine, cum) - np.interp(reset_at_s - 0.05, fine, cum))
            if modulus:
                e %= modulus
            row["energy_j"] = e
        out.append(orjson.dumps(row))
    return out


def window(a_s: float, b_s: float) -> tuple[int, int]:
    return T0 + int(a_s * S), T0 + int(b_s * S)


def test_integral_of_piecewise_linear_power_is_exact():
    t = np.array([0, 1, 2, 4], dtype=np.int64) * S
    w = np.array([100.0, 200.0, 200.0, 0.0])
    assert integrate_power(t, w, 0, 4 * S) == pytest.approx(150 + 200 + 200)
    assert integrate_power(t, w, S // 2, 3 * S) == pytest.approx(0.5 * 175 + 200 + 150)  # edges interpolated
    assert integrate_power(t, w, 5 * S, 6 * S) is None  # no sample covers it
    assert integrate_power(t, np.full(4, np.nan), 0, S) is None


def test_counter_is_exact_and_integral_is_reported_beside_it():
    data = parse_power_lines(lines(period_s=0.25))
    a, b = window(3, 11)
    e = level_energy(data, a, b, window(0.2, 1.7), completed_requests=80, output_tokens=16_000, input_tokens=4000)
    truth = true_energy(3, 11)
    assert e["status"] == "ok" and e["method"] == "counter" and e["source"] == "nvml" and e["gpus"] == ["0"]
    assert e["counter_energy_j"] == pytest.approx(truth, rel=2e-4)
    assert e["energy_j"] == e["counter_energy_j"]
    # 4 Hz samples of a 1.7 Hz ripple alias: the integral alone is off, and the report says by how much
    assert e["integral_energy_j"] != pytest.approx(truth, rel=1e-3)
    assert e["counter_minus_integral_j"] == pytest.approx(e["counter_energy_j"] - e["integral_energy_j"], abs=0.01)
    assert e["mean_power_w"] == pytest.approx(truth / 8, rel=2e-4)
    assert e["peak_power_w"] <= 350 and e["peak_power_w"] > 300
    assert e["idle_power_w"] == pytest.approx(100.0)
    assert e["energy_above_idle_j"] == pytest.approx(truth - 800, rel=1e-3)
    assert e["joules_per_request"] == pytest.approx(truth / 80, rel=1e-3)
    assert e["joules_per_output_token"] == pytest.approx(truth / 16_000, rel=1e-3)
    assert e["joules_per_total_token"] == pytest.approx(truth / 20_000, rel=1e-3)
    assert e["output_tokens_per_joule"] == pytest.approx(16_000 / truth, rel=1e-3)
    assert e["joules_above_idle_per_output_token"] == pytest.approx((truth - 800) / 16_000, rel=1e-3)
    assert e["samples"] == 33 and e["sample_rate_hz"] == pytest.approx(4.0)
    assert set(e) == set(ENERGY_KEYS) and set(e["per_gpu"]["0"]) == set(GPU_KEYS)


def test_without_a_counter_the_integral_is_used():
    data = parse_power_lines(lines(period_s=0.01, counter=False, source="nvidia-smi"))
    e = level_energy(data, *window(3, 11), None, 10, 100, 0)
    assert e["method"] == "integral" and e["counter_energy_j"] is None and e["counter_minus_integral_j"] is None
    assert e["energy_j"] == pytest.approx(true_energy(3, 11), rel=1e-3)
    assert e["idle_power_w"] is None and e["energy_above_idle_j"] is None


def test_counter_wrap_around_is_taken_out():
    data = parse_power_lines(lines(period_s=0.1, offset_j=900.0, modulus=1000.0))
    e = level_energy(data, *window(3, 11), None, 1, 1, 0)
    assert e["counter_resets"] == 0
    assert e["counter_energy_j"] == pytest.approx(true_energy(3, 11), rel=2e-4)


def test_counter_reset_is_bridged_with_the_power_integral():
    data = parse_power_lines(lines(period_s=0.05, offset_j=5e5, reset_at_s=6.0))
    e = level_energy(data, *window(3, 11), None, 1, 1, 0)
    assert e["counter_resets"] == 1 and e["per_gpu"]["0"]["counter_resets"] == 1
    assert e["counter_energy_j"] == pytest.approx(true_energy(3, 11), rel=2e-3)


def test_a_counter_republished_every_2_s_is_read_at_its_change_points():
    # Triton's DCGM poll: the counter value is 2 s stale between updates; sampled at 10 Hz.
    raw = lines(period_s=0.1, counter_update_s=2.0, source="triton", update_s=2.0)
    data = parse_power_lines(raw)
    e = level_energy(data, *window(1.0, 7.0), None, 1, 1, 0)
    assert e["counter_energy_j"] == pytest.approx(true_energy(1, 7), rel=0.01)
    # reading every stale sample as if it were fresh would have been off by far more
    t = np.array([orjson.loads(x)["t_ns"] for x in raw[1:]])
    c = np.array([orjson.loads(x)["energy_j"] for x in raw[1:]])
    naive = np.interp(window(1, 7)[1], t, c) - np.interp(window(1, 7)[0], t, c)
    assert abs(naive / true_energy(1, 7) - 1) > 0.05


def test_stale_change_points_are_moved_back_by_half_the_sampling_interval():
    # A counter updated every 100 ms, first seen at the next 100 ms sample: on average 50 ms late.
    raw = lines(period_s=0.1, counter_update_s=0.1, source="triton", update_s=0.1, t_scale=1.0)
    shifted = [raw[0]] + [orjson.dumps({**orjson.loads(x), "t_ns": orjson.loads(x)["t_ns"] + 50_000_000})
                          for x in raw[1:]]
    e = level_energy(parse_power_lines(shifted), *window(1.0, 7.0), None, 1, 1, 0)
    assert e["counter_energy_j"] == pytest.approx(true_energy(1.0, 7.0), rel=2e-3)


def test_two_gpus_add_up_and_peak_is_of_the_sum():
    raw = lines(gpu="0") + lines(gpu="1")[1:]
    data = parse_power_lines(raw)
    e = level_energy(data, *window(3, 11), window(0.2, 1.8), 1, 1000, 0)
    assert e["gpus"] == ["0", "1"]
    assert e["energy_j"] == pytest.approx(2 * true_energy(3, 11), rel=2e-4)
    assert e["idle_power_w"] == pytest.approx(200.0)
    assert e["peak_power_w"] == pytest.approx(2 * e["per_gpu"]["0"]["peak_power_w"], rel=1e-5)


def test_side_car_that_died_mid_window_gives_partial_figures():
    raw = [x for x in lines() if orjson.loads(x).get("t_ns", 0) < T0 + 7 * S]
    e = level_energy(parse_power_lines(raw), *window(3, 11), None, 10, 1000, 0)
    assert e["status"] == "partial" and "cover" in e["note"]
    assert e["energy_j"] is None and e["joules_per_output_token"] is None
    assert e["mean_power_w"] == pytest.approx(true_energy(3, 6.9) / 3.9, rel=5e-3)


def test_missing_source_and_missing_samples_say_why():
    fatal = [orjson.dumps({"type": "error", "message": "nvml: the NVIDIA driver is not loaded", "fatal": True})]
    e = level_energy(parse_power_lines(fatal), *window(0, 1), None, 1, 1, 1)
    assert e["status"] == "missing" and "driver is not loaded" in e["note"] and e["energy_j"] is None
    assert set(e) == set(ENERGY_KEYS)
    start_only = [lines()[0], orjson.dumps({"type": "error", "message": "triton: timed out", "fatal": False})]
    e = level_energy(parse_power_lines(start_only), *window(0, 1), None, 1, 1, 1)
    assert e["status"] == "missing" and "timed out" in e["note"]
    e = level_energy(parse_power_lines(lines()), *window(20, 30), None, 1, 1, 1)
    assert e["status"] == "missing" and "no power sample" in e["note"]


def test_cut_last_line_is_skipped_but_corruption_elsewhere_is_an_error():
    raw = lines(end_s=1.0)
    data = parse_power_lines(raw + [raw[-1][:20]])
    assert data.skipped_lines == 1 and data.series["0"].t_ns.size == 11
    with pytest.raises(UsageError, match=r"power.jsonl:3: not a power sample"):
        parse_power_lines(raw[:2] + [b"{oops"] + raw[2:])


def test_energy_for_summary_places_the_window_with_the_run_anchor():
    data = parse_power_lines(lines())
    summary = {"client": {"anchor": {"monotonic_ns": T0 + 2 * S - 1000}, "t0_offset_ns": 1000},
               "window_start_s": 1.0, "window_end_s": 9.0, "window_s": 8.0, "completed_requests": 40,
               "output_tokens_total": 4000, "input_tokens_total": 1000}
    e = energy_for_summary(data, summary, None)
    assert e["energy_j"] == pytest.approx(true_energy(3, 11), rel=2e-4)
    assert e["joules_per_request"] == pytest.approx(true_energy(3, 11) / 40, rel=1e-3)
    e = energy_for_summary(data, {"client": {}, "window_s": 8.0}, None)
    assert e["status"] == "missing" and "anchor" in e["note"]


def test_every_energy_key_is_documented():
    documented = set(re.findall(r"`([a-z0-9_]+)`", DOC.read_text()))
    assert sorted(set(ENERGY_KEYS) - documented) == []
    assert sorted(set(GPU_KEYS) - documented) == []


def test_sweep_columns_are_null_without_energy():
    e = level_energy(parse_power_lines(lines()), *window(3, 11), None, 10, 1000, 0)
    row = sweep_columns({"energy": e})
    assert row["energy_status"] == "ok" and row["joules_per_output_token"] == e["joules_per_output_token"]
    assert list(row) == ["energy_status", *SWEEP_COLUMNS]
    assert sweep_columns({"energy": None}) == dict.fromkeys(["energy_status", *SWEEP_COLUMNS])
