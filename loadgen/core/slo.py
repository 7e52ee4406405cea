"""Service-level objectives (``--slo``), goodput, and pass/fail thresholds (``--fail-on``).

Goodput decision per completed request (latencies from the *issued* time by default; the summary also gives goodput
with TTFT and E2E from the *scheduled* time): every threshold given must hold. A TTFT threshold fails when no token
arrived (the user saw nothing); TPOT and ITL thresholds hold when the metric is undefined (fewer than 2 tokens);
the ITL threshold must hold for every token of the request (its largest ITL), because a streaming user notices the
worst stall, not the average.

``--fail-on`` names come from the summary: any scalar in ``LEVEL_METRICS`` (e.g. ``goodput_rps``, ``error_rate``),
``error_rate_<kind>``, and ``<metric>_<stat>`` for each latency distribution (e.g. ``ttft_p99``, ``itl_mean``, in ms).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from loadgen.core.metrics import (
    LATENCY_METRICS,
    LEVEL_METRICS,
    OUTPUT_TOKENS,
    STAT_KEYS,
)
from loadgen.core.records import ERROR_KINDS
from loadgen.errors import UsageError

SLO_KEYS = ("ttft", "tpot", "itl", "e2e")
_TIME_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
_VALUE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zµ%]*)\s*$")


def parse_duration_s(text: str, flag: str, what: str) -> float:
    """'500ms' -> 0.5. A unit is required: a bare number is ambiguous between ms and s."""
    m = _VALUE_RE.match(text)
    if not m or m.group(2) not in _TIME_UNITS:
        raise UsageError(
            f"{flag}: {what} value {text.strip()!r} is not a duration; write a number with a unit "
            f"({', '.join(u for u in _TIME_UNITS if u != 'µs')}), e.g. 500ms"
        )
    return float(m.group(1)) * _TIME_UNITS[m.group(2)]


def parse_slo(text: str) -> dict[str, float]:
    """``"ttft=500ms,tpot=50ms,itl=80ms,e2e=10s"`` -> ``{"ttft": 0.5, ...}`` in seconds."""
    out: dict[str, float] = {}
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise UsageError("--slo: empty; give thresholds like ttft=500ms,tpot=50ms (keys: ttft, tpot, itl, e2e)")
    for part in parts:
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in SLO_KEYS:
            raise UsageError(f"--slo: {part!r} is not KEY=DURATION with KEY one of {', '.join(SLO_KEYS)}")
        if key in out:
            raise UsageError(f"--slo: {key} is given twice; keep one threshold per key")
        seconds = parse_duration_s(value, "--slo", key)
        if seconds <= 0:
            raise UsageError(f"--slo: {key} threshold must be positive, got {value.strip()!r}")
        out[key] = seconds
    return out


def slo_mask(
    slo: dict[str, float],
    ttft_ns: np.ndarray,
    tpot_ns: np.ndarray,
    itl_max_ns: np.ndarray,
    e2e_ns: np.ndarray,
) -> np.ndarray:
    """Boolean mask of the requests meeting every threshold of ``slo`` (seconds); NaN means undefined."""
    ok = np.ones(len(e2e_ns), dtype=bool)
    with np.errstate(invalid="ignore"):
        if "ttft" in slo:
            ok &= ttft_ns <= slo["ttft"] * 1e9  # NaN (no token) compares False: fails
        if "tpot" in slo:
            ok &= np.isnan(tpot_ns) | (tpot_ns <= slo["tpot"] * 1e9)
        if "itl" in slo:
            ok &= np.isnan(itl_max_ns) | (itl_max_ns <= slo["itl"] * 1e9)
        if "e2e" in slo:
            ok &= e2e_ns <= slo["e2e"] * 1e9
    return ok


# -- --fail-on ---------------------------------------------------------------------------------------------------
_OPS = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}
_CHECK_RE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_.]*)\s*(<=|>=|<|>)\s*(.+?)\s*$")


def check_names() -> dict[str, str]:
    """Every name ``--fail-on`` accepts -> its kind ("ms" for latencies, else a LevelMetric kind)."""
    names = {m.key: m.kind for m in LEVEL_METRICS}
    for kind in (*ERROR_KINDS, "short_output"):
        names[f"error_rate_{kind}"] = "fraction"
    for metric in LATENCY_METRICS:
        for stat in STAT_KEYS:
            names[f"{metric.name}_{stat}"] = "ms"
    for stat in STAT_KEYS:
        names[f"{OUTPUT_TOKENS.name}_{stat}"] = "number"
    return names


@dataclass(frozen=True)
class Check:
    """One ``--fail-on`` condition; ``value`` is in the metric's own unit (ms, s, fraction, req/s...)."""

    name: str
    op: str
    value: float
    text: str  # as the user wrote it, for messages

    def holds(self, actual: float | None) -> bool:
        return actual is not None and bool(_OPS[self.op](actual, self.value))


def _check_value(name: str, kind: str, text: str, part: str) -> float:
    m = _VALUE_RE.match(text)
    if not m:
        raise UsageError(f"--fail-on: {part!r}: {text!r} is not a number (units: ms, s for latencies, % for rates)")
    number, unit = float(m.group(1)), m.group(2)
    if not unit:
        return number
    if unit == "%":
        if kind != "fraction":
            raise UsageError(f"--fail-on: {part!r}: % applies to shares and ratios, not to {name}")
        return number / 100.0
    if unit in _TIME_UNITS:
        if kind == "ms":
            return number * _TIME_UNITS[unit] * 1e3
        if kind == "seconds":
            return number * _TIME_UNITS[unit]
        raise UsageError(f"--fail-on: {part!r}: {name} is not a duration; drop the unit {unit!r}")
    raise UsageError(f"--fail-on: {part!r}: unknown unit {unit!r} (use ms, s or %)")


def parse_fail_on(text: str) -> list[Check]:
    """``"ttft_p99<500ms,error_rate<1%,goodput_rps>5"`` -> checks; unknown names list some valid ones."""
    names = check_names()
    checks: list[Check] = []
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise UsageError("--fail-on: empty; give conditions like ttft_p99<500ms,error_rate<1%")
    for part in parts:
        m = _CHECK_RE.match(part)
        if not m:
            raise UsageError(f"--fail-on: {part!r} is not NAME<VALUE (operators: <, <=, >, >=)")
        name, op, raw = m.group(1).lower(), m.group(2), m.group(3)
        if name not in names:
            examples = ", ".join(["ttft_p99", "itl_mean", "e2e_p90", "error_rate", "goodput_rps",
                                  "achieved_ratio", "total_token_throughput_tps"])
            raise UsageError(
                f"--fail-on: unknown metric {name!r}; valid names include {examples} "
                "(all names: docs/SUMMARY_SCHEMA.md)"
            )
        checks.append(Check(name, op, _check_value(name, names[name], raw, part), part))
    return checks


def format_value(name: str, value: float | None) -> str:
    """A ``--fail-on`` metric's value with its unit, as the condition was written: 8.75 ms, 12.5 %, 3.1 req/s."""
    if value is None:
        return "no value"
    kind = check_names().get(name, "number")
    if kind == "ms":
        return f"{value:.4g} ms"
    if kind == "fraction":
        return f"{100 * value:.3g} %"
    if kind == "seconds":
        return f"{value:.4g} s"
    units = {m.key: m.unit for m in LEVEL_METRICS}
    unit = units.get(name) or ("tokens" if name.startswith(OUTPUT_TOKENS.name) else "")
    return f"{value:.4g} {unit}".strip()


def flat_metrics(summary: dict) -> dict[str, float | None]:
    """Every ``--fail-on`` name with its value in ``summary`` (None when absent or undefined)."""
    out: dict[str, float | None] = {}
    for name in check_names():
        out[name] = None
    for m in LEVEL_METRICS:
        out[m.key] = summary.get(m.key)
    for kind, rate in (summary.get("error_rate_by_kind") or {}).items():
        out[f"error_rate_{kind}"] = rate
    for metric in (*LATENCY_METRICS, OUTPUT_TOKENS):
        stats = summary.get(metric.key) or {}
        for stat in STAT_KEYS:
            out[f"{metric.name}_{stat}"] = stats.get(stat)
    return out


def evaluate(checks: list[Check], summary: dict) -> list[tuple[Check, float | None, bool]]:
    """(check, actual value, passed) for each check; a metric with no value fails its check."""
    values = flat_metrics(summary)
    return [(c, values.get(c.name), c.holds(values.get(c.name))) for c in checks]
