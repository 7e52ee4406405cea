"""Every scenario file from ``locust -f scenarios/`` against real servers, headless as in CI: Triton gRPC streaming,
the closed loop with think time (and --fail-on's exit code, Locust's CSV and HTML reports), OpenAI chat through
an OpenAI-compatible front end of the embedded Triton, a trace replay, and the errors users make first.

The runs are short and light (at most 10 req/s), so they run side by side to keep the suite quick.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from loadgen.serve.launcher import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMALL = ["--input-tokens", "32", "--output-tokens", "4"]

FRONTEND = """
import asyncio, sys
from loadgen.serve.openai_frontend import OpenAIFrontend

async def main():
    fe = OpenAIFrontend(sys.argv[1], "ensemble", "slm-chat")
    print(await fe.start("127.0.0.1", 0), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def start(args: list[str], out: Path) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [str(BIN / "locust"), "-f", "scenarios/", "--headless", "--only-summary", "--out-dir", str(out / "runs"),
           *args]
    return subprocess.Popen(cmd, cwd=REPO, stdout=open(out / "stdout", "w"), stderr=open(out / "stderr", "w"),
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


class Result:
    def __init__(self, out: Path, code: int) -> None:
        self.out, self.code = out, code
        self.stdout = (out / "stdout").read_text()
        self.stderr = (out / "stderr").read_text()
        runs = out / "runs"
        self.run_dir = next(iter(sorted(runs.iterdir())), None) if runs.is_dir() else None

    def summary(self) -> dict:
        assert self.run_dir is not None, self.stderr[-3000:]
        return orjson.loads((self.run_dir / "summary.json").read_bytes())

    def records(self) -> list[dict]:
        assert self.run_dir is not None, self.stderr[-3000:]
        return [orjson.loads(x) for f in self.run_dir.glob("records*.jsonl") for x in f.read_bytes().splitlines()]

    def explain(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-3000:]}"


@pytest.fixture(scope="module")
def results(embedded_server, tmp_path_factory) -> dict[str, Result]:
    base = tmp_path_factory.mktemp("scenarios")
    http, grpc = embedded_server.http_url, embedded_server.grpc_url
    frontend = subprocess.Popen([sys.executable, "-c", FRONTEND, http], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        openai_url = f"http://127.0.0.1:{int(frontend.stdout.readline())}"
        closed = base / "closed"
        jobs = {
            "grpc": (["TritonGrpcPoisson", "-H", grpc, "--rate", "10", "--requests", "20", *SMALL]),
            "closed": (["TritonHttpUsers", "-H", http, "-u", "3", "-r", "10", "--think-time", "50ms", "--requests",
                        "15", "--fail-on", "ttft_p99<0.001ms", "--csv", str(closed / "csv"), "--html",
                        str(closed / "report.html"), *SMALL]),
            "openai": (["OpenAIChatPoisson", "-H", openai_url, "--model", "slm-chat", "--rate", "10", "--requests",
                        "12", *SMALL]),
            "trace": (["TritonHttpTrace", "-H", http, "--trace", "traces/example_bursty.csv", "--target-rate", "8",
                       "--requests", "16", "--max-input-tokens", "256", "--max-output-tokens", "4"]),
            "bad_rate": (["TritonHttpPoisson", "-H", http, "--rate", "fast", "--requests", "5"]),
            "no_class": (["-H", http, "--rate", "5", "--requests", "5"]),
            "unreachable": (["TritonHttpPoisson", "-H", f"http://127.0.0.1:{free_port()}", "--rate", "5",
                             "--requests", "5"]),
        }
        procs = {name: start(args, base / name) for name, args in jobs.items()}
        codes = {name: p.wait(timeout=180) for name, p in procs.items()}
    finally:
        frontend.terminate()
        frontend.wait(10)
    return {name: Result(base / name, code) for name, code in codes.items()}


def test_triton_grpc_streaming(results) -> None:
    r = results["grpc"]
    assert r.code == 0, r.explain()
    recs = r.records()
    assert sorted(x["index"] for x in recs) == list(range(20))
    assert all(x["status"] == "ok" and sum(x["chunk_tokens"]) == 4 == x["server_output_tokens"] for x in recs)
    s = r.summary()
    assert s["backend"] == "triton-grpc" and s["completed_requests"] == 20 and s["ttft_ms"]["p50"] > 0


def test_closed_loop_users_think_and_fail_on_sets_the_exit_code(results) -> None:
    r = results["closed"]
    assert r.code == 4, r.explain()
    assert "--fail-on missed: ttft_p99<0.001ms" in r.stderr
    s = r.summary()
    assert s["mode"] == "closed_loop" and s["concurrency"] == 3 and s["completed_requests"] == 15
    assert s["arrival"]["think_time_s"] == 0.05 and sorted(x["index"] for x in r.records()) == list(range(15))
    with open(r.out / "csv_llm_stats.csv") as fh:
        rows = {row["metric"]: row for row in csv.DictReader(fh)}
    assert int(rows["TTFT"]["count"]) == 15 and float(rows["E2E"]["p90"]) > 0
    assert (r.out / "csv_stats.csv").is_file()  # Locust's own CSV files are still written
    assert "loadgen-llm-metrics" in (r.out / "report.html").read_text()


def test_openai_chat_through_an_openai_compatible_server(results) -> None:
    r = results["openai"]
    assert r.code == 0, r.explain()
    recs = r.records()
    assert len(recs) == 12 and all(x["status"] == "ok" and x["server_output_tokens"] == 4 for x in recs)
    assert r.summary()["backend"] == "openai-chat"


def test_trace_replay(results) -> None:
    r = results["trace"]
    assert r.code == 0, r.explain()
    s = r.summary()
    assert s["arrival"]["kind"] == "trace" and s["completed_requests"] == 16
    assert s["extra"]["trace"]["path"].endswith("example_bursty.csv")


def test_user_errors_are_one_line_with_loadgens_exit_codes(results) -> None:
    bad, none, gone = results["bad_rate"], results["no_class"], results["unreachable"]
    assert bad.code == 2 and "loadgen: error: --rate 'fast'" in bad.stderr, bad.explain()
    assert none.code == 2 and "pick exactly one scenario class" in none.stderr, none.explain()
    assert gone.code == 3 and "cannot reach" in gone.stderr, gone.explain()
    assert "Traceback" not in bad.stderr + none.stderr + gone.stderr
