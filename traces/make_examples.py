"""Generate the small example traces in this folder (deterministic: same seed, same bytes).

    .venv/bin/python traces/make_examples.py

- ``example_bursty.csv`` (Azure format): two-state Markov-modulated arrivals (quiet 0.4 req/s, bursts of
  12 req/s lasting 3 s on average), lognormal prompt and output lengths. For trying ``--target-rate`` and
  ``traces info`` on a bursty trace without downloading one.
- ``example_prefix.jsonl`` (Mooncake format): arrivals in 3 s buckets, prompts that share 512-token prefix blocks
  (four "system prompts" and follow-up turns that extend an earlier request), for prefix-cache experiments and
  ``--trace-buckets spread``.
- ``example_generic.csv`` (a generic CSV: ``ts_ms,prompt_tokens,completion_tokens``): a rate that steps up and
  down, read with ``--trace-format csv --trace-columns time=ts_ms,input=prompt_tokens,output=completion_tokens
  --trace-time-unit ms``.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np

from loadgen.traces.synthetic import MMPP, RateProfile, nhpp_offsets

HERE = Path(__file__).resolve().parent
NS = 1_000_000_000


def bursty(rng: np.random.Generator) -> str:
    model = MMPP((0.4, 12.0), (20.0, 3.0))
    offsets = nhpp_offsets(model.path(90.0, rng), rng)
    start = dt.datetime(2024, 5, 10, 9, 0, 0)
    ins = np.clip(np.rint(rng.lognormal(np.log(900), 0.8, len(offsets))), 8, 8000).astype(int)
    outs = np.clip(np.rint(rng.lognormal(np.log(120), 0.9, len(offsets))), 1, 1500).astype(int)
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for t, a, b in zip(offsets.tolist(), ins.tolist(), outs.tolist(), strict=True):
        stamp = start + dt.timedelta(microseconds=t // 1000)
        lines.append(f"{stamp:%Y-%m-%d %H:%M:%S}.{stamp.microsecond:06d}0,{a},{b}")
    return "\n".join(lines) + "\n"


def prefix(rng: np.random.Generator) -> str:
    next_id = 0
    systems = []
    for _ in range(4):  # four shared system prompts of 1-2 blocks
        n = int(rng.integers(1, 3))
        systems.append(list(range(next_id, next_id + n)))
        next_id += n
    history: list[list[int]] = []
    rows = []
    t = 0
    while len(rows) < 60:
        for _ in range(int(rng.poisson(2.5))):
            if history and rng.random() < 0.35:  # a follow-up turn: extends an earlier request's blocks
                base = history[int(rng.integers(0, len(history)))]
            else:
                base = systems[int(rng.integers(0, len(systems)))]
            extra = int(rng.integers(1, 4))
            ids = base + list(range(next_id, next_id + extra))
            next_id += extra
            length = (len(ids) - 1) * 512 + int(rng.integers(1, 513))
            history.append(ids)
            rows.append({"timestamp": t, "input_length": length, "output_length": int(rng.integers(8, 400)),
                         "hash_ids": ids})
        t += 3000
    return "".join(json.dumps(r) + "\n" for r in rows[:60])


def generic(rng: np.random.Generator) -> str:
    profile = RateProfile(np.array([0.0, 20.0, 35.0, 60.0]), np.array([1.0, 4.0, 0.5]))
    offsets = nhpp_offsets(profile, rng)
    lines = ["ts_ms,prompt_tokens,completion_tokens"]
    for t in offsets.tolist():
        lines.append(f"{t // 1_000_000},{int(rng.integers(32, 2048))},{int(rng.integers(16, 512))}")
    return "\n".join(lines) + "\n"


EXAMPLES = (("example_bursty.csv", bursty, 11), ("example_prefix.jsonl", prefix, 12),
            ("example_generic.csv", generic, 13))


def main(out_dir: Path = HERE) -> None:
    for name, make, seed in EXAMPLES:
        text = make(np.random.Generator(np.random.PCG64(seed)))
        (out_dir / name).write_text(text)
        print(f"{name}: {len(text.splitlines())} lines, {len(text.encode())} bytes")


if __name__ == "__main__":
    main()
