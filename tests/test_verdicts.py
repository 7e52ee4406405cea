"""Trustworthy verdicts: every fault that used to end in a green run, replayed against a small in-process fake
(a real server cannot be made to hang, answer empty or stream without end on cue), gives the verdict it should."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from loadgen.cli import main
from tests.fake_servers import FaultyTriton

ROOT = Path(__file__).resolve().parent.parent


def only_dir(out: Path) -> Path:
    (d,) = [p for p in out.iterdir() if p.is_dir()]
    return d


def records(run_dir: Path) -> list[dict]:
    return [orjson.loads(x) for x in (run_dir / "records.jsonl").read_bytes().splitlines()]


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_a_server_that_stops_answering_is_not_a_success(tmp_path, capsys):
    """The issue's case: the server stops (SIGSTOP) a few seconds in. The requests still open when the drain ends
    are 'abandoned' errors, the error rate sees them, the level is invalid and --fail-on fails (it passed with
    error rate 0 before, since they counted as nothing)."""
    with FaultyTriton("stall_after:20", tokens=4) as srv:
        rc = main(["run", "--url", srv.url, "--model", "m", "--rate", "10", "--duration", "5", "--output-tokens",
                   "4", "--drain-timeout", "1s", "--fail-on", "error_rate<1%", "--no-live", "--out-dir",
                   str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 4 and "error_rate<1%" in err, err
    rd = only_dir(tmp_path)
    recs = records(rd)
    assert len(recs) == 50  # every scheduled request is counted, in exactly one state
    abandoned = [r for r in recs if r.get("error_kind") == "abandoned"]
    assert len(abandoned) == 30 and all(r["status"] == "error" for r in abandoned)
    s = summary_of(rd)
    assert s["errors_by_kind"]["abandoned"] == 30 and s["error_rate"] == pytest.approx(0.6)
    assert not s["valid"] and any("failed" in w for w in s["warnings"])


@pytest.mark.parametrize("client", ["fast", "aiohttp"])
def test_empty_answers_are_errors_and_no_success_exits_3(tmp_path, capsys, client):
    with FaultyTriton("empty") as srv:
        rc = main(["run", "--url", srv.url, "--model", "m", "--rate", "40", "--requests", "12", "--no-live",
                   "--http-client", client, "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 3 and len(err) == 1 and "no request succeeded" in err[0] and "empty" in err[0], err
    s = summary_of(only_dir(tmp_path))
    assert s["errors_by_kind"]["empty"] == 12 and s["completed_requests"] == 0 and s["error_rate"] == 1.0


def test_every_request_404_exits_3_naming_the_likely_cause(tmp_path, capsys):
    with FaultyTriton("http404") as srv:
        rc = main(["run", "--url", srv.url, "--model", "m", "--rate", "40", "--requests", "12", "--no-live",
                   "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 3 and len(err) == 1, err
    assert "no request succeeded" in err[0] and "404" in err[0] and "--backend" in err[0], err
    assert summary_of(only_dir(tmp_path))["errors_by_kind"]["http_status"] == 12  # the run directory is kept


@pytest.mark.parametrize("client", ["fast", "aiohttp"])
def test_an_endless_stream_is_cut_at_its_bound_and_memory_stays_bounded(tmp_path, client):
    """A server that streams without end grew the client to 3 GB in 5 s. Each request now has a byte bound
    derived from max_tokens; past it the request is a 'too_large' error and its connection is closed. Measured:
    the peak RSS of the loadgen process (a child, so getrusage sees it once it has exited)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with FaultyTriton("endless") as srv:
        t = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "loadgen", "run", "--url", srv.url, "--model", "m", "--rate",
                               "20", "--requests", "8", "--output-tokens", "16", "--no-live", "--http-client", client,
                               "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=ROOT)
        elapsed = time.monotonic() - t
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    assert proc.returncode == 3 and "too_large" in proc.stderr, proc.stderr
    assert peak_mib < 512 or before / 1024 >= 512, peak_mib
    assert elapsed < 60
    recs = records(only_dir(tmp_path))
    assert len(recs) == 8 and all(r["error_kind"] == "too_large" for r in recs)


def test_url_credentials_never_reach_files_or_output(tmp_path):
    secret = "s3cr3t-TOKEN-value"
    with FaultyTriton("ok", tokens=2) as srv:
        url = srv.url.replace("http://", f"http://user:{secret}@")
        proc = subprocess.run([sys.executable, "-m", "loadgen", "run", "--url", url, "--model", "m", "--rate", "20",
                               "--requests", "4", "--output-tokens", "2", "--no-live", "--out-dir", str(tmp_path)],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert secret not in proc.stdout + proc.stderr
    rd = only_dir(tmp_path)
    for f in rd.iterdir():
        assert secret not in f.read_text(errors="replace"), f.name
    config = json.loads((rd / "config.json").read_text())
    assert config["scenario"]["target"]["url"] == srv.url
    assert "Authorization: <redacted>" in config["scenario"]["target"]["headers"]


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["triton-grpc", "triton-http"])
def test_the_response_bound_holds_on_grpc_and_http_against_the_real_server(embedded_server, tmp_path, capsys,
                                                                           backend):
    """--max-response-bytes 1024 against 64-token answers (each well over 1 KiB of responses): every request ends
    too_large, on the shared gRPC stream as on an HTTP connection, and the run says nothing succeeded."""
    url = embedded_server.grpc_url if backend == "triton-grpc" else embedded_server.http_url
    rc = main(["run", "--url", url, "--backend", backend, "--rate", "20", "--requests", "6", "--input-tokens", "8",
               "--output-tokens", "64", "--max-response-bytes", "1024", "--no-live", "--out-dir", str(tmp_path)])
    assert rc == 3 and "too_large" in capsys.readouterr().err
    recs = records(only_dir(tmp_path))
    assert len(recs) == 6 and all(r["error_kind"] == "too_large" for r in recs)
