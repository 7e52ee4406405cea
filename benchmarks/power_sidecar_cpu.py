"""How much CPU the power side-car costs, and whether it disturbs a load level running beside it.

1. CPU: runs the real side-car process (``python -m loadgen power``) for ``--seconds`` at 10 Hz and 50 Hz against
   the embedded Triton server's metrics endpoint (``triton`` source: one HTTP scrape + parse + JSON line per tick)
   and with the ``none`` source (the loop and file alone). Reports the side-car's own CPU time over its sampling
   loop (``cpu_s`` of its stop line) as a share of one core, its whole-process CPU including interpreter start-up
   (rusage of the child), and the sampling rate it achieved.
2. Load beside it (``--load``): the same open-loop level against the embedded server without a side-car and with
   one at 50 Hz; compares the load generator's schedule lag p99 and CPU per 1,000 requests.

Usage: .venv/bin/python benchmarks/power_sidecar_cpu.py [--seconds 10] [--load] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadgen.power.energy import load_power_file  # noqa: E402
from loadgen.serve.launcher import EmbeddedServer, ServerConfig  # noqa: E402


def side_car_cpu(source: str, interval_s: float, seconds: float, workdir: Path) -> dict:
    out = workdir / f"power-{source.split('=')[0]}-{interval_s:g}.jsonl"
    cmd = [sys.executable, "-m", "loadgen", "power", "--source", source, "--out", str(out),
           "--interval", repr(interval_s), "--duration", repr(seconds), "--nice", "0"]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    data = load_power_file(out)
    stop = data.stop or {}
    loop_wall = stop.get("wall_s") or seconds
    ticks = stop.get("ticks", 0)
    return {
        "source": source.split("=")[0], "interval_s": interval_s, "rate_hz": round(1 / interval_s, 1),
        "exit": proc.returncode, "ticks": ticks, "missed_ticks": stop.get("missed_ticks"),
        "achieved_hz": round(ticks / loop_wall, 2) if loop_wall else None,
        "loop_cpu_s": stop.get("cpu_s"), "loop_wall_s": loop_wall,
        "loop_cpu_share_of_one_core": round(stop.get("cpu_s", 0) / loop_wall, 4) if loop_wall else None,
        "process_cpu_s": round(usage.ru_utime + usage.ru_stime, 3), "process_wall_s": round(wall, 3),
        "bytes_per_tick": round(out.stat().st_size / max(1, ticks), 1),
    }


def load_level(server: EmbeddedServer, workdir: Path, power: bool, seconds: float) -> dict:
    name = "with-sidecar-50hz" if power else "no-sidecar"
    cmd = [sys.executable, "-m", "loadgen", "run", "--url", server.http_url, "--rate", "20", "--duration",
           repr(seconds), "--output-tokens", "32", "--input-tokens", "32", "--no-live", "--name", name,
           "--out-dir", str(workdir / "runs")]
    if power:
        cmd += ["--power", f"triton={server.metrics_url}", "--power-interval", "20ms", "--idle-seconds", "0"]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    [run_dir] = [d for d in (workdir / "runs").iterdir() if d.name.endswith(name)]
    s = json.loads((run_dir / "summary.json").read_text())
    return {"level": name, "completed": s["completed_requests"], "schedule_lag_p99_ms": s["schedule_lag_ms"]["p99"],
            "client_cpu_per_1000_requests_s": s["client"]["cpu_seconds_per_1000_requests"],
            "loop_lag_p99_ms": s["client"]["loop_lag_p99_ms"], "ttft_p50_ms": s["ttft_ms"]["p50"],
            "energy_status": (s.get("energy") or {}).get("status")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="sampling time per configuration (default 10)")
    ap.add_argument("--load", action="store_true", help="also compare a load level with and without the side-car")
    ap.add_argument("--json", default=None, help="write the results here as JSON")
    args = ap.parse_args()
    results: dict = {"machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
                                f"Python {platform.python_version()}", "date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory(prefix="power-bench-") as tmp, \
            EmbeddedServer(ServerConfig(profile="opt-125m", replicas=2, max_batch=32, speed=0.2)) as server:
        workdir = Path(tmp)
        rows = []
        for source in (f"triton={server.metrics_url}", "none"):
            for interval in (0.1, 0.02):
                row = side_car_cpu(source, interval, args.seconds, workdir)
                rows.append(row)
                print(f"{row['source']:>7} {row['rate_hz']:>5g} Hz: loop CPU {100 * row['loop_cpu_share_of_one_core']:.2f} "
                      f"% of one core ({row['loop_cpu_s']} s over {row['loop_wall_s']} s), process CPU "
                      f"{row['process_cpu_s']} s incl. start-up, achieved {row['achieved_hz']} Hz, missed "
                      f"{row['missed_ticks']}, {row['bytes_per_tick']} B/tick", flush=True)
        results["side_car"] = rows
        if args.load:
            levels = [load_level(server, workdir, power, args.seconds) for power in (False, True)]
            for lv in levels:
                print(f"{lv['level']:>18}: schedule lag p99 {lv['schedule_lag_p99_ms']} ms, client CPU "
                      f"{lv['client_cpu_per_1000_requests_s']} s/1000 req, loop lag p99 {lv['loop_lag_p99_ms']} ms, "
                      f"TTFT p50 {lv['ttft_p50_ms']} ms, energy {lv['energy_status']}", flush=True)
            results["load"] = levels
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
