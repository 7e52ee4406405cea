"""What a Locust level is made of, built the way ``loadgen run`` builds it: the workload (request source and
schedule), the ``LevelContext`` of its summary, and the summary's client block from the nodes' last messages."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from loadgen.errors import UsageError
from loadgen.locust.args import Scenario


def build_workload(scenario: Scenario) -> dict[str, Any]:
    """The request source and (open loop) the whole schedule, built exactly as ``loadgen run`` builds them."""
    from loadgen.core.arrivals import build_offsets
    from loadgen.runner.run import build_arrival, build_source
    from loadgen.traces.replay import workload_for

    s = scenario.settings
    if scenario.mode == "closed":
        return {"source": build_source(s), "offsets": None, "replay": None}
    replay = workload_for(s)
    if replay is not None:
        return {"source": replay.source, "offsets": replay.offsets, "replay": replay}
    offsets = build_offsets(build_arrival(s))
    if len(offsets) == 0:
        raise UsageError("the schedule is empty: --duration is too short for --rate (no arrival fell inside it)")
    return {"source": build_source(s), "offsets": offsets, "replay": None}


def level_context(scenario: Scenario, url: str, workload: dict[str, Any], name: str) -> Any:
    from loadgen.core.prompts import PromptBuilder
    from loadgen.core.slo import parse_slo
    from loadgen.core.summary import LevelContext
    from loadgen.runner.run import build_arrival

    s = scenario.settings
    replay = workload["replay"]
    arrival = replay.arrival if replay is not None else asdict(build_arrival(s))
    if scenario.mode == "closed":
        arrival = {**arrival, "think_time_s": scenario.think_time_s, "think_dist": scenario.think_dist}
    ctx = LevelContext(name=name, backend=s.backend, url=url, model=s.model,
                       target_rate=replay.target_rate if replay is not None else s.rate, concurrency=s.concurrency,
                       arrival=arrival, warmup_s=s.warmup_s, warmup_requests=s.warmup_requests,
                       cooldown_s=s.cooldown_s, slo=parse_slo(s.slo_text) if s.slo_text else {},
                       prompt_method=PromptBuilder(tokenizer=s.tokenizer, seed=s.seed).method, on_late=s.on_late,
                       late_threshold_ms=s.late_tolerance_s * 1e3)
    if replay is not None:
        ctx.open_loop, ctx.extra = True, dict(replay.extra)
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
