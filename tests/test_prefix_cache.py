"""The emulated engine's prefix cache (loadgen/emulator/prefix_cache.py) and how the scheduler uses it: block
naming, hits that skip prefill, LRU eviction under KV-pool pressure, pinned blocks, the off switch, and the
settings and metric names that carry it to the server and to the TensorRT-LLM templates. Pure: no server."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from loadgen.cli import main as cli_main
from loadgen.core.prompts import approx_token_count
from loadgen.emulator.engine import Engine, EngineRequest
from loadgen.emulator.perfmodel import StepShape, step_cost
from loadgen.emulator.prefix_cache import PrefixCache, block_hashes, tokenize
from loadgen.emulator.profiles import get_gpu, get_model
from loadgen.emulator.scheduler import Scheduler
from loadgen.serve.repository import EmulatedModelSpec, write_emulated_repository
from loadgen.telemetry.vocabulary import CommonReader

BT = 16
MODEL, GPU = get_model("opt-1.3b"), get_gpu("h100-64gb")


def words(tag: str, n: int) -> list[str]:
    return [f"{tag}{i}" for i in range(n)]


def sched(kv_blocks: int = 400, **kw) -> Scheduler:
    return Scheduler(kw.pop("max_batch", 8), kv_blocks, watermark=0.0,
                     cost_fn=lambda shape: step_cost(MODEL, GPU, shape), **kw)


def run(s: Scheduler, key, tokens: list[str], out: int, *, answer: list[str] | None = None) -> list:
    """Add one request named after ``tokens`` (+ ``answer``: the output the host will send) and run to the end."""
    s.add(key, len(tokens), out, block_hashes(tokens + (answer or []), BT))
    plans = []
    while s.has_work():
        plans.append(s.step())
    return plans


def prefill_tokens(plans: list) -> int:
    return sum(p.shape.prefill_tokens for p in plans)


def check_pool(s: Scheduler) -> None:
    cache = s.cache
    assert s._used >= 0 and s._used + (cache.size if cache else 0) <= s.kv_total_blocks


# ------------------------------------------------------------------------------------------ naming
def test_tokenize_counts_like_the_load_generator() -> None:
    for text in ("Hello, world! How are you?", "  spaced   out\n\nlines\tand tabs ", "x=1; y=[2,3]", "",
                 "émigré café naïve", "The answer is 42."):
        assert len(tokenize(text)) == approx_token_count(text)
    # an answer sent back as history tokenises to the words the engine produced
    assert tokenize(" the of and") == ["the", "of", "and"]


def test_block_names_are_chained_over_full_blocks() -> None:
    a = block_hashes(words("a", 40), BT)
    assert len(a) == 2  # 40 tokens: two full blocks; the partial third gets no name
    b = block_hashes(words("a", 32) + words("b", 20), BT)
    assert b[:2] == a and len(b) == 3
    # a change in the first block renames every later block, even where the later tokens are equal
    c = block_hashes(["z"] + words("a", 40)[1:], BT)
    assert c[0] != a[0] and c[1] != a[1]
    assert block_hashes(words("a", 15), BT) == []
    with pytest.raises(ValueError):
        block_hashes(words("a", 4), 0)


# ------------------------------------------------------------------------------------------ the cache
def test_cache_pins_releases_and_evicts_least_recently_released() -> None:
    cache = PrefixCache(BT)
    for h in (1, 2, 3):
        cache.register(h)
    assert (cache.size, cache.pinned, cache.evictable) == (3, 3, 0)
    assert cache.evict(3) == 0  # pinned blocks are never evicted
    cache.release([3, 2, 1])  # tail first
    assert cache.evictable == 3
    assert cache.match([1, 2, 3, 4], limit=10) == (3, 3)
    assert cache.match([1, 2, 3], limit=1) == (1, 1)
    assert cache.match([9, 1], limit=10) == (0, 0)
    cache.acquire([1], prompt_tokens=40)  # a new request pins block 1 again
    assert (cache.pinned, cache.queries, cache.hits, cache.reused_blocks) == (1, 40, 16, 1)
    assert cache.evict(5) == 2 and 3 not in cache and 2 not in cache and 1 in cache  # tail went first
    assert cache.offer(7) and not cache.offer(1)  # a name already cached is not taken twice
    assert cache.evictions == 2


# ------------------------------------------------------------------------------------------ the scheduler
def test_a_shared_prefix_skips_prefill_and_costs_only_the_uncached_tokens() -> None:
    s = sched()
    shared = words("sys", 200)
    first = run(s, "a", shared + words("u", 40), 8)
    second = run(s, "b", shared + words("v", 40), 8)
    assert prefill_tokens(first) == 240
    # 200 shared tokens = 12 full blocks (192 tokens) hit; only the rest is prefilled
    assert prefill_tokens(second) == 240 - 192
    assert s.cache.hits == 192 and s.cache.queries == 480 and s.cache.reused_blocks == 12
    # the prefill step is priced for the uncached tokens only (attention still sees the cached context)
    pf = next(p for p in second if p.shape.prefill_tokens)
    assert pf.shape == StepShape(0, 0, 1, 48, 48 * (192 + 49 / 2))
    full = next(p for p in first if p.shape.prefill_tokens)
    assert pf.cost.total_s < full.cost.total_s
    assert s._used == 0 and s.cache.pinned == 0  # everything released, the cache kept as evictable


def test_admission_reports_the_cached_tokens_and_always_computes_one_token() -> None:
    s = sched()
    prompt = words("p", 64)  # exactly 4 blocks
    run(s, "a", prompt, 4)
    s.add("b", 64, 4, block_hashes(prompt, BT))
    plan = s.step()
    # fully cached prompt: 3 blocks reused, the last block recomputed to produce the first token
    assert plan.shape.prefill_tokens == 16 and plan.cached == {"b": 48} and plan.first == ["b"]


def test_answers_are_cached_so_the_next_turn_hits_the_history() -> None:
    s = sched()
    turn1 = words("sys", 100) + words("u1-", 30)
    answer = words("a1-", 50)
    run(s, "t1", turn1, 50, answer=answer)
    turn2 = turn1 + answer + words("u2-", 20)
    plans = run(s, "t2", turn2, 10)
    # prompt + answer = 180 tokens; the KV of the last answer token is never computed: 179 -> 11 full blocks
    assert prefill_tokens(plans) == len(turn2) - 11 * BT


def test_lru_eviction_under_pool_pressure_keeps_the_recent_prefixes() -> None:
    s = sched(kv_blocks=40, max_batch=1)  # 640 tokens of KV: room for about two 300-token prompts cached
    a, b, c = words("a", 300), words("b", 300), words("c", 300)
    run(s, "a", a, 4)
    run(s, "b", b, 4)
    assert s.cache.size <= 40 and a[0] and s.cache.match(block_hashes(a, BT), 99)[0] == 18
    run(s, "c", c, 4)  # needs 19 blocks: the least recently released ones (a's) go
    check_pool(s)
    assert s.cache.evictions > 0
    assert s.cache.match(block_hashes(b, BT), 99)[0] == 18  # b survived whole
    assert s.cache.match(block_hashes(a, BT), 99)[0] < 18  # a lost blocks (its tail first)
    plans = run(s, "b2", b + words("x", 10), 4)
    assert prefill_tokens(plans) == 310 - 18 * BT


def test_pinned_blocks_of_a_running_sequence_are_never_evicted() -> None:
    s = sched(kv_blocks=30, max_batch=2)
    long = words("L", 320)  # 20 blocks, held by a long decode
    s.add("runner", 320, 100, block_hashes(long, BT))
    s.step()  # prefill: its 20 blocks are cached and pinned by it
    assert s.cache.pinned == 20 and s.cache.evictable == 0
    s.add("other", 200, 4, block_hashes(words("o", 200), BT))  # 13 blocks: does not fit next to 20 pinned
    for _ in range(5):
        plan = s.step()
        assert "other" not in plan.admitted
        check_pool(s)
    assert s.cache.pinned == 20 and s.waiting == 1  # it waits; the runner's blocks stayed
    while s.has_work():
        s.step()
        check_pool(s)
    assert s._used == 0 and s.cache.pinned == 0


def test_off_switch_and_no_names_behave_exactly_as_without_a_cache() -> None:
    rng = random.Random(7)
    reqs = [(i, rng.randint(20, 400), rng.randint(1, 60)) for i in range(60)]
    shared = words("s", 400)

    def trace(s: Scheduler, named: bool) -> list:
        for i, n_in, n_out in reqs:
            s.add(i, n_in, n_out, block_hashes(shared[:n_in], BT) if named else None)
        out = []
        while s.has_work():
            p = s.step()
            out.append((p.shape, p.decoded, p.first, p.finished, p.preempted))
            check_pool(s)
        return out

    reference = trace(sched(kv_blocks=120, max_batch=16), named=False)
    off = sched(kv_blocks=120, max_batch=16, prefix_cache=False)
    assert off.cache is None and trace(off, named=True) == reference
    assert trace(sched(kv_blocks=120, max_batch=16), named=False) == reference
    on = sched(kv_blocks=120, max_batch=16)
    hit = trace(on, named=True)  # every prompt is a prefix of the same text: most of it is cached
    assert on.cache.hits > 0.5 * on.cache.queries
    assert sum(sh.prefill_tokens for sh, *_ in hit) < sum(sh.prefill_tokens for sh, *_ in reference)


def test_random_workload_keeps_the_pool_consistent_under_preemption() -> None:
    rng = random.Random(3)
    s = sched(kv_blocks=60, max_batch=12)
    prefixes = [words(f"p{k}-", 200) for k in range(4)]
    key = 0
    for _ in range(400):
        if rng.random() < 0.3:
            pre = rng.choice(prefixes)[:rng.randint(10, 200)]
            toks = pre + words(f"q{key}-", rng.randint(1, 100))
            s.add(key, len(toks), rng.randint(1, 150), block_hashes(toks + words("ans", 150), BT))
            key += 1
        if rng.random() < 0.05 and s.running:
            s.cancel(next(iter(s._running)))
        s.step()
        check_pool(s)
    while s.has_work():
        s.step()
        check_pool(s)
    assert s._used == 0 and s.cache.pinned == 0 and s.preemptions > 0 and s.cache.hits > 0
    assert s.requests_cancelled > 0


def test_a_block_size_setting_changes_the_unit_of_reuse() -> None:
    s = Scheduler(4, 100, watermark=0.0, block_tokens=32)
    toks = words("t", 100)
    s.add("a", 100, 2, block_hashes(toks, 32))
    while s.has_work():
        s.step()
    s.add("b", 100, 2, block_hashes(toks, 32))
    plan = s.step()
    assert plan.shape.prefill_tokens == 100 - 96 and plan.cached == {"b": 96}


def test_the_engine_reports_cached_tokens_even_for_a_one_token_answer() -> None:
    """A request that is admitted and finished in the same step (max_tokens 1) still gets its cached count."""
    engine = Engine("opt-125m", "h100-64gb", 8, speed=50.0)
    done: list[EngineRequest] = []
    errors: list[str] = []
    toks = words("t", 40)

    def request(rid: str, out: int, hashes) -> EngineRequest:
        return EngineRequest(rid, 40, out, lambda r, n, final: final and done.append(r),
                             lambda r, msg: errors.append(msg), block_hashes=hashes)

    engine.start()
    try:
        engine.submit(request("a", 3, block_hashes(toks + words("o", 3), BT)))
        _wait(lambda: len(done) == 1 or errors)
        engine.submit(request("b", 1, block_hashes(toks, BT)))
        gone = request("c", 500, None)
        gone.cancelled = True  # its client went away before the engine took it
        engine.submit(gone)
        _wait(lambda: len(done) == 2 or errors)
        stats = engine.stats()
    finally:
        engine.stop()
    assert not errors and [r.request_id for r in done] == ["a", "b"]
    assert done[0].cached_tokens == 0 and done[1].cached_tokens == 32
    assert stats["prefix_cache_hits"] == 32 and stats["prefix_cache_queries"] == 80
    assert stats["requests_dropped"] == 1 and stats["kv_cached_blocks"] >= 2


def _wait(cond, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        time.sleep(0.005)


# ------------------------------------------------------------------------------------------ settings, metrics
def test_emulator_hit_rate_reaches_the_common_vocabulary() -> None:
    def page(hits: float, queries: float) -> list:
        inst = {"model": "ensemble", "instance": "ensemble_0"}
        return [("loadgen_emulated_requests", {**inst, "state": "running"}, 0.0),
                ("loadgen_emulated_prefix_cache_hits_total", inst, hits),
                ("loadgen_emulated_prefix_cache_queries_total", inst, queries)]

    reader = CommonReader()
    kind, common, kept = reader.read(page(0, 0))
    assert kind == "emulator" and common["cache_hit_rate"] is None
    assert {s[0] for s in kept} >= {"loadgen_emulated_prefix_cache_hits_total"}
    assert reader.read(page(300, 1000))[1]["cache_hit_rate"] == pytest.approx(0.3)
    assert reader.read(page(300, 1000))[1]["cache_hit_rate"] is None  # no query in the interval


def test_the_switch_reaches_the_model_config(tmp_path: Path) -> None:
    for on in (True, False):
        repo = write_emulated_repository(EmulatedModelSpec(profile="opt-125m", max_batch=8, prefix_cache=on,
                                                           kv_block_tokens=32, infer_model=False),
                                         tmp_path / str(on), tmp_path / "gpu.state")
        cfg = text_format.Parse((repo / "ensemble" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        params = {k: v.string_value for k, v in cfg.parameters.items()}
        assert params["prefix_cache"] == ("on" if on else "off") and params["kv_block_tokens"] == "32"


def test_trtllm_kv_cache_reuse_follows_the_server_setting(tmp_path: Path, capsys) -> None:
    engine, tok = tmp_path / "engine", tmp_path / "tok"
    engine.mkdir()
    (engine / "rank0.engine").write_bytes(b"\0")
    tok.mkdir()
    for flag, want in (([], "false"), (["--server-prefix-cache", "on"], "true")):
        out = tmp_path / f"repo{want}"
        assert cli_main(["serve", "--trtllm-engine", str(engine), "--tokenizer-dir", str(tok), "--out", str(out),
                         *flag]) == 0
        cfg = text_format.Parse((out / "tensorrt_llm" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        assert cfg.parameters["enable_kv_cache_reuse"].string_value == want
    assert "use_paged_context_fmha" in capsys.readouterr().out
    assert cli_main(["serve", "--trtllm-engine", str(engine), "--tokenizer-dir", str(tok), "--out",
                     str(tmp_path / "bad"), "--server-prefix-cache", "maybe"]) == 2
    assert "--server-prefix-cache 'maybe': choose one of on, off" in capsys.readouterr().err
