"""Frontier, knee, saturation, batch advice and SLO advice on hand-built data (loadgen.sweep.analysis)."""

from __future__ import annotations

import numpy as np
import pytest

from loadgen.errors import UsageError
from loadgen.sweep.analysis import (
    advise_batch,
    advise_config,
    analyze,
    efficiency,
    frontier_indices,
    knee_index,
    metric_key,
    pareto_mask,
    parse_slo_bounds,
    replication_table,
    saturation_index,
)

# The emulator's OPT-1.3B sweep (benchmarks/CALIBRATION.md): max batch, total tokens/s, mean ITL ms.
BATCH = [1, 8, 32, 64, 96, 128, 256, 512, 768]
TPUT = [365, 2432, 6108, 8138, 9033, 9564, 10440, 10795, 10909]
ITL = [3.8, 4.5, 7.1, 10.4, 13.7, 16.9, 29.2, 52.1, 71.9]


# ------------------------------------------------------------------------------------------------ frontier
def test_dominated_points_are_off_the_frontier():
    t = [100, 200, 150, 90]
    c = [10, 20, 30, 15]  # (150, 30) is beaten by (200, 20); (90, 15) by (100, 10)
    assert pareto_mask(t, c).tolist() == [True, True, False, False]


def test_ties():
    # equal points: neither dominates the other, both stay
    assert pareto_mask([200, 200, 100], [20, 20, 10]).tolist() == [True, True, True]
    # equal throughput: only the lower cost stays; equal cost: only the higher throughput stays
    assert pareto_mask([200, 200], [20, 25]).tolist() == [True, False]
    assert pareto_mask([200, 180], [20, 20]).tolist() == [True, False]


def test_one_point_and_missing_values():
    assert pareto_mask([5.0], [1.0]).tolist() == [True]
    assert pareto_mask([None, 5.0, 7.0], [1.0, None, 2.0]).tolist() == [False, False, True]
    assert pareto_mask([], []).tolist() == []
    with pytest.raises(UsageError):
        pareto_mask([1, 2], [1])


def test_monotone_sweep_is_all_frontier_and_ordered_by_cost():
    # the study's curve: more batch, more throughput and more latency; every point is Pareto-optimal
    assert pareto_mask(TPUT, ITL).all()
    assert frontier_indices(TPUT[::-1], ITL[::-1]) == list(range(len(TPUT)))[::-1]


def test_noisy_curve():
    # a plateau with noise: past the peak, a point with more latency and less throughput is dominated
    t = [1000, 1900, 2600, 2550, 2700, 2690, 2680]
    c = [10, 12, 15, 17, 18, 22, 30]
    assert frontier_indices(t, c) == [0, 1, 2, 4]
    brute = [not any(t[j] >= t[i] and c[j] <= c[i] and (t[j] > t[i] or c[j] < c[i]) for j in range(len(t)))
             for i in range(len(t))]
    assert pareto_mask(t, c).tolist() == brute


def test_frontier_matches_brute_force_on_random_data():
    rng = np.random.default_rng(7)
    for _ in range(20):
        t = rng.integers(0, 20, size=15).astype(float)  # small integers: many ties
        c = rng.integers(0, 20, size=15).astype(float)
        brute = [not any(t[j] >= t[i] and c[j] <= c[i] and (t[j] > t[i] or c[j] < c[i]) for j in range(15))
                 for i in range(15)]
        assert pareto_mask(t, c).tolist() == brute


# ------------------------------------------------------------------------------------------------ knee
def test_knee_is_largest_throughput_within_the_latency_factor():
    t = [100, 200, 300, 380, 400, 405]
    y = [10, 11, 12, 15, 25, 60]
    assert knee_index(t, y, 2.0) == 3  # 15 <= 20 < 25
    assert knee_index(t, y, 2.5) == 4  # 25 <= 25 (boundary included)
    assert knee_index(t, y, 1.0) == 0
    assert knee_index([5.0], [1.0]) == 0
    assert knee_index([None], [None]) is None
    with pytest.raises(UsageError):
        knee_index(t, y, 0.5)


def test_knee_on_the_study_sweep_and_unsorted_input():
    assert BATCH[knee_index(TPUT, ITL, 2.0)] == 32  # 7.1 ms <= 2 x 3.8 ms
    assert BATCH[knee_index(TPUT, ITL, 4.0)] == 96  # 13.7 ms <= 4 x 3.8 ms < 16.9 ms
    order = [4, 0, 8, 2, 6, 1, 3, 7, 5]
    k = knee_index([TPUT[i] for i in order], [ITL[i] for i in order], 2.0)
    assert BATCH[order[k]] == 32


def test_knee_ties_take_the_lower_latency():
    assert knee_index([100, 300, 300], [10, 19, 12], 2.0) == 2


# ------------------------------------------------------------------------------------------------ saturation
def test_saturation_point():
    assert saturation_index([1, 2, 4, 8, 16], [100, 200, 300, 310, 305], 0.05) == 2
    assert saturation_index([1, 2, 4], [100, 200, 400], 0.05) is None  # still climbing
    assert saturation_index([1], [100]) is None
    assert saturation_index([1, 2], [100, 101]) == 0


def test_saturation_with_noise_and_unsorted_loads():
    # a dip followed by growth is not saturation; a noisy plateau is
    assert saturation_index([1, 2, 3, 4], [100, 200, 190, 260], 0.05) is None
    assert saturation_index([1, 2, 3, 4, 5], [100, 200, 202, 198, 203], 0.05) == 1
    loads = [16, 1, 8, 2, 4]
    tput = [305, 100, 310, 200, 300]
    assert loads[saturation_index(loads, tput, 0.05)] == 4
    # the study: every step after max batch 256 adds < 5 % (CALIBRATION.md's plateau)
    assert BATCH[saturation_index(BATCH, TPUT, 0.05)] == 256


# ------------------------------------------------------------------------------------------------ batch advice
def test_efficiency():
    eta = efficiency(BATCH, TPUT)
    assert eta[0] == pytest.approx(1.0)
    assert eta[BATCH.index(128)] == pytest.approx(9564 / (128 * 365))
    assert np.all(np.diff(eta) < 0)
    assert efficiency([2, 4], [10, 20]) is None  # no batch-1 point


@pytest.mark.parametrize("eta_min, factor, expected", [
    (0.2, 4, 128),  # eta(128) = 0.205, eta(256) = 0.112
    (0.1, 4, 128),  # 256 passes eta but 29.2 ms > 4 x 7.1 ms
    (0.1, 5, 256),  # 29.2 ms <= 35.5 ms
    (0.3, 5, 64),  # eta(64) = 0.348, eta(96) = 0.258
    (1.5, 5, None),  # nothing is that efficient
])
def test_advised_batch(eta_min, factor, expected):
    a = advise_batch(BATCH, TPUT, ITL, eta_min, factor, ref_batch=32)
    assert a.ref_batch == 32 and a.latency_bound == pytest.approx(factor * 7.1)
    assert a.batch == expected


def test_advised_batch_reference_is_the_nearest_measured_batch():
    a = advise_batch([1, 16, 64, 256], [100, 1200, 3000, 4000], [4, 5, 8, 20], 0.1, 3, ref_batch=32)
    assert a.ref_batch in (16, 64) and a.latency_bound in (15, 24)
    assert advise_batch([2, 4], [1, 2], [1, 2], 0.1, 3) is None


# ------------------------------------------------------------------------------------------------ SLO advice
def _rows():
    return [
        {"point": "a", "throughput": 5000, "itl_mean": 10, "e2e_p99": 9000, "valid": True},
        {"point": "b", "throughput": 9000, "itl_mean": 30, "e2e_p99": 20000, "valid": True},
        {"point": "c", "throughput": 9500, "itl_mean": 45, "e2e_p99": 40000, "valid": True},
        {"point": "d", "throughput": 12000, "itl_mean": 20, "e2e_p99": 5000, "valid": False},  # invalid: ignored
        {"point": "e", "throughput": 9000, "itl_mean": 25, "e2e_p99": 20000, "valid": True},  # ties b, lower ITL
    ]


def test_slo_bounds_parse():
    b = parse_slo_bounds("itl_mean<50ms, e2e_p99<=30s, throughput>5000, error_rate<1%")
    assert [(x.name, x.op, x.value) for x in b] == [("itl_mean", "<", 50.0), ("e2e_p99", "<=", 30000.0),
                                                    ("throughput", ">", 5000.0), ("error_rate", "<", 0.01)]
    for bad in ("", "itl_mean<50", "itl_mean=5ms", "foo_p99<5ms", "throughput>5ms", "itl_mean<5%"):
        with pytest.raises(UsageError):
            parse_slo_bounds(bad)
    assert metric_key("e2e_p99") == "e2e_p99"
    with pytest.raises(UsageError):
        metric_key("latency")


def test_advised_configuration():
    rows = _rows()
    idx, misses = advise_config(rows, parse_slo_bounds("itl_mean<40ms,e2e_p99<30s"), "itl_mean")
    assert rows[idx]["point"] == "e"  # b and e tie on throughput: the lower latency wins
    assert any(m.startswith("c:") for m in misses)
    idx, _ = advise_config(rows, parse_slo_bounds("itl_mean<5ms"), "itl_mean")
    assert idx is None


def test_replication_gain_over_the_largest_single_replica():
    rows = [{"point": f"{r}x{b}", "replicas": r, "max_batch": b, "throughput": t, "load": "offline-600"}
            for r, b, t in [(1, 256, 9000), (1, 768, 10000), (2, 256, 13400), (4, 128, 12000)]]
    table = {x["point"]: x for x in replication_table(rows)}
    assert table["2x256"]["baseline"] == "1x768"
    assert table["2x256"]["gain"] == pytest.approx(0.34)
    assert table["1x768"]["gain"] == 0 and "1x256" not in table  # the baseline and the replicated ones only
    assert replication_table(rows[:2]) == []  # one replica count: no replication table


def test_analyze_leaves_out_invalid_and_preempted_points():
    rows = [{"point": f"b{b}", "config": f"1x{b}", "load": "offline-100", "load_kind": "offline", "load_value": 100,
             "status": "done", "valid": True, "preempted": False, "throughput": t, "tpot_mean": y, "max_batch": b,
             "replicas": 1, "profile": "opt-1.3b", "gpu": "h100-64gb", "backend": "triton-http"}
            for b, t, y in zip(BATCH, TPUT, ITL, strict=True)]
    rows[-1]["preempted"], rows[-1]["preemptions"] = True, 12
    rows[4]["valid"], rows[4]["warnings"] = False, ["client saturated"]
    a = analyze(rows, "tpot_mean", knee_factor=4.0, eta=(0.2,), latency_factor=(4,), slo="tpot_mean<20ms")
    assert {o["point"] for o in a["left_out"]} == {"b768", "b96"}
    assert "b768" not in a["frontier_latency"] and len(a["frontier_latency"]) == 7
    curve = a["curves"][0]
    assert curve["axis"] == "max_batch" and curve["saturation"] == "b256"  # 512 adds 3.4 %
    assert curve["knee"] == "b64"  # 10.4 ms <= 4 x 3.8 ms = 15.2 ms < 16.9 ms (96 is left out)
    assert a["batch_advice"][0]["advice"][0]["batch"] == 128
    assert a["advised"]["point"] == "b128"
