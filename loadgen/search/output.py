"""What a search leaves behind: ``search.json``, the Rich table of the steps, ``plot.png`` and the one-line answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadgen.search.algorithm import FAILS_AT_START, SearchOutcome, StepResult
from loadgen.search.confidence import FAIL, PASS, UNDECIDED

VERDICT_STYLE = {PASS: "green", FAIL: "red"}


def load_text(load: float | None, users: bool) -> str:
    if load is None:
        return "-"
    return f"{int(load)} users" if users else f"{load:.3g} req/s"


def _brief(step: StepResult | None) -> dict[str, Any] | None:
    if step is None:
        return None
    confs = [j.confidence for j in step.judgements if j.confidence is not None]
    return {"load": step.load, "verdict": step.verdict, "confidence": min(confs) if confs else None,
            "levels": step.levels, "saturated": step.saturated}


def confirmed_max(outcome: SearchOutcome) -> float | None:
    """The highest load that passed at the confidence asked (not only by its point values)."""
    limit = outcome.first_fail.load if outcome.first_fail is not None else float("inf")
    loads = [p.load for p in outcome.points if p.verdict == PASS and p.load < limit]
    return max(loads) if loads else None


def search_json(outcome: SearchOutcome, condition: str, users: bool, confidence: float,
                settings: dict[str, Any], scenario: dict[str, Any]) -> dict[str, Any]:
    key = "max_concurrency" if users else "max_rate_rps"
    return {key: outcome.max_load, f"confirmed_{key}": confirmed_max(outcome), "load_kind": "concurrency" if users else "rate", "condition": condition,
            "confidence": confidence, "stop_reason": outcome.stop_reason, "elapsed_s": round(outcome.elapsed_s, 3),
            "last_pass": _brief(outcome.last_pass), "first_fail": _brief(outcome.first_fail),
            "points": [p.to_dict() for p in outcome.points], "settings": settings, "scenario": scenario}


def _cell(j: Any) -> str:
    from loadgen.core.slo import format_value

    name = j.condition.split("<")[0].split(">")[0].strip()
    value = format_value(name, j.value)
    if j.lower is None and j.upper is None:
        bound = " (no bound)"
    else:
        lo = "-inf" if j.lower is None else format_value(name, j.lower)
        hi = "inf" if j.upper is None else format_value(name, j.upper)
        bound = f" [{lo}, {hi}]"
    return f"{value}{bound} {j.verdict}"


def steps_table(outcome: SearchOutcome, users: bool) -> Any:
    from rich.table import Table

    table = Table(title="search steps", show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("load", justify="right")
    table.add_column("verdict")
    table.add_column("levels", justify="right")
    conditions = [j.condition for j in outcome.points[0].judgements] if outcome.points else []
    for c in conditions:
        table.add_column(c)
    table.add_column("note")
    for i, p in enumerate(outcome.points, 1):
        style = VERDICT_STYLE.get(p.verdict, "yellow")
        mark = " (last pass)" if p is outcome.last_pass else " (first fail)" if p is outcome.first_fail else ""
        lean = f" (leans {p.leaning})" if p.leaning != p.verdict else ""
        table.add_row(str(i), load_text(p.load, users), f"[{style}]{p.verdict}[/]{lean}{mark}", str(p.levels),
                      *[_cell(j) for j in p.judgements], p.saturated or "")
    return table


def answer_line(outcome: SearchOutcome, condition: str, users: bool, confidence: float) -> str:
    """The one-line answer, with how sure it is: confirmed at the confidence asked, or only by point values."""
    what = "max users" if users else "max rate"
    lp, ff = outcome.last_pass, outcome.first_fail
    if outcome.stop_reason == FAILS_AT_START and ff is not None:
        how = "fails" if ff.leaning == FAIL else "is undecided"
        return f"{what} meeting {condition}: none: it already {how} at the lowest load, {load_text(ff.load, users)}"
    if lp is None:
        return f"{what} meeting {condition}: unknown ({outcome.stop_reason})"
    value = f"{int(lp.load)}" if users else f"{lp.load:.3g} req/s"
    if lp.verdict == PASS:
        sure = f"{100 * confidence:g} % confident"
    else:
        open_ = ", ".join(j.condition for j in lp.judgements if j.verdict == UNDECIDED)
        confirmed = confirmed_max(outcome)
        sure = (f"not confirmed at {100 * confidence:g} %: {open_} undecided there, point values pass; "
                + (f"confirmed up to {confirmed:.3g}" if confirmed is not None else "no load confirmed"))
    if ff is not None:
        bracket = f"last pass {lp.load:.3g}, first fail {ff.load:.3g}" + (
            f" ({ff.verdict})" if ff.verdict != FAIL else "")
    else:
        bracket = f"last pass {lp.load:.3g}, no failing load found: {outcome.stop_reason}"
    return f"{what} meeting {condition}: {value} ({sure}; {bracket})"


def write_plot(outcome: SearchOutcome, path: Path, users: bool) -> Path | None:
    """Each condition's metric (point and confidence bounds) against load; the bracket shaded, thresholds dashed."""
    if not outcome.points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditions = [(j.condition, k) for k, j in enumerate(outcome.points[0].judgements)]
    fig, axes = plt.subplots(len(conditions), 1, figsize=(7, 2.6 * len(conditions) + 0.6), squeeze=False)
    for ax, (text, k) in zip(axes[:, 0], conditions, strict=True):
        for p in sorted(outcome.points, key=lambda s: s.load):
            j = p.judgements[k]
            if j.value is None:
                continue
            lo = j.value - j.lower if j.lower is not None else 0
            hi = j.upper - j.value if j.upper is not None else 0
            ax.errorbar([p.load], [j.value], yerr=[[max(lo, 0)], [max(hi, 0)]], fmt="o", capsize=3,
                        color={"pass": "tab:green", "fail": "tab:red"}.get(j.verdict, "tab:orange"))
        threshold = _threshold(text)
        if threshold is not None:
            ax.axhline(threshold, linestyle="--", color="grey", linewidth=1)
            values = [p.judgements[k].value for p in outcome.points if p.judgements[k].value]
            if threshold > 0 and values and max(values) > 10 * threshold:  # a saturated step: keep the rest legible
                ax.set_yscale("log")
        if outcome.last_pass is not None and outcome.first_fail is not None:
            ax.axvspan(outcome.last_pass.load, outcome.first_fail.load, color="tab:blue", alpha=0.12,
                       label="bracket")
            ax.legend(loc="upper left", fontsize=8)
        ax.set_title(f"{text}  (green pass, red fail, orange undecided; bars: confidence bounds)", fontsize=9)
        ax.grid(alpha=0.3)
    loads = [p.load for p in outcome.points]
    if min(loads) > 0 and max(loads) / min(loads) > 20:  # a bracket that grew far: keep the low loads apart
        for ax in axes[:, 0]:
            ax.set_xscale("log")
    axes[-1, 0].set_xlabel("users" if users else "rate (req/s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _threshold(text: str) -> float | None:
    from loadgen.core.slo import parse_fail_on

    try:
        return parse_fail_on(text)[0].value
    except Exception:  # a plot without its threshold line is still a plot
        return None
