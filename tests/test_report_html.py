"""report.html: one self-contained page per run (and per ``loadgen report A B --html`` comparison) with the
verdict, the summary table and the plots; the server's metrics and GPU power on the run's time axis.

Unit tests build run directories from synthetic records; the integration tests run ``loadgen run`` (and a Locust
headless level) against the embedded server and open the page in headless Chromium (Debian's ``chromium``,
installed by ``.ci/run``) to check that every plot really renders: each ``<img>`` is swapped for a solid-colour
PNG of the same size, whose screenshot locates the image on the page, and that region of the real page's
screenshot must hold a plot (many colours, a good share of non-white pixels)."""

from __future__ import annotations

import base64
import html
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import orjson
import pytest
from matplotlib import image as mpimg

from loadgen.cli import main
from loadgen.core.records import RequestRecord
from loadgen.core.summary import LevelContext, load_level_records, summarize
from loadgen.level.finish import write_results
from loadgen.report_html import collect_run, figures

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MS = 1_000_000
S = 1_000_000_000
ANCHOR_NS = 5_000 * S  # absolute perf_counter of the synthetic runs' anchor; t0 is 0.25 s later
T0_OFFSET_NS = 250 * MS


# -- synthetic run directories -----------------------------------------------------------------------------------
def make_run(run_dir: Path, name: str = "syn", n: int = 60, anchor: bool = True, server: bool = True,
             power: bool = False, ttft_base_ms: int = 10, issue14: bool = False) -> dict:
    """10 req/s for n/10 s; TTFT grows with the prompt (100..550 tokens); written by the real write_results.

    ``issue14``: a reasoning model behind a ramp, with client cancellations: the first 5 of the 8 tokens are
    reasoning (the answer's first token 15 ms after the first one) and every 6th request is abandoned after 3."""
    run_dir.mkdir(parents=True)
    recs = []
    for i in range(n):
        sched, inputs = i * 100 * MS, 100 + (i % 10) * 50
        offs = [(ttft_base_ms + inputs // 20 + 5 * j) * 1000 for j in range(8)]
        r = RequestRecord(index=i, scheduled_ns=sched, issued_ns=sched + MS, chunk_offsets_us=offs,
                          chunk_tokens=[1] * 8, end_ns=sched + MS + offs[-1] * 1000 + MS, status="ok",
                          input_tokens=inputs, max_tokens=8)
        if issue14:
            r.first_reasoning_ns, r.first_answer_ns = r.issued_ns + offs[0] * 1000, r.issued_ns + offs[3] * 1000
            r.reasoning_tokens = 5
            if i % 6 == 1:
                r.status, r.cancel_after_s, r.first_answer_ns = "cancelled_by_client", 0.02, None
                r.chunk_offsets_us, r.chunk_tokens, r.end_ns = offs[:3], [1] * 3, sched + 21 * MS
        recs.append(r)
    (run_dir / "records.jsonl").write_bytes(b"".join(orjson.dumps(r.to_dict()) + b"\n" for r in recs))
    extra = {"ramp": {"ramp_s": 0.5, "start_rate_rps": 0.0, "requests": 3},
             "cancel": {"rate": 0.17, "after": "20ms", "mean_after_s": 0.02}} if issue14 else {}
    ctx = LevelContext(name=name, backend="triton-http", url="http://127.0.0.1:9", model="ensemble",
                       target_rate=10.0, run_end_ns=n * 100 * MS, warmup_s=0.5, extra=extra)
    (run_dir / "config.json").write_bytes(orjson.dumps({"level_context": ctx.to_dict()}))
    if server:
        lines = [{"t_mono_ns": ANCHOR_NS + T0_OFFSET_NS + k * 500 * MS,
                  "common": {"queued": k % 3, "running": 2.0, "kv_usage": k / 100, "preemptions": k // 4,
                             "cache_hit_rate": None}, "samples": []} for k in range(2 * n // 10 + 1)]
        (run_dir / "server_metrics.jsonl").write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    if power:
        lines = [{"type": "start", "source": "nvml", "t_ns": ANCHOR_NS, "gpus": [{"id": "0"}], "interval_s": 0.1}]
        lines += [{"type": "sample", "tick": k, "t_ns": ANCHOR_NS + T0_OFFSET_NS + k * 100 * MS, "gpu": "0",
                   "power_w": 100.0 + k} for k in range(n + 5)]
        (run_dir / "power.jsonl").write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    if anchor:
        ctx.client = {"anchor": {"monotonic_ns": ANCHOR_NS, "wall_ns": 1_800_000_000 * S}, "t0_offset_ns": T0_OFFSET_NS}
    summary = summarize(load_level_records(run_dir), ctx)
    write_results(run_dir, summary, [])
    return summary


def page_of(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def images(page: str) -> list[str]:
    return re.findall(r"<img[^>]*\ssrc='([^']*)'", page)


def assert_self_contained(page: str) -> None:
    """Nothing fetched: no remote src/href, no script, stylesheet link or CSS url(); every image a data: URI."""
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    low = page.lower()
    assert "<script" not in low and "<link" not in low and "@import" not in low and "url(" not in low
    srcs = images(page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)


def test_a_run_leaves_a_page_with_verdict_table_and_every_plot(tmp_path: Path):
    rd = tmp_path / "run"
    make_run(rd, power=True)
    page = page_of(rd / "report.html")
    assert_self_contained(page)
    assert len(images(page)) == 4  # over time, latency over time, CDFs, TTFT against input length
    assert page.index("VALID") < page.index("<table") < page.index("<img")  # the verdict first
    for text in ("TTFT", "tok/s", "req/s", "ms", "Over time", "Latency over time", "Distributions"):
        assert text in page
    assert "omitted" not in page and "server metrics: none" not in page
    # no reasoning, ramp or client cancellation in this run: none of their rows or lines
    for absent in ("cancelled by the client", "TTFRT", "TTFAT", "reasoning tokens", "Ramp:", "Cancellation:"):
        assert absent not in page, absent
    summary = orjson.loads((rd / "summary.json").read_bytes())
    assert summary["timeseries"] == {"file": "timeseries.json", "window_s": 1.0, "windows": 6}
    assert orjson.loads((rd / "timeseries.json").read_bytes())["completed_rps"][1:5] == [10.0] * 4


def test_the_server_and_power_are_on_the_runs_time_axis(tmp_path: Path):
    rd = tmp_path / "run"
    summary = make_run(rd, power=True)
    run = collect_run(rd, orjson.loads((rd / "summary.json").read_bytes()))
    assert run.server.t_s[:3] == pytest.approx([0.0, 0.5, 1.0])  # anchor + t0 offset subtracted
    assert run.server.values["kv_usage"][2] == pytest.approx(0.02)
    assert run.power.t_s[:2] == pytest.approx([0.0, 0.1]) and run.power.values["GPU 0"][1] == 101.0
    fig = figures.timeline_figure([run])
    assert len(fig.axes) == 5  # rates, tokens/s, in flight with the server's running/queued, KV cache, power
    # the CDFs are of the summary's requests: the measured completed ones
    assert run.dists.ttft.count == summary["ttft_ms"]["count"] == 55
    assert run.dists.e2e.count == summary["e2e_ms"]["count"]
    assert len(run.dists.sample_in) == 55 and set(run.dists.sample_in) == {100.0 + 50 * k for k in range(10)}


def test_without_a_clock_anchor_the_server_metrics_are_left_out_with_a_note(tmp_path: Path):
    """A Locust level's summary has no anchor: the page says why the server's samples are missing."""
    rd = tmp_path / "run"
    make_run(rd, anchor=False)
    page = page_of(rd / "report.html")
    assert "server metrics omitted: the summary has no clock anchor" in page
    assert len(images(page)) == 4


def test_a_summary_from_merged_histograms_gets_its_page_without_a_series(tmp_path: Path):
    rd = tmp_path / "run"
    rd.mkdir()
    summary = summarize([], LevelContext(name="merged", target_rate=5.0, run_end_ns=S))
    summary["merged_from_histograms"] = True
    write_results(rd, summary, [])
    page = page_of(rd / "report.html")
    assert_self_contained(page) if images(page) else None
    assert "INVALID" in page and "copy the records.w*.jsonl here" in page
    assert orjson.loads((rd / "summary.json").read_bytes())["timeseries"] is None
    assert not (rd / "timeseries.json").exists()


def test_an_invalid_run_shows_every_warning_at_the_top(tmp_path: Path):
    rd = tmp_path / "run"
    summary = make_run(rd, n=20)  # fewer than 30 completed requests
    page = page_of(rd / "report.html")
    assert not summary["valid"]
    assert page.index("INVALID") < page.index("<table")
    for warning in summary["warnings"]:
        assert html.escape(warning) in page


def test_report_html_compares_runs(tmp_path: Path, monkeypatch, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    make_run(a, name="fast")
    make_run(b, name="slow", ttft_base_ms=40)
    (b / "timeseries.json").unlink()  # an older run: its series is computed from its records
    before = sorted(p.name for p in b.iterdir())
    out = tmp_path / "out" / "cmp.html"
    out.parent.mkdir()
    assert main(["report", str(a), str(b), "--html", str(out)]) == 0
    page = page_of(out)
    assert_self_contained(page)
    assert "loadgen comparison: a/fast, b/slow" in page and len(images(page)) == 4
    assert page.count("<div class='verdict ok'>") == 2
    assert sorted(p.name for p in b.iterdir()) == before  # loadgen report writes nothing into a run directory
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(a), "--html"]) == 0  # FILE defaults to report.html in the current directory
    assert "loadgen run: fast" in page_of(tmp_path / "report.html")
    assert "wrote report.html" in capsys.readouterr().err


def _row(page: str, name: str) -> list[str]:
    """The cells of the summary table's row ``name`` (after its name)."""
    m = re.search(rf"<tr><td>{re.escape(html.escape(name))}</td>(.*?)</tr>", page)
    assert m, name
    return re.findall(r"<td[^>]*>(.*?)</td>", m.group(1))


@pytest.fixture(scope="module")
def issue14_run(tmp_path_factory) -> tuple[Path, dict]:
    """A synthetic run of a reasoning model with a ramp and client cancellations (one page for these tests)."""
    rd = tmp_path_factory.mktemp("issue14") / "run"
    return rd, make_run(rd, issue14=True)


def test_cancellations_ramp_and_reasoning_rows(issue14_run):
    rd, summary = issue14_run
    page = page_of(rd / "report.html")
    assert_self_contained(page)
    assert summary["cancelled_by_client_count"] == 9 and summary["error_count"] == 0
    # beside the other states (after dropped and late, before short outputs), never folded into the errors
    names = re.findall(r"<tr><td>([^<]*)</td><td class='unit'>", page)
    at = names.index("cancelled by the client (--cancel-rate)")
    assert names.index("late (lag above the tolerance)") < at < names.index("short outputs")
    assert _row(page, "cancelled by the client (--cancel-rate)") == ["requests", "9"]
    assert _row(page, "cancelled by the client, share of issued") == ["%", "16.4"]  # 9 of 55 measured
    assert _row(page, "errors (by kind)") == ["requests", "0"]
    ttfrt, ttfat = summary["ttfrt_ms"], summary["ttfat_ms"]
    assert ttfat["count"] == ttfrt["count"] == summary["completed_requests"] == 46
    assert _row(page, "TTFRT (first reasoning token)")[1] == " / ".join(f"{ttfrt[p]:#.3g}" for p in ("p50", "p90",
                                                                                                      "p99"))
    assert [float(v) - float(r) for v, r in zip(_row(page, "TTFAT (first answer token)")[1].split(" / "),
                                                _row(page, "TTFRT (first reasoning token)")[1].split(" / "),
                                                strict=True)] == [15.0] * 3
    assert _row(page, "reasoning tokens") == ["tokens", "230"] and _row(page, "answer tokens") == ["tokens", "138"]
    assert "Ramp: 0 -&gt; 10 req/s over 0.5 s (3 requests), excluded from the window" in page
    assert "Cancellation: 17% of requests abandoned 20ms after issue" in page


def test_chromium_shows_the_rows(issue14_run):
    """The browser's own DOM of the page (not the HTML text) has the new rows with their numbers."""
    rd, _ = issue14_run
    chromium = shutil.which("chromium")
    assert chromium, "chromium not found: apt-get install -y chromium (.ci/run installs it)"
    with tempfile.TemporaryDirectory() as profile:
        p = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                            "--disable-background-networking", "--disable-component-update", "--disable-sync",
                            f"--user-data-dir={profile}", "--dump-dom", (rd / "report.html").as_uri()],
                           capture_output=True, text=True, timeout=90)
    dom = p.stdout
    assert "</table>" in dom, p.stderr[-2000:]
    for name, cells in (("cancelled by the client (--cancel-rate)", ["requests", "9"]),
                        ("reasoning tokens", ["tokens", "230"])):
        row = re.search(rf"<tr><td>{re.escape(html.escape(name))}</td>(.*?)</tr>", dom)
        assert row and re.findall(r"<td[^>]*>(.*?)</td>", row.group(1)) == cells, name
    assert re.search(r"<td>TTFAT \(first answer token\)</td><td class=\"unit\">ms</td><td>[\d.]+ / ", dom)


# -- a real run, and what a browser makes of its page ----------------------------------------------------------
def run_loadgen(out: Path, *args: str) -> Path:
    p = subprocess.run([str(BIN / "loadgen"), "run", *args, "--out-dir", str(out), "--no-live"], cwd=REPO,
                       capture_output=True, text=True, timeout=180, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (rd,) = [d for d in out.iterdir() if d.is_dir()]
    return rd


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """``loadgen run --rate 8 --duration 8`` with no --url: the launcher starts the embedded server."""
    return run_loadgen(tmp_path_factory.mktemp("real"), "--rate", "8", "--duration", "8", "--name", "html")


def screenshot(html: Path, png: Path, height: int = 6000) -> np.ndarray:
    chromium = shutil.which("chromium")
    assert chromium, "chromium not found: apt-get install -y chromium (.ci/run installs it)"
    with tempfile.TemporaryDirectory() as profile:
        p = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                            "--no-first-run", "--disable-background-networking", "--disable-component-update",
                            "--disable-sync", "--force-device-scale-factor=1", f"--user-data-dir={profile}",
                            f"--screenshot={png}", f"--window-size=1200,{height}", html.as_uri()],
                           capture_output=True, text=True, timeout=90)
    assert png.is_file(), p.stderr[-2000:]
    return (mpimg.imread(png)[:, :, :3] * 255).astype(np.int16)


COLOURS = ((255, 0, 0), (0, 200, 0), (0, 0, 255), (255, 0, 255), (0, 200, 200), (200, 200, 0))


def with_placeholders(page: str) -> str:
    """The page with each image replaced by a solid PNG of the same size, one colour per image."""
    counter = iter(range(len(COLOURS)))

    def swap(match: re.Match) -> str:
        k = next(counter)
        shape = mpimg.imread(io.BytesIO(base64.b64decode(match.group(1)))).shape
        solid = np.zeros((shape[0], shape[1], 3), dtype=np.uint8)
        solid[:] = COLOURS[k]
        buf = io.BytesIO()
        mpimg.imsave(buf, solid, format="png")
        return "src='data:image/png;base64," + base64.b64encode(buf.getvalue()).decode() + "'"
    return re.sub(r"src='data:image/png;base64,([^']*)'", swap, page)


@pytest.mark.integration
def test_a_real_runs_page_is_self_contained(real_run: Path):
    page = page_of(real_run / "report.html")
    assert_self_contained(page)
    summary = orjson.loads((real_run / "summary.json").read_bytes())
    assert ("VALID" if summary["valid"] else "INVALID") in page
    assert f"{summary['completed_requests']:,}" in page and "TTFT" in page and "<table" in page
    assert len(images(page)) == 4
    assert summary["timeseries"]["windows"] >= 8 and (real_run / "timeseries.json").is_file()
    if (real_run / "server_metrics.jsonl").is_file():  # the server-metrics sampler's file, when it ran
        assert "server metrics" not in page


@pytest.mark.integration
def test_chromium_renders_every_plot(real_run: Path, tmp_path: Path):
    page = page_of(real_run / "report.html")
    n = len(images(page))
    shot = screenshot(real_run / "report.html", tmp_path / "page.png")
    marked = tmp_path / "marked.html"
    marked.write_text(with_placeholders(page), encoding="utf-8")
    boxes = screenshot(marked, tmp_path / "marked.png")
    for k in range(n):
        hit = np.all(np.abs(boxes - np.array(COLOURS[k])) <= 12, axis=2)
        assert hit.sum() > 100_000, f"image {k} is not on the screenshot (below 6000 px, or not drawn)"
        rows, cols = np.flatnonzero(hit.any(axis=1)), np.flatnonzero(hit.any(axis=0))
        region = shot[rows[0] + 4:rows[-1] - 4, cols[0] + 4:cols[-1] - 4].reshape(-1, 3)
        ink = (region < 235).any(axis=1).mean()
        colours = len(np.unique(region // 16, axis=0))
        assert ink > 0.02 and colours > 20, f"image {k}: {ink:.1%} non-white, {colours} colours"
    blank = np.all(shot > 250, axis=2).mean()
    assert blank < 0.9  # the page as a whole is not empty


@pytest.mark.integration
def test_a_locust_headless_level_writes_the_page(embedded_server, tmp_path: Path):
    out = tmp_path / "locust"
    p = subprocess.run([str(BIN / "locust"), "-f", "scenarios/", "TritonHttpPoisson", "--headless", "-H",
                        embedded_server.http_url, "--rate", "10", "--requests", "40", "--output-tokens", "8",
                        "--out-dir", str(out), "--only-summary"], cwd=REPO, capture_output=True, text=True,
                       timeout=150, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (rd,) = [d for d in out.iterdir() if d.is_dir()]
    page = page_of(rd / "report.html")
    assert_self_contained(page)
    assert len(images(page)) == 4 and "TTFT" in page
    assert orjson.loads((rd / "summary.json").read_bytes())["timeseries"]["file"] == "timeseries.json"
    if (rd / "server_metrics.jsonl").is_file():  # Locust's summary has no clock anchor: said, not hidden
        assert "server metrics omitted" in page
