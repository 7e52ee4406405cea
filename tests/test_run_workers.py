"""``loadgen run --workers N``: several worker processes issue one schedule from one t0.

Against the real Triton server of the launcher: the stripes are disjoint and together exactly the planned schedule
(Poisson, closed loop, a trace replay), every worker counts from the same t0 (checked against the server's own
arrival stamps on the same monotonic clock). With a fake server (what a real one cannot be made to do on cue):
Ctrl-C, a worker killed mid-run, the server gone mid-run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from loadgen.cli import main
from loadgen.core.arrivals import ArrivalSpec, build_offsets
from loadgen.run_cli import configure
from loadgen.runner.loop import LoopOutcome, LoopSettings
from loadgen.runner.workers import WorkerLink, merge_clients, merge_outcomes, share
from loadgen.scenario.load import scenario_from_args
from tests.fake_servers import FaultyTriton

TRACE = Path(__file__).resolve().parents[2] / "shared" / "traces" / "azure-llm-2023" / "AzureLLMInferenceTrace_code.csv"


def only_run_dir(out: Path) -> Path:
    dirs = [p for p in out.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def worker_records(run_dir: Path) -> dict[int, list[dict]]:
    files = sorted(run_dir.glob("records.w*.jsonl"))
    assert not (run_dir / "records.jsonl").exists()
    out = {}
    for f in files:
        k = int(f.name.split(".")[1][1:])
        out[k] = [orjson.loads(x) for x in f.read_bytes().splitlines() if x.strip()]
    return out


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


# -- units --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("total,n", [(1, 1), (7, 3), (8, 4), (64, 5), (3, 3)])
def test_share_splits_evenly_and_adds_up(total, n):
    parts = [share(total, k, n) for k in range(n)]
    assert sum(parts) == total and max(parts) - min(parts) <= 1


def test_worker_link_takes_its_stripe_and_share_of_the_cap():
    offsets = np.arange(10, dtype=np.int64) * 1000
    ls = [LoopSettings(offsets_ns=offsets, concurrency=5) for _ in range(3)]
    for k, s in enumerate(ls):
        WorkerLink(None, k, 3).share(s)
    assert [list(s.stripe) for s in ls] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert [s.concurrency for s in ls] == [2, 2, 1] and [s.n_workers for s in ls] == [3, 3, 3]


def test_merged_client_is_saturated_when_any_worker_is():
    outs = [dict(issue_end_ns=5, end_ns=9, issued=10, dropped=1, late=2, cancelled=0, interrupted=False),
            dict(issue_end_ns=7, end_ns=8, issued=12, dropped=0, late=1, cancelled=1, interrupted=False)]
    outcome = merge_outcomes(outs, t0=100)
    assert outcome == LoopOutcome(100, 7, 9, 22, 1, 3, 1, False)
    base = dict(event_loop="uvloop", cpu_seconds=1.0, wall_seconds=2.0, cpu_utilisation=0.5,
                cpu_seconds_per_1000_requests=1.0, loop_lag_p99_ms=0.5, issued=10, dropped=0, late=0)
    clients = [{**base, "saturated": False, "saturation_reason": None},
               {**base, "loop_lag_p99_ms": 30.0, "saturated": True, "saturation_reason": "event-loop lag p99 30 ms"}]
    c = merge_clients(clients, outcome, {"server": "triton"}, {"monotonic_ns": 40, "wall_ns": 0})
    assert c["saturated"] and c["saturation_reason"] == "worker 1: event-loop lag p99 30 ms"
    assert c["processes"] == 2 and c["loop_lag_p99_ms"] == 30.0 and c["cpu_seconds"] == 2.0
    assert c["t0_offset_ns"] == 60 and len(c["workers"]) == 2


@pytest.mark.parametrize("argv,needle", [
    (["--workers", "0"], "--workers 0"),
    (["--workers", "65"], "--workers 65"),
    (["--workers", "3", "--concurrency", "2"], "--concurrency >= --workers"),
])
def test_bad_worker_counts_get_one_line(argv, needle):
    import argparse

    from loadgen.errors import UsageError

    p = argparse.ArgumentParser()
    configure(p)
    args = p.parse_args(["--url", "http://127.0.0.1:1", "--requests", "10", *argv]
                        + ([] if "--concurrency" in argv else ["--rate", "5"]))
    with pytest.raises(UsageError, match=needle.replace("-", r"\-")):
        scenario_from_args(args)


# -- against the real Triton server ------------------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.parametrize("backend", ["triton-http", "triton-grpc"])
def test_workers_send_the_one_schedule_from_one_t0(embedded_server, tmp_path, backend):
    url = embedded_server.http_url if backend == "triton-http" else embedded_server.grpc_url
    rc = main(["run", "--url", url, "--backend", backend, "--perf-metrics", "--workers", "2", "--rate", "16",
               "--requests", "48", "--seed", "5", "--input-tokens", "32", "--output-tokens", "8", "--no-live",
               "--out-dir", str(tmp_path)])
    assert rc == 0
    rd = only_run_dir(tmp_path)
    by_worker = worker_records(rd)
    assert sorted(by_worker) == [0, 1]
    recs = [r for k in by_worker for r in by_worker[k]]
    for k, rs in by_worker.items():
        assert all(r["worker"] == k and r["index"] % 2 == k for r in rs)
    assert sorted(r["index"] for r in recs) == list(range(48))  # disjoint, and together the whole schedule
    planned = build_offsets(ArrivalSpec(kind="poisson", rate=16, max_requests=48, seed=5))
    assert {r["index"]: r["scheduled_ns"] for r in recs} == {i: int(o) for i, o in enumerate(planned)}
    assert all(r["status"] == "ok" and r["server_output_tokens"] == 8 for r in recs), [r.get("error") for r in recs]
    config, summary = read_json(rd / "config.json"), read_json(rd / "summary.json")
    client = config["level_context"]["client"]
    t0 = client["anchor"]["monotonic_ns"] + client["t0_offset_ns"]
    for k, rs in by_worker.items():
        # One t0 for both processes: each request leaves before the server stamps its arrival, and not long before
        # (a worker that counted from another t0 would be off by the whole start-up gap, hundreds of ms).
        gaps = [r["server_perf"]["arrival_time_ns"] - (t0 + r["issued_ns"]) for r in rs]
        assert min(gaps) >= 0 and np.median(gaps) < 10e6, (k, gaps)
    assert summary["completed_requests"] == 48 and summary["client"]["processes"] == 2
    assert [w["issued"] for w in summary["client"]["workers"]] == [24, 24]


@pytest.mark.integration
def test_closed_loop_shares_users_and_count(embedded_server, tmp_path):
    rc = main(["run", "--url", embedded_server.http_url, "--workers", "2", "--concurrency", "4", "--requests", "40",
               "--input-tokens", "16", "--output-tokens", "6", "--no-live", "--out-dir", str(tmp_path)])
    assert rc == 0
    by_worker = worker_records(only_run_dir(tmp_path))
    recs = [r for rs in by_worker.values() for r in rs]
    assert sorted(r["index"] for r in recs) == list(range(40))

    def max_in_flight(rs: list[dict]) -> int:
        events = sorted([(r["issued_ns"], 1) for r in rs] + [(r["end_ns"], -1) for r in rs])
        return int(np.max(np.cumsum([e[1] for e in events])))

    assert [max_in_flight(by_worker[k]) for k in (0, 1)] == [2, 2]  # each worker its half of the users
    assert max_in_flight(recs) >= 3  # and both at once


@pytest.mark.integration
def test_trace_replay_stripes_add_up_to_the_replay(embedded_server, tmp_path):
    from loadgen.level.plan import plan_level

    argv = ["run", "--url", embedded_server.http_url, "--trace", str(TRACE), "--window", "0:40s", "--speedup", "4",
            "--max-output-tokens", "6", "--max-input-tokens", "64", "--seed", "2", "--no-live",
            "--out-dir", str(tmp_path)]
    import argparse

    p = argparse.ArgumentParser()
    configure(p)
    planned = plan_level(scenario_from_args(p.parse_args(argv[1:]))[0]).offsets
    assert len(planned) >= 10
    assert main([*argv, "--workers", "3"]) == 0
    recs = [r for rs in worker_records(only_run_dir(tmp_path)).values() for r in rs]
    assert sorted((r["index"], r["scheduled_ns"]) for r in recs) == [(i, int(o)) for i, o in enumerate(planned)]


# -- lifecycle, against a fake server ----------------------------------------------------------------------------
def children(pid: int) -> list[int]:
    """The worker processes of ``pid``."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for c in (task / "children").read_text().split():
            cmd = Path(f"/proc/{c}/cmdline").read_bytes()
            if b"loadgen.runner.workers" in cmd:
                out.append(int(c))
    return out


def start_run(srv: FaultyTriton, tmp_path: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "loadgen", "run", "--url", srv.url, "--model", "m", "--workers", "2", "--rate", "20",
         "--duration", "60", "--output-tokens", "8", "--no-live", "--out-dir", str(tmp_path), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for_records(proc: subprocess.Popen, tmp_path: Path) -> Path:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        dirs = [p for p in tmp_path.iterdir() if p.is_dir()]
        if dirs and len([f for f in dirs[0].glob("records.w*.jsonl") if f.stat().st_size > 0]) == 2:
            return dirs[0]
        time.sleep(0.1)
    raise AssertionError(f"no records from both workers (exit {proc.poll()})")


def test_ctrl_c_stops_every_worker_and_keeps_their_records(tmp_path):
    with FaultyTriton("ok", tokens=8, gap_s=0.01) as srv:
        proc = start_run(srv, tmp_path)
        try:
            rd = wait_for_records(proc, tmp_path)
            workers = children(proc.pid)
            assert len(workers) == 2
            time.sleep(0.5)
            proc.send_signal(signal.SIGINT)  # to the parent only: it must stop the workers itself
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130, err.decode()
    assert not any(Path(f"/proc/{w}").exists() for w in workers)
    recs = [r for rs in worker_records(rd).values() for r in rs]
    assert len(recs) >= 10 and {r["status"] for r in recs} <= {"ok", "cancelled"}
    summary = read_json(rd / "summary.json")
    assert summary["completed_requests"] >= 8 and summary["client"]["interrupted"] is True
    assert b"interrupted" in out
    # A crash before summary.json: `loadgen report` recomputes it from every worker's records.
    (rd / "summary.json").unlink()
    rep = subprocess.run([sys.executable, "-m", "loadgen", "report", str(rd), "--json"], capture_output=True,
                         timeout=60)
    assert rep.returncode == 0, rep.stderr.decode()
    (again,) = json.loads(rep.stdout)
    assert again["recomputed"] is True and again["completed_requests"] == summary["completed_requests"]
    assert b"records.w0.jsonl, records.w1.jsonl" in rep.stderr + rep.stdout


def test_a_worker_killed_mid_run_stops_the_others_and_keeps_the_run(tmp_path):
    with FaultyTriton("ok", tokens=8, gap_s=0.01) as srv:
        proc = start_run(srv, tmp_path)
        try:
            rd = wait_for_records(proc, tmp_path)
            victim = sorted(children(proc.pid))[-1]
            os.kill(victim, signal.SIGKILL)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = err.decode()
    assert proc.returncode == 5, text
    lines = [x for x in text.splitlines() if x.strip()]
    assert len(lines) == 1 and "exited with code -9" in lines[0] and "keeps every record" in lines[0]
    summary = read_json(rd / "summary.json")
    assert summary["completed_requests"] >= 5 and summary["client"]["workers_failed"]
    assert len(worker_records(rd)) == 2


def test_server_gone_mid_run_stops_all_workers_exit_3(tmp_path, capsys):
    srv = FaultyTriton("ok", tokens=4, gap_s=0.002).__enter__()
    try:
        threading.Timer(3.0, srv.__exit__, args=(None, None, None)).start()
        rc = main(["run", "--url", srv.url, "--model", "m", "--workers", "2", "--rate", "40", "--duration", "60",
                   "--no-live", "--output-tokens", "4", "--out-dir", str(tmp_path), "--max-connection-errors", "5"])
    finally:
        srv.__exit__(None, None, None)
    err = capsys.readouterr().err
    assert rc == 3 and "stopped answering mid-run" in err
    rd = only_run_dir(tmp_path)
    summary = read_json(rd / "summary.json")
    assert summary["errors_by_kind"]["connection"] >= 5 and summary["completed_requests"] >= 20
    assert summary["client"]["issued"] < 40 * 30  # stopped long before the 60 s schedule ended


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_clean_run_writes_nothing_to_stderr(tmp_path, workers):
    # Loose ends of a run (a timer task cleaned up after its clock was closed, a worker's pipe) show up as
    # "Task exception was never retrieved" or tracebacks on stderr even when the run itself succeeds.
    with FaultyTriton("ok", tokens=4, gap_s=0.002) as srv:
        proc = subprocess.run(
            [sys.executable, "-m", "loadgen", "run", "--url", srv.url, "--model", "m", "--workers", workers,
             "--rate", "40", "--requests", "40", "--output-tokens", "4", "--no-live", "--out-dir", str(tmp_path)],
            capture_output=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr.decode()
    assert read_json(only_run_dir(tmp_path) / "summary.json")["completed_requests"] == 40


def test_workers_stop_by_themselves_when_the_parent_is_killed(tmp_path):
    # No orphaned load: a worker whose parent is gone (SIGKILL: no chance to stop them) notices at its next live
    # report and stops like on Ctrl-C, keeping its records.
    with FaultyTriton("ok", tokens=8, gap_s=0.01) as srv:
        proc = start_run(srv, tmp_path)
        try:
            rd = wait_for_records(proc, tmp_path)
            workers = children(proc.pid)
            assert len(workers) == 2
            proc.kill()
            proc.wait(10)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and any(_running(w) for w in workers):
                time.sleep(0.1)
            assert not any(_running(w) for w in workers)
        finally:
            if proc.poll() is None:
                proc.kill()
            for w in workers if "workers" in locals() else []:
                if _running(w):
                    os.kill(w, signal.SIGKILL)
    recs = [r for rs in worker_records(rd).values() for r in rs]
    assert len(recs) >= 5 and all(r["status"] in ("ok", "cancelled") for r in recs)


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan is reaped by init, or by nobody in a container: a zombie has stopped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
