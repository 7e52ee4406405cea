"""The ``loadgen run`` flags of trace replay, and their validation into the ``RunSettings.trace`` dict.

Kept free of heavy imports: ``loadgen run --help`` and runs that replay no trace do not pay for numpy readers.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from loadgen.errors import UsageError

SYNTHETIC_PREFIXES = ("piecewise", "diurnal", "trace-rate", "mmpp")


def is_synthetic(arrival: str | None) -> bool:
    """True for the synthetic arrival forms of ``loadgen.traces.synthetic`` (``kind:params``)."""
    if not arrival or ":" not in str(arrival):
        return False
    return str(arrival).split(":", 1)[0].strip().lower() in SYNTHETIC_PREFIXES


def add_trace_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "trace replay (--trace FILE replaces --rate/--arrival; synthetic models: --arrival piecewise:R@D,...  "
        "diurnal:MEAN,AMP,PERIOD  trace-rate:FILE  mmpp:R1,R2@D1,D2)")
    g.add_argument("--trace", default=None, metavar="FILE",
                   help="replay a trace: Azure CSV, Mooncake JSONL, BurstGPT CSV, or any CSV/JSONL with --trace-columns")
    g.add_argument("--trace-format", default=None, help="azure | mooncake | burstgpt | csv | jsonl (default: detect)")
    g.add_argument("--trace-columns", default=None, metavar="MAP",
                   help="generic traces: time=COL,input=COL,output=COL[,hash_ids=COL]")
    g.add_argument("--trace-time-unit", default=None, help="generic traces: s | ms | us | ns | datetime (default s)")
    g.add_argument("--trace-where", action="append", default=[], metavar="COL=VALUE",
                   help="keep only rows whose column has this value (e.g. 'Model=GPT-4' in BurstGPT)")
    g.add_argument("--trace-keep-failed", action="store_true",
                   help="BurstGPT: replay failed rows (0 response tokens) too, asking for 1 output token")
    g.add_argument("--speedup", type=float, default=1.0, help="time scaling: 2 replays twice as fast (default 1)")
    g.add_argument("--target-rate", type=float, default=None,
                   help="mean rate of the replay, req/s: thinning whole bursts to go down, superposition of "
                        "shifted copies to go up (burstiness kept)")
    g.add_argument("--window", default=None, metavar="START:DURATION",
                   help="replay this part of the trace, in trace time (e.g. 0:5m, 10m:30m, 1h:)")
    g.add_argument("--burst-gap", default="auto",
                   help="--target-rate: gap that separates bursts, e.g. 1s (0 = single requests; default auto)")
    g.add_argument("--trace-buckets", default="together", choices=("together", "spread"),
                   help="bucketed timestamps (Mooncake, 3 s): fire each bucket together (default) or spread it")
    g.add_argument("--trace-bucket", default="3s", help="bucket width for --trace-buckets (default 3s)")
    g.add_argument("--max-input-tokens", type=int, default=None, help="fit prompts to a short context (see --length-mode)")
    g.add_argument("--max-output-tokens", type=int, default=None, help="cap the output lengths (see --length-mode)")
    g.add_argument("--length-mode", default="clip", choices=("clip", "scale"),
                   help="clip each length to the maximum, or scale all so the longest fits (default clip)")
    g.add_argument("--trace-prompts", default=None, metavar="sharegpt:PATH",
                   help="real prompt text from a ShareGPT JSON file instead of synthesised prompts")
    g.add_argument("--trace-output-tokens", default=None, metavar="SIZE",
                   help="ask for output lengths from this distribution (N, uniform:A,B, ...) instead of the trace's")


def trace_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """The ``RunSettings.trace`` dict, or None without ``--trace``; UsageError for flags that do not combine."""
    from loadgen.runner.settings import parse_seconds

    trace_only = {"--trace-format": args.trace_format, "--trace-columns": args.trace_columns,
                  "--trace-time-unit": args.trace_time_unit, "--target-rate": args.target_rate,
                  "--window": args.window, "--trace-prompts": args.trace_prompts,
                  "--trace-output-tokens": args.trace_output_tokens, "--max-input-tokens": args.max_input_tokens,
                  "--max-output-tokens": args.max_output_tokens}
    if args.trace is None:
        used = [k for k, v in trace_only.items() if v is not None] + (["--speedup"] if args.speedup != 1.0 else [])
        used += ["--trace-where"] if args.trace_where else []
        if used:
            raise UsageError(f"{used[0]} applies to trace replay; add --trace FILE")
        return None
    if args.rate is not None:
        raise UsageError("--rate does not apply to --trace; use --target-rate R (or --speedup S)")
    if args.arrival != "poisson":
        raise UsageError("--arrival does not apply to --trace: the trace gives the arrivals")
    if not (math.isfinite(args.speedup) and args.speedup > 0):
        raise UsageError(f"--speedup {args.speedup}: must be a positive number (2 = twice as fast)")
    if args.target_rate is not None and not (math.isfinite(args.target_rate) and args.target_rate > 0):
        raise UsageError(f"--target-rate {args.target_rate}: must be a positive number of requests per second")
    for flag, v in (("--max-input-tokens", args.max_input_tokens), ("--max-output-tokens", args.max_output_tokens)):
        if v is not None and v < 1:
            raise UsageError(f"{flag} {v}: must be at least 1")
    gap: float | str = "auto"
    if str(args.burst_gap).strip().lower() != "auto":
        gap = parse_seconds(args.burst_gap, "--burst-gap")
    prompts = args.trace_prompts
    if prompts is not None and not prompts.startswith("sharegpt:"):
        raise UsageError(f"--trace-prompts {prompts!r}: expected sharegpt:PATH (a ShareGPT-format JSON file)")
    return {
        "path": args.trace, "format": args.trace_format, "columns": args.trace_columns,
        "time_unit": args.trace_time_unit, "where": list(args.trace_where), "keep_failed": args.trace_keep_failed,
        "speedup": float(args.speedup), "target_rate": args.target_rate, "window": args.window,
        "burst_gap": gap, "buckets": args.trace_buckets,
        "bucket_s": parse_seconds(args.trace_bucket, "--trace-bucket"),
        "max_input_tokens": args.max_input_tokens, "max_output_tokens": args.max_output_tokens,
        "length_mode": args.length_mode, "prompts": prompts, "output_tokens": args.trace_output_tokens,
    }
