"""Across load levels and configurations (METRICS.md, "Across load levels"; STUDY.md): pure numpy over flat rows.

A *row* is one finished sweep point as a flat dict (``loadgen.sweep.runner.point_row``): ``throughput`` (total
tokens/s, the study's), latency statistics in ms named like ``--fail-on`` (``itl_mean``, ``e2e_p99``...),
``j_per_token``, ``max_batch``, ``replicas``, ``batch`` (mean running requests per replica), ``valid``,
``preemptions``... Rows of an emulated server at speed s are already rescaled to real time (throughput / s,
times x s, J/token x s), so configurations measured at different speeds compare directly.

Definitions (each a function below, each tested on hand-built data):

* Pareto frontier: the points no other point beats on both axes (higher or equal throughput AND lower or equal
  cost, one strictly). Equal points are all on it: neither dominates the other.
* Knee: the largest throughput whose latency stays within ``factor`` x the low-load latency (the latency of the
  lowest-throughput point of the curve).
* Saturation point: the first point (in load order) after which no later point adds more than ``gain`` of its
  throughput; none while the curve still climbs at its last point.
* eta(B) = T(B) / (B x T(1)); the advised batch is the largest B with eta(B) >= threshold and latency within L x
  the latency at ``ref_batch`` (Recasens et al. 2025).
* Advised configuration: the highest-throughput valid point meeting every SLO bound, ties to the lower latency.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from loadgen.errors import UsageError

LATENCY_NAMES = ("ttft", "tpot", "itl", "e2e")
STATS = ("mean", "p50", "p90", "p95", "p99", "p99_9", "min", "max")
ROW_BOUNDS = {"throughput": "tok/s", "output_throughput": "tok/s", "request_throughput": "req/s",
              "j_per_token": "J", "mean_power_w": "W", "error_rate": "fraction", "batch": "number"}
_BOUND_RE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_]*)\s*(<=|>=|<|>)\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*"
                       r"(ms|s|%)?\s*$")


def metric_key(name: str) -> str:
    """Validate a latency column name (``itl_mean``, ``e2e_p99``, ``ttft_p50``...): the frontier's cost axis."""
    base, _, stat = name.partition("_")
    if base not in LATENCY_NAMES or stat not in STATS:
        raise UsageError(f"latency metric {name!r}: use <ttft|tpot|itl|e2e>_<{'|'.join(STATS)}>, e.g. e2e_p99 "
                         "or itl_mean")
    return name


def _arr(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


# ------------------------------------------------------------------------------------------- frontier
def pareto_mask(throughput: Sequence[float | None], cost: Sequence[float | None]) -> np.ndarray:
    """True for the points on the frontier of (max throughput, min cost). Missing values are never on it."""
    t, c = _arr(throughput), _arr(cost)
    if t.shape != c.shape:
        raise UsageError(f"pareto_mask: {len(t)} throughputs but {len(c)} costs")
    ok = np.isfinite(t) & np.isfinite(c)
    mask = np.zeros(len(t), dtype=bool)
    idx = np.flatnonzero(ok)
    for i in idx:
        other = idx[idx != i]
        dominated = (t[other] >= t[i]) & (c[other] <= c[i]) & ((t[other] > t[i]) | (c[other] < c[i]))
        mask[i] = not dominated.any()
    return mask


def frontier_indices(throughput: Sequence[float | None], cost: Sequence[float | None]) -> list[int]:
    """The frontier's points ordered by cost (then throughput): the line to draw."""
    mask = pareto_mask(throughput, cost)
    t, c = _arr(throughput), _arr(cost)
    return sorted(np.flatnonzero(mask).tolist(), key=lambda i: (c[i], t[i]))


# ------------------------------------------------------------------------------------------- knee, saturation
def knee_index(throughput: Sequence[float | None], latency: Sequence[float | None], factor: float = 2.0
               ) -> int | None:
    """Index of the knee (see module docstring); None when no point has both values."""
    if not factor >= 1:
        raise UsageError(f"knee factor {factor!r}: use 1 or more (latency allowed = factor x low-load latency)")
    t, y = _arr(throughput), _arr(latency)
    ok = np.flatnonzero(np.isfinite(t) & np.isfinite(y))
    if ok.size == 0:
        return None
    low = ok[np.lexsort((y[ok], t[ok]))[0]]  # lowest throughput (ties: its lowest latency)
    allowed = ok[y[ok] <= factor * y[low] * (1 + 1e-12)]
    best = allowed[np.lexsort((y[allowed], -t[allowed]))[0]]
    return int(best)


def saturation_index(load: Sequence[float], throughput: Sequence[float | None], gain: float = 0.05
                     ) -> int | None:
    """Index (into the given arrays) of the saturation point; None with < 2 points or a still-climbing curve."""
    x, t = _arr(load), _arr(throughput)
    ok = np.flatnonzero(np.isfinite(x) & np.isfinite(t))
    if ok.size < 2:
        return None
    order = ok[np.argsort(x[ok], kind="stable")]
    ts = t[order]
    for k in range(len(order) - 1):
        if np.max(ts[k + 1:]) < (1 + gain) * ts[k]:
            return int(order[k])
    return None


# ------------------------------------------------------------------------------------------- batch advice
def efficiency(batches: Sequence[float], throughput: Sequence[float | None]) -> np.ndarray | None:
    """eta(B) = T(B) / (B x T(1)) per point; None without a batch-1 point to normalise by."""
    b, t = _arr(batches), _arr(throughput)
    ones = np.flatnonzero((b == 1) & np.isfinite(t))
    if ones.size == 0 or not t[ones[0]] > 0:
        return None
    return t / (b * t[ones[0]])


@dataclass(frozen=True)
class BatchAdvice:
    eta_min: float
    latency_factor: float
    ref_batch: float  # the batch whose latency sets the bound (the nearest measured to the asked ref_batch)
    latency_bound: float
    batch: float | None  # the advised batch, None when no batch passes
    index: int | None


def advise_batch(batches: Sequence[float], throughput: Sequence[float | None], latency: Sequence[float | None],
                 eta_min: float, latency_factor: float, ref_batch: float = 32) -> BatchAdvice | None:
    """The largest batch with eta >= ``eta_min`` and latency <= ``latency_factor`` x latency(ref batch)."""
    eta = efficiency(batches, throughput)
    if eta is None:
        return None
    b, y = _arr(batches), _arr(latency)
    ok = np.flatnonzero(np.isfinite(y) & np.isfinite(eta) & (b > 0))
    if ok.size == 0:
        return None
    ref = ok[np.argmin(np.abs(np.log2(b[ok]) - math.log2(ref_batch)))]
    bound = latency_factor * y[ref]
    passing = ok[(eta[ok] >= eta_min) & (y[ok] <= bound)]
    if passing.size == 0:
        return BatchAdvice(eta_min, latency_factor, float(b[ref]), float(bound), None, None)
    best = passing[np.argmax(b[passing])]
    return BatchAdvice(eta_min, latency_factor, float(b[ref]), float(bound), float(b[best]), int(best))


# ------------------------------------------------------------------------------------------- SLO advice
@dataclass(frozen=True)
class Bound:
    name: str
    op: str
    value: float
    text: str

    def holds(self, v: Any) -> bool:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return False
        return {"<": v < self.value, "<=": v <= self.value, ">": v > self.value, ">=": v >= self.value}[self.op]


def parse_slo_bounds(text: str, flag: str = "--slo") -> list[Bound]:
    """``"itl_mean<50ms,e2e_p99<=30s,j_per_token<0.05"``: latencies in ms (units ms or s), others as numbers."""
    out = []
    parts = [p for p in (x.strip() for x in str(text).split(",")) if p]
    if not parts:
        raise UsageError(f"{flag}: empty; give bounds like itl_mean<50ms,e2e_p99<30s")
    for part in parts:
        m = _BOUND_RE.match(part)
        if not m:
            raise UsageError(f"{flag}: {part!r} is not NAME<VALUE (e.g. itl_mean<50ms, throughput>5000)")
        name, op, num, unit = m.group(1).lower(), m.group(2), float(m.group(3)), m.group(4)
        if name not in ROW_BOUNDS:
            metric_key(name)  # raises with the accepted forms
            if unit not in ("ms", "s"):
                raise UsageError(f"{flag}: {part!r}: give the latency with a unit, ms or s (e.g. 50ms)")
            value = num * (1000.0 if unit == "s" else 1.0)
        else:
            if unit in ("ms", "s"):
                raise UsageError(f"{flag}: {part!r}: {name} is not a duration; drop the unit")
            value = num / 100.0 if unit == "%" else num
        out.append(Bound(name, op, value, part))
    return out


def advise_config(rows: Sequence[dict[str, Any]], bounds: Sequence[Bound], latency_metric: str
                  ) -> tuple[int | None, list[str]]:
    """(index of the advised row, one reason line per valid row that missed a bound)."""
    best, misses = None, []
    for i, r in enumerate(rows):
        if not r.get("valid") or r.get("throughput") is None:
            continue
        failed = [b.text for b in bounds if not b.holds(r.get(b.name))]
        if failed:
            misses.append(f"{r.get('point')}: misses {', '.join(failed)}")
            continue
        key = (r["throughput"], -(r.get(latency_metric) or math.inf))
        if best is None or key > best[0]:
            best = (key, i)
    return (best[1] if best else None), misses


# ------------------------------------------------------------------------------------------- replication
def replication_table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The baseline (the one-replica configuration at its largest max batch) and every multi-replica row with
    its ``gain`` over it, per kind of load, as in the study's replication table; [] with one replica count."""
    if len({r.get("replicas") for r in rows if r.get("replicas")}) < 2:
        return []
    out = []
    by_load: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_load.setdefault(workload_key(r), []).append(r)
    for group in by_load.values():
        singles = [r for r in group if r.get("replicas") == 1 and r.get("throughput") is not None]
        if not singles:
            continue
        base = max(singles, key=lambda r: (r.get("max_batch") or 0, r["throughput"]))
        for r in sorted(group, key=lambda r: (r.get("replicas") or 0, r.get("mps") == "off", r.get("max_batch") or 0)):
            if r.get("throughput") is None or (r.get("replicas") == 1 and r is not base):
                continue
            out.append({**r, "baseline": base.get("point"), "gain": r["throughput"] / base["throughput"] - 1})
    return out


def workload_key(r: dict[str, Any]) -> str:
    """Rows with the same key measured the same kind of load: every offline point (all requests at t=0, whatever
    their number: the study's benchmark, sized per batch to fit the time), or one rate / concurrency level."""
    return "offline" if r.get("load_kind") == "offline" else str(r.get("load"))


def batch_series(rows: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Groups of rows that differ only in max batch (same model, GPU, replicas, load): the batch sweeps. Offline
    and fixed-rate loads only (the study's): at a fixed concurrency the batch is capped by the client."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("max_batch") is None or r.get("load_kind") == "concurrency":
            continue
        key = (r.get("profile"), r.get("gpu"), r.get("replicas"), r.get("mps"), workload_key(r), r.get("backend"))
        groups.setdefault(key, []).append(r)
    return [sorted(g, key=lambda r: r["max_batch"]) for g in groups.values()
            if len({r["max_batch"] for r in g}) >= 2]


# ------------------------------------------------------------------------------------------- everything
def usable_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows that go into curves: finished, valid, no KV-cache preemption (the study leaves those out)."""
    return [r for r in rows if r.get("status", "done") == "done" and r.get("valid") and not r.get("preempted")
            and r.get("throughput") is not None]


def _curves(rows: list[dict[str, Any]], latency_metric: str, knee_factor: float, gain: float
            ) -> list[dict[str, Any]]:
    out = []
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r.get("config"), r.get("load_kind")), []).append(r)
    series = [(f"{c} ({k} levels)", "load", sorted(g, key=lambda r: r["load_value"]))
              for (c, k), g in groups.items() if len(g) >= 2]
    for g in batch_series(rows):
        r0 = g[0]
        name = f"{r0.get('profile')} on {r0.get('gpu')}, {r0.get('replicas')} replica(s), {workload_key(r0)}"
        series.append((name, "max_batch", g))
    for name, axis, g in series:
        x = [r["load_value"] if axis == "load" else r["max_batch"] for r in g]
        t = [r["throughput"] for r in g]
        y = [r.get(latency_metric) for r in g]
        k = knee_index(t, y, knee_factor)
        s = saturation_index(x, t, gain)
        out.append({"curve": name, "axis": axis, "points": [r["point"] for r in g],
                    "knee": None if k is None else g[k]["point"],
                    "saturation": None if s is None else g[s]["point"]})
    return out


def analyze(rows: Sequence[dict[str, Any]], latency_metric: str = "e2e_p99", knee_factor: float = 2.0,
            saturation_gain: float = 0.05, slo: str | None = None, eta: Sequence[float] = (0.1, 0.2, 0.3),
            latency_factor: Sequence[float] = (3.0, 4.0, 5.0), ref_batch: int = 32) -> dict[str, Any]:
    """Frontiers, knees, saturation points, batch advice, replication gains and the advised configuration."""
    metric_key(latency_metric)
    use = usable_rows(rows)
    t = [r["throughput"] for r in use]
    out: dict[str, Any] = {"latency_metric": latency_metric, "knee_factor": knee_factor,
                           "saturation_gain": saturation_gain, "usable": [r["point"] for r in use],
                           "left_out": [{"point": r.get("point"), "why": _why_out(r)} for r in rows
                                        if r not in use]}
    out["frontier_latency"] = [use[i]["point"] for i in frontier_indices(t, [r.get(latency_metric) for r in use])]
    energy = [r.get("j_per_token") for r in use]
    out["frontier_energy"] = ([use[i]["point"] for i in frontier_indices(t, energy)]
                              if any(e is not None for e in energy) else [])
    out["curves"] = _curves(use, latency_metric, knee_factor, saturation_gain)
    advice = []
    for g in batch_series(use):
        b = [r["max_batch"] for r in g]
        tp = [r["throughput"] for r in g]
        lat = [r.get(latency_metric) for r in g]
        e = efficiency(b, tp)
        if e is None:
            continue
        table = []
        for em in eta:
            for lf in latency_factor:
                a = advise_batch(b, tp, lat, em, lf, ref_batch)
                if a is not None:
                    table.append({"eta_min": em, "latency_factor": lf, "ref_batch": a.ref_batch,
                                  "latency_bound": a.latency_bound, "batch": a.batch})
        advice.append({"series": f"{g[0].get('profile')} on {g[0].get('gpu')}, {g[0].get('replicas')} replica(s)",
                       "load": workload_key(g[0]), "eta": {r["point"]: float(x) for r, x in zip(g, e, strict=True)},
                       "advice": table})
    out["batch_advice"] = advice
    out["replication"] = [{"point": r["point"], "baseline": r["baseline"], "gain": r["gain"]}
                          for r in replication_table(use)]
    out["advised"] = None
    if slo:
        idx, misses = advise_config(use, parse_slo_bounds(slo), latency_metric)
        out["advised"] = {"slo": slo, "point": None if idx is None else use[idx]["point"], "misses": misses}
    return out


def _why_out(r: dict[str, Any]) -> str:
    if r.get("status", "done") != "done":
        return str(r.get("status")) + (f": {r['reason']}" if r.get("reason") else "")
    if r.get("preempted"):
        return f"KV-cache preemptions ({r.get('preemptions')})"
    if not r.get("valid"):
        return "invalid: " + "; ".join(r.get("warnings") or [])
    return "no throughput"
