"""What ``loadgen run`` needs for a trace replay or a synthetic arrival model: a schedule and a request source.

The runner's loop takes sorted int64 offsets and any object with ``spec(index)``; a replay is just another such
pair. ``Workload`` also carries what the report must state (``describe``) and the facts written to the level's
``extra`` (so ``summary.json`` and ``config.json`` say how the trace was replayed, and ``loadgen traces info RUN``
can compare the replay with its trace).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loadgen.errors import UsageError

NS = 1_000_000_000


@dataclass
class Workload:
    offsets: np.ndarray  # sorted int64 ns from t0
    source: Any  # .spec(index) -> RequestSpec
    target_rate: float  # mean rate of the schedule (requests / span), req/s
    arrival: dict[str, Any]  # LevelContext.arrival
    extra: dict[str, Any] = field(default_factory=dict)  # LevelContext.extra
    describe: list[str] = field(default_factory=list)  # lines for the console and report.txt


def trace_workload(s: Any) -> Workload:
    from loadgen.core.prompts import PromptBuilder
    from loadgen.core.sizes import parse_size
    from loadgen.core.units import parse_seconds
    from loadgen.traces.catalog import resolve_trace
    from loadgen.traces.info import TraceStats, stats_of_arrays
    from loadgen.traces.prompts import SharegptPool, TraceRequestSource
    from loadgen.traces.readers import open_trace, parse_where
    from loadgen.traces.scaling import ReplayOptions, build_plan, load_window, parse_window

    t = s.trace.model_dump()
    seed, duration_s, max_requests = s.load.seed, s.load.duration, s.load.requests
    t["bucket_s"] = t.pop("bucket")
    path, defaults = resolve_trace(t["path"])
    reader = open_trace(path, t.get("format") or defaults.get("format"), t.get("columns") or defaults.get("columns"),
                        t.get("time_unit") or defaults.get("time_unit"),
                        keep_failed=bool(t.get("keep_failed")), where=parse_where(t.get("where")))
    start, dur = parse_window(t.get("window"), parse_seconds)
    opts = ReplayOptions(speedup=t.get("speedup", 1.0), target_rate=t.get("target_rate"), window_start_s=start,
                         window_duration_s=dur, buckets=t.get("buckets", "together"), bucket_s=t.get("bucket_s", 3.0),
                         burst_gap=t.get("burst_gap", "auto"), max_input_tokens=t.get("max_input_tokens"),
                         max_output_tokens=t.get("max_output_tokens"), length_mode=t.get("length_mode", "clip"),
                         max_duration_s=duration_s, max_requests=max_requests, seed=seed).validate()
    src = load_window(reader, start, dur)
    plan = build_plan(src, opts)
    builder = PromptBuilder(tokenizer=s.workload.tokenizer, seed=seed)
    pool = None
    if t.get("prompts"):
        pool = SharegptPool(t["prompts"].split(":", 1)[1], builder, seed, opts.max_input_tokens)
    outputs = None
    if t.get("output_tokens"):
        dist = parse_size(t["output_tokens"], "--trace-output-tokens")
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0x4F55])))
        outputs = dist.sample(rng, len(plan)).astype(np.int32)
    source = TraceRequestSource(plan, builder, seed, min_tokens_equal_max=s.target.min_tokens, sharegpt=pool,
                                output_tokens=outputs)
    ready = source.prebuild()
    # statistics: the trace window as recorded, the schedule as it will be sent, prefix reuse of the replay
    src_stats = stats_of_arrays(src.time_ns, src.input_tokens, src.output_tokens)
    reuse = None
    if src.hash_start is not None:
        st = TraceStats()
        for i in range(len(plan)):
            row = int(plan.rows[i])
            ids = src.hash_flat[int(src.hash_start[row]):int(src.hash_start[row + 1])]  # type: ignore[index]
            if len(ids):
                salt = int(plan.copy[i]) << 48
                st.add_hashes([salt ^ int(h) for h in ids.tolist()], int(plan.input_tokens[i]), plan.block_tokens)
        reuse = st.result()["prefix_reuse"] if st.hash_rows else None  # only the prefix counters were fed
    sched_out = outputs if outputs is not None else plan.output_tokens
    sched_stats = stats_of_arrays(plan.offsets_ns, plan.input_tokens, sched_out)
    facts = plan.facts
    window = ("whole trace" if dur is None and start == 0 else
              f"{start:g} s to {start + dur:g} s of trace time" if dur is not None else f"from {start:g} s on")
    describe = [
        f"trace replay: {reader.path} ({reader.format}), {window}: {len(src)} rows"
        + (f", {reader.skipped_failed} failed rows skipped" if reader.skipped_failed else "")
        + (f", {reader.skipped_filtered} filtered out" if reader.skipped_filtered else ""),
        f"  rate: {facts['rate']['text']}; speed-up {opts.speedup:g}x -> {len(plan)} requests in "
        f"{facts['replay_window_s']:.1f} s ({facts['replay_rate_rps']:.3g} req/s)",
        f"  timestamps: {facts['buckets']['text']}",
        f"  lengths: {facts['lengths']['text']}"
        + (f"; output lengths from {t['output_tokens']} instead of the trace" if outputs is not None else ""),
        "  prompts: " + (pool.describe() if pool is not None else
                         f"synthesised to each request's token count ({builder.method}; {ready} of {len(plan)} "
                         "built before the run)"
                         + ("; Mooncake hash_ids blocks share their text" if src.hash_start is not None else "")),
    ]
    if reuse:
        describe.append(f"  prefix reuse in the replay: {reuse['reused_block_share']:.1%} of blocks "
                        f"({reuse['reused_token_share']:.1%} of prompt tokens) repeat an earlier request's")
    extra = {"trace": {"path": reader.path, "format": reader.format, "describe": describe, **facts,
                       "prompts": source.to_dict(), "source_stats": src_stats, "schedule_stats": sched_stats,
                       "prefix_reuse": reuse}}
    arrival = {"kind": "trace", "path": reader.path, "format": reader.format, "window": t.get("window"),
               "speedup": opts.speedup, "target_rate": opts.target_rate, "rate_method": facts["rate"]["method"],
               "buckets": opts.buckets, "seed": seed, "duration_s": duration_s, "max_requests": max_requests}
    return Workload(plan.offsets_ns, source, facts["replay_rate_rps"], arrival, extra, describe)


def synthetic_workload(s: Any) -> Workload:
    from loadgen.core.prompts import PromptBuilder, RequestSource
    from loadgen.core.sizes import parse_size
    from loadgen.traces.info import stats_of_arrays
    from loadgen.traces.synthetic import build_synthetic

    ld, w = s.load, s.workload
    offsets, facts, _ = build_synthetic(ld.arrival, ld.rate, ld.duration, ld.requests, ld.seed)
    if not len(offsets):
        raise UsageError(f"--arrival {ld.arrival}: the schedule is empty; lengthen --duration or raise the rates")
    builder = PromptBuilder(tokenizer=w.tokenizer, seed=ld.seed)
    source = RequestSource(parse_size(w.input_tokens, "--input-tokens"), parse_size(w.output_tokens,
                           "--output-tokens"), builder, seed=ld.seed, params={},
                           min_tokens_equal_max=s.target.min_tokens)
    zeros = np.zeros(len(offsets), dtype=np.int64)
    facts["schedule_stats"] = stats_of_arrays(offsets, zeros + 1, zeros + 1)
    st = facts["schedule_stats"]
    describe = [f"synthetic arrivals {ld.arrival}" + (f" scaled to a mean of {ld.rate:g} req/s" if ld.rate else "")
                + f": {len(offsets)} requests, {st['mean_rate_rps']} req/s, inter-arrival CV {st['interarrival_cv']},"
                f" dispersion {st['index_of_dispersion']}"]
    arrival = {"kind": facts["kind"], "spec": ld.arrival, "rate": ld.rate, "seed": ld.seed,
               "duration_s": ld.duration, "max_requests": ld.requests}
    return Workload(offsets, source, facts["mean_rate_rps"], arrival, {"synthetic": facts}, describe)
