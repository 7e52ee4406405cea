"""The sweep's plots (PNG, matplotlib's Agg canvas: no display, no pyplot state) and one self-contained HTML page
with the plots inlined as base64 and the tables.

* ``frontier_figure``: throughput against a cost (a latency statistic, or J/token), one colour per
  configuration curve, the Pareto frontier drawn as a thick red line through enlarged points, the knee and the
  saturation point marked, points left out of the curves (invalid, preempted) as grey crosses.
* ``percentile_figure``: throughput against the p50, p90 and p99 of that latency, per configuration.
* ``batch_figure``: per batch series, throughput, latency, eta(B) (with the advised batch) and J/token against
  the max batch (log scale), the study's figures.
* ``replication_figure``: throughput of each replicas x batch configuration with its gain over one replica.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from loadgen.sweep.analysis import batch_series, efficiency, usable_rows, workload_key

FRONTIER_COLOR = "#d62728"
LEFT_OUT_COLOR = "#9a9a9a"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
COST_LABELS = {"j_per_token": "energy per token (J / total token)"}


def _cost_label(key: str) -> str:
    if key in COST_LABELS:
        return COST_LABELS[key]
    name, _, stat = key.partition("_")
    return f"{name.upper()} {stat} (ms)"


def frontier_figure(rows: Sequence[dict[str, Any]], analysis: dict[str, Any], cost_key: str,
                    frontier: Sequence[str], title: str) -> Figure:
    fig = Figure(figsize=(9, 6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    use = [r for r in usable_rows(rows) if r.get(cost_key) is not None]
    by_point = {r["point"]: r for r in use}
    configs: dict[str, list[dict[str, Any]]] = {}
    for r in use:
        configs.setdefault(r["config"], []).append(r)
    many = len(configs) > len(PALETTE)
    for i, (config, group) in enumerate(configs.items()):
        group = sorted(group, key=lambda r: r["load_value"])
        xs, ys = [r[cost_key] for r in group], [r["throughput"] for r in group]
        color = PALETTE[i % len(PALETTE)]
        ax.plot(xs, ys, marker="o", linestyle="-" if len(group) > 1 else "none", color=color, alpha=0.8,
                label=None if many else config)
        if len(use) <= 24:
            for r in group:
                text = r["config"] if len(group) == 1 else r["load"]
                ax.annotate(text, (r[cost_key], r["throughput"]), textcoords="offset points", xytext=(5, -11),
                            fontsize=7, color="#333333")
    out = [r for r in rows if r.get("throughput") is not None and r.get(cost_key) is not None and r not in use]
    if out:
        ax.scatter([r[cost_key] for r in out], [r["throughput"] for r in out], marker="x", color=LEFT_OUT_COLOR,
                   label="left out (invalid / preempted)", zorder=2)
    front = [by_point[p] for p in frontier if p in by_point]
    if front:
        fx, fy = [r[cost_key] for r in front], [r["throughput"] for r in front]
        ax.plot(fx, fy, color=FRONTIER_COLOR, linewidth=3.0, drawstyle="steps-post", zorder=3,
                label="Pareto frontier")
        ax.scatter(fx, fy, s=120, facecolors="none", edgecolors=FRONTIER_COLOR, linewidths=2.0, zorder=4)
    for key, marker, label in (("knee", "D", "knee of a curve"), ("saturation", "^", "saturation point")):
        marked = [by_point[c[key]] for c in analysis.get("curves") or [] if c.get(key) in by_point]
        if marked:
            ax.scatter([r[cost_key] for r in marked], [r["throughput"] for r in marked], marker=marker, s=60,
                       facecolors="none", edgecolors="black", linewidths=1.5, zorder=5, label=label)
    ax.set_xlabel(_cost_label(cost_key))
    ax.set_ylabel("throughput (input + output tokens / s)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if use or out:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def percentile_figure(rows: Sequence[dict[str, Any]], latency_key: str) -> Figure | None:
    """Throughput against the p50, p90 and p99 of the frontier's latency, one line per configuration."""
    name = latency_key.partition("_")[0]
    use = usable_rows(rows)
    if not use:
        return None
    fig = Figure(figsize=(13, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    configs: dict[str, list[dict[str, Any]]] = {}
    for r in use:
        configs.setdefault(r["config"], []).append(r)
    for j, stat in enumerate(("p50", "p90", "p99")):
        ax = fig.add_subplot(1, 3, j + 1)
        key = f"{name}_{stat}"
        for i, (config, group) in enumerate(configs.items()):
            group = sorted((r for r in group if r.get(key) is not None), key=lambda r: r["load_value"])
            if group:
                ax.plot([r[key] for r in group], [r["throughput"] for r in group], marker="o",
                        color=PALETTE[i % len(PALETTE)], label=config if len(configs) <= len(PALETTE) else None)
                if len(use) <= 24 and len(configs) > len(PALETTE):  # no legend: name the points instead
                    for r in group:
                        ax.annotate(r["config"] if len(group) == 1 else r["load"], (r[key], r["throughput"]),
                                    textcoords="offset points", xytext=(4, -10), fontsize=6, color="#333333")
        ax.set_xlabel(_cost_label(key))
        ax.set_ylabel("throughput (tokens / s)")
        ax.set_title(f"throughput vs {name.upper()} {stat}")
        ax.grid(True, alpha=0.3)
        if j == 0 and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def batch_figure(rows: Sequence[dict[str, Any]], analysis: dict[str, Any], latency_key: str) -> Figure | None:
    series = batch_series(usable_rows(rows))
    if not series:
        return None
    has_energy = any(r.get("j_per_token") is not None for g in series for r in g)
    ncol = 4 if has_energy else 3
    fig = Figure(figsize=(4.2 * ncol, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncol, i + 1) for i in range(ncol)]
    advice = {a["series"]: a for a in analysis.get("batch_advice") or []}
    for i, g in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        name = f"{g[0].get('profile')} {g[0].get('replicas')} replica(s), {workload_key(g[0])}"
        b = [r["max_batch"] for r in g]
        axes[0].plot(b, [r["throughput"] for r in g], marker="o", color=color, label=name)
        axes[1].plot(b, [r.get(latency_key) for r in g], marker="o", color=color, label=name)
        eta = efficiency(b, [r["throughput"] for r in g])
        if eta is not None:
            axes[2].plot(b, eta, marker="o", color=color, label=name)
            key = f"{g[0].get('profile')} on {g[0].get('gpu')}, {g[0].get('replicas')} replica(s)"
            picks = [a for a in (advice.get(key) or {}).get("advice", []) if a.get("batch")]
            if picks:
                mid = picks[len(picks) // 2]
                axes[2].axvline(mid["batch"], color=FRONTIER_COLOR, linestyle="--", linewidth=1.5,
                                label=f"advised B={mid['batch']:g} (eta>={mid['eta_min']:g}, L={mid['latency_factor']:g})")
        if has_energy:
            axes[3].plot(b, [r.get("j_per_token") for r in g], marker="o", color=color, label=name)
    for em in sorted({a["eta_min"] for adv in advice.values() for a in adv.get("advice", [])}):
        axes[2].axhline(em, color=LEFT_OUT_COLOR, linestyle=":", linewidth=1)
    labels = [("throughput (tokens / s)", "throughput"), (_cost_label(latency_key), "latency"),
              ("eta(B) = T(B) / (B T(1))", "batch efficiency"), ("J / total token", "energy per token")]
    for ax, (ylabel, title) in zip(axes, labels, strict=False):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("max batch")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def replication_figure(rows: Sequence[dict[str, Any]], analysis: dict[str, Any]) -> Figure | None:
    rep = analysis.get("replication") or []
    if not rep:
        return None
    by_point = {r["point"]: r for r in rows}
    fig = Figure(figsize=(max(6, 1.1 * len(rep) + 2), 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    def name(r: dict[str, Any]) -> str:
        mps = "" if (r.get("replicas") or 1) == 1 else ("\nno MPS" if r.get("mps") == "off" else "\nMPS")
        return f"{r.get('replicas')} x {r.get('max_batch')}{mps}"

    names = [name(by_point[x["point"]]) for x in rep]
    vals = [by_point[x["point"]]["throughput"] for x in rep]
    colors = [FRONTIER_COLOR if x["gain"] == max(y["gain"] for y in rep) else PALETTE[0] for x in rep]
    bars = ax.bar(range(len(rep)), vals, color=colors)
    for bar, x in zip(bars, rep, strict=True):
        ax.annotate(f"{x['gain']:+.1%}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
    ax.set_xticks(range(len(rep)))
    ax.set_xticklabels(names, rotation=0, fontsize=8)
    ax.set_xlabel("replicas x max batch (one GPU)")
    ax.set_ylabel("throughput (input + output tokens / s)")
    ax.set_title("Replication: gain over one replica at its largest batch")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def write_plots(rows: Sequence[dict[str, Any]], analysis: dict[str, Any], out_dir: Path) -> list[Path]:
    """Every plot that applies to these rows, as PNG files in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metric = analysis.get("latency_metric", "e2e_p99")
    figs: list[tuple[str, Figure | None]] = [
        ("throughput_latency.png", frontier_figure(rows, analysis, metric, analysis.get("frontier_latency") or [],
                                                   f"Throughput vs {_cost_label(metric)}: Pareto frontier")),
    ]
    if analysis.get("frontier_energy"):
        figs.append(("throughput_energy.png", frontier_figure(rows, analysis, "j_per_token",
                                                              analysis["frontier_energy"],
                                                              "Throughput vs energy per token: Pareto frontier")))
    figs.append(("latency_percentiles.png", percentile_figure(rows, metric)))
    figs.append(("batch.png", batch_figure(rows, analysis, metric)))
    figs.append(("replication.png", replication_figure(rows, analysis)))
    paths = []
    for name, fig in figs:
        if fig is not None:
            fig.savefig(out_dir / name)
            paths.append(out_dir / name)
    return paths


def write_html(path: Path, title: str, intro: Sequence[str], tables: Sequence[tuple], images: Sequence[Path]
               ) -> Path:
    """One file, no external resources: the PNGs inlined as base64 data URIs, the tables as HTML tables."""
    esc = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
             "<style>body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse;"
             "margin:8px 0 4px}th,td{border:1px solid #ccc;padding:3px 8px;font-size:13px}th{background:#f0f0f0}"
             "td.n{text-align:right}img{max-width:100%;border:1px solid #ddd;margin:8px 0}p.note{color:#555;"
             "font-size:12px;max-width:1100px}h2{margin-top:28px}</style></head><body>",
             f"<h1>{esc(title)}</h1>"]
    parts += [f"<p>{esc(line)}</p>" for line in intro]
    parts.append("<h2>Plots</h2>")
    for img in images:
        data = base64.b64encode(Path(img).read_bytes()).decode()
        parts.append(f"<div><img alt='{esc(Path(img).stem)}' src='data:image/png;base64,{data}'></div>")
    parts.append("<h2>Tables</h2>")
    for title_, headers, body, note in tables:
        parts.append(f"<h3>{esc(title_)}</h3><table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers)
                     + "</tr>")
        for row in body:
            cells = "".join(f"<td class='{'n' if _is_num(c) else ''}'>{esc(c)}</td>" for c in row)
            parts.append(f"<tr>{cells}</tr>")
        parts.append("</table>")
        if note:
            parts.append(f"<p class='note'>{esc(note)}</p>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts))
    return path


def _is_num(c: str) -> bool:
    s = c.replace(",", "").replace(".", "").replace("+", "").replace("-", "").replace("%", "")
    return bool(s) and s.isdigit()
