"""A run's life: Ctrl-C keeps every record and exits 130; a server that goes away mid-run leaves a valid run
directory with an error summary and exit 3; secrets never reach the run directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import orjson

from loadgen.cli import main
from tests.fake_servers import FaultyTriton


def only_run_dir(out):
    dirs = [p for p in out.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def test_ctrl_c_keeps_records_and_writes_summary(tmp_path):
    with FaultyTriton("ok", tokens=8, gap_s=0.01) as srv:
        proc = subprocess.Popen(
            [sys.executable, "-m", "loadgen", "run", "--url", srv.url, "--model", "m", "--rate", "20",
             "--duration", "60", "--output-tokens", "8", "--no-live", "--out-dir", str(tmp_path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # wait until records are being written
                dirs = [p for p in tmp_path.iterdir() if p.is_dir()]
                if dirs and (dirs[0] / "records.jsonl").exists() and (dirs[0] / "records.jsonl").stat().st_size > 0:
                    break
                time.sleep(0.1)
            time.sleep(1.0)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130, err.decode()
    rd = only_run_dir(tmp_path)
    lines = (rd / "records.jsonl").read_bytes().splitlines()
    recs = [orjson.loads(x) for x in lines]
    assert len(recs) >= 10
    assert {r["status"] for r in recs} <= {"ok", "cancelled"}
    summary = json.loads((rd / "summary.json").read_text())
    assert summary["completed_requests"] >= 8
    assert b"interrupted" in out


def test_server_gone_mid_run_exit_3_with_valid_run_dir(tmp_path, capsys):
    srv = FaultyTriton("ok", tokens=4, gap_s=0.002).__enter__()
    try:
        import threading

        def stop_after_25() -> None:  # after 25 requests, not after a time: start-up cost must not matter
            deadline = time.monotonic() + 60
            while srv.requests < 25 and time.monotonic() < deadline:
                time.sleep(0.01)
            srv.__exit__(None, None, None)

        threading.Thread(target=stop_after_25, daemon=True).start()
        rc = main(["run", "--url", srv.url, "--model", "m", "--rate", "50", "--duration", "30", "--no-live",
                   "--output-tokens", "4", "--out-dir", str(tmp_path), "--max-connection-errors", "10"])
    finally:
        srv.__exit__(None, None, None)
    err = capsys.readouterr().err
    assert rc == 3 and "stopped answering mid-run" in err and "keeps every record" in err
    rd = only_run_dir(tmp_path)
    recs = [orjson.loads(x) for x in (rd / "records.jsonl").read_bytes().splitlines()]
    ok = [r for r in recs if r["status"] == "ok"]
    conn = [r for r in recs if r.get("error_kind") == "connection"]
    assert len(ok) >= 20 and len(conn) >= 10
    summary = json.loads((rd / "summary.json").read_text())
    assert summary["errors_by_kind"]["connection"] >= 10 and summary["completed_requests"] == len(ok)


def test_api_key_never_reaches_the_run_directory(tmp_path, monkeypatch):
    secret = "sk-test-DO-NOT-LEAK-12345"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    with FaultyTriton("ok", tokens=2) as srv:
        rc = main(["run", "--url", srv.url, "--model", "m", "--rate", "20", "--requests", "5", "--no-live",
                   "--out-dir", str(tmp_path), "--header", f"X-Api-Key: {secret}", "--api-key", secret])
    assert rc == 0
    rd = only_run_dir(tmp_path)
    for f in rd.iterdir():
        assert secret not in f.read_text(errors="replace"), f.name
    config = json.loads((rd / "config.json").read_text())
    assert config["scenario"]["target"]["headers"] == ["X-Api-Key: <redacted>"]  # named, never its value
    assert "api_key" not in config["scenario"]["target"]
