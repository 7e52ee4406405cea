"""Locust and the asyncio runner are one core with two front ends: the same workload and seed against the embedded
Triton give the same arrival process at the server and the same latency percentiles; ``--processes 2`` splits the
one schedule into stripes whose union is the single-process run's schedule, and the master's merged histograms
give the percentiles of all the workers' records.

Workload (measured on this 2-core machine, see benchmarks/LOCUST.md): Poisson 16 req/s, 160 requests, 1536-token
prompts, 4 output tokens, with TensorRT-LLM perf fields on, so every record carries the server's own arrival,
first-token and last-token times. The latency agreement is judged request by request against those (see
``test_both_front_ends_measure_ttft_and_e2e_alike``), so it needs no more requests than the arrival-process checks
do (320 were needed while two runs' percentiles were compared directly). The seeded schedule's gaps are the same
in every run; ``N_PROCESSES`` lets the ``--processes 2`` run send a prefix of it.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
from scipy import stats as sstats

from loadgen.core.metrics import REQUEST_METRICS_BY_NAME, itl_values_ns
from loadgen.core.records import RequestRecord
from loadgen.core.stats import cv, ks_interarrivals

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RATE = 16.0
N = 160
N_PROCESSES = 160  # the --processes 2 run: the first requests of the one schedule (here: all of them)
WORKLOAD = ["--rate", str(RATE), "--requests", str(N), "--seed", "11", "--input-tokens", "1536",
            "--output-tokens", "4", "--perf-metrics"]


def run_locust(args: list[str], out_dir: Path, timeout: float = 150) -> subprocess.CompletedProcess:
    """``locust -f scenarios/ ...`` from the repository root, as a user runs it."""
    cmd = [str(BIN / "locust"), "-f", "scenarios/", *args, "--out-dir", str(out_dir), "--only-summary"]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def level_dir(out_dir: Path) -> Path:
    dirs = [p for p in Path(out_dir).iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def records_of(run_dir: Path) -> list[dict]:
    return [orjson.loads(line) for f in sorted(run_dir.glob("records*.jsonl")) for line in f.read_bytes().splitlines()]


def summary_of(run_dir: Path) -> dict:
    return orjson.loads((run_dir / "summary.json").read_bytes())


def server_gaps(records: list[dict]) -> np.ndarray:
    """Inter-arrival gaps (s) on the server's clock: TensorRT-LLM perf field ``arrival_time_ns``."""
    arrivals = np.sort([r["server_perf"]["arrival_time_ns"] for r in records])
    return np.diff(arrivals) / 1e9


def explain(p: subprocess.CompletedProcess) -> str:
    return f"exit {p.returncode}\n--- stdout\n{p.stdout[-4000:]}\n--- stderr\n{p.stderr[-4000:]}"


@pytest.fixture(scope="module")
def runs(embedded_server, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("frontends")
    url = embedded_server.http_url
    out: dict[str, Path] = {}
    p = run_locust(["TritonHttpPoisson", "--headless", "-H", url, *WORKLOAD], base / "locust")
    assert p.returncode == 0, explain(p)
    out["locust"] = level_dir(base / "locust")
    p = subprocess.run([str(BIN / "loadgen"), "run", "--url", url, *WORKLOAD, "--out-dir", str(base / "asyncio"),
                        "--no-live"], cwd=REPO, capture_output=True, text=True, timeout=150)
    assert p.returncode == 0, explain(p)
    out["asyncio"] = level_dir(base / "asyncio")
    p = run_locust(["TritonHttpPoisson", "--headless", "--processes", "2", "-H", url, *WORKLOAD,
                    "--requests", str(N_PROCESSES)], base / "processes")
    assert p.returncode == 0, explain(p)
    out["processes"] = level_dir(base / "processes")
    return out


def check_poisson(gaps: np.ndarray, n: int = N) -> None:
    """The statistical checks of the arrival process (as the generator benchmarks apply them)."""
    assert len(gaps) == n - 1
    assert 0.8 < cv(gaps) < 1.2, cv(gaps)
    _, p = ks_interarrivals(gaps, "poisson", RATE)
    assert p > 0.01, p
    assert RATE * 0.8 < 1.0 / gaps.mean() < RATE * 1.25


def test_the_server_sees_the_same_arrival_process_from_both_front_ends(runs) -> None:
    loc, asy = records_of(runs["locust"]), records_of(runs["asyncio"])
    assert sorted(r["scheduled_ns"] for r in loc) == sorted(r["scheduled_ns"] for r in asy)  # one schedule
    g_loc, g_asy = server_gaps(loc), server_gaps(asy)
    check_poisson(g_loc)
    check_poisson(g_asy)
    assert sstats.ks_2samp(g_loc, g_asy).pvalue > 0.05
    for name in ("locust", "asyncio"):
        s = summary_of(runs[name])
        assert s["completed_requests"] == N and s["error_count"] == 0 and s["achieved_ratio"] > 0.95


def client_minus_server_ms(records: list[dict], kind: str) -> np.ndarray:
    """Per request, the client's TTFT (or E2E) minus the server's own (TensorRT-LLM perf fields: first or last
    token time - arrival time): what the front end adds and how it measures, whatever the engine did."""
    out = []
    for r in records:
        sp = r["server_perf"]
        client_us = r["chunk_offsets_us"][0 if kind == "ttft" else -1]
        server_ns = sp["first_token_time_ns" if kind == "ttft" else "last_token_time_ns"] - sp["arrival_time_ns"]
        out.append(client_us / 1e3 - server_ns / 1e6)
    return np.asarray(out)


def test_both_front_ends_measure_ttft_and_e2e_alike(runs) -> None:
    """The two front ends' TTFT and E2E, each request set against the server's own timestamps, agree within
    1 ms at p50 and p90 (about 4 % of this workload's TTFT p90).

    Comparing the two runs' percentiles directly (within 5 %) stopped being a test of the front ends once the
    emulated engine priced a prefill step as it should (issue 16): at 16 req/s two requests' prefills now overlap
    often enough that TTFT p90 is set by where arrivals fall against the engine's steps, and two runs of the same
    schedule with the same front end differed by 1.5-3 % (two CI runs: 5.1 % and 6.3 % between the front ends).
    The server's timestamps take the engine out: what is left is the client."""
    loc, asy = records_of(runs["locust"]), records_of(runs["asyncio"])
    for kind in ("ttft", "e2e"):
        d_loc, d_asy = client_minus_server_ms(loc, kind), client_minus_server_ms(asy, kind)
        assert d_loc.min() > 0 and d_asy.min() > 0, kind  # the client cannot see a token before the server sent it
        for q in (50, 90):
            a, b = np.percentile(d_loc, q), np.percentile(d_asy, q)
            assert abs(a - b) < 1.0, (kind, q, round(a, 3), round(b, 3))
    for name in ("locust", "asyncio"):  # the summaries report what the records hold
        s, recs = summary_of(runs[name]), records_of(runs[name])
        ttft = np.array([r["chunk_offsets_us"][0] / 1e3 for r in recs])
        assert s["ttft_ms"]["p90"] == pytest.approx(np.percentile(ttft, 90), rel=1e-3)


def test_two_processes_issue_the_stripes_of_the_one_schedule(runs) -> None:
    run_dir = runs["processes"]
    assert sorted(p.name for p in run_dir.glob("records*.jsonl")) == ["records.w0.jsonl", "records.w1.jsonl"]
    recs = records_of(run_dir)
    single = {r["index"]: r["scheduled_ns"] for r in records_of(runs["locust"])}
    assert sorted(r["index"] for r in recs) == list(range(N_PROCESSES))  # every request once
    assert all(r["scheduled_ns"] == single[r["index"]] for r in recs)  # at the single run's deadlines
    assert all(r["worker"] == r["index"] % 2 for r in recs)  # each worker its stripe
    g = server_gaps(recs)
    check_poisson(g, N_PROCESSES)
    assert sstats.ks_2samp(g, server_gaps(records_of(runs["locust"]))).pvalue > 0.05
    s = summary_of(run_dir)
    assert s["completed_requests"] == N_PROCESSES and not s["merged_from_histograms"]
    assert s["client"]["workers"] == 2 and [n["written"] for n in s["client"]["nodes"]] == [N_PROCESSES // 2] * 2


def test_the_masters_merged_percentiles_are_those_of_all_records(runs) -> None:
    run_dir = runs["processes"]
    recs = [RequestRecord.from_dict(r) for r in records_of(run_dir)]
    ok = [r for r in recs if r.status == "ok"]
    exact = {"TTFT": np.array([REQUEST_METRICS_BY_NAME["ttft"].of_record(r) for r in ok]),
             "TPOT": np.array([REQUEST_METRICS_BY_NAME["tpot"].of_record(r) for r in ok]),
             "E2E": np.array([REQUEST_METRICS_BY_NAME["e2e"].of_record(r) for r in ok]),
             "ITL": np.concatenate([itl_values_ns(r) for r in ok])}
    with open(run_dir / "llm_stats.csv") as fh:
        rows = {row["metric"]: row for row in csv.DictReader(fh)}
    for label, values in exact.items():
        row = rows[label]
        assert int(row["count"]) == values.size
        for col, q in (("p50", 50), ("p90", 90), ("p99", 99)):
            # the histogram keeps 3 significant digits (relative error < 0.05 %); the CSV prints 6
            assert float(row[col]) == pytest.approx(np.percentile(values, q) / 1e6, rel=1e-3), (label, col)
    summary = summary_of(run_dir)  # the master could read both records files: its summary is exact
    assert summary["ttft_ms"]["p90"] == pytest.approx(np.percentile(exact["TTFT"], 90) / 1e6, rel=1e-6)
    p = subprocess.run([str(BIN / "loadgen"), "report", str(run_dir), "--json"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and orjson.loads(p.stdout)[0]["completed_requests"] == N_PROCESSES
