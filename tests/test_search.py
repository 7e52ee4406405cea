"""``loadgen search``: the confidence bounds against known cases, the bracket / bisection / extension / budget
rules against a simulated server (a pure function from load to latencies, a fake clock), saturation, the outputs,
bad input; and one integration run against the embedded server."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from loadgen.cli import main
from loadgen.core.records import STATUS_ERROR, STATUS_OK, RequestRecord
from loadgen.core.slo import parse_fail_on
from loadgen.search.algorithm import (
    BUDGET,
    FAILS_AT_START,
    MAX_LOAD,
    PRECISION,
    SearchSettings,
    StepResult,
    search,
    step_result,
)
from loadgen.search.confidence import (
    CLOPPER_PEARSON,
    FAIL,
    ORDER_STATISTIC,
    PASS,
    POINT,
    UNDECIDED,
    StepData,
    could_decide,
    judge,
    judge_quantile,
    judge_share,
    proportion_bounds,
    quantile_bounds,
    quantile_of,
)
from loadgen.search.output import answer_line, search_json, write_plot
from loadgen.search.saturation import SaturationWatch, completion_shortfall, judge_records, queue_growth
from loadgen.search.step import step_data

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------------ bounds
def test_quantile_upper_bound_is_the_order_statistic_scipy_names():
    x = np.arange(1.0, 101.0)  # x(k) = k
    lower, upper = quantile_bounds(x, 0.9, 0.95)
    k = int(stats.binom.ppf(0.95, 100, 0.9)) + 1
    assert upper == k  # the k-th smallest value
    assert stats.binom.cdf(k - 1, 100, 0.9) >= 0.95 > stats.binom.cdf(k - 2, 100, 0.9)
    j = int(lower)
    assert stats.binom.sf(j - 1, 100, 0.9) >= 0.95 > stats.binom.sf(j, 100, 0.9)  # P(Bin >= j) >= c
    assert lower < 90 < upper


def test_quantile_bound_needs_enough_requests():
    # the max bounds p90 at 95 % only when 0.9^n <= 0.05: n >= 29
    assert quantile_bounds(np.arange(29.0), 0.9, 0.95)[1] == 28.0
    assert math.isinf(quantile_bounds(np.arange(28.0), 0.9, 0.95)[1])
    assert quantile_bounds(np.empty(0), 0.9) == (-math.inf, math.inf)


def test_quantile_bound_covers_the_true_quantile_about_as_often_as_stated():
    rng = np.random.default_rng(1)
    true_p90 = math.log(10)  # exponential(1)
    trials = 2000
    covered = sum(quantile_bounds(rng.exponential(1.0, 60), 0.9, 0.95)[1] >= true_p90 for _ in range(trials))
    assert covered / trials >= 0.94


def test_proportion_bounds_are_clopper_pearson():
    lo, hi = proportion_bounds(3, 50, 0.95)
    exact = stats.binomtest(3, 50).proportion_ci(confidence_level=0.90, method="exact")  # two one-sided 95 %
    assert lo == pytest.approx(exact.low) and hi == pytest.approx(exact.high)
    # the rule of three: 0 errors in n shows a rate < 1 % at 95 % from n = 299 on
    assert proportion_bounds(0, 299, 0.95)[1] < 0.01 < proportion_bounds(0, 298, 0.95)[1]
    assert proportion_bounds(0, 0) == (0.0, 1.0)
    assert proportion_bounds(5, 5)[1] == 1.0


# ------------------------------------------------------------------------------------------------ judging
def test_quantile_verdicts_pass_fail_undecided():
    rng = np.random.default_rng(2)
    fast = rng.exponential(50.0, 400)  # p90 ~ 115 ms
    assert judge_quantile("ttft_p90<300ms", "<", 300.0, fast, 0.9, 0.95).verdict == PASS
    assert judge_quantile("ttft_p90<60ms", "<", 60.0, fast, 0.9, 0.95).verdict == FAIL
    j = judge_quantile("ttft_p90<300ms", "<", 300.0, fast[:10], 0.9, 0.95)
    assert j.verdict == UNDECIDED and j.upper is None and j.method == ORDER_STATISTIC and j.n == 10
    assert judge_quantile("x", "<", 1.0, np.empty(0), 0.9, 0.95).verdict == FAIL  # no value fails, as --fail-on
    assert judge_quantile("ttft_p90>60ms", ">", 60.0, fast, 0.9, 0.95).verdict == PASS


def test_quantile_verdict_is_the_binomial_test_on_requests_above_the_threshold():
    """Pass exactly when P(Binomial(n, 1 - q) <= k above X) <= 1 - c."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        v = rng.exponential(100.0, int(rng.integers(20, 200)))
        x = float(rng.uniform(100, 400))
        n, k = len(v), int(np.sum(v > x))
        expect_pass = stats.binom.cdf(k, n, 0.1) <= 0.05
        expect_fail = stats.binom.sf(k - 1, n, 0.1) <= 0.05
        verdict = judge_quantile("p90", "<", x, v, 0.9, 0.95).verdict
        assert verdict == (PASS if expect_pass else FAIL if expect_fail else UNDECIDED)


def test_share_verdicts():
    assert judge_share("error_rate<1%", "<", 0.01, 0, 400, 0.95).verdict == PASS
    assert judge_share("error_rate<1%", "<", 0.01, 0, 100, 0.95).verdict == UNDECIDED
    j = judge_share("error_rate<1%", "<", 0.01, 10, 100, 0.95)
    assert j.verdict == FAIL and j.method == CLOPPER_PEARSON and j.value == 0.1


def test_judge_picks_the_method_by_metric():
    data = StepData(values={"ttft": np.full(100, 10.0)}, counts={"error_rate": (0, 500)},
                    points={"ttft_mean": 10.0, "request_throughput_rps": 4.0})
    out = {c.text: judge(c, data) for c in parse_fail_on(
        "ttft_p90<300ms,error_rate<1%,ttft_mean<20ms,request_throughput_rps>5")}
    assert out["ttft_p90<300ms"].method == ORDER_STATISTIC and out["ttft_p90<300ms"].verdict == PASS
    assert out["error_rate<1%"].method == CLOPPER_PEARSON and out["error_rate<1%"].verdict == PASS
    assert out["ttft_mean<20ms"].method == POINT and out["ttft_mean<20ms"].verdict == PASS
    assert out["request_throughput_rps>5"].verdict == FAIL and out["request_throughput_rps>5"].confidence is None
    assert quantile_of("e2e_p99_9") == ("e2e", 0.999) and quantile_of("ttft_mean") is None


def test_could_decide_projects_the_share_seen_so_far():
    zero_errors = judge_share("error_rate<1%", "<", 0.01, 0, 30, 0.95)
    assert not could_decide(zero_errors, 3.0)  # 0 in 90 cannot show < 1 %
    assert could_decide(zero_errors, 11.0)  # 0 in 330 can
    short = judge_quantile("p90", "<", 300.0, np.full(20, 10.0), 0.9, 0.95)  # 20 fast requests: undecided
    assert short.verdict == UNDECIDED and could_decide(short, 2.0)


def test_pooling_adds_values_and_counts():
    a = StepData({"ttft": np.ones(3)}, {"error_rate": (1, 10)}, {"ttft_mean": 1.0})
    b = StepData({"ttft": np.ones(2)}, {"error_rate": (0, 5)}, {"ttft_mean": 4.0})
    p = a.pooled(b)
    assert len(p.values["ttft"]) == 5 and p.counts["error_rate"] == (1, 15) and p.points["ttft_mean"] == 2.5
    assert p.levels == 2


# ------------------------------------------------------------------------------------------------ the search loop
CAPACITY = 8.0  # req/s of the simulated server
BASE_MS = 50.0
# TTFT ~ exponential with mean BASE / (1 - rho): p90 = mean x ln 10 < 300 ms  <=>  load < TRUE_MAX
TRUE_MAX = CAPACITY * (1 - BASE_MS * math.log(10) / 300.0)
LEVEL_S = 30.0


class SimServer:
    """A pure function from load to per-request TTFTs, a fake clock that each level advances."""

    def __init__(self, condition: str = "ttft_p90<300ms", seed: int = 7, level_s: float = LEVEL_S,
                 errors: float = 0.0) -> None:
        self.checks = parse_fail_on(condition)
        self.rng = np.random.default_rng(seed)
        self.now = 0.0
        self.level_s = level_s
        self.errors = errors
        self.calls: list[tuple[float, bool]] = []

    def clock(self) -> float:
        return self.now

    def __call__(self, load: float, prior: StepResult | None) -> StepResult:
        self.calls.append((load, prior is not None))
        self.now += self.level_s + 2.0
        rho = load / CAPACITY
        n = max(1, int(load * self.level_s))
        mean = BASE_MS / (1 - rho) if rho < 0.98 else 1e6
        errs = int(self.rng.binomial(n, self.errors))
        data = StepData({"ttft": self.rng.exponential(mean, n)}, {"error_rate": (errs, n)}, {})
        if prior is not None and prior.data is not None:
            data = prior.data.pooled(data)
        dirs = [*(prior.run_dirs if prior else []), f"level{len(self.calls)}"]
        return step_result(load, [judge(c, data) for c in self.checks], data, dirs)


def test_bracket_then_bisection_finds_the_simulated_capacity():
    sim = SimServer()
    out = search(sim, SearchSettings(start=1.0, precision=0.05, budget_s=1e9), clock=sim.clock)
    assert out.stop_reason == PRECISION
    loads = [p.load for p in out.points]
    assert loads[:3] == [1.0, 2.0, 4.0]  # the bracket grows geometrically until a step fails
    assert loads[3] == 8.0 and out.points[3].verdict == FAIL
    assert out.last_pass.load < TRUE_MAX * 1.03 and out.first_fail.load > TRUE_MAX * 0.97
    assert out.first_fail.load - out.last_pass.load <= 0.05 * out.last_pass.load
    assert all(p.load < out.first_fail.load for p in out.points if p.leaning == PASS)


def test_far_from_the_threshold_the_bracket_grows_faster():
    sim = SimServer("ttft_p90<5000ms")  # p90 131 ms at 1 req/s: 38 times headroom
    out = search(sim, SearchSettings(start=1.0, budget_s=1e9, precision=0.5), clock=sim.clock)
    assert [p.load for p in out.points][:3] == [1.0, 4.0, 16.0]
    slow = SimServer("ttft_p90<5000ms")
    out = search(slow, SearchSettings(start=1.0, budget_s=1e9, precision=0.5, fast_growth=False), clock=slow.clock)
    assert [p.load for p in out.points][:3] == [1.0, 2.0, 4.0]


def test_a_condition_failing_at_the_lowest_load_stops_at_once():
    sim = SimServer("ttft_p90<10ms")
    out = search(sim, SearchSettings(start=1.0, budget_s=1e9), clock=sim.clock)
    assert out.stop_reason == FAILS_AT_START and out.max_load is None and len(out.points) == 1


def test_the_budget_stops_the_search_before_a_level_it_cannot_afford():
    sim = SimServer()
    out = search(sim, SearchSettings(start=1.0, budget_s=3 * (LEVEL_S + 2.0) + 1, step_estimate_s=LEVEL_S),
                 clock=sim.clock)
    assert out.stop_reason == BUDGET and len(sim.calls) == 3 and sim.now <= 3 * (LEVEL_S + 2.0) + 1
    assert search(sim, SearchSettings(budget_s=5.0, step_estimate_s=LEVEL_S), clock=sim.clock).points == []


def test_an_undecided_step_is_extended_and_pooled():
    sim = SimServer(level_s=10.0)  # 10 requests at 1 req/s cannot bound p90: extend
    out = search(sim, SearchSettings(start=1.0, max_extends=2, budget_s=1e9, max_load=2.0), clock=sim.clock)
    first = out.points[0]
    assert sim.calls[:3] == [(1.0, False), (1.0, True), (1.0, True)]
    assert first.levels == 3 and first.verdict == PASS and first.judgements[0].n == 30
    assert out.stop_reason == MAX_LOAD


def test_no_extension_that_could_not_decide_and_strict_mode():
    # 0 errors in 30 requests cannot show error_rate < 1 % with two more levels: no extension, the step leans pass
    sim = SimServer("error_rate<1%", level_s=30.0)
    out = search(sim, SearchSettings(start=1.0, budget_s=1e9, max_load=1.0), clock=sim.clock)
    assert sim.calls == [(1.0, False)]
    assert out.points[0].verdict == UNDECIDED and out.points[0].leaning == PASS and out.max_load == 1.0
    line = answer_line(out, "error_rate<1%", False, 0.95)
    assert "not confirmed at 95 %" in line and "error_rate<1% undecided" in line
    strict = SimServer("error_rate<1%", level_s=30.0)
    out = search(strict, SearchSettings(start=1.0, budget_s=1e9, strict=True), clock=strict.clock)
    assert out.stop_reason == FAILS_AT_START


def test_concurrency_search_keeps_whole_users():
    sim = SimServer()
    out = search(sim, SearchSettings(start=1, integer=True, precision=0.01, budget_s=1e9), clock=sim.clock)
    assert all(float(p.load).is_integer() for p in out.points)
    assert out.first_fail.load - out.last_pass.load == 1


def test_a_saturated_step_fails_whatever_its_percentiles():
    data = StepData({"ttft": np.full(100, 1.0)}, {}, {})
    step = step_result(3.0, [judge(c, data) for c in parse_fail_on("ttft_p90<300ms")], data,
                       saturated="queue grows")
    assert step.verdict == FAIL


# ------------------------------------------------------------------------------------------------ saturation
def test_queue_growth_and_completion_shortfall():
    sched = np.arange(300) * 1e8
    steady = np.full(300, 100.0)
    growing = np.linspace(100.0, 5000.0, 300)
    assert queue_growth(sched, steady, _rule()) is None
    assert "queue grows" in queue_growth(sched, growing, _rule())
    assert queue_growth(sched[:30], growing[:30], _rule()) is None  # too few to see a trend
    assert completion_shortfall(100, 80, _rule()) and completion_shortfall(100, 95, _rule()) is None
    assert judge_records(sched, growing, 300, 300) is not None


def _rule():
    from loadgen.search.saturation import SaturationRule

    return SaturationRule()


def test_the_live_watch_stops_a_level_once_the_queue_grows():
    stopped = []
    in_flight = [0]
    watch = SaturationWatch(stopped.append, lambda: in_flight[0], in_flight_bound=20)
    for i in range(200):
        lat_ms = 100 if i < 30 else 100 + 30 * i
        rec = RequestRecord(index=i, scheduled_ns=i * 10**8, issued_ns=i * 10**8, chunk_offsets_us=[lat_ms * 1000],
                            chunk_tokens=[1], status=STATUS_OK)
        in_flight[0] = i // 4
        watch(rec)
    assert len(stopped) == 1 and "in flight" in stopped[0] and stopped[0] == watch.tripped


def _feed(watch, latencies_ms, in_flight, flight_of):
    for i, lat_ms in enumerate(latencies_ms):
        in_flight[0] = flight_of(i)
        watch(RequestRecord(index=i, scheduled_ns=i * 10**8, issued_ns=i * 10**8,
                            chunk_offsets_us=[int(lat_ms * 1000)], chunk_tokens=[1], status=STATUS_OK))


def test_the_live_watch_bound_is_littles_law_at_the_baseline_latency():
    # 50 req/s at a 200 ms baseline: about 10 in flight is normal, so the bound is 21
    stopped, in_flight = [], [0]
    watch = SaturationWatch(stopped.append, lambda: in_flight[0], rate=50.0)
    _feed(watch, [200] * 30 + [900] * 40, in_flight, lambda i: 20)  # slow, but the queue is not growing
    assert watch.bound() == 21 and stopped == []
    _feed(watch, [900] * 5, in_flight, lambda i: 22)  # and now it is
    assert len(stopped) == 1 and "bound 21" in stopped[0]


def test_the_live_watch_ignores_slow_steps_that_do_not_grow_and_errors():
    stopped, in_flight = [], [0]
    watch = SaturationWatch(stopped.append, lambda: in_flight[0], rate=50.0)
    _feed(watch, [800] * 100, in_flight, lambda i: 100)  # slow from the start: no growth
    assert stopped == []
    err = RequestRecord(index=1000, scheduled_ns=0, issued_ns=0, status="error")
    watch(err)
    assert stopped == [] and len(watch.recent) == 30


# ------------------------------------------------------------------------------------------------ step data
def _record(i: int, ttft_ms: float, status: str = STATUS_OK) -> RequestRecord:
    rec = RequestRecord(index=i, scheduled_ns=i * 10**8, issued_ns=i * 10**8 + 10**6, status=status,
                        end_ns=i * 10**8 + 10**6 + int(ttft_ms * 2e6))
    if status == STATUS_OK:
        rec.chunk_offsets_us = [int(ttft_ms * 1000), int(ttft_ms * 2000)]
        rec.chunk_tokens = [1, 1]
    else:
        rec.error_kind = "timeout"
    return rec


def test_step_data_reads_per_request_values_and_error_counts():
    records = [_record(i, 100.0 + i) for i in range(40)] + [_record(40 + i, 0, STATUS_ERROR) for i in range(2)]
    data, saturated = step_data(records, {"goodput_ratio": 0.5, "ttft_ms": {"mean": 1.0}}, warmup_requests=5)
    assert len(data.values["ttft"]) == 35 and data.values["ttft"][0] == pytest.approx(105.0)
    assert data.values["schedule_lag"][0] == pytest.approx(1.0)
    assert data.counts["error_rate"] == (2, 37) and data.counts["error_rate_timeout"] == (2, 37)
    assert data.counts["goodput_ratio"] == (18, 35)  # round(0.5 x 35)
    assert data.points["ttft_mean"] == 1.0 and saturated is None


# ------------------------------------------------------------------------------------------------ outputs
def test_search_json_answer_and_plot(tmp_path):
    sim = SimServer()
    out = search(sim, SearchSettings(start=1.0, precision=0.5, budget_s=1e9), clock=sim.clock)
    assert out.last_pass.verdict == PASS  # a confirmed pass (a narrower bracket may end on an undecided one)
    doc = search_json(out, "ttft_p90<300ms", False, 0.95, {}, {})
    doc = json.loads(json.dumps(doc))  # plain JSON
    assert doc["max_rate_rps"] == out.last_pass.load and doc["last_pass"]["verdict"] == PASS
    assert doc["first_fail"]["load"] == out.first_fail.load and doc["condition"] == "ttft_p90<300ms"
    point = doc["points"][0]
    assert {"load", "verdict", "conditions", "run_dirs", "levels"} <= set(point)
    assert point["conditions"][0]["method"] == ORDER_STATISTIC and point["conditions"][0]["confidence"] == 0.95
    line = answer_line(out, "ttft_p90<300ms", False, 0.95)
    assert line.startswith("max rate meeting ttft_p90<300ms: ") and "(95 % confident; last pass" in line
    assert write_plot(out, tmp_path / "plot.png", False).read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------------------------------------ the command
def test_the_command_writes_search_json_table_plot_and_answer(tmp_path, capsys, monkeypatch):
    """The whole command with the levels replaced by the simulated server (no I/O but the outputs)."""
    import loadgen.search.step as step_module

    monkeypatch.setattr(step_module, "LevelStepper", lambda *a, **k: SimServer())
    out = tmp_path / "s"
    code = main(["search", "--url", "http://127.0.0.1:9", "--fail-on", "ttft_p90<300ms", "--precision", "50%",
                 "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    doc = json.loads((out / "search.json").read_text())
    assert doc["max_rate_rps"] == doc["last_pass"]["load"] and doc["first_fail"]["verdict"] == FAIL
    assert (out / "plot.png").exists() and "search steps" in text
    assert text.strip().splitlines()[-1].startswith("max rate meeting ttft_p90<300ms: ")


def test_the_command_exits_4_when_the_lowest_load_fails(tmp_path, capsys, monkeypatch):
    import loadgen.search.step as step_module

    monkeypatch.setattr(step_module, "LevelStepper", lambda *a, **k: SimServer("ttft_p90<10ms"))
    out = tmp_path / "s"
    code = main(["search", "--url", "http://127.0.0.1:9", "--fail-on", "ttft_p90<10ms", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 4 and "already fails at the lowest load, 1 req/s" in err and len(err.strip().splitlines()) == 1
    assert json.loads((out / "search.json").read_text())["max_rate_rps"] is None


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(("extra", "message"), [
    ([], "no condition to search for"),
    (["--fail-on", "ttft_p42<1s"], "unknown metric"),
    (["--fail-on", "ttft_p90<300ms", "--budget", "5s", "--duration", "10s"], "too small for one step"),
    (["--fail-on", "ttft_p90<300ms", "--precision", "150%"], "--precision"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, extra, message):
    code = main(["search", "--url", "http://127.0.0.1:9", "--out", str(tmp_path / "s"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s" / "search.json").exists()


def test_help_lists_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    text = capsys.readouterr().out
    assert "exit codes:" in text and "already fails" in text and "--start-rate" in text


# ------------------------------------------------------------------------------------------------ integration
@pytest.mark.integration
def test_search_against_the_embedded_server(tmp_path):
    out = tmp_path / "search"
    cmd = [sys.executable, "-m", "loadgen", "search", "--server-model", "opt-125m", "--server-max-batch", "8",
           "--input-tokens", "32", "--output-tokens", "16", "--fail-on", "ttft_p90<300ms,error_rate<1%",
           "--duration", "3", "--start-rate", "8", "--growth", "4", "--max-rate", "512", "--budget", "14s",
           "--precision", "50%",
           "--out", str(out)]  # short: the suite's time
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((out / "search.json").read_text())
    assert doc["max_rate_rps"] > 0 and doc["points"] and doc["last_pass"]["load"] == doc["max_rate_rps"]
    assert (out / "plot.png").exists()
    assert proc.stdout.strip().splitlines()[-1].startswith("max rate meeting ttft_p90<300ms,error_rate<1%: ")
    for p in doc["points"]:
        for d in p["run_dirs"]:
            assert (Path(d) / "summary.json").exists()
    print(proc.stdout)


def test_every_level_of_a_search_draws_its_own_seed(tmp_path, monkeypatch):
    """Steps at different loads and the extensions of one step never resend the same prompts: a server's prefix
    cache filled by one level must not serve the next (and an extension must add independent samples)."""
    from loadgen.scenario.load import scenario_from
    from loadgen.search.step import LevelStepper

    seeds = []

    class Stop(Exception):
        pass

    def fake_run(self, sc, name):
        seeds.append((sc.load.seed, sc.load.rate, name))
        raise Stop

    monkeypatch.setattr(LevelStepper, "_run", fake_run)
    base = scenario_from({}, {"load": {"rate": 1.0, "duration": 5, "seed": 40}}, "flags", check_paths=False)
    stepper = LevelStepper(base, [], "http://127.0.0.1:1", None, tmp_path)
    prior = step_result(2.0, [], None, ["a"])
    for load, pr in ((1.0, None), (4.0, None), (4.0, prior)):
        with pytest.raises(Stop):
            stepper(load, pr)
    assert [s for s, _, _ in seeds] == [40, 41, 42] and [r for _, r, _ in seeds] == [1.0, 4.0, 4.0]
    assert seeds[2][2].endswith("-x1")
