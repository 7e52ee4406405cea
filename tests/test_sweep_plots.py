"""The sweep's plots and HTML page are looked at: rendered to PNG, checked for axes, labels and a visible frontier,
and the HTML page screenshotted in headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from loadgen.sweep.analysis import analyze
from loadgen.sweep.plots import FRONTIER_COLOR, batch_figure, frontier_figure, write_html, write_plots
from loadgen.sweep.tables import render_text, sweep_tables

BATCH = [1, 8, 32, 64, 128, 256, 512, 768]
TPUT = [365, 2432, 6108, 8138, 9564, 10440, 10795, 10909]
TPOT = [3.8, 4.5, 7.1, 10.4, 16.9, 29.2, 52.1, 71.9]
JPT = [0.726, 0.113, 0.048, 0.037, 0.032, 0.030, 0.030, 0.030]
RED = np.array([int(FRONTIER_COLOR[i:i + 2], 16) / 255 for i in (1, 3, 5)])


def _rows():
    rows = []
    for b, t, y, j in zip(BATCH, TPUT, TPOT, JPT, strict=True):
        rows.append({"point": f"1x{b}--offline-600", "config": f"1x{b}", "load": "offline-600",
                     "load_kind": "offline", "load_value": 600, "status": "done", "valid": True, "preempted": False,
                     "throughput": t, "output_throughput": t * 0.72, "tpot_mean": y, "tpot_p50": y,
                     "tpot_p90": 1.2 * y, "tpot_p99": 1.5 * y, "e2e_p99": 300 * y,
                     "j_per_token": j, "mean_power_w": 300, "max_batch": b, "replicas": 1, "profile": "opt-1.3b",
                     "gpu": "h100-64gb", "backend": "triton-http", "speed": 0.5, "batch": 0.8 * b})
    for r, b, t, y in [(2, 128, 13472, 15.0), (2, 256, 14406, 25.0)]:
        rows.append({**rows[-1], "point": f"{r}x{b}--offline-600", "config": f"{r}x{b}", "replicas": r,
                     "max_batch": b, "throughput": t, "tpot_mean": y, "tpot_p50": y, "tpot_p90": 1.2 * y,
                     "tpot_p99": 1.5 * y})
    rows.append({**rows[0], "point": "bad", "config": "1x999", "max_batch": 999, "valid": False,
                 "warnings": ["client saturated"]})
    return rows


def _red_share(png: Path) -> float:
    img = imread(png)[..., :3]
    return float((np.abs(img - RED).max(axis=-1) < 0.08).mean())


def _ink_share(png: Path) -> float:
    img = imread(png)[..., :3]
    return float((img.min(axis=-1) < 0.9).mean())


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("plots")
    rows = _rows()
    analysis = analyze(rows, "tpot_mean", knee_factor=4.0, eta=(0.1, 0.2), latency_factor=(4,))
    return rows, analysis, write_plots(rows, analysis, out), out


def test_every_plot_is_written_and_non_trivial(rendered):
    _, _, paths, _ = rendered
    assert sorted(p.name for p in paths) == ["batch.png", "latency_percentiles.png", "replication.png",
                                             "throughput_energy.png", "throughput_latency.png"]
    for p in paths:
        img = imread(p)
        assert img.shape[0] >= 400 and img.shape[1] >= 500, p
        assert 0.02 < _ink_share(p) < 0.6, p  # axes, lines and text, but not a solid block
    assert _red_share(rendered[2][0]) > 0.002  # the frontier is drawn in its colour


def test_frontier_figure_axes_labels_and_frontier_line(rendered):
    rows, analysis, _, _ = rendered
    fig = frontier_figure(rows, analysis, "tpot_mean", analysis["frontier_latency"], "title here")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "TPOT mean (ms)"
    assert ax.get_ylabel().startswith("throughput")
    assert ax.get_title() == "title here"
    front = [ln for ln in ax.get_lines() if ln.get_label() == "Pareto frontier"]
    assert len(front) == 1 and front[0].get_linewidth() >= 3
    by_point = {r["point"]: r for r in rows}
    expected = [by_point[p]["throughput"] for p in analysis["frontier_latency"]]
    assert list(front[0].get_ydata()) == expected
    assert "1x128--offline-600" not in analysis["frontier_latency"]  # beaten by 2x128 (more tok/s, less TPOT)
    assert "2x128--offline-600" in analysis["frontier_latency"]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "Pareto frontier" in labels and "left out (invalid / preempted)" in labels


def test_batch_figure_has_the_advice_and_log_axes(rendered):
    rows, analysis, _, _ = rendered
    fig = batch_figure(rows, analysis, "tpot_mean")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["throughput", "latency", "batch efficiency", "energy per token"]
    assert all(ax.get_xscale() == "log" and ax.get_xlabel() == "max batch" for ax in fig.axes)
    eta_labels = [ln.get_label() for ln in fig.axes[2].get_lines()]
    assert any(label.startswith("advised B=") for label in eta_labels)


def test_html_page_is_self_contained_and_renders_in_chromium(rendered, tmp_path):
    rows, analysis, paths, _ = rendered
    page = write_html(tmp_path / "index.html", "loadgen sweep: test", ["intro line"], sweep_tables(rows, analysis),
                      paths)
    text = page.read_text()
    assert text.count("data:image/png;base64,") == len(paths)
    assert "src='http" not in text and "<link" not in text  # nothing to fetch
    assert "Advised batch" in text and "Replication" in text and "1x768" in text
    report = render_text(rows, analysis)
    assert "Sweep points" in report and "rescaled to real time" in report
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is needed for the screenshot test (apt-get install -y chromium)"
    shot = tmp_path / "shot.png"
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                               "--no-first-run", "--disable-background-networking", "--disable-component-update",
                               "--disable-sync", f"--user-data-dir={profile}", f"--screenshot={shot}",
                               "--window-size=1400,1000", f"file://{page}"], capture_output=True, timeout=60)
    assert proc.returncode == 0 and shot.exists(), proc.stderr.decode()[-2000:]
    img = imread(shot)
    assert img.shape[:2] == (1000, 1400)
    assert _ink_share(shot) > 0.01  # text and the first plot, not a blank page (measured: 0.023)
    assert _red_share(shot) > 0.0005  # the first plot (with its red frontier) is on screen
