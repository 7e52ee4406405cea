"""Prefix cache and multi-turn sessions: the same multi-turn workload against the embedded server with the emulated
engine's prefix cache on, then off.

    .venv/bin/python benchmarks/prefix_cache.py                 # about 40 s on a 2-core machine
    .venv/bin/python benchmarks/prefix_cache.py --sessions 8    # a quicker look

Each run is one ``loadgen run`` (its own embedded server, started fresh, so the server's counters are the run's):
``--session-turns`` turns per session (at least 3), a shared system prompt, ``--concurrency`` users each running
sessions back to back. Every turn resends the conversation so far (the answers the server gave included), so with
the cache on the server reuses the KV blocks of the earlier turns and prefills only the new tokens.

Printed, one line: ``prefix-cache: hit_rate=H ttft_p50_on_ms=X ttft_p50_off_ms=Y turns=N``:

- ``hit_rate``: prompt tokens served from the cache / prompt tokens, over the cache-on run, from the server's own
  counters (``loadgen_emulated_prefix_cache_hits_total`` / ``..._queries_total`` in the run's last
  ``server_metrics.jsonl`` scrape);
- ``ttft_p50_on_ms`` / ``ttft_p50_off_ms``: the TTFT median of every measured turn of each run (summary.json);
- ``turns``: turns completed in the cache-on run.

Done when (issue 14): hit_rate >= 0.3 and ttft_p50_on <= 0.8 x ttft_p50_off; the exit code is 1 otherwise.
Results: benchmarks/PREFIX_CACHE.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOADGEN = [sys.executable, "-m", "loadgen"]


def run_level(out: Path, cache: str, a: argparse.Namespace) -> Path:
    """One level with the cache ``on`` or ``off``; returns its run directory."""
    cmd = [*LOADGEN, "run", "--no-live", "--out-dir", str(out), "--name", f"cache-{cache}",
           "--server-prefix-cache", cache, "--concurrency", str(a.users), "--requests", str(a.sessions),
           "--session-turns", str(a.turns), "--session-system-tokens", str(a.system_tokens),
           "--session-user-tokens", str(a.user_tokens), "--session-answer-tokens", str(a.answer_tokens),
           "--session-think-time", a.think, "--seed", str(a.seed)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode not in (0,):
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-2000:])
        raise SystemExit(f"prefix-cache: the cache-{cache} run failed (exit {proc.returncode})")
    dirs = sorted(out.glob(f"*-cache-{cache}"))
    if not dirs:
        raise SystemExit(f"prefix-cache: no run directory for cache-{cache} under {out}")
    return dirs[-1]


def server_hit_rate(run_dir: Path) -> float | None:
    """Hits / queries (tokens) of the run's last server-metrics scrape: the whole run, the server being fresh."""
    last = None
    with open(run_dir / "server_metrics.jsonl", "rb") as fh:
        for line in fh:
            try:
                last = json.loads(line)
            except json.JSONDecodeError:
                continue
    if not last:
        return None
    totals: dict[str, float] = {}
    for name, _labels, value in last.get("samples", []):
        totals[name] = totals.get(name, 0.0) + float(value)
    q = totals.get("loadgen_emulated_prefix_cache_queries_total")
    h = totals.get("loadgen_emulated_prefix_cache_hits_total")
    return h / q if q and h is not None else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=24, help="sessions per run (default 24)")
    p.add_argument("--users", type=int, default=4, help="concurrent users (default 4)")
    p.add_argument("--turns", type=int, default=4, help="turns per session, at least 3 (default 4)")
    p.add_argument("--system-tokens", type=int, default=512, help="shared system prompt (default 512)")
    p.add_argument("--user-tokens", default="64", help="new user message per turn (default 64)")
    p.add_argument("--answer-tokens", default="32", help="answer tokens per turn (default 32)")
    p.add_argument("--think", default="50ms", help="think time between turns (default 50ms)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", default=None, help="keep the run directories here (default: a temporary one)")
    a = p.parse_args(argv)
    if a.turns < 3:
        p.error("--turns: at least 3 turns per session")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(a.work_dir or tmp)
        on, off = run_level(out, "on", a), run_level(out, "off", a)
        s_on = json.loads((on / "summary.json").read_text())
        s_off = json.loads((off / "summary.json").read_text())
        hit = server_hit_rate(on)
        x, y = s_on["ttft_ms"]["p50"], s_off["ttft_ms"]["p50"]
        turns = sum(t["completed"] for t in (s_on.get("sessions") or {}).get("by_turn", []))
        print(f"prefix-cache: hit_rate={hit if hit is not None else float('nan'):.3f} ttft_p50_on_ms={x:.2f} "
              f"ttft_p50_off_ms={y:.2f} turns={turns}")
        for name, s in (("on", s_on), ("off", s_off)):
            rows = ", ".join(f"turn {t['turn']}: {t['ttft_p50_ms']} ms / {t['input_tokens_mean']:.0f} tok"
                             for t in s["sessions"]["by_turn"])
            print(f"  cache {name}: TTFT p50 by turn: {rows}", file=sys.stderr)
    ok = hit is not None and hit >= 0.3 and x <= 0.8 * y
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
