"""``loadgen sweep`` against the real embedded server: every point a run directory, resume after an interruption
(finished points are not rerun), and early stop once a load series saturates."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from loadgen.errors import UsageError
from loadgen.sweep.grid import spec_from_mapping
from loadgen.sweep.results import finalize, load_sweep
from loadgen.sweep.runner import SweepRunner

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--server-model", "opt-125m", "--server-max-batch", "8", "--server-speed", "0.2", "--input-tokens", "16",
        "--output-tokens", "24", "--no-plots"]


def _status(sweep_dir: Path, point: str) -> str:
    return json.loads((sweep_dir / "points" / point / "point.json").read_text())["status"]


def test_resume_after_interruption_reruns_only_unfinished_points(tmp_path):
    out = tmp_path / "sw"
    cmd = [sys.executable, "-m", "loadgen", "sweep", *TINY, "--concurrencies", "1,2,4", "--requests", "10",
           "--out", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    second = out / "points" / "1x8--c2" / "records.jsonl"
    deadline = time.monotonic() + 60
    while not (second.exists() and second.stat().st_size > 0):  # interrupt the second point mid-run
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "the second point never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    text = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 130, text
    assert _status(out, "1x8--c1") == "done"
    assert _status(out, "1x8--c2") == "interrupted"
    assert not (out / "points" / "1x8--c4").exists()
    first = out / "points" / "1x8--c1" / "summary.json"
    before = (first.stat().st_mtime_ns, first.read_bytes())

    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=90)
    text = again.stdout.decode()
    assert again.returncode == 0, text + again.stderr.decode()
    assert "(resuming)" in text
    assert "1x8 / c1" not in text and "1x8 / c2" in text and "1x8 / c4" in text  # only the unfinished ran
    assert (first.stat().st_mtime_ns, first.read_bytes()) == before
    assert [_status(out, p) for p in ("1x8--c1", "1x8--c2", "1x8--c4")] == ["done"] * 3
    moved = list((out / "incomplete").iterdir())
    assert len(moved) == 1 and moved[0].name.startswith("1x8--c2-")  # the partial run is kept aside
    summary = json.loads((out / "points" / "1x8--c2" / "summary.json").read_text())
    assert summary["completed_requests"] == 10 and summary["records_total"] == 10
    results = json.loads((out / "results.json").read_text())
    assert [r["status"] for r in results["rows"]] == ["done"] * 3

    # a third run has nothing left to do; changing a measured point's settings is refused, not mixed in
    third = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=60)
    assert third.returncode == 0 and "1x8 / c" not in third.stdout.decode()
    changed = subprocess.run([*cmd[:-2], "--seed", "3", "--out", str(out)], cwd=ROOT, env=env,
                             capture_output=True, timeout=60)
    assert changed.returncode == 2 and b"measured with different settings" in changed.stderr


def test_early_stop_once_the_server_cannot_keep_up(server_factory, tmp_path):
    """One sequence at a time (max batch 1, 12 output tokens, about 20 ms each at speed 1) serves about 40 req/s:
    at 400 req/s it completes far fewer than asked, so the series stops there and 800 req/s is skipped."""
    server = server_factory(replicas=1, max_batch=1, speed=1.0)
    spec = spec_from_mapping({
        "workload": {"input_tokens": "16", "output_tokens": "12"}, "load": {"arrival": "constant", "requests": 32},
        "power": {"source": "triton", "idle": "0.2"},
        "sweep": {"kind": "external", "rates": [15, 400, 800],
                  "endpoints": [{"label": "b1", "url": server.http_url, "metrics_url": server.metrics_url}]},
    })
    console = Console(file=open(os.devnull, "w"), width=160)
    runner = SweepRunner(spec, tmp_path / "sw", console)
    assert runner.run() == 0
    assert runner.ran == ["b1--rate-15", "b1--rate-400"]
    rows = {r["point"]: r for r in load_sweep(tmp_path / "sw")[1]}
    assert rows["b1--rate-15"]["served_ratio"] > 0.9 and rows["b1--rate-15"]["valid"]
    assert rows["b1--rate-400"]["served_ratio"] < 0.5
    assert rows["b1--rate-400"]["saturated"].startswith("the server completed")
    assert rows["b1--rate-800"]["status"] == "skipped"
    assert "saturated at rate-400" in rows["b1--rate-800"]["reason"]
    assert rows["b1--rate-400"]["batch"] == pytest.approx(1.0, abs=0.1)  # the server's own running count
    for p in ("b1--rate-15", "b1--rate-400"):  # one power side-car per level, energy in each row
        assert (tmp_path / "sw" / "points" / p / "power.jsonl").is_file()
        assert rows[p]["energy_status"] == "ok" and rows[p]["j_per_token"] > 0 and rows[p]["mean_power_w"] > 0
    res = finalize(tmp_path / "sw", spec, console, plots=False)
    assert {o["point"] for o in res["analysis"]["left_out"]} == {"b1--rate-800"}
    report = (tmp_path / "sw" / "report.txt").read_text()
    assert "b1--rate-800" in report and "skipped" in report


def test_a_configuration_that_cannot_start_fails_alone(tmp_path):
    spec = spec_from_mapping({"sweep": {"kind": "external", "concurrencies": [1], "endpoints": [
        {"label": "gone", "url": "http://127.0.0.1:9"}]}, "load": {"requests": 2}})
    console = Console(file=open(os.devnull, "w"))
    runner = SweepRunner(spec, tmp_path / "sw", console)
    assert runner.run() == 3
    rows = load_sweep(tmp_path / "sw")[1]
    assert rows[0]["status"] == "failed" and "127.0.0.1:9" in rows[0]["reason"]
    with pytest.raises(UsageError, match="no readable sweep.json"):
        load_sweep(tmp_path)


def test_offline_point_sends_everything_at_once(embedded_server, tmp_path):
    spec = spec_from_mapping({
        "workload": {"input_tokens": "16", "output_tokens": "24"},
        "sweep": {"kind": "external", "offline": 40, "endpoints": [
            {"label": "fixture", "url": embedded_server.http_url, "metrics_url": embedded_server.metrics_url}]}})
    runner = SweepRunner(spec, tmp_path / "sw", Console(file=open(os.devnull, "w")))
    assert runner.run() == 0
    summary = json.loads((tmp_path / "sw" / "points" / "fixture--offline-40" / "summary.json").read_text())
    assert summary["mode"] == "closed_loop" and summary["concurrency"] == 40
    assert summary["completed_requests"] == 40 and summary["valid"], summary["warnings"]
    assert summary["schedule_lag_ms"]["max"] < 1000  # all 40 issued at once
    assert summary["window_end_s"] >= summary["e2e_ms"]["max"] / 1e3  # measured until the last token
    row = load_sweep(tmp_path / "sw")[1][0]
    assert 1 <= row["batch"] <= 32 and row["kv_peak"] > 0 and row["preemptions"] == 0


def test_sharegpt_lengths_are_sent_exactly():
    from loadgen.level.plan import sharegpt_source
    from loadgen.scenario.check import build

    src = sharegpt_source(build({"server": {"model": "opt-1.3b"}}), 300, prebuild=5)
    inp, out = src.inputs, src.outputs
    assert abs(inp.mean() - 111) < 1 and abs(out.mean() - 292) < 1 and (inp + out).max() <= 2048
    for i in (0, 4, 5, 299, 300):
        spec = src.spec(i)
        assert (spec.input_tokens, spec.max_tokens, spec.min_tokens) == (inp[i % 300], out[i % 300], out[i % 300])


def test_restart_command_per_configuration(tmp_path):
    """kind = "command": the user's command (here ``loadgen serve`` in the foreground) is started with each
    configuration's {max_batch}, waited for, measured, and stopped before the next one."""
    from loadgen.serve.launcher import free_port

    port = free_port()
    cmd = (f"exec {sys.executable} -m loadgen serve --server-model opt-125m --server-max-batch {{max_batch}} "
           f"--server-speed 0.2 --http-port {port} --grpc-port 0 --metrics-port 0")
    spec = spec_from_mapping({
        "workload": {"input_tokens": "16", "output_tokens": "12"}, "load": {"requests": 32},
        "target": {"url": f"http://127.0.0.1:{port}"}, "server": {"max_batch": [2, 8]},
        "sweep": {"kind": "command", "command": cmd, "ready_timeout": "60s", "concurrencies": [8]}})
    runner = SweepRunner(spec, tmp_path / "sw", Console(file=open(os.devnull, "w")))
    assert runner.run() == 0
    rows = {r["config"]: r for r in load_sweep(tmp_path / "sw")[1]}
    assert set(rows) == {"1x2", "1x8"} and all(r["status"] == "done" for r in rows.values())
    assert rows["1x8"]["throughput"] > 1.5 * rows["1x2"]["throughput"]  # the command really changed the batch
    logs = sorted(p.name for p in (tmp_path / "sw" / "servers").iterdir())
    assert logs == ["1x2.log", "1x8.log"]
    assert "--server-max-batch 8 " in (tmp_path / "sw" / "servers" / "1x8.log").read_text()
    deadline = time.monotonic() + 10
    while _listening(port) and time.monotonic() < deadline:  # the last server was stopped
        time.sleep(0.1)
    assert not _listening(port)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
