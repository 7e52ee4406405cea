"""The power trace of a run (``power.png``): power per GPU over time above the running requests, with the idle
and measurement windows shaded, so a reader sees at once whether power followed the load and what was counted.

Uses matplotlib's object API with the Agg canvas (no pyplot global state, no display needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson

from loadgen.power.energy import PowerData, t0_abs_ns


def running_series(records_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(times s since t0, requests in flight from then on) from records.jsonl: +1 at issue, -1 at end. Only the
    two timestamps of each record are read; a cut last line is skipped."""
    events: list[tuple[int, int]] = []
    try:
        fh = open(records_path, "rb")
    except OSError:
        return np.zeros(0), np.zeros(0)
    last = 0
    with fh:
        for raw in fh:
            try:
                r = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            issued, end = r.get("issued_ns"), r.get("end_ns")
            if issued is None:
                continue
            events.append((int(issued), 1))
            last = max(last, int(issued), int(end or 0))
            if end is not None:
                events.append((int(end), -1))
            else:
                events.append((-1, -1))  # never ended (cancelled): in flight to the last event
    if not events:
        return np.zeros(0), np.zeros(0)
    ev = np.array([(last if t < 0 else t, d) for t, d in events], dtype=np.int64)
    ev = ev[np.lexsort((ev[:, 1], ev[:, 0]))]  # at equal times, ends (-1) before issues (+1)
    return ev[:, 0] / 1e9, np.cumsum(ev[:, 1])


def write_power_plot(path: str | Path, data: PowerData, summary: dict[str, Any],
                     idle: tuple[int, int] | None = None, records_path: str | Path | None = None) -> Path:
    """Draw ``path`` (PNG): top, watts per GPU (and their sum when several); bottom, running requests."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    t0 = t0_abs_ns(summary)
    if t0 is None:
        t0 = min((int(s.t_ns[0]) for s in data.series.values()), default=0)
    fig = Figure(figsize=(10, 6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax_p, ax_r = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    total_t: np.ndarray | None = None
    for gpu, s in sorted(data.series.items()):
        ok = ~np.isnan(s.power_w)
        t = (s.t_ns[ok] - t0) / 1e9
        ax_p.plot(t, s.power_w[ok], lw=1.2, label=f"GPU {gpu}")
        total_t = t if total_t is None else np.union1d(total_t, t)
    if len(data.series) > 1 and total_t is not None:
        tot = sum(np.interp(total_t, (s.t_ns[~np.isnan(s.power_w)] - t0) / 1e9, s.power_w[~np.isnan(s.power_w)])
                  for s in data.series.values())
        ax_p.plot(total_t, tot, lw=1.5, color="black", label="all GPUs")
    for ax in (ax_p, ax_r):
        if idle is not None:
            ax.axvspan((idle[0] - t0) / 1e9, (idle[1] - t0) / 1e9, color="0.85", lw=0)
        if summary.get("window_s"):
            ax.axvspan(summary["window_start_s"], summary["window_end_s"], color="tab:green", alpha=0.12, lw=0)
    energy = summary.get("energy") or {}
    if energy.get("idle_power_w") is not None and len(data.series) == 1:
        ax_p.axhline(energy["idle_power_w"], color="0.4", ls="--", lw=0.8, label="idle")
    ax_p.set_ylabel("power (W)")
    ax_p.legend(loc="upper right", fontsize=8)
    title = f"{summary.get('name', 'run')}: {data.source or '?'} power"
    if energy.get("joules_per_output_token") is not None:
        title += (f"  |  mean {energy['mean_power_w']:.0f} W, {energy['joules_per_output_token']:.3g} J/output "
                  f"token (shaded green: measurement window; grey: idle)")
    ax_p.set_title(title, fontsize=9)
    if records_path is not None:
        rt, running = running_series(records_path)
        if rt.size:
            ax_r.step(rt, running, where="post", lw=1.0, color="tab:orange")
    ax_r.set_ylabel("running requests")
    ax_r.set_xlabel("time since t0 (s)")
    out = Path(path)
    fig.savefig(out)
    return out
