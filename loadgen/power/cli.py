"""``loadgen power``: the power side-car (what ``loadgen run --power SOURCE`` starts), usable on its own, and
``--analyze RUN_DIR`` to (re)compute a run's energy figures and power plot from its saved samples."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

import orjson

from loadgen.core.units import parse_seconds
from loadgen.errors import UsageError

EPILOG = """\
sources:
  nvml          NVIDIA's management library (nvidia-ml-py): power, total-energy counter, utilisation, memory,
                clocks, temperature, throttle reasons; --gpu picks by index or UUID
  triton[=URL]  scrape Triton's metrics endpoint (default http://127.0.0.1:8002/metrics): nv_gpu_power_usage,
                nv_energy_consumption, ..., and the embedded server's emulated GPU power and energy
  nvidia-smi    fallback where the NVML bindings cannot load (power and utilisation; no energy counter)
  none          no samples

Samples go to --out as JSON lines stamped with time.perf_counter_ns (CLOCK_MONOTONIC), the clock of the request
records. Energy over a window uses counter deltas where a counter exists, else the integral of sampled power.
"""


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("--source", default="nvml", help="nvml | triton[=URL] | nvidia-smi | none (default nvml)")
    p.add_argument("--gpu", default=None, help="GPUs to sample: indexes or UUIDs, comma separated (default all)")
    p.add_argument("--interval", default="0.1", help="sampling interval (default 0.1 s = 10 Hz; e.g. 20ms)")
    p.add_argument("--out", default=None, help="samples file (JSON lines, appended)")
    p.add_argument("--duration", default=None, help="stop after this long (default: until Ctrl-C or SIGTERM)")
    p.add_argument("--parent-pid", type=int, default=None,
                   help="exit when this process (the runner) exits; set by loadgen run")
    p.add_argument("--nice", type=int, default=10, help="CPU priority increment (default 10: below the load)")
    p.add_argument("--analyze", default=None, metavar="RUN_DIR",
                   help="instead of sampling: recompute RUN_DIR's energy (summary.json) and power.png")


def execute(args: argparse.Namespace) -> int:
    if args.analyze:
        return analyze(Path(args.analyze))
    from loadgen.power.sidecar import (
        EXIT_UNAVAILABLE,
        install_stop_handlers,
        run_sidecar,
        set_parent_death_signal,
    )
    from loadgen.power.sources import make_source, parse_gpu_list

    if not args.out:
        raise UsageError("--out FILE is required: where to write the samples (or give --analyze RUN_DIR)")
    interval = parse_seconds(args.interval, "--interval")
    if not 0 < interval <= 60:
        raise UsageError(f"--interval {args.interval}: use more than 0 and at most 60 s")
    duration = parse_seconds(args.duration, "--duration") if args.duration is not None else None
    stop = threading.Event()
    install_stop_handlers(stop)
    if args.parent_pid is not None:
        set_parent_death_signal()
        if os.getppid() != args.parent_pid:
            return 0  # the parent is already gone: nothing to measure for
    if args.nice:
        try:
            os.nice(args.nice)
        except OSError:
            pass
    source = make_source(args.source, parse_gpu_list(args.gpu), interval_s=interval, flag="--source")
    code = run_sidecar(source, args.out, interval, duration, args.parent_pid, stop)
    if code == EXIT_UNAVAILABLE:
        last = Path(args.out).read_bytes().splitlines()[-1]
        print(f"loadgen power: {orjson.loads(last).get('message')}", file=sys.stderr)
    return code


def analyze(run_dir: Path) -> int:
    """Recompute ``summary["energy"]`` of a run directory from power.jsonl and redraw power.png."""
    from loadgen.level.rundir import write_json
    from loadgen.power.energy import energy_for_summary, load_power_file
    from loadgen.power.monitor import POWER_FILE, POWER_PLOT
    from loadgen.power.plot import write_power_plot

    summary_path, config_path = run_dir / "summary.json", run_dir / "config.json"
    for path in (config_path, run_dir / POWER_FILE):
        if not path.is_file():
            raise UsageError(f"{run_dir}: no {path.name}; --analyze needs a run directory made with --power")
    try:
        config = orjson.loads(config_path.read_bytes())
    except orjson.JSONDecodeError as err:
        raise UsageError(f"{config_path}: not valid JSON ({err})") from err
    # A crashed run may have no summary.json: it is recomputed from records.jsonl, as `loadgen report` does.
    from loadgen.report_cli import load_run_dir

    summaries, _ = load_run_dir(run_dir)
    if len(summaries) != 1:
        raise UsageError(f"{summary_path}: expected one level's summary, found {len(summaries)}")
    summary = summaries[0]
    power = config.get("power") or {}
    idle = None
    if power.get("idle_start_ns") is not None and power.get("idle_end_ns") is not None:
        idle = (int(power["idle_start_ns"]), int(power["idle_end_ns"]))
    data = load_power_file(run_dir / POWER_FILE)
    summary["energy"] = energy_for_summary(data, summary, idle)
    write_json(summary_path, summary)
    write_power_plot(run_dir / POWER_PLOT, data, summary, idle, run_dir / "records.jsonl")
    e = summary["energy"]
    print(f"{run_dir}: energy {e['status']} ({e.get('method') or '-'}): {e.get('energy_j')} J, mean "
          f"{e.get('mean_power_w')} W, {e.get('joules_per_output_token')} J/output token"
          + (f"; {e['note']}" if e.get("note") else ""))
    return 0
