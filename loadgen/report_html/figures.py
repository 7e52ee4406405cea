"""The page's plots: matplotlib's object API on the Agg canvas (no pyplot state, no display), each figure returned
as a PNG ``data:`` URI so the page needs nothing beside itself.

One run: every line of that run (scheduled, issued, completed; p50, p90, p99; the server's running and queued).
Several runs (``loadgen report A B --html``): one colour per run and fewer lines per panel (completed rate,
p50 solid and p99 dashed), each run on its own time axis (seconds since its t0).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from loadgen.core.histogram import LogHistogram
from loadgen.core.metrics import NS_PER_MS
from loadgen.report_html.data import RunData

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
WIDTH_IN, DPI = 11.0, 100
WINDOW_SHADE = dict(color="tab:green", alpha=0.10, lw=0)


def data_uri(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _figure(rows: int, row_in: float = 2.2, cols: int = 1) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(WIDTH_IN, 0.6 + row_in * rows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, sharex=cols == 1, squeeze=False)
    return fig, list(axes.ravel())


def _col(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _edges(ts: dict) -> np.ndarray:
    return np.arange(ts["windows"] + 1) * ts["window_s"]


def _mids(ts: dict) -> np.ndarray:
    return (np.arange(ts["windows"]) + 0.5) * ts["window_s"]


def _color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _log_if_wide(ax: Axes, values: list[np.ndarray], axis: str = "y") -> None:
    """Log scale when the positive values span more than 30x: one slow window must not flatten the rest."""
    v = np.concatenate([x[np.isfinite(x) & (x > 0)] for x in values]) if values else np.zeros(0)
    if v.size and v.max() / v.min() > 30:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


def _finish(axes: list[Axes], xlabel: str) -> None:
    for ax in axes:
        ax.grid(True, alpha=0.3)
        labels = ax.get_legend_handles_labels()[1]
        if labels:  # a legend wider than its axes would make the layout squeeze the plot itself
            longest = max(len(t) for t in labels)
            ax.legend(loc="upper left", fontsize=8, framealpha=0.8, ncol=4 if longest <= 24 else 2 if longest <= 45
                      else 1)
    axes[-1].set_xlabel(xlabel)


# -- load, server and power over time ---------------------------------------------------------------------------
def _rates(ax: Axes, runs: list[RunData]) -> None:
    ax.set_ylabel("requests / s")
    if len(runs) == 1:
        ts = runs[0].timeseries
        e = _edges(ts)
        ax.stairs(ts["scheduled_rps"], e, color="0.45", ls="--", label="scheduled")
        ax.stairs(ts["issued_rps"], e, color="tab:blue", label="issued")
        ax.stairs(ts["completed_rps"], e, color="tab:green", lw=1.6, label="completed")
        errors = np.sum([np.asarray(v) for v in ts["errors_by_kind"].values()], axis=0) if ts["errors_by_kind"] \
            else np.zeros(ts["windows"])
        if errors.any():
            ax.stairs(errors / ts["window_s"], e, color="tab:red", lw=1.6, label="errors")
        if any(ts["dropped"]):
            ax.stairs(np.asarray(ts["dropped"]) / ts["window_s"], e, color="tab:orange", label="dropped")
        return
    ax.set_title("completed requests / s", fontsize=9, loc="left")
    for i, r in enumerate(runs):
        if r.timeseries:
            ax.stairs(r.timeseries["completed_rps"], _edges(r.timeseries), color=_color(i), label=r.label)


def _tokens(ax: Axes, runs: list[RunData]) -> None:
    ax.set_ylabel("output tokens / s")
    for i, r in enumerate(runs):
        if r.timeseries:
            ax.stairs(r.timeseries["output_tps"], _edges(r.timeseries), color=_color(i) if len(runs) > 1
                      else "tab:purple", label=r.label if len(runs) > 1 else None)


def _in_flight(ax: Axes, runs: list[RunData]) -> None:
    """The client's requests in flight beside the server's running and queued: where they part, requests wait
    somewhere between the two (a proxy, the network, the server's HTTP front end)."""
    ax.set_ylabel("requests")
    if len(runs) == 1:
        r = runs[0]
        if r.timeseries:
            ax.stairs(r.timeseries["in_flight"], _edges(r.timeseries), color="tab:orange",
                      label="in flight (client, mean per window)")
        for key, color in (("running", "tab:blue"), ("queued", "tab:brown")):
            if r.server is not None and np.isfinite(r.server.values[key]).any():
                ax.plot(r.server.t_s, r.server.values[key], lw=1.1, color=color, label=f"{key} (server)")
        return
    for i, r in enumerate(runs):
        if r.timeseries:
            ax.stairs(r.timeseries["in_flight"], _edges(r.timeseries), color=_color(i), label=r.label)
        for key, style in (("running", "--"), ("queued", ":")):
            if r.server is not None and np.isfinite(r.server.values[key]).any():
                ax.plot(r.server.t_s, r.server.values[key], ls=style, lw=1.1, color=_color(i))
    ax.set_title("steps: the client's requests in flight (mean per window); dashed: the server's running; "
                 "dotted: its queued", fontsize=9, loc="left")


def _kv(ax: Axes, runs: list[RunData]) -> None:
    ax.set_ylabel("server cache (%)")
    single = len(runs) == 1
    preempted = []
    for i, r in enumerate(runs):
        if r.server is None:
            continue
        for key, text, style in (("kv_usage", "KV cache usage", "-"), ("cache_hit_rate", "prefix-cache hits", ":")):
            v = r.server.values[key]
            if np.isfinite(v).any():
                ax.plot(r.server.t_s, 100 * v, ls=style, lw=1.1, color=("tab:cyan" if key == "kv_usage" else
                        "tab:gray") if single else _color(i), label=text if single else
                        (r.label if key == "kv_usage" else None))
        pre = r.server.values["preemptions"]
        pre = pre[np.isfinite(pre)]
        if pre.size >= 2 and pre[-1] > pre[0]:
            preempted.append(f"{'' if single else r.label + ': '}{pre[-1] - pre[0]:g} preemptions")
    if not single:
        ax.set_title("solid: KV cache usage; dotted: prefix-cache hit rate", fontsize=9, loc="left")
    if preempted:
        ax.set_title("; ".join(preempted) + " during the run", fontsize=9, loc="right")


def _power(ax: Axes, runs: list[RunData]) -> None:
    ax.set_ylabel("GPU power (W)")
    single = len(runs) == 1
    for i, r in enumerate(runs):
        if r.power is None:
            continue
        keys = list(r.power.values) if single or "all GPUs" not in r.power.values else ["all GPUs"]
        for j, key in enumerate(keys):
            ax.plot(r.power.t_s, r.power.values[key], lw=1.2 if key != "all GPUs" else 1.6,
                    color=_color(j) if single else _color(i), label=key if single else f"{r.label}: {key}")


def timeline_figure(runs: list[RunData]) -> Figure | None:
    """Rates, output tokens/s and requests in flight from the records; the server's running and queued beside
    the client's in-flight count, KV cache usage and GPU power on the same time axis when the run has them."""
    with_ts = [r for r in runs if r.timeseries and r.timeseries["windows"]]
    if not with_ts:
        return None
    panels: list[Callable[[Axes, list[RunData]], None]] = [_rates, _tokens, _in_flight]
    if any(r.server is not None and np.isfinite(r.server.values["kv_usage"]).any() for r in runs):
        panels.append(_kv)
    if any(r.power is not None for r in runs):
        panels.append(_power)
    fig, axes = _figure(len(panels))
    for ax, draw in zip(axes, panels, strict=True):
        draw(ax, runs)
        top = ax.get_ylim()[1]
        ax.set_ylim(0, top * 1.18 if top > 0 else 1.0)  # headroom: a steady rate is not hidden by the frame
    end = max(r.timeseries["windows"] * r.timeseries["window_s"] for r in with_ts)
    axes[0].set_xlim(0, end)
    if len(runs) == 1:
        _shade_window(axes, runs[0].summary)
    w = ", ".join(sorted({f"{r.timeseries['window_s']:g} s" for r in with_ts}))
    fig.suptitle(f"Load over time (windows of {w}" + ("; shaded green: the measurement window)" if len(runs) == 1
                                                       else ")"), fontsize=10)
    _finish(axes, "time since the run's t0 (s)" if len(runs) == 1 else "time since each run's t0 (s)")
    return fig


def _shade_window(axes: list[Axes], summary: dict) -> None:
    if summary.get("window_s"):
        for ax in axes:
            ax.axvspan(summary["window_start_s"], summary["window_end_s"], **WINDOW_SHADE)


# -- latency over time ------------------------------------------------------------------------------------------
_LATENCY = (("ttft_ms", "TTFT (ms)"), ("itl_ms", "ITL (ms)"), ("e2e_ms", "E2E (ms)"))


def latency_figure(runs: list[RunData]) -> Figure | None:
    """p50, p90 and p99 of TTFT, ITL and E2E per window (one run), or p50 and p99 per run; schedule lag p99."""
    with_ts = [r for r in runs if r.timeseries and r.timeseries["windows"]]
    if not any(v is not None for r in with_ts for v in r.timeseries["e2e_ms"]["p50"]):
        return None  # nothing completed: the rates plot shows the errors
    fig, axes = _figure(4, row_in=2.0)
    single = len(runs) == 1
    for ax, (key, label) in zip(axes, _LATENCY, strict=False):
        drawn = []
        for i, r in enumerate(runs):
            if not r.timeseries:
                continue
            pcts = ("p50", "p90", "p99") if single else ("p50", "p99")
            for p, style in zip(pcts, ("-", "--", ":") if single else ("-", "--"), strict=True):
                v = _col(r.timeseries[key][p])
                drawn.append(v)
                ax.plot(_mids(r.timeseries), v, ls=style, marker=".", ms=3, lw=1.1,
                        color={"p50": "tab:blue", "p90": "tab:orange", "p99": "tab:red"}[p] if single else _color(i),
                        label=p if single else f"{r.label} {p}")
        ax.set_ylabel(label)
        _log_if_wide(ax, drawn)
    lag = axes[3]
    for i, r in enumerate(runs):
        if r.timeseries:
            lag.plot(_mids(r.timeseries), _col(r.timeseries["schedule_lag_p99_ms"]), marker=".", ms=3, lw=1.1,
                     color="tab:gray" if single else _color(i), label="p99" if single else r.label)
    lag.set_ylabel("schedule lag p99 (ms)")
    axes[0].set_xlim(0, max(r.timeseries["windows"] * r.timeseries["window_s"] for r in with_ts))
    if single:
        _shade_window(axes, runs[0].summary)
    fig.suptitle("Latency over time, per window: completed requests, each value at the time it was observed "
                 "(TTFT at the first token, ITL at each token, E2E at the end)", fontsize=10)
    _finish(axes, "time since the run's t0 (s)" if single else "time since each run's t0 (s)")
    return fig


# -- distributions ----------------------------------------------------------------------------------------------
def _cdf(h: LogHistogram) -> tuple[np.ndarray, np.ndarray]:
    """(ms, cumulative fraction) at each occupied bucket's centre, clamped to the exact min and max."""
    d = h.to_dict()
    centres = np.array([sum(h.bucket_bounds(i)) / 2 for i in d["index"]], dtype=np.float64)
    centres = np.clip(centres, h.min, h.max) / NS_PER_MS
    frac = np.cumsum(d["counts"]) / h.count
    return np.concatenate(([h.min / NS_PER_MS], centres)), np.concatenate(([0.0], frac))


def cdf_figure(runs: list[RunData]) -> Figure | None:
    """TTFT and E2E as CDFs over the measured completed requests (the summary's percentiles marked)."""
    if not any(r.dists is not None and r.dists.ttft.count + r.dists.e2e.count for r in runs):
        return None
    fig, axes = _figure(1, row_in=3.6, cols=2)
    single = len(runs) == 1
    for ax, name, key in ((axes[0], "TTFT", "ttft_ms"), (axes[1], "E2E", "e2e_ms")):
        xs = []
        for i, r in enumerate(runs):
            h = None if r.dists is None else (r.dists.ttft if name == "TTFT" else r.dists.e2e)
            if h is None or not h.count:
                continue
            x, y = _cdf(h)
            xs.append(x)
            ax.plot(x, y, drawstyle="steps-post", lw=1.5, color=_color(i) if not single else "tab:blue",
                    label=f"{r.label} (n={h.count:,})")
            if single:
                for p in ("p50", "p90", "p99"):
                    v = (r.summary.get(key) or {}).get(p)
                    if v is not None:
                        ax.axvline(v, color="0.5", ls=":", lw=1)
                        ax.annotate(f"{p} {v:.3g}", (v, float(p[1:]) / 100), fontsize=8, xytext=(4, -10),
                                    textcoords="offset points")
        _log_if_wide(ax, xs, axis="x")
        ax.set_xlabel(f"{name} (ms)")
        ax.set_ylabel("fraction of requests")
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle("Distributions: measured completed requests (the summary's)", fontsize=10)
    return fig


def scatter_figure(runs: list[RunData]) -> Figure | None:
    """TTFT against the prompt's length: a uniform sample of at most 3,000 requests per run."""
    have = [(i, r) for i, r in enumerate(runs) if r.dists is not None and len(r.dists.sample_in)]
    if not have:
        return None
    fig, (ax,) = _figure(1, row_in=3.6)
    ys = []
    for i, r in have:
        x, y = np.frombuffer(r.dists.sample_in), np.frombuffer(r.dists.sample_ttft)
        ys.append(y)
        ax.scatter(x, y, s=7, alpha=0.45, lw=0, color=_color(i) if len(runs) > 1 else "tab:blue",
                   label=f"{r.label}: {x.size:,} of {r.dists.seen:,} requests")
    _log_if_wide(ax, ys)
    ax.set_xlabel("input length (tokens; the server's count where it gives one)")
    ax.set_ylabel("TTFT (ms)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    lengths = np.unique(np.concatenate([np.frombuffer(r.dists.sample_in) for _, r in have]))
    note = f": every prompt has {lengths[0]:g} tokens" if lengths.size == 1 else ""
    ax.set_title(f"TTFT against input length (measured completed requests, sampled){note}", fontsize=10)
    return fig
