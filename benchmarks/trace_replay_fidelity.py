"""Trace replay fidelity: is each request sent when the trace says, and does the replay keep the trace's shape?

    .venv/bin/python benchmarks/trace_replay_fidelity.py            # 5 minutes of the Azure conversation trace
    .venv/bin/python benchmarks/trace_replay_fidelity.py --quick    # 30 s, for a smoke test

1. Replays the first ``--window`` of the Azure 2023 conversation trace with ``loadgen run --trace`` (a separate
   process, the default fast HTTP client) against a stamping Triton-like server (another process, see
   ``loadgen/traces/fidelity.py``), at each ``--speedups``. The issue error is measured *at the server*:
   server arrival - (t0 + trace offset), same monotonic clock. Targets: p99 <= 2 ms at speed-up 1, <= 5 ms at 10.
   Arrival is the kernel's receive stamp of the request's first bytes (``user_*``: when the server's event loop
   read them, which adds the stamping server's own wake-up delay on a busy machine).
2. Compares ``traces info`` of the trace window with that of the replay (issued times) and of the server arrival
   times: inter-arrival CV and index of dispersion at 1 s and 60 s.
3. ``--target-rate`` at 0.5x and 2x of the Azure code trace: its 60-s index of dispersion must stay within 20 %
   (several seeds, to show the spread); the same for the conversation trace, whose dispersion comes from a slow
   rate drift rather than bursts (there thinning keeps the short-scale shape and lowers the 60-s dispersion).

Prints a JSON document with every figure (``--out FILE`` also writes it); benchmarks/TRACE_REPLAY.md records them.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
import orjson

from loadgen.core.stats import cv, index_of_dispersion, interarrival_s
from loadgen.traces.fidelity import StampServer, issue_errors, run_replay
from loadgen.traces.info import run_dir_info
from loadgen.traces.readers import open_trace
from loadgen.traces.scaling import ReplayOptions, build_plan, load_window

TRACES = Path(os.environ.get("LOADGEN_SHARED_TRACES", Path(__file__).resolve().parents[2] / "shared" / "traces"))
CONV = TRACES / "azure-llm-2023" / "AzureLLMInferenceTrace_conv.csv"
CODE = TRACES / "azure-llm-2023" / "AzureLLMInferenceTrace_code.csv"
TARGETS_MS = {1.0: 2.0, 10.0: 5.0}


def shape(offsets_ns: np.ndarray) -> dict[str, float]:
    t = np.sort(np.asarray(offsets_ns, dtype=np.int64))
    t = t - t[0]
    span = float(t[-1]) / 1e9
    return {"cv": round(cv(interarrival_s(t)), 4), "iod_1s": round(index_of_dispersion(t, 1.0, span), 4),
            "iod_60s": round(index_of_dispersion(t, 60.0, span), 4)}


def replay_fidelity(window: str, speedup: float, work: Path) -> dict:
    with StampServer(tokens=4) as srv:
        run_dir = run_replay(srv.url, str(CONV), work, ["--window", window, "--speedup", f"{speedup:g}"])
        stamps = srv.stamps()
    res = issue_errors(run_dir, stamps)
    e = res.pop("errors_ms")
    info = run_dir_info(run_dir)
    server_times = np.array(sorted(k if k is not None else u for u, k, _ in stamps), dtype=np.int64)
    target = TARGETS_MS.get(speedup)
    res.update({
        "speedup": speedup, "window": window, "p90_ms": float(np.percentile(e, 90)),
        "within_target_share": float((e <= target).mean()) if target else None, "target_p99_ms": target,
        "p99_without_first_request_ms": float(np.percentile(e[1:], 99)) if len(e) > 1 else None,
        "client_issue_error_ms": info["issue_error_ms"],
        "shape": {"schedule": _shape_of(info["schedule"]), "sent": _shape_of(info["sent"]),
                  "server_arrivals": shape(server_times)},
        "trace_window_unscaled": _shape_of(info["trace"]),
    })
    return res


def _shape_of(st: dict) -> dict:
    d = st.get("index_of_dispersion") or {}
    return {"cv": st.get("interarrival_cv"), "iod_1s": d.get("1s"), "iod_60s": d.get("60s"),
            "requests": st.get("requests"), "rate": st.get("mean_rate_rps")}


def rate_scaling(path: Path, seeds: int) -> dict:
    src = load_window(open_trace(str(path)))
    span = src.span_ns / 1e9
    rate = len(src) / span
    base = {w: index_of_dispersion(src.time_ns, w, span) for w in (1.0, 60.0)}
    out = {"trace": path.name, "trace_rate_rps": rate, "trace_iod_1s": base[1.0], "trace_iod_60s": base[60.0],
           "factors": {}}
    for f in (0.5, 2.0):
        iods: dict[float, list[float]] = {1.0: [], 60.0: []}
        rates, texts = [], []
        for seed in range(seeds):
            plan = build_plan(src, ReplayOptions(target_rate=rate * f, seed=seed))
            for w in iods:
                iods[w].append(index_of_dispersion(plan.offsets_ns, w, span))
            rates.append(len(plan) / span)
            texts.append(plan.facts["rate"]["text"])
        ratio = np.array(iods[60.0]) / base[60.0]
        out["factors"][f"{f:g}x"] = {"rate_ratio": float(np.mean(rates) / rate), "iod_60s_seed0": iods[60.0][0],
                                     "iod_60s_ratio_seed0": float(ratio[0]), "iod_60s_ratio_min": float(ratio.min()),
                                     "iod_60s_ratio_max": float(ratio.max()),
                                     "within_20pct_share": float((np.abs(ratio - 1) <= 0.2).mean()),
                                     "iod_1s_ratio_mean": float(np.mean(iods[1.0]) / base[1.0]), "method": texts[0]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--window", default="0:5m", help="part of the conversation trace to replay (default 0:5m)")
    ap.add_argument("--speedups", default="1,10")
    ap.add_argument("--seeds", type=int, default=20, help="seeds for the rate-scaling check")
    ap.add_argument("--quick", action="store_true", help="30 s window, 5 seeds")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--skip-replay", action="store_true", help="only the rate-scaling statistics (seconds)")
    a = ap.parse_args()
    window, seeds = ("0:30", 5) if a.quick else (a.window, a.seeds)
    results = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                           "load_avg": os.getloadavg()}, "replays": [],
               "rate_scaling": [rate_scaling(CODE, seeds), rate_scaling(CONV, seeds)]}
    with tempfile.TemporaryDirectory() as d:
        for sp in (float(x) for x in a.speedups.split(",")) if not a.skip_replay else ():
            results["replays"].append(replay_fidelity(window, sp, Path(d)))
    text = orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode()
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
