"""What a Locust level adds to the shared pipeline (``loadgen.level``): a closed loop's think time in the summary's
``LevelContext``, and the summary's client block from the nodes' last messages. The plan (schedule and request
source) is ``loadgen.level.plan.plan_level``'s, the same as ``loadgen run``'s."""

from __future__ import annotations

from typing import Any

from loadgen.locust.args import LocustLevel


def locust_context(level: LocustLevel, plan: Any, url: str, name: str) -> Any:
    """``loadgen.level.plan.level_context``, plus a closed loop's think time in its arrival (the users' waiting
    is part of how requests arrive)."""
    from loadgen.level.plan import level_context

    ctx = level_context(level.scenario, plan, url, name)
    if level.mode == "closed":
        ctx.arrival = {**ctx.arrival, "think_time_s": level.think_time_s, "think_dist": level.think_dist}
    return ctx


def client_block(dones: list[dict], n: int) -> dict[str, Any]:
    """The summary's client block: per-node CPU and hub lag, and whether any node was the bottleneck."""
    reasons = []
    for d in dones:
        cpu, wall = d["cpu_seconds"], d["wall_seconds"]
        if d["hub_lag_p99_ms"] > 20:
            reasons.append(f"worker {d['stripe']}: gevent hub lag p99 {d['hub_lag_p99_ms']:.1f} ms")
        if wall and cpu / wall > 0.9:
            reasons.append(f"worker {d['stripe']}: CPU {100 * cpu / wall:.0f} % of one core")
    issued = sum(d["outcome"]["issued"] for d in dones)
    return {"front_end": "locust", "workers": n, "workers_reported": len(dones), "issued": issued,
            "dropped": sum(d["outcome"]["dropped"] for d in dones), "late": sum(d["outcome"]["late"] for d in dones),
            "cancelled_at_end": sum(d["outcome"]["cancelled"] for d in dones),
            "interrupted": any(d["outcome"]["interrupted"] for d in dones),
            "nodes": [{k: d[k] for k in ("stripe", "written", "cpu_seconds", "wall_seconds", "hub_lag_p99_ms",
                                         "t0_monotonic_ns")}
                      for d in sorted(dones, key=lambda d: d["stripe"])],
            "saturated": bool(reasons), "saturation_reason": "; ".join(reasons) or None}
