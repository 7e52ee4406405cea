"""``loadgen sweep``: a grid of load levels x server configurations, one run directory per point, then the
analysis (Pareto frontiers, knee, saturation, batch advice, replication gains, advised configuration).

Rerunning the same command resumes: the sweep directory (default ``runs/sweep-<name>``) keeps every finished
point, and only the rest is measured. ``--report DIR`` re-renders an existing sweep without measuring.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from loadgen.errors import UsageError
from loadgen.sweep.grid import load_toml, merge, spec_from_mapping

API_KEY_ENVS = ("LOADGEN_API_KEY", "OPENAI_API_KEY")

EPILOG = """\
examples:
  # the study's batch sweep against the embedded server (see scenarios/study/)
  loadgen sweep --scenario scenarios/study/batch_sweep.toml
  # rates x max batch on the embedded server, stop a rate series once it saturates
  loadgen sweep --max-batch 16,64 --rates 2,4,8,16 --requests 200 --speed 0.2 --server-model opt-125m
  # two servers you run yourself, the same offline workload (one backend per endpoint: [[server.endpoints]]
  # in a scenario file), then side by side
  loadgen sweep --url vllm=http://127.0.0.1:8000 --url sglang=http://127.0.0.1:9000 \\
      --backend openai-completions --model opt-1.3b --offline 500 --lengths sharegpt --name two
  loadgen compare runs/sweep-two
  # a restart command per configuration ({max_batch}, {replicas}, ... are filled in)
  loadgen sweep --restart-command './restart_vllm.sh --max-num-seqs {max_batch}' --url http://127.0.0.1:8000 \\
      --backend openai-completions --model opt-1.3b --max-batch 32,64,128 --offline 1000
"""


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("--scenario", help="TOML scenario file (flags given here override its values)")
    p.add_argument("--out", help="sweep directory (default runs/sweep-<name>); the same directory resumes")
    p.add_argument("--name", help="sweep name (default: the scenario's, else 'sweep')")
    p.add_argument("--fresh", action="store_true", help="start over: rename an existing sweep directory aside")
    p.add_argument("--report", metavar="DIR", help="only analyse and render an existing sweep directory")
    p.add_argument("--no-plots", action="store_true", help="no PNG plots and no HTML page")
    lo = p.add_argument_group("load levels (each level of each configuration is one point)")
    lo.add_argument("--offline", help="N[,N...]: all N requests sent at t=0 (the study's offline benchmark)")
    lo.add_argument("--rates", help="open-loop rates, req/s, e.g. 1,2,4,8")
    lo.add_argument("--concurrencies", help="closed-loop users, e.g. 1,4,16,64")
    lo.add_argument("--requests", type=int, help="requests per rate/concurrency level")
    lo.add_argument("--duration", help="issuing time per rate/concurrency level (e.g. 30s)")
    e = p.add_argument_group("embedded server grid (without --url); lists give their cross product")
    e.add_argument("--server-model", help="emulated model profile(s), e.g. opt-1.3b or opt-125m,opt-1.3b")
    e.add_argument("--server-gpu", help="emulated GPU profile(s), e.g. h100-64gb")
    e.add_argument("--max-batch", help="max running batch per replica, e.g. 1,8,32,128 (also for --restart-command)")
    e.add_argument("--replicas", help="replicas on the one GPU, e.g. 1,2,4 (also for --restart-command)")
    e.add_argument("--speed", help="emulated GPU speed (< 1 slower than real time; results are rescaled)")
    x = p.add_argument_group("servers you run (external)")
    x.add_argument("--url", action="append", default=[], metavar="[LABEL=]URL",
                   help="an endpoint to measure; repeat for several (one configuration each)")
    x.add_argument("--backend", help="triton-http | triton-grpc | openai-completions | openai-chat")
    x.add_argument("--model", help="model name on the server (required for OpenAI-compatible servers)")
    x.add_argument("--metrics-url", help="Prometheus metrics of the server (running batch, KV usage, preemptions)")
    x.add_argument("--restart-command", metavar="CMD",
                   help="shell command that (re)starts the server for each configuration, with {max_batch} "
                        "{replicas} {label} ... placeholders; needs one --url")
    x.add_argument("--ready-timeout", help="how long to wait for the restarted server (default 600s)")
    x.add_argument("--api-key", help=f"bearer token (else ${API_KEY_ENVS[0]} or ${API_KEY_ENVS[1]}); never stored")
    w = p.add_argument_group("workload")
    w.add_argument("--lengths", choices=("sharegpt",), help="the study's ShareGPT-like lengths (mean 111 in / 292 out)")
    w.add_argument("--input-tokens", help="prompt tokens per request (N, uniform:A,B, lognormal:M,S, ...)")
    w.add_argument("--output-tokens", help="output tokens per request (same forms)")
    w.add_argument("--arrival", help="poisson | gamma | constant (rate levels; default poisson)")
    w.add_argument("--seed", type=int, help="seed of arrivals, lengths and prompts (default 0)")
    w.add_argument("--warmup", help="exclude the first N requests or S seconds of each point")
    w.add_argument("--request-timeout", help="give up on one request after this long (default 1800s)")
    s = p.add_argument_group("early stop (per configuration, per load kind, in increasing load)")
    s.add_argument("--no-early-stop", action="store_true", help="measure every point even past saturation")
    s.add_argument("--min-served-ratio", type=float, help="rate levels: stop below this share of the target "
                   "completed per second (default 0.9)")
    s.add_argument("--stop-latency", metavar="BOUND", help="stop once a bound is missed, e.g. 'e2e_p99<30s'")
    s.add_argument("--min-gain", type=float, help="concurrency levels: stop when throughput grows less than this")
    a = p.add_argument_group("analysis")
    a.add_argument("--latency-metric", help="latency of the frontier and knee, e.g. e2e_p99 (default), itl_mean")
    a.add_argument("--knee-factor", type=float, help="knee: latency within this factor of low load (default 2)")
    a.add_argument("--slo", help="advised configuration: bounds such as 'itl_mean<50ms,e2e_p99<30s'")
    a.add_argument("--eta", help="batch advice thresholds on eta(B), e.g. 0.1,0.2,0.3")
    a.add_argument("--latency-factor", help="batch advice: latency within L x latency(ref batch), e.g. 3,4,5")
    a.add_argument("--ref-batch", type=int, help="batch advice: the reference batch (default 32)")
    pw = p.add_argument_group("power (one side-car per point)")
    pw.add_argument("--power", help="nvml | triton[=METRICS_URL] | nvidia-smi | none; the embedded server: triton")
    pw.add_argument("--power-interval", help="sampling interval (default 100ms)")
    pw.add_argument("--idle-seconds", help="idle power measured before each point (default 1)")


def _urls(items: list[str]) -> list[dict[str, Any]]:
    out = []
    for item in items:
        label, sep, url = item.partition("=")
        if sep and "://" not in label and label:
            out.append({"label": label, "url": url})
        else:
            out.append({"url": item})
    return out


def overlay_from_args(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The flags as a scenario mapping (only what was given)."""
    def given(**kv: Any) -> dict[str, Any]:
        return {k: v for k, v in kv.items() if v is not None}

    server = given(profile=args.server_model, gpu=args.server_gpu, max_batch=args.max_batch,
                   replicas=args.replicas, speed=args.speed, backend=args.backend, model=args.model,
                   metrics_url=args.metrics_url, ready_timeout=args.ready_timeout)
    if args.restart_command:
        if len(args.url) != 1:
            raise UsageError("--restart-command needs exactly one --url (where the restarted server listens)")
        server.update(kind="command", command=args.restart_command, url=_urls(args.url)[0]["url"])
    elif args.url:
        eps = _urls(args.url)
        for ep in eps:
            if args.metrics_url:
                ep["metrics_url"] = args.metrics_url
        server.update(kind="external", endpoints=eps)
    return {
        "sweep": given(name=args.name, backend=args.backend, model=args.model, seed=args.seed, lengths=args.lengths,
                       input_tokens=args.input_tokens, output_tokens=args.output_tokens, arrival=args.arrival,
                       warmup=args.warmup, request_timeout=args.request_timeout, power=args.power,
                       power_interval=args.power_interval, idle_seconds=args.idle_seconds),
        "load": given(offline=args.offline, rates=args.rates, concurrencies=args.concurrencies,
                      requests=args.requests, duration=args.duration),
        "stop": given(enabled=False if args.no_early_stop else None, min_served_ratio=args.min_served_ratio,
                      latency=args.stop_latency, min_gain=args.min_gain),
        "analysis": given(latency_metric=args.latency_metric, knee_factor=args.knee_factor, slo=args.slo,
                          eta=args.eta, latency_factor=args.latency_factor, ref_batch=args.ref_batch),
        "server": server,
    }


def _api_key(args: argparse.Namespace) -> str | None:
    if args.api_key:
        return args.api_key
    return next((os.environ[n] for n in API_KEY_ENVS if os.environ.get(n)), None)


def execute(args: argparse.Namespace) -> int:
    from rich.console import Console

    from loadgen.sweep.results import finalize, load_sweep
    from loadgen.sweep.runner import SweepRunner

    console = Console(width=None if sys.stdout.isatty() else 160)
    if args.report:
        spec, _ = load_sweep(args.report)
        finalize(Path(args.report), spec, console, plots=not args.no_plots)
        return 0
    base = load_toml(args.scenario) if args.scenario else {}
    overlay = overlay_from_args(args)
    if args.url and "server" in base:  # endpoints on the command line replace the scenario's server table
        base = {k: v for k, v in base.items() if k != "server"}
    grid_flags = [f for f, v in (("--max-batch", args.max_batch), ("--replicas", args.replicas),
                                 ("--server-model", args.server_model), ("--server-gpu", args.server_gpu)) if v]
    if grid_flags and isinstance(base.get("server"), dict) and base["server"].get("configs"):
        raise UsageError(f"{grid_flags[0]} does not apply: {args.scenario} lists its configurations "
                         "([[server.configs]]); edit them there, or give the grid without --scenario")
    spec = spec_from_mapping(merge(base, overlay), source=f"--scenario {args.scenario}" if args.scenario else "flags")
    key = _api_key(args)
    if key:
        spec.headers["Authorization"] = f"Bearer {key}"
    sweep_dir = Path(args.out) if args.out else Path("runs") / f"sweep-{spec.name}"
    if args.fresh and sweep_dir.exists():
        aside = sweep_dir.with_name(f"{sweep_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        sweep_dir.rename(aside)
        console.print(f"--fresh: the previous sweep directory is now {aside}")
    n = len(spec.points())
    resumed = (sweep_dir / "sweep.json").is_file()
    console.print(f"[bold]loadgen sweep[/] {spec.name}: {len(spec.targets)} configuration(s), {n} point(s) -> "
                  f"{sweep_dir}" + (" (resuming)" if resumed else ""), highlight=False)
    runner = SweepRunner(spec, sweep_dir, console)
    code = runner.run()
    finalize(sweep_dir, spec, console, plots=not args.no_plots)
    return code

