"""Prompts for traces without text: exact token counts, Mooncake hash_ids blocks sharing their text (so a prefix
cache sees the trace's reuse), copies that do not share, a subword tokenizer, and ShareGPT prompts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from loadgen.core.prompts import PromptBuilder, approx_token_count
from loadgen.errors import UsageError
from loadgen.traces.prompts import BlockPrompts, SharegptPool, TraceRequestSource, chain_keys
from loadgen.traces.readers import open_trace
from loadgen.traces.scaling import ReplayOptions, build_plan, load_window

SHARED = Path(__file__).resolve().parents[2] / "shared" / "traces"
CONV = SHARED / "azure-llm-2023" / "AzureLLMInferenceTrace_conv.csv"
MOONCAKE = SHARED / "mooncake" / "synthetic_trace.jsonl"
SHAREGPT = SHARED / "sharegpt" / "ShareGPT_V3_filtered_500.json"


def test_azure_prompts_have_the_trace_lengths_exactly():
    plan = build_plan(load_window(open_trace(str(CONV)), 0, 120), ReplayOptions())
    src = TraceRequestSource(plan, PromptBuilder(seed=3), seed=3)
    texts = set()
    for i in range(len(plan)):
        spec = src.spec(i)
        assert spec.input_tokens == plan.input_tokens[i] == approx_token_count(spec.prompt)
        assert spec.max_tokens == spec.min_tokens == plan.output_tokens[i]
        assert spec.prefix_group is None
        texts.add(spec.prompt[:60])
    assert len(texts) == len(plan)  # every request its own text: no accidental prefix-cache hits
    with pytest.raises(IndexError):
        src.spec(len(plan))
    ahead = TraceRequestSource(plan, PromptBuilder(seed=3), seed=3)
    ready = ahead.prebuild(budget_chars=20 * 6_000)  # built before the run, handed out once, then dropped
    assert 5 <= ready < len(plan)
    assert [ahead.spec(i).prompt for i in range(len(plan))] == [src.spec(i).prompt for i in range(len(plan))]
    assert not ahead._ready


def _common_words(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a.split(), b.split(), strict=False):
        if x != y:
            break
        n += 1
    return n


def _shared_ids(a, b) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def test_mooncake_requests_share_exactly_the_blocks_their_hash_ids_share():
    src_rows = load_window(open_trace(str(MOONCAKE)), 0, 300)
    plan = build_plan(src_rows, ReplayOptions(max_input_tokens=3000))  # clipping keeps the leading blocks
    source = TraceRequestSource(plan, PromptBuilder(seed=1), seed=1)
    n = len(plan)
    ids = [src_rows.hash_flat[src_rows.hash_start[i]:src_rows.hash_start[i + 1]].tolist() for i in range(n)]
    words = [source.spec(i).prompt.split() for i in range(n)]
    assert all(len(words[i]) == plan.input_tokens[i] for i in range(n))
    by_first: dict[int, list[int]] = {}
    for i in range(n):
        by_first.setdefault(ids[i][0], []).append(i)
    sharing = [(i, j) for group in by_first.values() for x, i in enumerate(group) for j in group[x + 1:x + 6]]
    rng = np.random.default_rng(0)
    others = [tuple(int(v) for v in rng.choice(n, 2, replace=False)) for _ in range(300)]
    assert len(sharing) > 100
    for i, j in sharing + others:
        k = _shared_ids(ids[i], ids[j])
        common = _common_words(" ".join(words[i]), " ".join(words[j]))
        full = min(k * 512, len(words[i]), len(words[j]))
        # the blocks with equal hash chains are the same text; the first differing block is different text
        assert full <= common < full + 4, (i, j, k, common)


def test_superposed_copies_do_not_share_their_originals_prefixes():
    src_rows = load_window(open_trace(str(MOONCAKE)), 0, 30)
    rate = len(src_rows) / (src_rows.span_ns / 1e9)
    plan = build_plan(src_rows, ReplayOptions(target_rate=2 * rate, seed=0))
    source = TraceRequestSource(plan, PromptBuilder(seed=1), seed=1)
    row = int(plan.rows[0])
    twins = np.nonzero(plan.rows == row)[0]
    assert len(twins) == 2 and set(plan.copy[twins].tolist()) == {0, 1}
    a, b = (source.spec(int(i)).prompt for i in twins)
    assert len(a.split()) == len(b.split()) and _common_words(a, b) < 8
    assert chain_keys(np.array([5, 6]), 0) != chain_keys(np.array([5, 6]), 1)
    assert chain_keys(np.array([5, 6]), 0)[0] == chain_keys(np.array([5, 7]), 0)[0]


def test_scaled_blocks_share_at_the_scaled_block_size():
    src_rows = load_window(open_trace(str(MOONCAKE)), 0, 30)
    plan = build_plan(src_rows, ReplayOptions(max_input_tokens=4096, length_mode="scale"))
    assert plan.block_tokens < 512
    source = TraceRequestSource(plan, PromptBuilder(seed=1), seed=1)
    spec = source.spec(0)
    assert spec.input_tokens == plan.input_tokens[0] <= 4096


class _Subword:
    """A toy subword tokenizer: a word is a start piece of up to 4 letters, then 4-letter continuation pieces."""

    def __init__(self) -> None:
        self.pieces: list[tuple[bool, str]] = []
        self.ids: dict[tuple[bool, str], int] = {}

    def _id(self, piece: tuple[bool, str]) -> int:
        if piece not in self.ids:
            self.ids[piece] = len(self.pieces)
            self.pieces.append(piece)
        return self.ids[piece]

    def encode(self, text: str) -> list[int]:
        return [self._id((k == 0, w[k:k + 4])) for w in text.split() for k in range(0, len(w), 4)]

    def decode(self, ids: list[int]) -> str:
        out = ""
        for i in ids:
            start, chunk = self.pieces[i]
            out += (" " if start and out else "") + chunk
        return out


def test_block_prompts_are_exact_with_a_subword_tokenizer():
    codec = _Subword()
    builder = PromptBuilder.with_codec(codec, "subword4", seed=2)
    blocks = BlockPrompts(builder, max_cached=8)
    keys = chain_keys(np.arange(6))
    for n in (1, 100, 512, 513, 1500, 3000):
        text, count = blocks.build(n, keys, 512, own_key=99)
        assert count == n == len(codec.encode(text)), n
    first, _ = blocks.build(1500, keys, 512, own_key=1)
    second, _ = blocks.build(1400, keys, 512, own_key=2)
    assert first[:2000] == second[:2000]  # same hash chain: same leading blocks of text
    assert len(blocks._cache) <= 8  # the block cache is bounded


def test_sharegpt_prompts_are_real_text_in_a_seeded_order():
    builder = PromptBuilder(seed=0)
    pool = SharegptPool(str(SHAREGPT), builder, seed=7)
    assert len(pool.texts) == 500
    plan = build_plan(load_window(open_trace(str(CONV)), 0, 60), ReplayOptions())
    outs = np.full(len(plan), 33, dtype=np.int32)
    source = TraceRequestSource(plan, builder, seed=7, sharegpt=pool, output_tokens=outs)
    specs = [source.spec(i) for i in range(len(plan))]
    assert all(s.prompt in pool.texts and s.input_tokens == approx_token_count(s.prompt) for s in specs)
    assert all(s.max_tokens == 33 for s in specs)
    assert specs[0].prompt != SharegptPool(str(SHAREGPT), builder, seed=8).prompt(0)[0]
    short = SharegptPool(str(SHAREGPT), builder, seed=7, max_tokens=64)
    assert max(short.counts) <= 64 and len(short.texts) < 500
    with pytest.raises(UsageError, match="no such file"):
        SharegptPool(str(SHARED / "missing.json"), builder, 0)
    with pytest.raises(UsageError, match="not a ShareGPT JSON"):
        SharegptPool(str(CONV), builder, 0)
