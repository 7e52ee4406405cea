"""The side-car as a process (``python -m loadgen power``): it stops cleanly on SIGTERM with a last sample and a
stop line, dies with its parent, and a source that cannot start gives exit 3 and one clear line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import orjson

from tests.test_power_sources import _fake_smi

SIDE_CAR = [sys.executable, "-m", "loadgen", "power"]


def _lines(path) -> list[dict]:
    if not path.exists():
        return []
    return [orjson.loads(x) for x in path.read_bytes().splitlines() if x.endswith(b"}")]


def _wait(cond, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie of ours counts as gone
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_sigterm_stops_with_a_last_sample_and_a_stop_line(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "nvidia-smi").symlink_to(_fake_smi(tmp_path))
    out = tmp_path / "power.jsonl"
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen([*SIDE_CAR, "--source", "nvidia-smi", "--out", str(out), "--interval", "50ms"],
                            env=env, stderr=subprocess.PIPE)
    try:
        assert _wait(lambda: sum(x["type"] == "sample" for x in _lines(out)) >= 4)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = _lines(out)
    start, stop = lines[0], lines[-1]
    assert start["type"] == "start" and start["source"] == "nvidia-smi" and start["interval_s"] == 0.05
    assert start["gpus"][0]["uuid"] == "GPU-aaa" and start["pid"] == proc.pid
    assert stop["type"] == "stop" and stop["reason"] == "stopped" and stop["cpu_s"] >= 0
    samples = [x for x in lines if x["type"] == "sample"]
    assert stop["samples"] == len(samples) and {s["gpu"] for s in samples} == {"0", "1"}


def test_side_car_exits_with_its_parent(tmp_path):
    out = tmp_path / "power.jsonl"
    parent_code = (
        "import os, subprocess, sys, time\n"
        f"subprocess.Popen({SIDE_CAR!r} + ['--source', 'none', '--out', {str(out)!r}, '--parent-pid', "
        "str(os.getpid())])\n"
        "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", parent_code])
    pid = None
    try:
        assert _wait(lambda: bool(_lines(out)))
        pid = _lines(out)[0]["pid"]
        assert _lines(out)[0]["parent_pid"] == parent.pid
        parent.kill()
        parent.wait()
        assert _wait(lambda: _gone(pid), timeout_s=10)
        assert _lines(out)[-1]["type"] == "stop"
    finally:
        if parent.poll() is None:
            parent.kill()
        if pid is not None and not _gone(pid):
            os.kill(pid, signal.SIGKILL)


def test_unavailable_source_exits_3_with_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "power.jsonl"
    done = subprocess.run([*SIDE_CAR, "--source", "nvidia-smi", "--out", str(out)], capture_output=True, text=True,
                          env={**os.environ, "PATH": str(empty)}, timeout=60)
    assert done.returncode == 3
    assert done.stderr.strip().splitlines() == [
        "loadgen power: nvidia-smi: 'nvidia-smi' is not on PATH (no NVIDIA driver here?); use --power triton or none"]
    [line] = _lines(out)
    assert line["type"] == "error" and line["fatal"] is True


def test_bad_flags_are_one_line_errors(tmp_path):
    done = subprocess.run([*SIDE_CAR, "--source", "nvml", "--out", str(tmp_path / "p"), "--interval", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "loadgen power: error: --interval 0: use more than 0 and at most 60 s"]
    done = subprocess.run([*SIDE_CAR, "--source", "dcgm", "--out", str(tmp_path / "p")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--source 'dcgm': unknown source" in done.stderr
