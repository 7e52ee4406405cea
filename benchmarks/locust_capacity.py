"""How much load does one Locust worker process produce with the loadgen scenarios, and how exactly does it time
it, next to the asyncio runner on the same machine?

For each load level (Poisson arrivals, 64-token streams) both front ends are aimed, one after the other, at
``stream_server.c`` pinned to one core, the client pinned to the other: ``loadgen run`` (through
``generator_capacity.Bench``) and ``locust -f scenarios/ TritonHttpPoisson --headless`` (one local runner process:
one gevent hub). The figures are ``generator_capacity``'s, computed by its own functions from the server's
CLOCK_MONOTONIC timing file joined to the records: achieved rate and its ratio to the schedule, inter-arrival CV
at the server, TTFT measurement error (client TTFT - true TTFT), schedule lag p99, client CPU per 1,000 requests.
The targets are the issue's (ratio >= 95 %, CV 0.95-1.05, TTFT error p99 < 2 ms). Results: benchmarks/LOCUST.md.

    .venv/bin/python benchmarks/locust_capacity.py                       # 10..1200 req/s, about 5 minutes
    .venv/bin/python benchmarks/locust_capacity.py --rates 400:20 --front locust
    .venv/bin/python benchmarks/locust_capacity.py --quick                # 2-second levels (smoke test)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import generator_capacity as gc  # noqa: E402

LEVELS = ((10, 20.0), (100, 20.0), (200, 20.0), (400, 20.0), (800, 20.0), (1200, 15.0))
LOCUST = str(Path(sys.executable).parent / "locust")


def locust_run(url: str, rate: float, duration_s: float, out_dir: Path, cpu: str | None, seed: int = 0,
               engine: str = "gevent") -> gc.ClientRun:
    """One headless Locust level (local runner, pinned with taskset), read back as generator_capacity's ClientRun."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [LOCUST, "-f", "scenarios/", "TritonHttpPoisson", "--headless", "--only-summary", "-H", url, "--model", "m",
           "--rate", f"{rate:g}", "--duration", f"{duration_s:g}", "--output-tokens", "64", "--seed", str(seed),
           "--out-dir", str(out_dir), "--loglevel", "WARNING", "--engine", engine]
    cmd = (["taskset", "-c", cpu] if cpu else []) + cmd
    with open(out_dir / "client.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)  # the child's CPU time comes back with it
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):  # 1: Locust's exit code when some request failed; the figures show it
        raise RuntimeError(f"locust exited {code}; see {out_dir / 'client.log'}")
    (run_dir,) = [p for p in out_dir.iterdir() if p.is_dir()]
    config = orjson.loads((run_dir / "config.json").read_bytes())
    summary = orjson.loads((run_dir / "summary.json").read_bytes())
    node = summary["client"]["nodes"][0]
    t0 = int(node["t0_monotonic_ns"])
    # generator_capacity reads the asyncio runner's client block; give it the same names
    summary["client"] = {**summary["client"], "cpu_seconds": node["cpu_seconds"],
                         "cpu_utilisation": round(node["cpu_seconds"] / node["wall_seconds"], 3),
                         "loop_lag_p99_ms": node["hub_lag_p99_ms"]}
    from loadgen.core.summary import load_records

    idx, sched, issue, ttft = [], [], [], []
    (records,) = sorted(run_dir.glob("records*.jsonl"))  # records.w0.jsonl with --engine asyncio
    for r in load_records(records):
        idx.append(r.index)
        sched.append(t0 + r.scheduled_ns)
        issue.append(-1 if r.issued_ns is None else t0 + r.issued_ns)
        ttft.append(r.chunk_offsets_us[0] * 1000 if r.status == "ok" and r.chunk_offsets_us else -1)
    a = np.asarray
    return gc.ClientRun(run_dir, config, summary, t0, a(sched, np.int64), a(issue, np.int64), a(ttft, np.int64),
                        a(idx, np.int64), usage.ru_utime + usage.ru_stime, usage.ru_stime)


def locust_level(bench: gc.Bench, rate: float, duration_s: float, engine: str = "gevent") -> dict[str, Any]:
    front = "locust" if engine == "gevent" else f"locust+{engine}"
    label = f"{front}-{rate:g}rps"
    d = bench.work / f"{time.strftime('%H%M%S')}-{label}"
    d.mkdir(parents=True)
    load_before, busy_before = os.getloadavg()[0], gc.cpu_busy_s()
    with gc.StreamServer(bench.binary, d / "server_timing.txt", bench.ttft_us, bench.gap_us, bench.server_cpu) as srv:
        run = locust_run(srv.url, rate, duration_s, d / "client",
                         bench.client_cpus[0] if bench.client_cpus else None, engine=engine)
        timing = srv.stop()
    fig = gc.level_figures([run], timing, duration_s)
    own = {c: v for c, v in ((bench.server_cpu, fig["server"]["cpu_s"]),
                             (bench.client_cpus[0] if bench.client_cpus else None, run.process_cpu_s)) if c}
    fig["interference"] = gc.foreign_cpu(busy_before, gc.cpu_busy_s(), own)  # other processes on our cores
    fig.update({"label": label, "front_end": front, "target_rate_rps": rate, "duration_s": duration_s,
                "processes": 1, "loadavg_1m_before": round(load_before, 2), "dir": str(d)})
    fig["meets"] = gc.judge(fig)
    return fig


def render(levels: list[dict[str, Any]]) -> None:
    from rich.console import Console

    def others(f: dict[str, Any]) -> str:
        return f"{sum(v['foreign_busy_s'] for v in f['interference'].values()):.1f}"

    table = gc.levels_table(levels, "one Locust worker process vs the asyncio runner (Poisson, 64-token streams, "
                            "1 core each)", ("others' CPU s", others))
    Console(width=150).print(table)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default=None, help="levels as RATE:SECONDS,... (default 10:20,100:20,200:20,400:20,"
                   "800:20,1200:15)")
    p.add_argument("--front", default="both", choices=("both", "locust", "asyncio"))
    p.add_argument("--engine", default="gevent", help="Locust's --engine: gevent, asyncio, or both (each level "
                   "once per engine)")
    p.add_argument("--quick", action="store_true", help="2-second levels (smoke test)")
    p.add_argument("--client-cpu", default="0", help="CPU for the client process (taskset), '' for none")
    p.add_argument("--server-cpu", default="1", help="CPU for the server (taskset), '' for none")
    p.add_argument("--work-dir", default=str(HERE / ".build" / "locust_runs"))
    p.add_argument("--json", default=str(HERE / ".build" / "locust_capacity.json"))
    p.add_argument("--max-load", type=float, default=None, help="first wait until the 1-minute load is below this")
    p.add_argument("--patience", type=float, default=2400.0, help="how long --max-load may wait (seconds)")
    a = p.parse_args(argv)
    levels = [(float(x.split(":")[0]), float(x.split(":")[1])) for x in a.rates.split(",")] if a.rates else LEVELS
    if a.quick:
        levels = [(r, 2.0) for r, _ in levels]
    bench = gc.Bench(gc.build_server(HERE / ".build"), Path(a.work_dir), a.server_cpu or None,
                     (a.client_cpu,) if a.client_cpu else ())
    results: dict[str, Any] = {"machine": gc.machine_info(), "targets": gc.TARGETS, "levels": []}
    if a.max_load is not None:
        results["machine"]["loadavg_when_started"] = gc.wait_quiet(a.max_load, a.patience)
    for rate, seconds in levels:
        if a.front in ("both", "asyncio"):
            fig = bench.level(rate, seconds, label=f"asyncio-{rate:g}rps")
            fig["front_end"] = "asyncio"
            results["levels"].append(fig)
        if a.front in ("both", "locust"):
            for engine in (("gevent", "asyncio") if a.engine == "both" else (a.engine,)):
                results["levels"].append(locust_level(bench, rate, seconds, engine))
    fronts = sorted({f["front_end"] for f in results["levels"]})
    for front in fronts:
        ok = [f["target_rate_rps"] for f in results["levels"] if f["front_end"] == front and f["meets"]["all"]]
        results[f"highest_rate_meeting_targets_{front}"] = max(ok, default=None)
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    render(results["levels"])
    for front in fronts:
        print(f"highest rate meeting the targets, {front}: {results[f'highest_rate_meeting_targets_{front}']}")
    print(f"results: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
