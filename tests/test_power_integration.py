"""End to end without a GPU, against the real embedded Triton server (the session's ``embedded_server``): the
emulated GPU's power and energy scraped through Triton's metrics endpoint give per-level energy within 2 % of the
emulator's own energy counter (read directly from its shared-GPU file), and J/token falls with batch as in the
study; a side-car killed mid-run does not stop the run; a source that cannot start leaves a run without energy
that says why."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from loadgen.cli import main
from loadgen.emulator.gpu import SharedGpu
from loadgen.emulator.power import PowerModel
from loadgen.emulator.profiles import get_gpu
from loadgen.report import _num, report_text

pytestmark = pytest.mark.integration


class EmulatorCounter:
    """Reads the emulator's own energy counter (the shared-GPU file every replica integrates into) at 100 Hz,
    stamped with perf_counter_ns: the reference the scraped figures are checked against."""

    def __init__(self, server) -> None:
        cfg = server.config
        path = Path(server.workdir) / "emulated-gpu.state"
        assert path.is_file(), f"the embedded server's shared GPU file is not at {path}"
        self.gpu = SharedGpu(cfg.replicas, PowerModel.for_gpu(get_gpu(cfg.gpu)), str(path), mps=True)
        self.readings: list[tuple[int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.readings.append((time.perf_counter_ns(), self.gpu.energy_j()))
            self._stop.wait(0.01)

    def __enter__(self) -> EmulatorCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.gpu.close()

    def energy(self, a_ns: int, b_ns: int) -> float:
        r = np.array(self.readings, dtype=np.float64)
        assert r[0, 0] < a_ns and r[-1, 0] > b_ns
        return float(np.interp(b_ns, r[:, 0], r[:, 1]) - np.interp(a_ns, r[:, 0], r[:, 1]))


def _run(server, out: Path, name: str, *extra: str) -> tuple[int, Path]:
    code = main(["run", "--url", server.http_url, "--output-tokens", "64", "--input-tokens", "32", "--no-live",
                 "--out-dir", str(out), "--name", name, *extra])
    [run_dir] = [d for d in out.iterdir() if d.name.endswith(f"-{name}")]
    return code, run_dir


def _window_ns(summary: dict) -> tuple[int, int]:
    t0 = summary["client"]["anchor"]["monotonic_ns"] + summary["client"]["t0_offset_ns"]
    return t0 + int(summary["window_start_s"] * 1e9), t0 + int(summary["window_end_s"] * 1e9)


def test_scraped_energy_matches_the_emulator_counter_and_falls_with_batch(embedded_server, tmp_path, capsys):
    power = ["--power", f"triton={embedded_server.metrics_url}", "--power-interval", "20ms", "--idle-seconds", "0.5"]
    levels = {}
    with EmulatorCounter(embedded_server) as ref:
        for conc, n in ((1, 5), (32, 96)):
            code, run_dir = _run(embedded_server, tmp_path, f"c{conc}", "--concurrency", str(conc),
                                 "--requests", str(n), *power)
            assert code == 0
            summary = json.loads((run_dir / "summary.json").read_text())
            levels[conc] = (run_dir, summary, ref.energy(*_window_ns(summary)))
    capsys.readouterr()
    idle_w = get_gpu(embedded_server.config.gpu).idle_w
    for conc, (run_dir, s, truth) in levels.items():
        e = s["energy"]
        assert e["status"] == "ok" and e["source"] == "triton" and e["gpus"] == ["emulated"]
        assert e["method"] == "counter" and e["counter_resets"] == 0
        assert e["energy_j"] == pytest.approx(truth, rel=0.02), (conc, e["energy_j"], truth)
        assert e["integral_energy_j"] is not None and e["counter_minus_integral_j"] is not None
        assert e["idle_power_w"] == pytest.approx(idle_w, rel=0.01)
        assert e["joules_per_output_token"] == pytest.approx(e["energy_j"] / s["output_tokens_total"], rel=1e-4)
        assert e["sample_rate_hz"] > 10
        assert (run_dir / "power.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "Energy (measurement window)" in (run_dir / "report.txt").read_text()
        config = json.loads((run_dir / "config.json").read_text())
        assert config["power"]["idle_end_ns"] - config["power"]["idle_start_ns"] >= 0.5e9
    (_, s1, _), (_, s32, _) = levels[1], levels[32]
    assert s32["mean_running_requests"] > 20 and s1["mean_running_requests"] < 1.5
    # the study's shape: more watts at large batch, but far fewer joules per token (OPT-1.3B: 0.67 -> 0.030 J)
    assert s32["energy"]["mean_power_w"] > s1["energy"]["mean_power_w"]
    assert s32["energy"]["joules_per_output_token"] < s1["energy"]["joules_per_output_token"] / 4
    assert s32["energy"]["output_tokens_per_joule"] > 4 * s1["energy"]["output_tokens_per_joule"]
    # the comparison report shows both levels' energy side by side
    text = report_text([s1, s32], width=160)
    row1 = next(line for line in text.splitlines() if line.startswith("c1 ") and "triton/counter" in line)
    assert _num(s1["energy"]["joules_per_output_token"]) in row1.split()
    # --analyze recomputes the same figures from the saved samples
    run_dir32 = levels[32][0]
    assert main(["power", "--analyze", str(run_dir32)]) == 0
    again = json.loads((run_dir32 / "summary.json").read_text())["energy"]
    assert again["energy_j"] == s32["energy"]["energy_j"] and again["joules_per_output_token"] > 0
    # ... also for a run that crashed before writing summary.json (recomputed from records.jsonl)
    run_dir1 = levels[1][0]
    (run_dir1 / "summary.json").unlink()
    assert main(["power", "--analyze", str(run_dir1)]) == 0
    rebuilt = json.loads((run_dir1 / "summary.json").read_text())
    assert rebuilt["recomputed"] is True and rebuilt["energy"]["energy_j"] == s1["energy"]["energy_j"]
    assert main(["power", "--analyze", str(tmp_path / "nope")]) == 2
    assert "no config.json; --analyze needs a run directory made with --power" in capsys.readouterr().err


def test_side_car_killed_mid_run_leaves_the_run_going(embedded_server, tmp_path, capsys):
    killed: dict[str, int] = {}

    def kill_side_car() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for f in tmp_path.glob("*/power.jsonl"):
                lines = [orjson.loads(x) for x in f.read_bytes().splitlines() if x.endswith(b"}")]
                if lines and lines[0].get("type") == "start" and (tmp_path / f.parent.name / "records.jsonl"
                                                                   ).exists() and len(lines) > 25:
                    killed["pid"] = lines[0]["pid"]
                    os.kill(lines[0]["pid"], signal.SIGKILL)
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_side_car, daemon=True)
    killer.start()
    code, run_dir = _run(embedded_server, tmp_path, "killed", "--concurrency", "4", "--duration", "3",
                         "--power", f"triton={embedded_server.metrics_url}", "--idle-seconds", "0.2")
    killer.join()
    assert code == 0 and "pid" in killed
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["completed_requests"] > 10 and s["window_s"] > 2.5
    e = s["energy"]
    assert e["status"] == "partial" and e["energy_j"] is None and e["mean_power_w"] > 0
    assert "side-car exited during the run" in e["note"]
    report = (run_dir / "report.txt").read_text()
    assert "Energy of killed partial: the power side-car exited during the run" in report.replace("\n", " ")
    capsys.readouterr()


def test_source_that_cannot_start_leaves_a_run_without_energy(embedded_server, tmp_path, capsys):
    # No NVIDIA driver here; on a GPU machine index 99 does not exist either: the source cannot start anywhere.
    code, run_dir = _run(embedded_server, tmp_path, "nognu", "--concurrency", "4", "--requests", "8",
                         "--power", "nvml", "--power-gpu", "99", "--idle-seconds", "0")
    assert code == 0
    out = capsys.readouterr().out
    assert "the run goes on without energy figures" in out.replace("\n", " ")
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["completed_requests"] == 8
    e = s["energy"]
    assert e["status"] == "missing" and e["note"].startswith("nvml: ") and e["energy_j"] is None
    assert "Energy of nognu missing: nvml: " in (run_dir / "report.txt").read_text()
