"""The issue's "done when" for seeing a run, end to end: a run against an OpenAI-compatible server that exposes
vLLM-style metrics leaves report.html (self-contained) and server_metrics.jsonl (at least one sample a second with
queued, running and KV usage), and its report fits an 80-column pipe."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from loadgen.cli import main
from loadgen.serve.openai_frontend import FrontendThread
from tests.test_server_metrics import FakeVLLMMetrics

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.integration
def test_an_openai_run_with_vllm_metrics_leaves_a_page_samples_and_a_report_that_fits(embedded_server, tmp_path):
    front = FrontendThread(embedded_server.http_url, "ensemble", "opt-125m").start()
    try:
        with FakeVLLMMetrics() as metrics:
            rc = main(["run", "--url", front.url, "--backend", "openai-chat", "--model", "opt-125m", "--rate", "6",
                       "--duration", "6", "--input-tokens", "16", "--output-tokens", "8", "--no-live",
                       "--server-metrics", metrics.url, "--out-dir", str(tmp_path)])
    finally:
        front.stop()
    assert rc == 0
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    page = (run_dir / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']https?://""", page) and "<img" in page
    summary = json.loads((run_dir / "summary.json").read_text())
    t0 = summary["client"]["anchor"]["monotonic_ns"] + summary["client"]["t0_offset_ns"]
    lines = [json.loads(x) for x in (run_dir / "server_metrics.jsonl").read_text().splitlines()]
    inside = [d for d in lines if t0 <= d["t_mono_ns"] <= t0 + 6e9]
    assert len(inside) >= 6 and all(d["common"][k] is not None for d in inside
                                     for k in ("queued", "running", "kv_usage"))
    out = subprocess.run([sys.executable, "-m", "loadgen", "report", str(run_dir)], capture_output=True, text=True,
                         timeout=120, cwd=ROOT, env={**os.environ, "COLUMNS": "80"})
    assert out.returncode == 0, out.stderr
    assert max(len(line) for line in out.stdout.splitlines()) <= 80
