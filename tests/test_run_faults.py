"""``loadgen run`` end to end against misbehaving servers (in-process fakes for what a real server cannot do):
every record received is kept, errors are classified by kind, and the exit code says what happened."""

from __future__ import annotations

import json
import re
import time

import orjson
import pytest

from loadgen.cli import main
from tests.fake_servers import FaultyTriton


def run_dir_of(out_dir):
    dirs = [p for p in out_dir.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def records(run_dir):
    return [orjson.loads(line) for line in (run_dir / "records.jsonl").read_bytes().splitlines()]


def loadgen(out_dir, url, *extra):
    return main(["run", "--url", url, "--model", "m", "--rate", "40", "--requests", "12", "--output-tokens", "8",
                 "--no-live", "--out-dir", str(out_dir), "--request-timeout", "2s", "--drain-timeout", "5s",
                 *extra])


@pytest.mark.parametrize("client", ["fast", "aiohttp"])
@pytest.mark.parametrize("mode,kind", [("reset", "connection"), ("error_after_200", "stream_error"),
                                       ("malformed", "protocol"), ("http500", "http_status")])
def test_faults_are_classified_and_partial_streams_kept(tmp_path, mode, kind, client):
    with FaultyTriton(mode) as srv:
        rc = loadgen(tmp_path, srv.url, "--http-client", client)
    # nothing succeeded: exit 3, one line naming the kind (the records and summary are still written)
    assert rc == 3
    rd = run_dir_of(tmp_path)
    recs = records(rd)
    assert len(recs) == 12 and all(r["status"] == "error" and r["error_kind"] == kind for r in recs)
    if mode == "reset":
        # Tokens read before the reset are kept (a reset may discard the last unread bytes, hence "at most 3").
        kept = [len(r["chunk_offsets_us"]) for r in recs]
        assert all(1 <= k <= 3 for k in kept) and kept.count(3) >= 6, kept
    if mode == "error_after_200":
        assert all(r["http_status"] == 200 and len(r["chunk_tokens"]) == 2 for r in recs)
        assert "engine step failed" in recs[0]["error"]
    if mode == "http500":
        assert all(r["http_status"] == 500 and "model instance crashed" in r["error"] for r in recs)
    summary = json.loads((rd / "summary.json").read_text())
    assert summary["error_count"] == 12 and summary["completed_requests"] == 0
    assert (rd / "report.txt").read_text().count(kind) >= 1


@pytest.mark.parametrize("client", ["fast", "aiohttp"])
def test_hanging_server_times_out(tmp_path, client):
    with FaultyTriton("hang") as srv:
        rc = main(["run", "--url", srv.url, "--model", "m", "--rate", "20", "--requests", "3", "--no-live",
                   "--out-dir", str(tmp_path), "--request-timeout", "0.5s", "--http-client", client])
    assert rc == 3  # nothing succeeded
    recs = records(run_dir_of(tmp_path))
    assert [r["error_kind"] for r in recs] == ["timeout"] * 3
    assert all(len(r["chunk_offsets_us"]) == 1 for r in recs)  # the token before the hang is kept


def test_fail_on_threshold_gives_exit_4_and_keeps_the_run(tmp_path, capsys):
    with FaultyTriton("ok") as srv:
        rc = loadgen(tmp_path, srv.url, "--fail-on", "error_rate<1%,ttft_p99<0.001ms")
    assert rc == 4
    err = capsys.readouterr().err
    assert "--fail-on missed" in err and "ttft_p99" in err and "error_rate" not in err.split("missed")[1]
    assert re.search(r"ttft_p99<0\.001ms \(got [0-9.]+ ms\)", err), err  # the value with its unit
    assert (run_dir_of(tmp_path) / "summary.json").exists()


def test_bad_inputs_give_one_line_and_nonzero_exit(tmp_path, capsys):
    with FaultyTriton("ok") as srv:
        cases = [
            (["--model", "nope"], 3, "model 'nope' is not served"),
            (["--backend", "openai-chat"], 3, "is a Triton server, not an OpenAI-compatible one"),
            (["--rate", "0"], 2, "--rate"),
            (["--rate", "1e9"], 2, "--rate"),
            (["--on-late", "later"], 2, "--on-late"),
            (["--input-tokens", "lots"], 2, "--input-tokens"),
            (["--slo", "ttft=fast"], 2, "--slo"),
        ]
        for extra, code, text in cases:
            args = ["run", "--url", srv.url, "--model", "m", "--rate", "5", "--requests", "2", "--no-live",
                    "--out-dir", str(tmp_path), *extra]
            # later flags win in argparse, so the case's value replaces the default one
            assert main(args) == code, extra
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and text in err[0], (extra, err)
    rc = main(["run", "--url", "http://127.0.0.1:9", "--model", "m", "--rate", "5", "--requests", "2",
               "--no-live", "--out-dir", str(tmp_path)])
    assert rc == 3 and "cannot reach http://127.0.0.1:9" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing was run, so no run directory was left behind


def test_results_that_cannot_be_written_stop_the_load_and_exit_6(tmp_path):
    """A full disk, played by a file-size limit on the loadgen process (Python ignores SIGXFSZ, so a write past
    the limit fails with EFBIG like ENOSPC would): the load stops within a second, one line, exit 6, and
    ``loadgen report`` still reads what was kept."""
    import resource
    import subprocess
    import sys

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (16_000, 16_000))

    with FaultyTriton("ok", tokens=4) as srv:
        t = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "loadgen", "run", "--url", srv.url, "--model", "m", "--rate",
                               "100", "--duration", "30", "--output-tokens", "4", "--no-live", "--out-dir",
                               str(tmp_path)], capture_output=True, text=True, timeout=120, preexec_fn=limit)
        elapsed = time.monotonic() - t
    assert proc.returncode == 6, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "cannot write the records" in err[0] and "loadgen report" in err[0], err
    assert elapsed < 25  # stopped long before the 30 s schedule ended
    (rd,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    kept = (rd / "records.jsonl").read_bytes().splitlines()
    assert 10 < len(kept) < 3000
    report = subprocess.run([sys.executable, "-m", "loadgen", "report", str(rd)], capture_output=True, text=True,
                            timeout=60)
    assert report.returncode == 0, report.stderr
