"""Locust's distributed mode across (namespace) hosts: the clock check, the records shipped back to the master, and
a worker lost mid-run.

Unit parts: the NTP-style offset estimate and the start-spread report (``loadgen.locust.clock``) on made-up
timestamps; the record shipper and collector (``loadgen.locust.collect``) on a file that grows, with chunking at
line boundaries and a lost chunk detected. Integration: the embedded Triton (the project's launcher, ``loadgen
serve``) in one namespace, the Locust master in another and two workers in two more (``loadgen.locust.bedrun``):
every worker's records end in the master's run directory and the summary is exact over all of them; one worker
with a wall clock 40 ms off is reported and still starts at t0; a worker SIGKILLed mid-run is reported with the
records the master recovered, and the run exits 5.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from loadgen.locust.clock import ClockCheck, Exchange, best
from loadgen.locust.collect import RECORDS, RecordCollector, RecordShipper

MS = 1_000_000


# -- clock ---------------------------------------------------------------------------------------------------------
def exchange(offset_ms: float, out_ms: float, back_ms: float, t1: int = 10**18, hold_ms: float = 0.05) -> Exchange:
    """A ping/pong with the worker clock ``offset_ms`` ahead and the given one-way delays."""
    t2 = t1 + int((out_ms + offset_ms) * MS)
    t3 = t2 + int(hold_ms * MS)
    t4 = t3 - int(offset_ms * MS) + int(back_ms * MS)
    return Exchange(t1, t2, t3, t4)


def test_offset_estimate_is_within_half_the_round_trip_and_the_shortest_trip_wins() -> None:
    sym = exchange(40.0, 0.3, 0.3)
    assert sym.offset_ns == pytest.approx(40 * MS, abs=1)
    assert sym.rtt_ns == pytest.approx(0.6 * MS, abs=2)
    skewed = exchange(40.0, 9.0, 0.2)  # a slow way out biases the estimate, by at most half the round trip
    assert abs(skewed.offset_ns - 40 * MS) <= skewed.rtt_ns / 2 + 1
    assert abs(skewed.offset_ns - 40 * MS) > 4 * MS
    assert best([skewed, sym, exchange(40.0, 2.0, 3.0)]) is sym


def test_report_puts_each_start_on_the_masters_clock_and_flags_a_far_clock() -> None:
    check = ClockCheck(tolerance_ms=5.0)
    t0 = 2 * 10**18
    for r in range(3):  # worker a: on time; worker b: 40 ms ahead
        for cid, off in (("a", 0.0), ("b", 40.0)):
            e = exchange(off, 0.2 + r, 0.2 + r)
            check.add(cid, {"t1": e.t1, "t2": e.t2, "t3": e.t3}, e.t4)
    offsets = check.offsets_ns()
    assert offsets["a"] == pytest.approx(0, abs=MS / 100) and offsets["b"] == pytest.approx(40 * MS, abs=MS / 100)
    # a reached t0 0.3 ms late; b reached t0 on its own clock (t0 + its offset) 0.1 ms early
    rep = check.report({"a": (0, t0 + int(0.3 * MS)), "b": (1, t0 + 40 * MS - int(0.1 * MS))}, t0)
    assert rep["t0_skew_ms"] == pytest.approx(0.3, abs=0.02)
    assert rep["t0_spread_ms"] == pytest.approx(0.4, abs=0.02)
    assert rep["offset_beyond_tolerance"] == [1]
    assert [w["offset_ms"] for w in rep["workers"]] == [pytest.approx(0, abs=0.01), pytest.approx(40, abs=0.01)]
    # a worker that never answered is not trusted: flagged, its start taken as given
    rep = check.report({"a": (0, t0), "c": (2, t0 + 7 * MS)}, t0)
    assert rep["offset_beyond_tolerance"] == [2] and rep["t0_skew_ms"] == pytest.approx(7, abs=0.01)


# -- records ---------------------------------------------------------------------------------------------------------
def test_records_are_shipped_in_line_chunks_and_land_whole_on_the_master(tmp_path: Path) -> None:
    spool, master = tmp_path / "spool.jsonl", tmp_path / "run"
    master.mkdir()
    collector = RecordCollector(master)
    collector.open([3])
    sent: list[dict] = []

    def send(kind: str, data: dict) -> None:
        assert kind == RECORDS
        sent.append(data)
        collector.receive(data)

    shipper = RecordShipper(spool, 3, send, chunk_bytes=100)
    lines = [orjson.dumps({"index": i, "pad": "x" * (i % 7) * 5}) + b"\n" for i in range(40)]
    with open(spool, "wb") as f:
        f.write(b"".join(lines[:25]) + lines[25][:10])  # a record half written when the worker ships
    assert shipper.ship() == 25
    assert all(len(d["data"]) <= 100 and d["data"].endswith(b"\n") for d in sent)
    with open(spool, "ab") as f:
        f.write(lines[25][10:] + b"".join(lines[26:]))
    assert shipper.ship() == 15 and shipper.ship() == 0
    assert collector.path(3).read_bytes() == b"".join(lines)
    assert collector.lines[3] == 40 and collector.complete(3, 40) and not collector.complete(3, 41)


def test_a_chunk_lost_in_transit_is_detected_not_merged(tmp_path: Path) -> None:
    collector = RecordCollector(tmp_path)
    collector.open([0])
    collector.receive({"stripe": 0, "offset": 0, "lines": 1, "data": b'{"index":0}\n'})
    collector.receive({"stripe": 0, "offset": 0, "lines": 1, "data": b'{"index":0}\n'})  # a repeat: ignored
    assert collector.lines[0] == 1 and collector.complete(0, 1)
    collector.receive({"stripe": 0, "offset": 40, "lines": 1, "data": b'{"index":3}\n'})  # bytes 12-40 never came
    assert collector.lines[0] == 2 and not collector.complete(0, 2)


# -- across namespace hosts -------------------------------------------------------------------------------------------
SERVER = ["--server-model", "opt-125m", "--server-gpu", "h100-64gb", "--server-replicas", "2", "--server-max-batch",
          "32", "--server-speed", "0.2"]
LOAD = ["--rate", "20", "--seed", "5", "--input-tokens", "64", "--output-tokens", "8"]


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    from loadgen.locust.bedrun import start_server
    from loadgen.locust.netbed import NetBed, NetBedUnavailable

    try:
        with NetBed(["server", "master", "w0", "w1"]) as bed:
            start_server(bed, "server", tmp_path_factory.mktemp("server") / "serve.log", SERVER)
            yield bed
    except NetBedUnavailable as err:
        pytest.skip(str(err))


def records(run_dir: Path) -> list[dict]:
    return [orjson.loads(x) for f in sorted(run_dir.glob("records.w*.jsonl")) for x in f.read_bytes().splitlines()]


@pytest.mark.integration
def test_every_workers_records_reach_the_master_and_a_far_clock_is_reported(bed, tmp_path: Path) -> None:
    from loadgen.locust.bedrun import run_distributed, server_url

    n = 60
    run = run_distributed(bed, "master", ["w0", "w1"], server_url(bed, "server"), "TritonHttpPoisson",
                          [*LOAD, "--requests", str(n)], tmp_path, env={"w1": {"LOADGEN_TEST_CLOCK_OFFSET_MS": "40"}})
    assert run.master_rc == 0 and run.worker_rcs == [0, 0], run.log_text("master")
    run_dir = run.run_dir()
    recs = records(run_dir)
    assert sorted(r["index"] for r in recs) == list(range(n))  # every record of both stripes, once
    assert {r["worker"] for r in recs} == {0, 1}
    for w in ("w0", "w1"):  # each worker's spool (its own TMPDIR) was removed once the master had every record
        assert (tmp_path / f"spool-{w}" / "loadgen-worker-spool").is_dir()
        assert not list((tmp_path / f"spool-{w}").glob("loadgen-worker-spool/*/records.w*.jsonl"))
    summary = orjson.loads((run_dir / "summary.json").read_bytes())
    assert summary["completed_requests"] == n  # the exact summary, over every record
    assert summary["merged_from_histograms"] is False and (run_dir / "report.html").is_file()
    client = summary["client"]
    assert client["records_collected"] == {"0": n // 2, "1": n // 2} and client["lost_workers"] == []
    clock = client["clock"]
    far = [w for w in clock["workers"] if w["offset_ms"] is not None and abs(w["offset_ms"] - 40) < 3]
    assert len(far) == 1 and clock["offset_beyond_tolerance"] == [far[0]["stripe"]], clock
    assert client["t0_skew_ms"] < 5.0, clock  # corrected: the far worker still started at t0
    assert "t0_skew_ms" in run.log_text("master") and "exact, from every records file" in run.log_text("master")


@pytest.mark.integration
def test_a_worker_lost_mid_run_is_reported_with_its_recovered_records(bed, tmp_path: Path) -> None:
    from loadgen.locust.bedrun import run_distributed, server_url

    n = 100
    run = run_distributed(bed, "master", ["w0", "w1"], server_url(bed, "server"), "TritonHttpPoisson",
                          [*LOAD, "--requests", str(n)], tmp_path, kill={"w1": 1.2})
    assert run.killed == ["w1"] and run.worker_rcs[1] == -9
    assert run.master_rc == 5, run.log_text("master")  # as loadgen run --workers when a worker dies
    run_dir = run.run_dir()
    summary = orjson.loads((run_dir / "summary.json").read_bytes())
    (lost,) = summary["client"]["lost_workers"]
    survivor = 1 - lost["stripe"]
    got = records(run_dir)
    by_stripe = {s: [r for r in got if r["worker"] == s] for s in (0, 1)}
    assert len(by_stripe[survivor]) == n // 2  # the other worker's records are all there
    assert 0 < lost["records_recovered"] == len(by_stripe[lost["stripe"]]) < n // 2
    assert summary["completed_requests"] == len([r for r in got if r["status"] == "ok"])
    # the lost worker's spool stays on its disk (no acknowledgement came): at least what the master recovered
    (spool,) = (tmp_path / "spool-w1").glob("loadgen-worker-spool/*/records.w*.jsonl")
    assert len(spool.read_bytes().splitlines()) >= lost["records_recovered"]
    assert f"{lost['records_recovered']} records recovered" in run.log_text("master").replace("\n", " ")


# -- --engine asyncio ---------------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_asyncio_engine_issues_the_stripe_and_feeds_locusts_statistics(embedded_server, tmp_path: Path) -> None:
    """One local Locust process with ``--engine asyncio``: the asyncio runner's worker child sends the schedule;
    the Locust process tails its records into the summary, the LLM statistics and Locust's own request stats."""
    import csv
    import subprocess
    import sys

    n = 45
    cmd = [str(Path(sys.executable).parent / "locust"), "-f", "scenarios/", "TritonHttpPoisson", "--headless",
           "--only-summary", "-H", embedded_server.http_url, *LOAD, "--requests", str(n), "--engine", "asyncio",
           "--out-dir", str(tmp_path)]
    p = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    (run_dir,) = [d for d in tmp_path.iterdir() if d.is_dir()]
    recs = records(run_dir)
    assert sorted(r["index"] for r in recs) == list(range(n)) and {r["worker"] for r in recs} == {0}
    summary = orjson.loads((run_dir / "summary.json").read_bytes())
    assert summary["completed_requests"] == n and summary["ttft_ms"]["exact"]
    node = summary["client"]["nodes"][0]
    assert node["written"] == n
    # Locust's own statistics saw every request too (its final table; its CSV is rewritten once a second only)
    agg = next(line for line in (p.stdout + p.stderr).splitlines() if line.strip().startswith("Aggregated"))
    assert int(agg.split()[1]) == n, agg
    llm = {row[0]: row for row in csv.reader(open(run_dir / "llm_stats.csv"))}
    assert int(llm["TTFT"][2]) == n  # the live (mergeable) histograms hold every record
