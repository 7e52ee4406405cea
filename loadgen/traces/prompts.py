"""Prompts for traces that carry no text: exact token counts, and the prefix reuse the trace recorded.

- Rows without prefix information (Azure, BurstGPT): ``PromptBuilder.build(n, index)``, a different text per
  replayed request, exact for the tokenizer in use (or the word-level count).
- Rows with Mooncake ``hash_ids``: the prompt is built block by block (512 tokens per block, or the scaled block
  size). Block k's text is seeded by the *chain* of hash ids up to k, so two requests whose ids agree up to block k
  have the same first k+1 blocks of text, and a server's prefix cache sees the reuse the trace had. A partial last
  block is the first tokens of its chain's text (a prefix of the full block another request may have). Block texts
  are cached in a bounded LRU. Copies made by rate superposition salt their chains, so a copy stands for other
  users rather than repeating the same prefixes.
- ShareGPT prompts (``SharegptPool``): real first-turn text in a seeded order; the prompt's own token count is sent
  (the trace's input length is not used), output lengths come from the trace or a distribution.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from typing import Any

import numpy as np
import orjson

from loadgen.core.prompts import PromptBuilder
from loadgen.core.records import RequestSpec
from loadgen.errors import UsageError
from loadgen.traces.scaling import TracePlan

_MASK = (1 << 64) - 1
PREBUILD_CHARS = 32 << 20  # prompt text built before the run starts (about 5,000 Azure-sized prompts)
PREBUILD_S = 5.0  # and at most this long
_CHAIN_SEED = 0x6D6F6F6E  # domain tag: chain keys never equal a plain request or group number by accident


def _scramble(x: int) -> int:
    """A 64-bit bijective mixer (xor-shift-multiply); scatters neighbouring inputs."""
    x &= _MASK
    x = ((x ^ (x >> 33)) * 0xFF51AFD7ED558CCD) & _MASK
    x = ((x ^ (x >> 33)) * 0xC4CEB9FE1A85EC53) & _MASK
    return x ^ (x >> 33)


def chain_keys(hash_ids: np.ndarray, salt: int = 0) -> list[int]:
    """Key of each block: a function of all hash ids up to and including that block (and the copy's salt)."""
    key = _scramble(_CHAIN_SEED ^ (salt * 0x9E3779B97F4A7C15))
    out = []
    for h in hash_ids.tolist():
        key = _scramble(key ^ _scramble(int(h) & _MASK))
        out.append(key)
    return out


class BlockPrompts:
    """Block-by-block prompt text with a bounded LRU of block texts (keyed by chain key and length)."""

    def __init__(self, builder: PromptBuilder, max_cached: int = 4096) -> None:
        self.builder = builder
        self.max_cached = max_cached
        self._cache: OrderedDict[tuple[int, int], str] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def block(self, key: int, tokens: int) -> str:
        """The first ``tokens`` tokens of the text of the block with chain key ``key``."""
        k = (key, tokens)
        text = self._cache.get(k)
        if text is not None:
            self._cache.move_to_end(k)
            self.hits += 1
            return text
        self.misses += 1
        text, _ = self.builder.build(tokens, 0, prefix_group=key, prefix_tokens=tokens)
        self._cache[k] = text
        if len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)
        return text

    def build(self, n_tokens: int, keys: list[int], block_tokens: int, own_key: int) -> tuple[str, int]:
        """A prompt of ``n_tokens`` whose block k is the text of ``keys[k]``; blocks past the keys use ``own_key``
        chains (the request's own text). Returns (text, token count as the builder counts it)."""
        n_blocks = -(-n_tokens // block_tokens)
        keys = list(keys[:n_blocks])
        key = own_key
        while len(keys) < n_blocks:  # more blocks than hash ids: continue with the request's own chain
            key = _scramble(key + 1)
            keys.append(key)
        last = n_tokens - (n_blocks - 1) * block_tokens
        head = [self.block(k, block_tokens) for k in keys[:-1]]
        if self.builder.method.startswith("word-level"):
            return " ".join([*head, self.block(keys[-1], last)]), n_tokens
        return self._fit_last(head, keys[-1], last, n_tokens)

    def _fit_last(self, head: list[str], key: int, last: int, n_tokens: int) -> tuple[str, int]:
        """With a real tokenizer, joined blocks can merge at their seams: adjust the last block until exact."""
        best: tuple[int, str, int] | None = None
        size = last
        for _ in range(8):
            text = " ".join([*head, self.block(key, size)])
            count = self.builder.count(text)
            if count == n_tokens:
                return text, count
            if best is None or abs(count - n_tokens) < best[0]:
                best = (abs(count - n_tokens), text, count)
            size = max(1, size + (n_tokens - count))
        assert best is not None
        return best[1], best[2]  # the closest; the request records the count it really has


class SharegptPool:
    """First-turn human prompts of a ShareGPT-format JSON file, served in a seeded order."""

    def __init__(self, path: str, builder: PromptBuilder, seed: int, max_tokens: int | None = None) -> None:
        if not os.path.isfile(path):
            raise UsageError(f"--trace-prompts sharegpt:{path}: no such file")
        try:
            with open(path, "rb") as f:
                data = orjson.loads(f.read())
        except (OSError, orjson.JSONDecodeError) as err:
            raise UsageError(f"--trace-prompts sharegpt:{path}: not a ShareGPT JSON file ({err})") from None
        texts = []
        for item in data if isinstance(data, list) else []:
            conv = item.get("conversations") if isinstance(item, dict) else None
            if not conv:
                continue
            first = next((t for t in conv if isinstance(t, dict) and t.get("from") == "human"), None)
            if first and isinstance(first.get("value"), str) and first["value"].strip():
                texts.append(first["value"])
        if not texts:
            raise UsageError(f"--trace-prompts sharegpt:{path}: no human first turns found (expected a list of "
                             '{"id", "conversations": [{"from": "human", "value": ...}]})')
        self.builder = builder
        counts = [builder.count(t) for t in texts]
        if max_tokens is not None:
            kept = [(t, c) for t, c in zip(texts, counts, strict=True) if c <= max_tokens]
            if not kept:
                raise UsageError(f"--trace-prompts: no ShareGPT prompt in {path} fits --max-input-tokens {max_tokens}")
            texts, counts = [t for t, _ in kept], [c for _, c in kept]
        self.path = path
        self.texts = texts
        self.counts = counts
        self.order = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0x5347]))).permutation(
            len(texts))

    def prompt(self, index: int) -> tuple[str, int]:
        k = int(self.order[index % len(self.order)])
        return self.texts[k], self.counts[k]

    def describe(self) -> str:
        return f"ShareGPT first turns from {self.path} ({len(self.texts)} prompts, seeded order; their own lengths)"


class TraceRequestSource:
    """``spec(index)`` for the requests of a ``TracePlan`` (the loop's request source for a trace replay)."""

    def __init__(self, plan: TracePlan, builder: PromptBuilder, seed: int = 0, min_tokens_equal_max: bool = True,
                 sharegpt: SharegptPool | None = None, output_tokens: np.ndarray | None = None,
                 params: dict[str, Any] | None = None) -> None:
        self.plan = plan
        self.builder = builder
        self.seed = int(seed)
        self.min_tokens_equal_max = min_tokens_equal_max
        self.sharegpt = sharegpt
        self.output_tokens = plan.output_tokens if output_tokens is None else output_tokens
        self.params = dict(params or {})
        self.blocks = BlockPrompts(builder)
        src = plan.source
        self._hash_flat, self._hash_start = src.hash_flat, src.hash_start
        self._ready: dict[int, RequestSpec] = {}

    def __len__(self) -> int:
        return len(self.plan)

    def _hash_ids(self, row: int) -> np.ndarray | None:
        if self._hash_start is None:
            return None
        a, b = int(self._hash_start[row]), int(self._hash_start[row + 1])
        return self._hash_flat[a:b] if b > a else None  # type: ignore[index]

    def prebuild(self, budget_chars: int = PREBUILD_CHARS, budget_s: float = PREBUILD_S) -> int:
        """Build the first requests' prompts now, before the clock starts, up to ``budget_chars`` of text and
        ``budget_s`` seconds (a real tokenizer fits each prompt with several encode calls).

        The loop asks for a request's spec when its deadline comes; a burst of simultaneous requests then waits
        for each prompt in turn (about 0.1 ms per 1,000 words). Built ahead, those specs cost nothing on the hot
        path; each is handed out once and then dropped, so the memory goes as the replay proceeds.
        """
        used = 0
        deadline = time.perf_counter() + budget_s
        for i in range(len(self.plan)):
            if i in self._ready:
                continue
            spec = self._build(i)
            used += len(spec.prompt)
            if used > budget_chars or time.perf_counter() > deadline:
                break
            self._ready[i] = spec
        return len(self._ready)

    def spec(self, index: int) -> RequestSpec:
        ready = self._ready.pop(index, None)
        return ready if ready is not None else self._build(index)

    def _build(self, index: int) -> RequestSpec:
        if not 0 <= index < len(self.plan):
            raise IndexError(f"request {index} is outside the replay (0..{len(self.plan) - 1})")
        n_out = int(self.output_tokens[index])
        group = None
        if self.sharegpt is not None:
            prompt, count = self.sharegpt.prompt(index)
        else:
            n_in = int(self.plan.input_tokens[index])
            row = int(self.plan.rows[index])
            ids = self._hash_ids(row)
            if ids is None:
                prompt, count = self.builder.build(n_in, index)
            else:
                keys = chain_keys(ids, int(self.plan.copy[index]))
                own = _scramble(_CHAIN_SEED + 7919 * (index + 1))
                prompt, count = self.blocks.build(n_in, keys, self.plan.block_tokens, own)
                group = keys[0] & ((1 << 63) - 1)
        return RequestSpec(index=index, prompt=prompt, input_tokens=count, max_tokens=n_out,
                           min_tokens=n_out if self.min_tokens_equal_max else None, prefix_group=group,
                           params=dict(self.params))

    def to_dict(self) -> dict[str, Any]:
        return {"prompt_method": self.builder.method,
                "prompts": self.sharegpt.describe() if self.sharegpt is not None else (
                    "synthesised to each request's token count; Mooncake hash_ids blocks share their text"),
                "seed": self.seed, "min_tokens_equal_max": self.min_tokens_equal_max, "params": dict(self.params)}
