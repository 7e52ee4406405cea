"""The Locust web UI: a run started and watched through its HTTP API serves the LLM metrics (tab table, JSON,
CSV, charts page, HTML report), refuses a bad start form with the flag named, and headless Chromium takes a
screenshot of the LLM metrics tab during the run (kept in pytest's temporary directory, never in the repository).

Chromium is Debian's ``chromium`` package; ``.ci/run`` installs it when it is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import orjson
import pytest

from loadgen.serve.launcher import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
METRIC_NAMES = ("TTFT", "TPOT", "ITL", "E2E", "output tokens/s", "errors/s")


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def post(url: str, form: dict[str, str]) -> dict:
    data = urllib.parse.urlencode(form).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST"), timeout=10) as r:
        return orjson.loads(r.read())


def wait_for(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            value = predicate()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def screenshot(url: str, png: Path) -> None:
    chromium = shutil.which("chromium")
    assert chromium, "chromium not found: apt-get install -y chromium (.ci/run installs it)"
    with tempfile.TemporaryDirectory() as profile:
        p = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                            "--no-first-run", "--disable-background-networking", "--disable-component-update",
                            "--disable-sync", f"--user-data-dir={profile}", f"--screenshot={png}",
                            "--window-size=1400,1000", "--virtual-time-budget=3000", url],
                           capture_output=True, text=True, timeout=60)
    assert png.is_file(), p.stderr[-2000:]


def test_web_ui_run_serves_the_llm_metrics(embedded_server, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "locust.log", "w")
    proc = subprocess.Popen([str(BIN / "locust"), "-f", "scenarios/", "TritonHttpPoisson", "-H",
                             embedded_server.http_url, "--web-host", "127.0.0.1", "--web-port", str(port),
                             "--out-dir", str(tmp_path / "runs"), "--input-tokens", "64", "--output-tokens", "4"],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_for(lambda: get(base + "/")[0] == 200, 30, "the web UI")
        status, page = get(base + "/")
        assert b"LLM metrics" in page and b'"rate"' in page  # the tab, and --rate in the start form
        form = {"user_count": "1", "spawn_rate": "1", "host": embedded_server.http_url}
        refused = post(base + "/swarm", {**form, "rate": "fast", "requests": "40"})
        assert not refused["success"] and "--rate" in refused["message"]
        started = post(base + "/swarm", {**form, "rate": "10", "requests": "60"})
        assert started["success"], started

        def llm_rows() -> dict | None:
            data = orjson.loads(get(base + "/stats/requests")[1])
            rows = {r["metric"]: r for r in data["extended_stats"][0]["data"]}
            return rows if rows["TTFT"]["count"] >= 10 else None

        rows = wait_for(llm_rows, 30, "completed requests in the LLM metrics")
        assert set(METRIC_NAMES) <= set(rows) and rows["TTFT"]["p50"] != "-"
        png = tmp_path / "locust-llm-metrics.png"
        screenshot(base + "/?tab=llm-metrics", png)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        wait_for(lambda: orjson.loads(get(base + "/stats/requests")[1])["state"] == "stopped", 40, "the end")
        live = orjson.loads(get(base + "/loadgen/stats")[1])
        summary = live["summary"]
        assert summary["completed_requests"] == 60 and Path(live["run_dir"]).is_dir()
        ttft = {r["metric"]: r for r in live["rows"]}["TTFT"]
        assert float(ttft["p50"].replace(",", "")) == pytest.approx(summary["ttft_ms"]["p50"], rel=2e-3)
        assert len(live["history"]) >= 3 and live["history"][-1]["ttft_p50_ms"] is not None
        locust_stats = orjson.loads(get(base + "/stats/requests")[1])["stats"]
        assert locust_stats[0]["num_requests"] == 60  # Locust's own table: one entry per LLM request
        _, report = get(base + "/stats/report", timeout=30)
        assert b"loadgen-llm-metrics" in report and b"TTFT" in report
        _, table = get(base + "/loadgen/stats.csv")
        assert table.startswith(b"metric,unit,count") and b"ITL" in table
        _, charts = get(base + "/loadgen/charts")
        assert b"TTFT (ms)" in charts and b"Output tokens/s" in charts
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
    assert "Traceback" not in (tmp_path / "locust.log").read_text()
