"""``loadgen sweep --search``: one capacity search per server configuration, then the Pareto frontier of the rate
found against J/token. The per-configuration rows, frontier and answer against simulated searches; bad input; and
one run against two embedded-server configurations."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from loadgen.cli import main
from loadgen.search.algorithm import SearchSettings, search
from loadgen.sweep.grid import Target
from loadgen.sweep.search import answer, config_row, configs_table, mark_frontier, write_frontier_plot

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_search import SimServer  # noqa: E402  (the simulated server of the search's own tests)


def _outcome(tmp_path: Path, capacity_scale: float, jpt: float, speed: float = 1.0) -> tuple:
    """A search against the simulated server scaled to ``capacity_scale``; each step's run directory holds a
    summary.json with ``jpt`` J/token (what a real step's energy block gives)."""
    sim = SimServer()

    def step(load, prior):
        res = sim(load / capacity_scale, prior)
        res.load = load
        run_dir = tmp_path / f"cap{capacity_scale}-{len(sim.calls)}"
        run_dir.mkdir()
        (run_dir / "summary.json").write_bytes(orjson.dumps(
            {"energy": {"joules_per_total_token": jpt, "mean_power_w": 300.0},
             "total_token_throughput_tps": 1000.0 * load}))
        res.run_dirs = [*(prior.run_dirs if prior else []), str(run_dir)]
        return res

    out = search(step, SearchSettings(start=1.0, precision=0.1, budget_s=1e9), clock=sim.clock)
    return out, Target(kind="embedded", label=f"x{capacity_scale}", max_batch=int(8 * capacity_scale),
                       speed=speed)


def test_each_configuration_gets_its_rate_and_the_energy_of_its_last_passing_step(tmp_path):
    out, target = _outcome(tmp_path, 2.0, jpt=0.5)
    row = config_row(target, out, tmp_path)
    assert row["max_rate_rps"] == out.last_pass.load and row["max_rate_rps_real_time"] == out.last_pass.load
    assert row["first_fail_rps"] == out.first_fail.load > row["max_rate_rps"]
    assert row["j_per_token"] == 0.5 and row["throughput_tps"] == pytest.approx(1000.0 * out.last_pass.load)
    # an emulated server at speed 0.5 runs at half real time: rates and throughput x 2, J/token / 2
    slow = config_row(Target(kind="embedded", label="slow", speed=0.5), out, tmp_path)
    assert slow["max_rate_rps_real_time"] == pytest.approx(2 * out.last_pass.load)
    assert slow["j_per_token"] == pytest.approx(0.25)


def test_the_frontier_keeps_configurations_no_other_beats_on_both_rate_and_energy(tmp_path):
    rows = []
    for scale, jpt in ((1.0, 0.3), (2.0, 0.5), (3.0, 0.45), (4.0, 0.9)):
        out, target = _outcome(tmp_path, scale, jpt)
        rows.append(config_row(target, out, tmp_path))
    idx = mark_frontier(rows)
    # x2 (0.5 J/token) is beaten by x3: a higher rate for less energy
    assert [rows[i]["config"] for i in idx] == ["x1.0", "x3.0", "x4.0"]
    assert rows[1]["pareto"] is False and rows[2]["pareto"] is True
    line = answer(rows, "ttft_p90<300ms")
    assert line.startswith("highest rate meeting ttft_p90<300ms: x4.0 at ")
    assert "Pareto vs J/token: x1.0" in line and "x2.0" not in line
    assert write_frontier_plot(rows, tmp_path / "f.png", "c") == tmp_path / "f.png"
    assert (tmp_path / "f.png").stat().st_size > 1000
    from rich.console import Console

    console = Console(width=120, record=True)
    console.print(configs_table(rows + [{"config": "broken", "error": "no server"}]))
    text = console.export_text()
    assert "x3.0" in text and "failed" in text and "J/token" in text


def test_a_configuration_that_fails_at_its_lowest_rate_has_no_rate():
    rows = [{"config": "a", "max_rate_rps_real_time": None, "j_per_token": None}]
    assert "no configuration meets it" in answer(rows, "ttft_p90<1ms")


@pytest.mark.parametrize("extra, message", [
    (["--rates", "1,2"], "--rates does not apply with --search"),
    (["--concurrencies", "4"], "--concurrencies does not apply with --search"),
    (["--rate", "3"], "--rate does not apply with --search"),
])
def test_load_levels_with_search_are_one_line_and_exit_2(tmp_path, capsys, extra, message):
    code = main(["sweep", "--search", "--fail-on", "ttft_p90<300ms", "--out", str(tmp_path / "s"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_search_without_a_condition_is_exit_2(tmp_path, capsys):
    code = main(["sweep", "--search", "--server-max-batch", "4,8", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "no condition to search for" in err


@pytest.mark.integration
def test_sweep_search_against_two_embedded_configurations(tmp_path):
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "loadgen", "sweep", "--search", "--server-model", "opt-125m",
           "--server-max-batch", "2,16", "--input-tokens", "32", "--output-tokens", "16",
           "--fail-on", "ttft_p90<60ms", "--duration", "2", "--start-rate", "16", "--growth", "4", "--max-rate", "64",
           "--budget", "16s", "--precision", "50%", "--power", "triton", "--idle-seconds", "0.5",
           "--out", str(out)]  # short: the suite's time (about 30 s)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((out / "search.json").read_text())
    rows = {r["config"]: r for r in doc["configurations"]}
    assert len(rows) == 2 and all(r["max_rate_rps"] for r in rows.values()), proc.stdout
    small, large = (rows[k] for k in sorted(rows, key=lambda k: rows[k]["max_batch"]))
    # a batch of 2 saturates below 64 req/s (about 20 req/s here: its bracket closes), a batch of 16 meets the
    # condition up to the cap, for less energy per token: it alone is on the frontier
    assert small["first_fail_rps"] is not None and small["max_rate_rps"] < 64, proc.stdout
    assert large["max_rate_rps"] == 64 and large["first_fail_rps"] is None, proc.stdout
    assert all(math.isfinite(r["j_per_token"]) for r in rows.values())
    assert large["j_per_token"] < small["j_per_token"] and doc["pareto"] == [large["config"]]
    assert (out / "search.png").stat().st_size > 1000
    for r in rows.values():
        per = json.loads((Path(r["search_dir"]) / "search.json").read_text())
        assert per["max_rate_rps"] == r["max_rate_rps"] and per["points"]
    assert proc.stdout.strip().splitlines()[-1].startswith("highest rate meeting ttft_p90<60ms: ")
