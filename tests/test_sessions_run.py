"""Multi-turn sessions against the real embedded server, from every front end: the asyncio runner (Triton HTTP and
gRPC, OpenAI chat and completions through the embedded OpenAI front end), ``--workers 2`` and Locust headless.

What each checks: every turn's prompt is the previous prompt plus the answer the server actually gave plus the
new user message, on the server's own count (``server_input_tokens`` of turn k = that of turn k-1 + the server's
output tokens of turn k-1 + the new message); every turn ends ok; the summary's per-turn section and the report's
"By turn" section are there. Each level is a few sessions of 3 turns (a second or two).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from loadgen.cli import main
from loadgen.serve.openai_frontend import FrontendThread

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
USER = 24
SESSION = ["--session-turns", "3", "--session-user-tokens", str(USER), "--session-answer-tokens", "6",
           "--session-think-time", "20ms", "--session-system-tokens", "32", "--seed", "5"]


def run_dir_of(out: Path) -> Path:
    dirs = [p for p in out.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def records(run_dir: Path) -> list[dict]:
    return [orjson.loads(x) for f in sorted(run_dir.glob("records*.jsonl")) for x in f.read_bytes().splitlines()]


def check_growing_sessions(run_dir: Path, sessions: int, server_counts_input: bool = True) -> dict:
    recs = records(run_dir)
    assert len(recs) == 3 * sessions and all(r["status"] == "ok" for r in recs), [r.get("error") for r in recs]
    by = {(r["session_id"], r["turn"]): r for r in recs}
    assert sorted({s for s, _t in by}) == list(range(sessions))
    for sid in range(sessions):
        for k in (1, 2):
            prev, cur = by[(sid, k - 1)], by[(sid, k)]
            grown = prev["input_tokens"] + prev["server_output_tokens"] + USER
            assert cur["input_tokens"] == grown
            if server_counts_input:
                assert cur["server_input_tokens"] == cur["input_tokens"]  # the server saw the same prompt
            assert cur["scheduled_ns"] >= prev["end_ns"] + 20_000_000  # after the answer and the think time
    summary = json.loads((run_dir / "summary.json").read_text())
    turns = summary["sessions"]["by_turn"]
    assert [t["completed"] for t in turns] == [sessions] * 3
    means = [t["input_tokens_mean"] for t in turns]
    assert means[0] < means[1] < means[2]
    return summary


@pytest.mark.parametrize("backend", ["triton-http"])  # gRPC: the in-process test below (a whole run: 3 s more)
def test_asyncio_sessions_against_the_embedded_server(embedded_server, tmp_path, backend):
    url = embedded_server.grpc_url if backend == "triton-grpc" else embedded_server.http_url
    rc = main(["run", "--url", url, "--backend", backend, "--concurrency", "2", "--requests", "4", "--no-live",
               "--out-dir", str(tmp_path), *SESSION])
    assert rc == 0
    run_dir = run_dir_of(tmp_path)
    summary = check_growing_sessions(run_dir, 4)
    assert summary["sessions"]["sessions"] == 4
    assert "By turn" in (run_dir / "report.html").read_text()


@pytest.mark.parametrize("backend", ["openai-chat"])  # completions: the in-process test below
def test_openai_sessions_send_the_history(embedded_server, tmp_path, backend):
    front = FrontendThread(embedded_server.http_url, "ensemble", "opt-125m").start()
    try:
        rc = main(["run", "--url", front.url, "--backend", backend, "--model", "opt-125m", "--rate", "5",
                   "--requests", "2", "--no-live", "--out-dir", str(tmp_path), *SESSION])
    finally:
        front.stop()
    assert rc == 0
    check_growing_sessions(run_dir_of(tmp_path), 2)


def test_worker_processes_share_the_sessions(embedded_server, tmp_path):
    rc = main(["run", "--url", embedded_server.http_url, "--workers", "2", "--rate", "8", "--requests", "4",
               "--no-live", "--out-dir", str(tmp_path), *SESSION])
    assert rc == 0
    run_dir = run_dir_of(tmp_path)
    check_growing_sessions(run_dir, 4)
    workers = {r["session_id"]: {x["worker"] for x in records(run_dir) if x["session_id"] == r["session_id"]}
               for r in records(run_dir)}
    assert {sid: w for sid, w in workers.items()} == {0: {0}, 1: {1}, 2: {0}, 3: {1}}  # a session stays on one


def test_locust_headless_closed_loop_sessions(embedded_server, tmp_path):
    cmd = [str(BIN / "locust"), "-f", "scenarios/", "TritonHttpUsers", "--headless", "-u", "2", "-r", "2",
           "-H", embedded_server.http_url, "--requests", "4", *SESSION, "--out-dir", str(tmp_path),
           "--only-summary"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    check_growing_sessions(run_dir_of(tmp_path), 4)


@pytest.mark.parametrize("backend", ["triton-http", "triton-grpc", "openai-chat", "openai-completions"])
async def test_the_next_turn_resends_the_text_the_server_answered(embedded_server, backend):
    """In process, one session turn by turn: the answer's text, as the server streamed it, is in the next prompt."""
    import time

    from loadgen.codecs.answers import keep_answers
    from loadgen.level.plan import plan_level
    from loadgen.runner.driver import backend_for
    from loadgen.scenario.check import build, resolve

    url = embedded_server.grpc_url if backend == "triton-grpc" else embedded_server.http_url
    front = None
    if backend.startswith("openai"):
        front = FrontendThread(embedded_server.http_url, "ensemble", "opt-125m").start()
        url = front.url
    sc = resolve(build({"target": {"url": url, "backend": backend, "model": "opt-125m" if front else None},
                        "session": {"turns": "3", "user_tokens": "16", "answer_tokens": "7"},
                        "load": {"concurrency": 1, "requests": 1}}), check_paths=False)
    setup = plan_level(sc).sessions
    be = backend_for(sc, url)
    await be.start()
    try:
        await be.probe()
        keep_answers(be)
        cur = setup.cursor(0, 0)
        t0 = time.perf_counter_ns()
        prompts, answers = [], []
        for _ in range(3):
            spec, rec = cur.begin(time.perf_counter_ns() - t0)
            await be.send(spec, rec, t0)
            assert rec.status == "ok", rec.error
            prompts.append(spec.prompt)
            answers.append("".join(spec.answer))
            cur.finish(rec, time.perf_counter_ns() - t0)
    finally:
        await be.close()
        if front is not None:
            front.stop()
    # the emulated model answers with words of its own list (not the prompt vocabulary): " the of and ..."
    for k in (1, 2):
        assert answers[k - 1].split() and len(answers[k - 1].split()) == 7
        assert prompts[k].startswith(prompts[k - 1] + "\n" + answers[k - 1] + "\n")
