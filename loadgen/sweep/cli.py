"""``loadgen sweep``: a grid of load levels x server configurations, one run directory per point, then the
analysis (Pareto frontiers, knee, saturation, batch advice, replication gains, advised configuration).

The level's flags are the scenario's (``loadgen.scenario``: the same names, defaults and help as ``loadgen run``);
a sweep adds its grid. Rerunning the same command resumes: the sweep directory (default ``runs/sweep-<name>``)
keeps every finished point, and only the rest is measured. ``--report DIR`` re-renders an existing sweep.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from loadgen.errors import UsageError
from loadgen.scenario.flags import add_flags, add_scenario_file_flags

EPILOG = """\
examples:
  # the study's batch sweep against the embedded server (see scenarios/study/)
  loadgen sweep --scenario scenarios/study/batch_sweep.toml
  # rates x max batch on the embedded server, stop a rate series once it saturates
  loadgen sweep --server-max-batch 16,64 --rates 2,4,8,16 --requests 200 --server-speed 0.2 --server-model opt-125m
  # any scenario file of loadgen run is a one-point sweep
  loadgen run --rate 4 --duration 20 --print-scenario > s.toml && loadgen sweep --scenario s.toml
  # two servers you run yourself, the same offline workload (one backend per endpoint: [[sweep.endpoints]]
  # in a scenario file), then side by side
  loadgen sweep --url vllm=http://127.0.0.1:8000 --url sglang=http://127.0.0.1:9000 \\
      --backend openai-completions --model opt-1.3b --offline 500 --lengths sharegpt --name two
  loadgen compare runs/sweep-two
  # a restart command per configuration ({max_batch}, {replicas}, ... are filled in)
  # the highest rate meeting an SLO for each max batch, and the Pareto frontier against J/token
  loadgen sweep --search --server-max-batch 8,32 --input-tokens 128 --output-tokens 64 \\
      --fail-on 'ttft_p90<300ms,error_rate<1%' --budget 3m --name cap
  loadgen sweep --restart-command './restart_vllm.sh --max-num-seqs {max_batch}' --url http://127.0.0.1:8000 \\
      --backend openai-completions --model opt-1.3b --server-max-batch 32,64,128 --offline 1000
"""
GRID_TITLES = {"server": "embedded server (without --url); comma lists give their cross product as configurations"}


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    add_scenario_file_flags(p)
    p.add_argument("--out", help="sweep directory (default runs/sweep-<name>); the same directory resumes")
    p.add_argument("--fresh", action="store_true", help="start over: rename an existing sweep directory aside")
    p.add_argument("--report", metavar="DIR", help="only analyse and render an existing sweep directory")
    p.add_argument("--no-plots", action="store_true", help="no PNG plots and no HTML page")
    g = p.add_argument_group("the grid: load levels (each level of each configuration is one point)")
    g.add_argument("--offline", help="N[,N...]: all N requests sent at t=0 (the study's offline benchmark)")
    g.add_argument("--rates", help="open-loop rates, req/s, e.g. 1,2,4,8 (each bounded by --requests/--duration)")
    g.add_argument("--concurrencies", help="closed-loop users, e.g. 1,4,16,64")
    x = p.add_argument_group("servers you run (external)")
    x.add_argument("--url", action="append", default=[], metavar="[LABEL=]URL",
                   help="an endpoint to measure; repeat for several (one configuration each)")
    x.add_argument("--metrics-url", help="Prometheus metrics of the server (running batch, KV usage, preemptions)")
    x.add_argument("--restart-command", metavar="CMD",
                   help="shell command that (re)starts the server for each configuration, with {max_batch} "
                        "{replicas} {label} ... placeholders; needs one --url")
    x.add_argument("--ready-timeout", help="how long to wait for the restarted server (default 600s)")
    s = p.add_argument_group("early stop (per configuration, per load kind, in increasing load)")
    s.add_argument("--no-early-stop", action="store_true", help="measure every point even past saturation")
    s.add_argument("--min-served-ratio", type=float, help="rate levels: stop below this share of the scheduled "
                   "requests completed per second (default 0.9)")
    s.add_argument("--stop-latency", metavar="BOUND", help="stop once a bound is missed, e.g. 'e2e_p99<30s'")
    s.add_argument("--min-gain", type=float, help="concurrency levels: stop when throughput grows less than this")
    a = p.add_argument_group("analysis")
    a.add_argument("--latency-metric", help="latency of the frontier and knee, e.g. e2e_p99 (default), itl_mean")
    a.add_argument("--knee-factor", type=float, help="knee: latency within this factor of low load (default 2)")
    a.add_argument("--advise-slo", metavar="BOUNDS",
                   help="advised configuration: bounds such as 'itl_mean<50ms,e2e_p99<30s'")
    a.add_argument("--eta", help="batch advice thresholds on eta(B), e.g. 0.1,0.2,0.3")
    a.add_argument("--latency-factor", help="batch advice: latency within L x latency(ref batch), e.g. 3,4,5")
    a.add_argument("--ref-batch", type=int, help="batch advice: the reference batch (default 32)")
    q = p.add_argument_group("capacity search per configuration (--search)")
    q.add_argument("--search", action="store_true",
                   help="instead of load levels, search each configuration's highest Poisson rate meeting "
                        "--fail-on (or the --slo goodput share), then the Pareto frontier against J/token")
    from loadgen.search.cli import add_search_knobs

    add_search_knobs(q)
    add_flags(p, skip={"--url"}, group_titles=GRID_TITLES)


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
    """The flags as a scenario mapping (only what was given): the level's flags, then the sweep's own."""
    from loadgen.scenario.flags import overlay_from_args as level_overlay

    def given(**kv: Any) -> dict[str, Any]:
        return {k: v for k, v in kv.items() if v is not None}

    out: dict[str, dict[str, Any]] = level_overlay(args)
    sweep = given(offline=args.offline, rates=args.rates, concurrencies=args.concurrencies,
                  metrics_url=args.metrics_url, ready_timeout=args.ready_timeout)
    urls = _urls(args.url)
    if args.restart_command:
        if len(urls) != 1:
            raise UsageError("--restart-command needs exactly one --url (where the restarted server listens)")
        sweep.update(kind="command", command=args.restart_command)
        out.setdefault("target", {})["url"] = urls[0]["url"]
    elif len(urls) == 1 and "label" not in urls[0]:
        out.setdefault("target", {})["url"] = urls[0]["url"]
    elif urls:
        sweep.update(kind="external", endpoints=urls)
    out["sweep"] = sweep
    out["stop"] = given(enabled=False if args.no_early_stop else None, min_served_ratio=args.min_served_ratio,
                        latency=args.stop_latency, min_gain=args.min_gain)
    out["analysis"] = given(latency_metric=args.latency_metric, knee_factor=args.knee_factor, slo=args.advise_slo,
                            eta=args.eta, latency_factor=args.latency_factor, ref_batch=args.ref_batch)
    return {k: v for k, v in out.items() if v}


def spec_from_args(args: argparse.Namespace, check_paths: bool = True) -> Any:
    from loadgen.scenario.files import load_toml
    from loadgen.scenario.flags import merge
    from loadgen.sweep.grid import spec_from_mapping

    base = load_toml(args.scenario) if args.scenario else {}
    overlay = overlay_from_args(args)
    sweep_overlay = overlay.get("sweep") or {}
    if "endpoints" in sweep_overlay or "kind" in sweep_overlay:  # endpoints on the command line replace the file's
        base = {**base, "sweep": {k: v for k, v in (base.get("sweep") or {}).items()
                                  if k not in ("endpoints", "configs", "kind", "command")}}
    grid_flags = [f for f, v in (overlay.get("server") or {}).items()]
    if grid_flags and isinstance(base.get("sweep"), dict) and base["sweep"].get("configs"):
        raise UsageError(f"--server-{grid_flags[0].replace('_', '-')} does not apply: {args.scenario} lists its "
                         "configurations ([[sweep.configs]]); edit them there, or give the grid without --scenario")
    source = f"--scenario {args.scenario}" if args.scenario else "flags"
    return spec_from_mapping(merge(base, overlay), source=source, check_paths=check_paths)


def execute(args: argparse.Namespace) -> int:
    from rich.console import Console

    from loadgen.sweep.results import finalize, load_sweep
    from loadgen.sweep.runner import SweepRunner

    console = Console(width=None if sys.stdout.isatty() else 160)
    if args.report:
        spec, _ = load_sweep(args.report)
        finalize(Path(args.report), spec, console, plots=not args.no_plots)
        return 0
    if args.search:  # the search sets the rate: the grid's load levels have no place (said before anything starts)
        from loadgen.sweep.search import prepare_args

        prepare_args(args)
    spec = spec_from_args(args, check_paths=not args.print_scenario)
    if args.print_scenario:
        from loadgen.scenario.load import scenario_toml

        sys.stdout.write(scenario_toml(spec.base, _sweep_tables(args)))
        return 0
    sweep_dir = Path(args.out) if args.out else Path(spec.base.results.out_dir) / f"sweep-{spec.name}"
    from loadgen.scenario.check import check_out_dir

    check_out_dir(str(sweep_dir), "--out" if args.out else "--out-dir")  # before any server starts
    if args.fresh and sweep_dir.exists():
        aside = sweep_dir.with_name(f"{sweep_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        sweep_dir.rename(aside)
        console.print(f"--fresh: the previous sweep directory is now {aside}")
    if args.search:
        from loadgen.sweep.search import run_sweep_search

        return run_sweep_search(spec, sweep_dir, console, args)
    n = len(spec.points())
    resumed = (sweep_dir / "sweep.json").is_file()
    console.print(f"[bold]loadgen sweep[/] {spec.name}: {len(spec.targets)} configuration(s), {n} point(s) -> "
                  f"{sweep_dir}" + (" (resuming)" if resumed else ""), highlight=False)
    runner = SweepRunner(spec, sweep_dir, console)
    code = runner.run()
    finalize(sweep_dir, spec, console, plots=not args.no_plots)
    return code


def _sweep_tables(args: argparse.Namespace) -> dict[str, Any]:
    """The sweep's own tables of the file and flags, for ``--print-scenario``."""
    from loadgen.scenario.files import load_toml
    from loadgen.scenario.flags import merge
    from loadgen.scenario.load import public_dict
    from loadgen.sweep.grid import base_scenario, split_server_grid

    base = load_toml(args.scenario) if args.scenario else {}
    merged = merge(base, overlay_from_args(args))
    tables = {k: merged[k] for k in ("sweep", "stop", "analysis") if merged.get(k)}
    _, axes = split_server_grid(merged.get("server") or {})
    if axes:  # the grid's server lists, beside the base's scalars
        sc, _ = base_scenario(merged, "flags")
        tables["server"] = {**public_dict(sc)["server"], **axes}
    return tables
