"""Continuous-batching scheduler on hand-made cases: admission, chunked prefill, paged KV, preemption."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from loadgen.emulator.profiles import blocks_for
from loadgen.emulator.scheduler import Scheduler
from loadgen.errors import UsageError


def drain(sched: Scheduler, max_steps: int = 100_000) -> tuple[list, Counter]:
    """Run to completion; return the plans and the tokens each key received."""
    plans, tokens = [], Counter()
    for _ in range(max_steps):
        plan = sched.step()
        if plan is None:
            return plans, tokens
        for key in plan.decoded + plan.first:
            tokens[key] += 1
        assert sched.kv_used_blocks <= sched.kv_total_blocks
        assert sched.running <= sched.max_batch
        plans.append(plan)
    raise AssertionError("scheduler did not finish")


def test_admission_stops_at_max_batch_and_fifo_order():
    s = Scheduler(max_batch=2, kv_blocks=1000, watermark=0)
    for i in range(5):
        s.add(i, 10, 3)
    plan = s.step()
    assert plan.admitted == [0, 1] and plan.first == [0, 1] and plan.decoded == []
    assert s.running == 2 and s.waiting == 3
    plan = s.step()
    assert sorted(plan.decoded) == [0, 1] and plan.admitted == []
    plan = s.step()  # third token of 0 and 1: they finish, freeing two slots for the next step
    assert sorted(plan.finished) == [0, 1]
    plan = s.step()
    assert plan.admitted == [2, 3]


def test_exact_token_count_first_token_at_prefill_and_final_flag():
    s = Scheduler(max_batch=4, kv_blocks=1000, watermark=0)
    s.add("a", 20, 5)
    s.add("b", 20, 1)
    plans, tokens = drain(s)
    assert tokens == {"a": 5, "b": 1}
    assert "b" in plans[0].finished and "b" in plans[0].first  # a one-token request ends at its prefill
    finals = [p.index for p in plans if "a" in p.finished]
    assert finals == [4]  # first token at step 0, then one per step: steps 1..4
    assert s.requests_completed == 2 and s.tokens_generated == 6 and s.kv_used_blocks == 0


def test_output_capped_by_max_model_len():
    s = Scheduler(max_batch=1, kv_blocks=1000, max_model_len=64, watermark=0)
    assert s.add("x", 60, 100) == 4
    _, tokens = drain(s)
    assert tokens["x"] == 4


def test_chunked_prefill_spreads_a_long_prompt_over_steps():
    s = Scheduler(max_batch=4, kv_blocks=1000, max_prefill_tokens=32, watermark=0)
    s.add("long", 100, 2)
    s.step()
    assert s.prefilling == 1 and s.running == 1
    s = Scheduler(max_batch=4, kv_blocks=1000, max_prefill_tokens=32, watermark=0)
    s.add("long", 100, 2)
    plans, _ = drain(s)
    assert [p.shape.prefill_tokens for p in plans[:4]] == [32, 32, 32, 4]
    assert plans[3].first == ["long"] and all(not p.first for p in plans[:3])
    # attention pairs of a whole prompt of n tokens: n(n+1)/2 however it is chunked
    assert sum(p.shape.prefill_pairs for p in plans) == pytest.approx(100 * 101 / 2)


def test_decode_context_grows_by_one_token_per_step():
    s = Scheduler(max_batch=2, kv_blocks=1000, watermark=0)
    s.add(0, 30, 6)
    s.add(1, 50, 6)
    plans, _ = drain(s)
    ctx = [p.shape.decode_ctx_tokens for p in plans if p.shape.decode_seqs == 2]
    assert ctx[0] == 30 + 50 + 2  # attended context includes the token being decoded
    assert all(b - a == 2 for a, b in zip(ctx, ctx[1:], strict=False))


def test_admission_limited_by_kv_blocks_then_resumes_when_freed():
    # 10 blocks = 160 tokens; each prompt of 64 tokens needs 4 blocks, so only two fit at first
    s = Scheduler(max_batch=8, kv_blocks=10, watermark=0)
    for i in range(3):
        s.add(i, 64, 2)
    plan = s.step()
    assert plan.admitted == [0, 1] and s.waiting == 1
    _, tokens = drain(s)
    tokens.update(plan.first)
    assert tokens == {0: 2, 1: 2, 2: 2}


def test_preemption_evicts_newest_and_recomputes_it():
    # 6 blocks = 96 tokens. Two sequences of 16 + 40 tokens each need 4 blocks at the end: 8 > 6.
    s = Scheduler(max_batch=2, kv_blocks=6, watermark=0)
    s.add("old", 16, 40)
    s.add("new", 16, 40)
    plans, tokens = drain(s)
    preempt_plans = [p for p in plans if p.preempted]
    assert preempt_plans and preempt_plans[0].preempted == ["new"]
    assert s.preemptions >= 1
    assert tokens == {"old": 40, "new": 40}  # recompute does not re-send tokens
    old_done = next(p.index for p in plans if "old" in p.finished)
    new_done = next(p.index for p in plans if "new" in p.finished)
    assert old_done < new_done
    # the recompute prefill covers the prompt plus the tokens generated before the eviction
    readmit = next(p for p in plans if p.index > preempt_plans[0].index and p.shape.prefill_tokens)
    assert readmit.shape.prefill_tokens > 16
    assert s.kv_used_blocks == 0


def test_no_preemption_when_pool_is_large_enough():
    s = Scheduler(max_batch=2, kv_blocks=8, watermark=0)
    s.add("a", 16, 40)
    s.add("b", 16, 40)
    drain(s)
    assert s.preemptions == 0


def test_cancel_frees_blocks_everywhere():
    s = Scheduler(max_batch=1, kv_blocks=100, watermark=0)
    s.add("run", 40, 50)
    s.add("wait", 40, 50)
    s.step()
    s.step()
    used = s.kv_used_blocks
    assert used == blocks_for(41)
    assert s.cancel("wait") and s.waiting == 0
    assert s.cancel("run") and s.kv_used_blocks == 0 and s.running == 0
    assert not s.cancel("run")
    assert s.step() is None


@pytest.mark.parametrize(
    "args, match",
    [
        ((10, 0), "max_tokens"),
        ((0, 5), "input_tokens"),
        ((2048, 5), "max_model_len"),
        ((1500, 400), "KV pool"),
    ],
)
def test_bad_requests_raise_usage_error(args, match):
    s = Scheduler(max_batch=4, kv_blocks=100, watermark=0)
    with pytest.raises(UsageError, match=match):
        s.add("r", *args)


def test_duplicate_key_rejected():
    s = Scheduler(max_batch=4, kv_blocks=100)
    s.add("r", 10, 10)
    with pytest.raises(UsageError, match="already"):
        s.add("r", 10, 10)


def _workload(seed: int, n: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [(rng.randint(1, 300), rng.randint(1, 400)) for _ in range(n)]


@pytest.mark.parametrize("blocks", [400, 60])
def test_fast_forward_matches_step_by_step(blocks):
    """advance_plain commits what the same plain steps would: steps, tokens, context, KV, preemption."""
    work = _workload(7, 60)

    def make():
        s = Scheduler(max_batch=16, kv_blocks=blocks, max_prefill_tokens=256)
        for i, (a, b) in enumerate(work):
            s.add(i, a, b)
        return s

    slow = make()
    slow_ctx = 0
    finish_slow = {}
    while (plan := slow.step()) is not None:
        slow_ctx += plan.shape.decode_ctx_tokens
        for k in plan.finished:
            finish_slow[k] = plan.index
    fast = make()
    fast_ctx = 0
    finish_fast = {}
    jumps = 0
    while True:
        m = fast.plain_steps_available()
        if m >= 2:
            run = fast.advance_plain(m)
            fast_ctx += m * (run.first_ctx_tokens + run.last_ctx_tokens) // 2
            jumps += 1
            continue
        plan = fast.step()
        if plan is None:
            break
        fast_ctx += plan.shape.decode_ctx_tokens
        for k in plan.finished:
            finish_fast[k] = plan.index
    assert jumps > 10
    assert finish_fast == finish_slow
    assert (fast.steps, fast.tokens_generated, fast.preemptions) == (
        slow.steps,
        slow.tokens_generated,
        slow.preemptions,
    )
    assert fast_ctx == slow_ctx
    if blocks == 60:
        assert slow.preemptions > 0


def test_random_workloads_keep_invariants():
    for seed in range(5):
        work = _workload(seed, 40)
        s = Scheduler(max_batch=8, kv_blocks=50, max_prefill_tokens=128)
        targets = {i: s.add(i, a, b) for i, (a, b) in enumerate(work)}
        _, tokens = drain(s)
        assert dict(tokens) == targets
        assert s.kv_used_blocks == 0 and not s.has_work()
