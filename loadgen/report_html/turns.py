"""The report's "By turn" section for multi-turn levels: TTFT and prompt length by turn, and the server's
prefix-cache hit rate where its metrics report one.

Read from ``summary["sessions"]`` (``loadgen.core.turn_stats``) and ``summary["extra"]["server_metrics"]``; a
level without sessions has no such section.
"""

from __future__ import annotations

import html
from typing import Any

from loadgen.report_html.data import RunData


def _cell(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}"


def cache_hit_rate(summary: dict[str, Any]) -> float | None:
    """Mean prefix-cache hit rate over the window, from the server's metrics (None when not reported)."""
    sm = (summary.get("extra") or {}).get("server_metrics") or {}
    v = (sm.get("cache_hit_rate") or {}).get("mean") if isinstance(sm.get("cache_hit_rate"), dict) else None
    return float(v) if v is not None else None


def turns_section(runs: list[RunData]) -> str | None:
    """The section's HTML (a table per run), or None when no run has sessions."""
    parts = []
    for r in runs:
        sess = r.summary.get("sessions")
        if not sess:
            continue
        hit = cache_hit_rate(r.summary)
        head = (f"<p class='caption'>{html.escape(r.label)}: {sess.get('sessions', 0):,} sessions; "
                f"{sess.get('sessions_ended_by_failure', 0):,} ended by a failed turn; server prefix-cache hit "
                f"rate {'not reported' if hit is None else f'{hit:.1%}'}</p>")
        rows = "".join(
            f"<tr><td>{t['turn']}</td><td>{_cell(t['turns'])}</td><td>{_cell(t['completed'])}</td>"
            f"<td>{_cell(t['errors'])}</td><td>{_cell(t['not_sent'])}</td><td>{_cell(t['ttft_p50_ms'])}</td>"
            f"<td>{_cell(t['ttft_p90_ms'])}</td><td>{_cell(t['input_tokens_mean'], 0)}</td></tr>"
            for t in sess.get("by_turn", []))
        parts.append(head + "<table><thead><tr><th>turn</th><th>turns</th><th>completed</th><th>errors</th>"
                     "<th>not sent</th><th>TTFT p50 ms</th><th>TTFT p90 ms</th><th>input tokens (mean)</th>"
                     "</tr></thead><tbody>" + rows + "</tbody></table>")
    if not parts:
        return None
    return "".join(parts) + ("<p class='caption'>Each turn resends the conversation so far, so its prompt grows; "
                             "with a prefix cache, TTFT should grow much less than the input length.</p>")


def turns_figure(runs: list[RunData]) -> Any:
    """TTFT p50 and mean input length by turn (one line per run), or None."""
    series = [(r, r.summary.get("sessions")) for r in runs]
    series = [(r, s) for r, s in series if s and s.get("by_turn")]
    if not series:
        return None
    from loadgen.report_html.figures import _color, _figure

    fig, axes = _figure(2, row_in=2.0)
    for i, (r, s) in enumerate(series):
        turns = [t["turn"] for t in s["by_turn"]]
        axes[0].plot(turns, [t["ttft_p50_ms"] if t["ttft_p50_ms"] is not None else float("nan")
                             for t in s["by_turn"]], "o-", color=_color(i), label=r.label)
        axes[1].plot(turns, [t["input_tokens_mean"] if t["input_tokens_mean"] is not None else float("nan")
                             for t in s["by_turn"]], "o-", color=_color(i), label=r.label)
    axes[0].set_ylabel("TTFT p50 (ms)")
    axes[1].set_ylabel("input tokens (mean)")
    axes[1].set_xlabel("turn")
    if len(series) > 1:
        axes[0].legend(fontsize="small")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig
