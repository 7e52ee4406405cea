"""Per-window energy from power samples: pure arithmetic over ``power.jsonl``, shared by ``loadgen run`` and
``loadgen power --analyze`` so both give the same figures.

Why counters first: a power gauge sampled at 10 Hz misses whatever happens between samples, and NVML's power
reading is itself an average on recent GPUs; an energy counter (NVML total energy, Triton ``nv_energy_consumption``,
the emulator's joules counter) has integrated every microsecond. So energy over a window is the counter delta
where a counter exists, else the trapezoid integral of the sampled power; where both exist both are reported with
their difference, which says how much the integral alone would have been off.

Counters are read at their *change points* (the first sample showing a new value): a source that republishes its
counter every 2 s (Triton's DCGM poll) keeps showing the old value meanwhile, and the first sight of a new value
is within one sampling interval of when it was taken. A counter that goes down was either wrapped (it was near its
modulus) or reset (driver reload, server restart); a reset interval is bridged with the power integral.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from loadgen.errors import UsageError
from loadgen.power.sources import throttle_names

STATUS_OK, STATUS_PARTIAL, STATUS_MISSING = "ok", "partial", "missing"

# Every key of summary["energy"] (docs/SUMMARY_SCHEMA.md documents each); missing figures are null, never 0.
ENERGY_KEYS = (
    "status", "note", "source", "gpus", "method", "samples", "sample_rate_hz", "energy_j", "counter_energy_j",
    "integral_energy_j", "counter_minus_integral_j", "counter_minus_integral_share", "mean_power_w",
    "peak_power_w", "idle_power_w", "idle_window_s", "energy_above_idle_j", "mean_power_above_idle_w",
    "joules_per_request", "joules_per_output_token", "joules_per_total_token", "output_tokens_per_joule",
    "joules_above_idle_per_output_token", "counter_resets", "counter_extrapolated_s", "throttle_reasons",
    "per_gpu",
)
GPU_KEYS = ("energy_j", "counter_energy_j", "integral_energy_j", "mean_power_w", "peak_power_w", "idle_power_w",
            "gpu_util_mean", "temp_c_max", "counter_resets")


@dataclass
class Series:
    """One GPU's samples, in time order: absolute perf_counter_ns and NaN where a field was not read."""

    gpu: str
    t_ns: np.ndarray
    power_w: np.ndarray
    energy_j: np.ndarray
    gpu_util: np.ndarray
    temp_c: np.ndarray
    throttle: np.ndarray  # int64 masks, 0 when not read


@dataclass
class PowerData:
    """What the side-car wrote: its start line, one ``Series`` per GPU, its error lines and its stop line."""

    start: dict[str, Any] | None = None
    stop: dict[str, Any] | None = None
    fatal: str | None = None
    errors: list[str] = field(default_factory=list)
    series: dict[str, Series] = field(default_factory=dict)
    skipped_lines: int = 0

    @property
    def source(self) -> str | None:
        return (self.start or {}).get("source")

    def gpu_meta(self, gpu: str) -> dict[str, Any]:
        for g in (self.start or {}).get("gpus", []):
            if str(g.get("id")) == gpu:
                return g
        return {}


def _f(v: Any) -> float:
    return math.nan if v is None else float(v)


def parse_power_lines(lines: list[bytes], source: str = "power.jsonl") -> PowerData:
    """Parse the side-car's JSON lines. A cut last line (the side-car killed mid-write) is skipped and counted."""
    data = PowerData()
    cols: dict[str, list[tuple]] = {}
    lines = [ln for ln in lines if ln.strip()]
    for n, raw in enumerate(lines, 1):
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as err:
            if n == len(lines):
                data.skipped_lines += 1
                continue
            raise UsageError(f"{source}:{n}: not a power sample ({err}); the file is corrupt") from err
        kind = obj.get("type")
        if kind == "sample":
            cols.setdefault(str(obj["gpu"]), []).append(
                (int(obj["t_ns"]), _f(obj.get("power_w")), _f(obj.get("energy_j")), _f(obj.get("gpu_util")),
                 _f(obj.get("temp_c")), int(obj.get("throttle_reasons") or 0)))
        elif kind == "start":
            data.start = obj
        elif kind == "stop":
            data.stop = obj
        elif kind == "error":
            if obj.get("fatal"):
                data.fatal = str(obj.get("message"))
            else:
                data.errors.append(str(obj.get("message")))
    for gpu, rows in cols.items():
        rows.sort(key=lambda r: r[0])
        arr = list(zip(*rows, strict=True))
        data.series[gpu] = Series(gpu, np.asarray(arr[0], np.int64), np.asarray(arr[1]), np.asarray(arr[2]),
                                  np.asarray(arr[3]), np.asarray(arr[4]), np.asarray(arr[5], np.int64))
    return data


def load_power_file(path: str | Path) -> PowerData:
    """``power.jsonl`` of a run directory (see ``parse_power_lines``)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise UsageError(f"{path}: cannot read power samples ({err.strerror})") from err
    return parse_power_lines(raw.splitlines(), str(path))


# ------------------------------------------------------------------------------------------------ arithmetic
def integrate_power(t_ns: np.ndarray, watts: np.ndarray, a: int, b: int) -> float | None:
    """Trapezoid integral (J) of sampled power over [a, b], edges interpolated; None without samples covering
    any of it."""
    ok = ~np.isnan(watts)
    t, w = t_ns[ok], watts[ok]
    if t.size == 0 or b <= a:
        return None
    lo, hi = max(a, int(t[0])), min(b, int(t[-1]))
    if t.size == 1 or hi <= lo:
        return None
    inner = (t > lo) & (t < hi)
    tt = np.concatenate(([lo], t[inner], [hi])).astype(np.float64)
    ww = np.concatenate(([np.interp(lo, t, w)], w[inner], [np.interp(hi, t, w)]))
    return float(np.sum((ww[1:] + ww[:-1]) * np.diff(tt)) / 2e9)


@dataclass
class Counter:
    """A counter made continuous: change-point times and cumulative joules since the first reading."""

    t_ns: np.ndarray
    cum_j: np.ndarray
    resets: int


def unwrap_counter(s: Series, modulus_j: float | None = None, lag_ns: int = 0) -> Counter | None:
    """Change points of the energy counter with wraps and resets taken out; None without two readings.

    ``lag_ns``: how long after a counter update its first sight comes on average (half the shorter of the
    sampling interval and the source's update period); the change points are moved back by it."""
    ok = ~np.isnan(s.energy_j)
    t, e = s.t_ns[ok], s.energy_j[ok]
    if t.size < 2:
        return None
    keep = np.concatenate(([True], np.diff(e) != 0))
    t, e = t[keep] - lag_ns, e[keep]
    cum = np.zeros(e.size)
    resets = 0
    for i in range(1, e.size):
        d = e[i] - e[i - 1]
        if d < 0:
            if modulus_j and e[i - 1] - e[i] > modulus_j / 2:
                d = e[i] + modulus_j - e[i - 1]  # wrapped past its maximum
            else:
                resets += 1  # restarted from 0 somewhere in the interval: bridge it with the power gauge
                bridged = integrate_power(s.t_ns, s.power_w, int(t[i - 1]), int(t[i]))
                d = bridged if bridged is not None else e[i]
        cum[i] = cum[i - 1] + d
    return Counter(t, cum, resets)


def counter_at(c: Counter, s: Series, x: int) -> tuple[float, float]:
    """(cumulative joules at ``x``, seconds extrapolated): interpolated between change points; beyond them, the
    power gauge (or the nearest segment's slope) carries it to ``x``."""
    t = c.t_ns
    if t[0] <= x <= t[-1]:
        return float(np.interp(x, t.astype(np.float64), c.cum_j)), 0.0
    if x > t[-1]:
        extra = integrate_power(s.t_ns, s.power_w, int(t[-1]), x)
        if extra is None:
            slope = (c.cum_j[-1] - c.cum_j[-2]) / ((t[-1] - t[-2]) / 1e9) if t.size > 1 and t[-1] > t[-2] else 0.0
            extra = slope * (x - t[-1]) / 1e9
        return float(c.cum_j[-1] + extra), (x - int(t[-1])) / 1e9
    before = integrate_power(s.t_ns, s.power_w, x, int(t[0]))
    if before is None:
        slope = (c.cum_j[1] - c.cum_j[0]) / ((t[1] - t[0]) / 1e9) if t.size > 1 and t[1] > t[0] else 0.0
        before = slope * (int(t[0]) - x) / 1e9
    return float(c.cum_j[0] - before), (int(t[0]) - x) / 1e9


def _mean_in(values: np.ndarray, t: np.ndarray, a: int, b: int) -> float | None:
    m = (t >= a) & (t <= b) & ~np.isnan(values)
    return float(values[m].mean()) if m.any() else None


def _max_in(values: np.ndarray, t: np.ndarray, a: int, b: int) -> float | None:
    m = (t >= a) & (t <= b) & ~np.isnan(values)
    return float(values[m].max()) if m.any() else None


def gpu_energy(s: Series, a: int, b: int, idle: tuple[int, int] | None, modulus_j: float | None,
               lag_ns: int = 0) -> dict[str, Any]:
    """One GPU over [a, b] (absolute ns): counter and integral energy, mean/peak/idle power."""
    out: dict[str, Any] = dict.fromkeys(GPU_KEYS)
    out["counter_extrapolated_s"] = 0.0
    integral = integrate_power(s.t_ns, s.power_w, a, b)
    c = unwrap_counter(s, modulus_j, lag_ns)
    counter = None
    if c is not None:
        e0, x0 = counter_at(c, s, a)
        e1, x1 = counter_at(c, s, b)
        counter = e1 - e0
        out["counter_extrapolated_s"] = round(x0 + x1, 6)
        out["counter_resets"] = c.resets
    out["counter_energy_j"] = counter
    out["integral_energy_j"] = integral
    energy = counter if counter is not None else integral
    out["energy_j"] = energy
    window_s = (b - a) / 1e9
    out["mean_power_w"] = energy / window_s if energy is not None and window_s > 0 else None
    out["peak_power_w"] = _max_in(s.power_w, s.t_ns, a, b)
    if idle is not None and idle[1] > idle[0]:
        span = (idle[1] - idle[0]) / 1e9
        idle_j = integrate_power(s.t_ns, s.power_w, *idle)
        if idle_j is None and c is not None:
            idle_j = counter_at(c, s, idle[1])[0] - counter_at(c, s, idle[0])[0]
        out["idle_power_w"] = idle_j / span if idle_j is not None else _mean_in(s.power_w, s.t_ns, *idle)
    out["gpu_util_mean"] = _mean_in(s.gpu_util, s.t_ns, a, b)
    out["temp_c_max"] = _max_in(s.temp_c, s.t_ns, a, b)
    return out


def _round(v: float | None, digits: int = 6) -> float | None:
    return None if v is None else float(f"{v:.{digits}g}")


def empty_energy(source: str | None, status: str, note: str | None) -> dict[str, Any]:
    """The energy object with every figure null: no source, or the source could not start or died."""
    out: dict[str, Any] = dict.fromkeys(ENERGY_KEYS)
    out.update(status=status, note=note, source=source, gpus=[], samples=0, per_gpu={}, throttle_reasons=[])
    return out


def level_energy(data: PowerData, a: int, b: int, idle: tuple[int, int] | None, completed_requests: int,
                 output_tokens: int, input_tokens: int) -> dict[str, Any]:
    """summary["energy"] for the window [a, b] (absolute perf_counter ns), ``idle`` measured before the load."""
    source = data.source
    if data.fatal:
        return empty_energy(source, STATUS_MISSING, f"the power source could not start: {data.fatal}")
    if not data.series:
        why = "the power side-car wrote no samples"
        if data.errors:
            why += f" (last error: {data.errors[-1]})"
        return empty_energy(source, STATUS_MISSING, why)
    if b <= a:
        return empty_energy(source, STATUS_MISSING, "the measurement window is empty")
    interval = float((data.start or {}).get("interval_s") or 0.1)
    lag_ns = int(min(interval, float((data.start or {}).get("update_s") or 0.0)) / 2 * 1e9)
    tol = int(max(2.5 * interval, 0.25) * 1e9)
    first = min(int(s.t_ns[0]) for s in data.series.values())
    last = max(int(s.t_ns[-1]) for s in data.series.values())
    if last < a or first > b:
        return empty_energy(source, STATUS_MISSING, "no power sample fell inside the measurement window")
    out = empty_energy(source, STATUS_OK, None)
    out["gpus"] = sorted(data.series)
    window_s = (b - a) / 1e9
    covered = first <= a + tol and last >= b - tol
    lo, hi = (a, b) if covered else (max(a, first), min(b, last))
    per = {g: gpu_energy(s, lo, hi, idle, data.gpu_meta(g).get("counter_modulus_j"), lag_ns)
           for g, s in sorted(data.series.items())}
    out["per_gpu"] = {g: {k: _round(v) if isinstance(v, float) else v for k, v in d.items() if k in GPU_KEYS}
                      for g, d in per.items()}
    ticks = np.unique(np.concatenate([s.t_ns[(s.t_ns >= lo) & (s.t_ns <= hi)] for s in data.series.values()]))
    out["samples"] = int(ticks.size)
    if ticks.size > 1:
        out["sample_rate_hz"] = _round((ticks.size - 1) / ((ticks[-1] - ticks[0]) / 1e9), 4)
    total_power = np.zeros(ticks.size)
    for s in data.series.values():
        ok = ~np.isnan(s.power_w)
        if ok.sum():
            total_power += np.interp(ticks, s.t_ns[ok], s.power_w[ok])
    out["peak_power_w"] = _round(float(total_power.max())) if ticks.size else None
    masks = np.concatenate([s.throttle[(s.t_ns >= lo) & (s.t_ns <= hi)] for s in data.series.values()])
    out["throttle_reasons"] = throttle_names(int(np.bitwise_or.reduce(masks))) if masks.size else []

    def total(key: str) -> float | None:
        vals = [d[key] for d in per.values()]
        return None if any(v is None for v in vals) else float(sum(vals))

    counter, integral = total("counter_energy_j"), total("integral_energy_j")
    idle_w = total("idle_power_w")
    out["idle_power_w"] = _round(idle_w)
    out["idle_window_s"] = _round((idle[1] - idle[0]) / 1e9) if idle else None
    out["counter_resets"] = sum(d["counter_resets"] or 0 for d in per.values())
    if not covered:
        span = (hi - lo) / 1e9
        out["status"] = STATUS_PARTIAL
        out["note"] = (f"power samples cover {span:.3g} s of the {window_s:.3g} s window (the side-car started "
                       "late or stopped early): mean and peak power are of the covered part, energy not computed")
        e = counter if counter is not None else integral
        out["mean_power_w"] = _round(e / span) if e is not None and span > 0 else None
        return out
    energy = counter if counter is not None else integral
    out["method"] = "counter" if counter is not None else ("integral" if integral is not None else None)
    out["counter_energy_j"], out["integral_energy_j"] = _round(counter), _round(integral)
    out["counter_extrapolated_s"] = _round(max(d["counter_extrapolated_s"] for d in per.values()))
    if counter is not None and integral is not None:
        out["counter_minus_integral_j"] = _round(counter - integral)
        out["counter_minus_integral_share"] = _round((counter - integral) / counter) if counter else None
    if energy is None:
        out["status"] = STATUS_MISSING
        out["note"] = "the samples carry neither power nor an energy counter"
        return out
    out["energy_j"] = _round(energy)
    out["mean_power_w"] = _round(energy / window_s)
    if idle_w is not None:
        above = energy - idle_w * window_s
        out["energy_above_idle_j"] = _round(above)
        out["mean_power_above_idle_w"] = _round(above / window_s)
        if output_tokens:
            out["joules_above_idle_per_output_token"] = _round(above / output_tokens)
    if completed_requests:
        out["joules_per_request"] = _round(energy / completed_requests)
    if output_tokens:
        out["joules_per_output_token"] = _round(energy / output_tokens)
        out["output_tokens_per_joule"] = _round(output_tokens / energy) if energy > 0 else None
    if output_tokens + input_tokens:
        out["joules_per_total_token"] = _round(energy / (output_tokens + input_tokens))
    if out["counter_extrapolated_s"] and out["counter_extrapolated_s"] > 2 * interval + 0.5:
        out["note"] = (f"the energy counter was extrapolated over {out['counter_extrapolated_s']:g} s at the "
                       "window edges (it updates slowly): the counter figure is less exact")
    return out


def t0_abs_ns(summary: dict[str, Any]) -> int | None:
    """Absolute perf_counter ns of the run's t0, from the summary's client block (anchor + t0 offset)."""
    client = summary.get("client") or {}
    anchor = client.get("anchor") or {}
    if "monotonic_ns" not in anchor or client.get("t0_offset_ns") is None:
        return None
    return int(anchor["monotonic_ns"]) + int(client["t0_offset_ns"])


def energy_for_summary(data: PowerData, summary: dict[str, Any], idle: tuple[int, int] | None) -> dict[str, Any]:
    """``level_energy`` over the summary's measurement window, with its token and request counts."""
    t0 = t0_abs_ns(summary)
    if t0 is None or summary.get("window_s") is None:
        return empty_energy(data.source, STATUS_MISSING, "the run has no clock anchor or no measurement window")
    a = t0 + int(round(summary["window_start_s"] * 1e9))
    b = t0 + int(round(summary["window_end_s"] * 1e9))
    return level_energy(data, a, b, idle, summary.get("completed_requests") or 0,
                        summary.get("output_tokens_total") or 0, summary.get("input_tokens_total") or 0)


# The energy figures a sweep's results table shows beside throughput and latency (one row per level).
SWEEP_COLUMNS = ("mean_power_w", "peak_power_w", "idle_power_w", "energy_j", "joules_per_request",
                 "joules_per_output_token", "joules_per_total_token", "output_tokens_per_joule")


def sweep_columns(summary: dict[str, Any]) -> dict[str, Any]:
    """``energy_status`` plus ``SWEEP_COLUMNS`` of a level's summary, null where not measured (no ``--power``,
    source missing, partial window)."""
    e = summary.get("energy") if isinstance(summary.get("energy"), dict) else {}
    return {"energy_status": e.get("status") if e else None, **{k: e.get(k) for k in SWEEP_COLUMNS}}
