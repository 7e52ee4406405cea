"""Locust's distributed mode across hosts, on one machine: the same level once as a single Locust process and once
as a master with two workers, each process in its own network namespace (``loadgen.locust.netbed``), the embedded
Triton (``loadgen serve``, the project's launcher) in another, all talking over the bed's private /24.

It prints one line

    distributed: hosts=H workers=W rate=R achieved=A ttft_p50_merged_ms=M ttft_p50_single_ms=S t0_skew_ms=K

(H: namespaces used as hosts; R: the target rate; A: the distributed run's achieved rate at the server, req/s; M:
TTFT p50 of the master's summary, computed from every worker's records shipped back to it; S: the single process's;
K: the largest distance of a worker's actual start from t0, on the master's clock) and whether the issue's
done-when holds: hosts >= 3, achieved >= 95 % of the schedule's rate, M within 5 % of S, K <= 2 ms. Default
workload: the one tests/test_locust_frontends.py measured to give stable TTFT percentiles on this 2-core machine
(Poisson 16 req/s, 320 requests, 1536-token prompts, 4 output tokens). Needs root (network namespaces).

    .venv/bin/python benchmarks/distributed.py                     # about a minute
    .venv/bin/python benchmarks/distributed.py --rate 40 --requests 400
    .venv/bin/python benchmarks/distributed.py --engine asyncio     # workers send with the asyncio runner's path
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from loadgen.locust.bedrun import run_distributed, run_single, server_url, start_server  # noqa: E402
from loadgen.locust.netbed import NetBed, NetBedUnavailable  # noqa: E402

SERVER = ["--server-model", "opt-125m", "--server-gpu", "h100-64gb", "--server-replicas", "2", "--server-max-batch",
          "32", "--server-speed", "0.2"]
USER_CLASS = "TritonHttpPoisson"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM: leave through the bed's exit, which removes the namespaces


def summary(run_dir: Path) -> dict:
    return orjson.loads((run_dir / "summary.json").read_bytes())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=16.0)
    p.add_argument("--requests", type=int, default=320)
    p.add_argument("--input-tokens", type=int, default=1536)
    p.add_argument("--output-tokens", type=int, default=4)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--engine", default="gevent", choices=("gevent", "asyncio"), help="Locust's --engine (both runs)")
    p.add_argument("--work-dir", default=None, help="where the runs go (default: a temporary directory, kept)")
    p.add_argument("--json", default=str(HERE / ".build" / "distributed.json"))
    a = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    work = Path(a.work_dir or tempfile.mkdtemp(prefix="loadgen-distributed-"))
    work.mkdir(parents=True, exist_ok=True)
    load = ["--rate", f"{a.rate:g}", "--requests", str(a.requests), "--seed", str(a.seed), "--input-tokens",
            str(a.input_tokens), "--output-tokens", str(a.output_tokens), "--perf-metrics", "--engine", a.engine]
    hosts = ["server", "master", "w0", "w1"]
    load_before = os.getloadavg()
    started = time.monotonic()
    try:
        with NetBed(hosts) as bed:
            start_server(bed, "server", work / "serve.log", SERVER)
            url = server_url(bed, "server")
            single = run_single(bed, "master", url, USER_CLASS, load, work / "single")
            if single.master_rc != 0:
                print(single.log_text("single"), file=sys.stderr)
                return 1
            dist = run_distributed(bed, "master", ["w0", "w1"], url, USER_CLASS, load, work / "distributed")
            if dist.master_rc != 0:
                print(dist.log_text("master"), file=sys.stderr)
                return 1
    except NetBedUnavailable as err:
        print(f"distributed: cannot build the namespaces here: {err}", file=sys.stderr)
        return 2
    s1, s2 = summary(single.run_dir()), summary(dist.run_dir())
    c = s2["client"]
    m, s = s2["ttft_ms"]["p50"], s1["ttft_ms"]["p50"]
    result = {
        "hosts": len(hosts), "workers": c["workers"], "rate": a.rate, "achieved": s2["achieved_rate_rps"],
        "achieved_ratio": s2["achieved_ratio"], "ttft_p50_merged_ms": m, "ttft_p50_single_ms": s,
        "ttft_p50_rel_diff": (m - s) / s, "t0_skew_ms": c["t0_skew_ms"], "clock": c["clock"],
        "records_collected": c["records_collected"], "lost_workers": c["lost_workers"],
        "single_achieved": s1["achieved_rate_rps"], "ttft_p90_merged_ms": s2["ttft_ms"]["p90"],
        "ttft_p90_single_ms": s1["ttft_ms"]["p90"], "exact": s2["ttft_ms"].get("exact"),
        "workload": load, "server": SERVER, "seconds": round(time.monotonic() - started, 1),
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "work_dir": str(work),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": f"{os.uname().nodename}, "
        f"{os.cpu_count()} CPUs",
    }
    fails = [why for ok, why in ((result["hosts"] >= 3, "hosts < 3"),
                                 (result["achieved_ratio"] >= 0.95, "achieved < 95 % of the schedule's rate"),
                                 (abs(result["ttft_p50_rel_diff"]) <= 0.05, "merged TTFT p50 off by more than 5 %"),
                                 (result["t0_skew_ms"] <= 2.0, "t0 skew above 2 ms")) if not ok]
    result["done_when"] = not fails
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(f"distributed: hosts={result['hosts']} workers={result['workers']} rate={a.rate:g} "
          f"achieved={result['achieved']:.2f} ttft_p50_merged_ms={m:.3f} ttft_p50_single_ms={s:.3f} "
          f"t0_skew_ms={result['t0_skew_ms']:.3f}")
    print(f"done-when: {'met' if not fails else 'NOT met: ' + '; '.join(fails)} "
          f"(TTFT p50 {100 * result['ttft_p50_rel_diff']:+.2f} %, achieved {100 * result['achieved_ratio']:.1f} % "
          f"of the schedule; {result['seconds']} s; details {a.json})")
    return 0 if not fails else 1


if __name__ == "__main__":
    sys.exit(main())
