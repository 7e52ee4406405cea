"""How many tokens/s the embedded Triton server streams in real time on this machine, and how its timing degrades.

For each concurrency level, a closed loop of C streams (each sends the next request as soon as its previous one
ends) runs against one server for ``--duration`` seconds; only the window after ``--warmup`` counts. Per level:

* delivered tokens/s (client-received) vs the tokens/s the performance model says the emulated GPU would produce
  at that running batch (``expected``): where delivered falls short, the machine, not the emulated GPU, is the limit
  (with several replicas the model figure ignores their sharing of the GPU and is only an upper bound);
* client-observed ITL (p50, p99) vs the model's ITL at that batch (``decode_step_time / speed``);
* the engine's own step lag (p50, p99 of how late each step started; ``loadgen_emulated_step_lag_seconds``) and
  how long responses waited to be sent (``loadgen_emulated_send_delay_seconds``): the two parts of the timing
  error that belong to this machine, not to the emulated GPU;
* CPU seconds per second used by the server's processes and by this load generator.

Usage: ``python benchmarks/server_capacity.py [--model opt-125m] [--speed 1] [--concurrency 32,64,128,256]
[--write benchmarks/SERVER_CAPACITY.md]``. The load generator is a lean aiohttp client in this process (uvloop when
installed), so the server gets the rest of the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
import urllib.request
from datetime import date
from pathlib import Path

import aiohttp
import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadgen.emulator.perfmodel import decode_step_time  # noqa: E402
from loadgen.emulator.profiles import get_gpu, get_model  # noqa: E402
from loadgen.serve.launcher import EmbeddedServer, ServerConfig  # noqa: E402

PROMPT = " ".join(["word"] * 32)


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def scrape(url: str) -> dict[str, float]:
    out = {}
    for line in urllib.request.urlopen(url, timeout=5).read().decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def family(values: dict[str, float], name: str, contains: str = "") -> list[float]:
    return [v for k, v in values.items() if k.split("{", 1)[0] == name and contains in k]


async def one_level(server: EmbeddedServer, conc: int, out_tokens: int, duration: float,
                    warmup: float) -> dict:
    url = f"{server.http_url}/v2/models/{server.config.model_name}/generate_stream"
    body = orjson.dumps({"text_input": PROMPT, "max_tokens": out_tokens, "stream": True})
    t_start = time.monotonic_ns()
    t_win = t_start + int(warmup * 1e9)
    t_end = t_start + int((warmup + duration) * 1e9)
    gaps: list[np.ndarray] = []
    counted = [0]

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.monotonic_ns() < t_end:
            stamps = []
            async with session.post(url, data=body) as resp:
                async for line in resp.content:
                    if line.startswith(b"data:"):
                        stamps.append(time.monotonic_ns())
            arr = np.asarray(stamps, dtype=np.int64)
            inside = arr[(arr >= t_win) & (arr < t_end)]
            counted[0] += inside.size
            if arr.size > 1:
                g = np.diff(arr)
                gaps.append(g[(arr[1:] >= t_win) & (arr[1:] < t_end)])

    pids = server.process_tree()
    m0 = None
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = [asyncio.create_task(worker(session)) for _ in range(conc)]
        await asyncio.sleep(warmup)
        m0 = scrape(server.metrics_url)
        c0s, c0c = cpu_seconds(pids), time.process_time()
        w0 = time.monotonic()
        await asyncio.sleep(duration)
        w1 = time.monotonic()
        c1s, c1c = cpu_seconds(pids), time.process_time()
        m1 = scrape(server.metrics_url)
        await asyncio.gather(*tasks)
    window = (t_end - t_win) / 1e9
    g = np.concatenate(gaps) / 1e6 if gaps else np.zeros(1)
    steps = sum(family(m1, "loadgen_emulated_steps_total")) - sum(family(m0, "loadgen_emulated_steps_total"))
    running = family(m1, "loadgen_emulated_requests", 'state="running"')
    return {
        "concurrency": conc,
        "tokens_per_s": counted[0] / window,
        "itl_p50_ms": float(np.percentile(g, 50)),
        "itl_p99_ms": float(np.percentile(g, 99)),
        "lag_p50_ms": max(family(m1, "loadgen_emulated_step_lag_seconds", 'quantile="0.5"')) * 1e3,
        "lag_p99_ms": max(family(m1, "loadgen_emulated_step_lag_seconds", 'quantile="0.99"')) * 1e3,
        "send_p50_ms": max(family(m1, "loadgen_emulated_send_delay_seconds", 'quantile="0.5"')) * 1e3,
        "send_p99_ms": max(family(m1, "loadgen_emulated_send_delay_seconds", 'quantile="0.99"')) * 1e3,
        "engine_steps_per_s": steps / (w1 - w0),
        "running_now": sum(running),
        "server_cpu": (c1s - c0s) / (w1 - w0),
        "client_cpu": (c1c - c0c) / (w1 - w0),
    }


def expected(model: str, gpu: str, replicas: int, speed: float, conc: int, out_tokens: int) -> tuple[float, float]:
    """(model tokens/s, model ITL ms) at running batch conc/replicas, mid-length context, GPU unshared."""
    batch = max(1, round(conc / replicas))
    step = decode_step_time(get_model(model), get_gpu(gpu), batch, 32 + out_tokens / 2) / speed
    return replicas * batch / step, step * 1e3


def table(rows: list[dict]) -> str:
    head = ("| C | delivered tok/s | model tok/s | delivered/model | ITL p50 ms (model) | ITL p99 ms | "
            "step lag p50 / p99 ms | send delay p50 / p99 ms | server CPU | client CPU |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        shared = r.get("replicas", 1) > 1  # the model figure ignores GPU sharing: an upper bound only
        model = f"<= {r['model_tokens_per_s']:,.0f}" if shared else f"{r['model_tokens_per_s']:,.0f}"
        ratio = "n/a" if shared else f"{r['tokens_per_s'] / r['model_tokens_per_s']:.0%}"
        itl = f">= {r['model_itl_ms']:.2f}" if shared else f"{r['model_itl_ms']:.2f}"
        lines.append(
            f"| {r['concurrency']} | {r['tokens_per_s']:,.0f} | {model} | {ratio} | {r['itl_p50_ms']:.2f} ({itl}) | "
            f"{r['itl_p99_ms']:.2f} | {r['lag_p50_ms']:.2f} / {r['lag_p99_ms']:.2f} | "
            f"{r['send_p50_ms']:.2f} / {r['send_p99_ms']:.2f} | {r['server_cpu']:.2f} | "
            f"{r['client_cpu']:.2f} |")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> list[dict]:
    cfg = ServerConfig(profile=args.model, gpu=args.gpu, max_batch=args.max_batch, replicas=args.replicas,
                       speed=args.speed)
    rows = []
    for conc in args.concurrency:
        # A fresh server per level: the engine's lag quantiles cover its recent steps, not just this level's.
        with EmbeddedServer(cfg) as server:
            row = await one_level(server, conc, args.output_tokens, args.duration, args.warmup)
        row["model_tokens_per_s"], row["model_itl_ms"] = expected(args.model, args.gpu, args.replicas,
                                                                  args.speed, conc, args.output_tokens)
        row["replicas"] = args.replicas
        rows.append(row)
        print(table([row]).splitlines()[-1], flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="opt-125m")
    p.add_argument("--gpu", default="h100-64gb")
    p.add_argument("--max-batch", type=int, default=256)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--speed", type=float, default=1.0)
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[16, 64, 128, 256])
    p.add_argument("--output-tokens", type=int, default=200)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--write", default=None, help="append the table to this markdown file")
    args = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(table([]))
    rows = asyncio.run(run(args))
    if args.write:
        with open(args.write, "a") as f:
            f.write(f"\n### {args.model} on {args.gpu}, {args.replicas} replica(s), max batch {args.max_batch}, "
                    f"speed {args.speed:g}, {args.output_tokens} output tokens ({date.today()}, "
                    f"{platform.node()}, {os.cpu_count()} CPUs)\n\n{table(rows)}\n")


if __name__ == "__main__":
    main()
