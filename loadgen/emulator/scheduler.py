"""Continuous (in-flight) batching as a pure state machine: no clock reads, no sleeping, no threads.

The same object drives the real-time engine (engine.py) and the virtual-time simulator (simulate.py), so what
the calibration measures is what the server emulates.

Policy (vLLM-like, with chunked prefill fused into the decode step as in TensorRT-LLM's in-flight batcher):

1. Every running sequence that has finished its prefill gets one decode token per step. Before the step, each
   of them that crosses a block boundary (``block_tokens``, 16 by default) needs a new KV block; if the pool is
   exhausted the newest running sequence is preempted (recompute: its blocks are freed and it goes back to the
   front of the waiting queue with prompt = input + tokens generated so far) until the allocation succeeds.
2. If nothing was preempted, waiting requests are admitted first-come-first-served while the running set is
   below ``max_batch``, prefill budget remains, and the pool has blocks for the whole prompt plus a 1 %
   watermark.
3. Prefill chunks (at most ``max_prefill_tokens`` tokens per step over all admitted prompts) run in the same
   step; a sequence whose prompt completes emits its first token at the end of that step and decodes from the
   next.
4. A request produces exactly ``min(max_tokens, max_model_len - input)`` tokens.
5. Prefix caching (prefix_cache.py; on unless ``prefix_cache=False``), for requests added with block names:
   at admission the longest cached prefix of the prompt is pinned and skips prefill (at least one prompt token
   is always computed, as in vLLM); every prompt block a prefill fills becomes cached, and at release the filled
   output blocks that the host named too. Cached blocks live in the same pool: evictable ones (used by no
   running sequence) count as free and are evicted least recently released first when blocks are needed, so
   a cached block never takes memory a running sequence needs. Without names (the simulator) the cache stays
   empty and the scheduler behaves exactly as without it (tests/test_prefix_cache.py compares step by step).

Cost is O(events) per step, not O(batch): a decoding sequence's token count, context and block count follow
from the step counter, completions are kept in a heap by step, and block demand per step is counted per
residue class (step - context) mod the block size. That lets the simulator fast-forward runs of plain decode
steps (``plain_steps_available`` / ``advance_plain``).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from loadgen.emulator.perfmodel import StepCost, StepShape
from loadgen.emulator.prefix_cache import PrefixCache
from loadgen.emulator.profiles import BLOCK_TOKENS
from loadgen.errors import UsageError

WAITING, PREFILL, DECODE, DONE = 0, 1, 2, 3


class Seq:
    """Scheduler-side state of one request."""

    __slots__ = (
        "key",
        "input_tokens",
        "target",
        "phase",
        "generated",
        "prompt_len",
        "prefilled",
        "blocks",
        "base_step",
        "base_ctx",
        "base_gen",
        "finish_step",
        "preemptions",
        "hashes",
        "reg",
        "cached_tokens",
    )

    def __init__(self, key: Hashable, input_tokens: int, target: int, hashes=None) -> None:
        self.key = key
        self.input_tokens = input_tokens
        self.target = target
        self.phase = WAITING
        self.generated = 0  # valid outside DECODE; while decoding use Scheduler.generated()
        self.prompt_len = input_tokens
        self.prefilled = 0
        self.blocks = 0  # blocks held while PREFILL
        self.base_step = 0  # first decode step index
        self.base_ctx = 0  # KV tokens at base_step
        self.base_gen = 0  # tokens generated at base_step
        self.finish_step = -1
        self.preemptions = 0
        self.hashes = hashes  # names of the sequence's full blocks (prompt, then expected output), or None
        self.reg = 0  # leading blocks pinned in the prefix cache (hits + blocks it filled); not in blocks/_used
        self.cached_tokens = 0  # prompt tokens found in the prefix cache at first admission


@dataclass(slots=True)
class StepPlan:
    """One step: who gets a token at its end, and what it costs (token order within a step is arbitrary)."""

    index: int
    shape: StepShape
    cost: StepCost | None
    decoded: list = field(default_factory=list)  # keys that get one decode token
    first: list = field(default_factory=list)  # keys whose (re)prefill completed: one token each
    finished: list = field(default_factory=list)  # keys whose last token is in this step
    preempted: list = field(default_factory=list)  # keys sent back to waiting (their KV was dropped)
    admitted: list = field(default_factory=list)  # keys scheduled for the first time in this step
    cached: dict = field(default_factory=dict)  # admitted key -> prompt tokens found in the prefix cache (if any)

    @property
    def tokens(self) -> int:
        return len(self.decoded) + len(self.first)


@dataclass(frozen=True, slots=True)
class PlainRun:
    """``steps`` pure-decode steps with the same ``decode_seqs``: nobody joins, leaves or is preempted."""

    steps: int
    decode_seqs: int
    first_ctx_tokens: int  # attended context of the first step
    last_ctx_tokens: int  # attended context of the last step


class Scheduler:
    """Waiting queue, running set, paged KV pool and the step rule; see the module docstring."""

    def __init__(
        self,
        max_batch: int,
        kv_blocks: int,
        *,
        max_model_len: int = 2048,
        max_prefill_tokens: int = 2048,
        watermark: float = 0.01,
        cost_fn: Callable[[StepShape], StepCost] | None = None,
        block_tokens: int = BLOCK_TOKENS,
        prefix_cache: bool = True,
    ) -> None:
        if max_batch < 1 or kv_blocks < 1 or max_prefill_tokens < 1 or block_tokens < 1:
            raise UsageError("scheduler needs max_batch, kv_blocks, max_prefill_tokens and block_tokens of 1 or more")
        self.max_batch = int(max_batch)
        self.kv_total_blocks = int(kv_blocks)
        self.max_model_len = int(max_model_len)
        self.max_prefill_tokens = int(max_prefill_tokens)
        self.watermark_blocks = math.ceil(kv_blocks * watermark) if watermark > 0 else 0
        self.cost_fn = cost_fn
        self.block_tokens = bt = int(block_tokens)
        self.cache: PrefixCache | None = PrefixCache(bt) if prefix_cache else None
        self._seqs: dict[Hashable, Seq] = {}
        self._waiting: deque[Seq] = deque()
        self._running: dict[Hashable, Seq] = {}  # admission order; newest last
        self._prefilling: list[Seq] = []
        self._decoding: dict[Hashable, Seq] = {}
        self._finish_heap: list[tuple[int, int, Seq]] = []
        self._heap_tie = 0
        self._class_count = [0] * bt  # decoding seqs by (base_step - base_ctx) % block_tokens
        self._ctx_sum = 0  # KV tokens of decoding seqs at the start of the current step
        self._used = 0
        self._step = 0
        self.preemptions = 0
        self.steps = 0
        self.tokens_generated = 0
        self.requests_completed = 0
        self.requests_cancelled = 0

    def blocks_for(self, tokens: int) -> int:
        """KV blocks needed to hold ``tokens`` tokens."""
        return -(-int(tokens) // self.block_tokens)

    # ------------------------------------------------------------------ requests
    def add(self, key: Hashable, input_tokens: int, max_tokens: int, block_hashes=None) -> int:
        """Queue a request; returns how many tokens it will produce (UsageError if it can never run).

        ``block_hashes``: names of the request's full blocks (``prefix_cache.block_hashes`` of its prompt tokens,
        optionally followed by the output the host will send) for the prefix cache; None = no caching.
        """
        if key in self._seqs:
            raise UsageError(f"request id {key!r} is already queued or running: use unique request ids")
        if int(input_tokens) != input_tokens or input_tokens < 1:
            raise UsageError(f"input_tokens={input_tokens!r} is invalid: a prompt needs at least 1 token")
        if int(max_tokens) != max_tokens or max_tokens < 1:
            raise UsageError(f"max_tokens={max_tokens!r} is invalid: ask for at least 1 output token")
        if input_tokens >= self.max_model_len:
            raise UsageError(
                f"input of {input_tokens} tokens leaves no room to generate within max_model_len "
                f"{self.max_model_len}: send a shorter prompt"
            )
        target = min(int(max_tokens), self.max_model_len - int(input_tokens))
        if self.blocks_for(input_tokens + target) + self.watermark_blocks > self.kv_total_blocks:
            raise UsageError(
                f"a request of {input_tokens}+{target} tokens cannot fit in the KV pool of "
                f"{self.kv_total_blocks * self.block_tokens} tokens: send a shorter request"
            )
        seq = Seq(key, int(input_tokens), target, block_hashes if self.cache is not None and block_hashes else None)
        self._seqs[key] = seq
        self._waiting.append(seq)
        return target

    def cancel(self, key: Hashable) -> bool:
        """Drop a request wherever it is and free its KV blocks; False if unknown or already done."""
        seq = self._seqs.pop(key, None)
        if seq is None:
            return False
        if seq.phase == WAITING:
            self._waiting.remove(seq)
        else:
            self._release(seq)
        seq.phase = DONE
        self.requests_cancelled += 1
        return True

    def generated(self, key: Hashable) -> int:
        """Tokens produced so far for a live request."""
        seq = self._seqs[key]
        if seq.phase == DECODE:
            return seq.base_gen + (self._step - seq.base_step)
        return seq.generated

    def has_work(self) -> bool:
        return bool(self._seqs)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def prefilling(self) -> int:
        """Running sequences still in their (chunked) prefill: TensorRT-LLM's "context" requests."""
        return len(self._prefilling)

    @property
    def kv_used_blocks(self) -> int:
        """Blocks running sequences hold (their own and the cached ones they use); evictable ones excluded."""
        return self._used + (self.cache.pinned if self.cache is not None else 0)

    @property
    def kv_cached_blocks(self) -> int:
        """Blocks the prefix cache holds, pinned or evictable."""
        return self.cache.size if self.cache is not None else 0

    @property
    def step_index(self) -> int:
        return self._step

    # ------------------------------------------------------------------ internals
    def _ctx(self, seq: Seq) -> int:
        return seq.base_ctx + (self._step - seq.base_step)

    def _avail(self) -> int:
        """Blocks an allocation may take: free ones plus evictable cached ones."""
        cache = self.cache
        return self.kv_total_blocks - self._used - (cache.pinned if cache is not None else 0)

    def _fit(self) -> None:
        """Evict cached blocks until private blocks and the cache fit in the pool again."""
        cache = self.cache
        if cache is not None:
            over = self._used + cache.size - self.kv_total_blocks
            if over > 0:
                cache.evict(over)

    def _release(self, seq: Seq) -> None:
        """Take a running sequence out of every running structure and free its blocks."""
        del self._running[seq.key]
        kv_tokens = 0  # tokens whose KV the sequence has computed
        if seq.phase == PREFILL:
            self._prefilling.remove(seq)
            self._used -= seq.blocks
        elif seq.phase == DECODE:
            del self._decoding[seq.key]
            ctx = self._ctx(seq)
            seq.generated = seq.base_gen + (self._step - seq.base_step)
            self._class_count[(seq.base_step - seq.base_ctx) % self.block_tokens] -= 1
            self._ctx_sum -= ctx
            self._used -= self.blocks_for(ctx) - seq.reg
            seq.finish_step = -1
            kv_tokens = seq.input_tokens + seq.generated - 1  # the last token's KV is never computed
        seq.blocks = 0
        self._uncache(seq, kv_tokens)

    def _uncache(self, seq: Seq, kv_tokens: int) -> None:
        """Offer the sequence's filled, named, unregistered blocks to the cache and unpin the ones it used."""
        cache, hashes = self.cache, seq.hashes
        if cache is None or hashes is None:
            return
        full = min(len(hashes), kv_tokens // self.block_tokens)
        # Released tail first so that, in LRU order, a sequence's tail is evicted before its head.
        for i in range(full - 1, seq.reg - 1, -1):
            cache.offer(hashes[i])
        cache.release(hashes[i] for i in range(seq.reg - 1, -1, -1))
        seq.reg = 0
        self._fit()

    def _preempt(self, seq: Seq) -> None:
        self._release(seq)
        seq.phase = WAITING
        seq.prompt_len = seq.input_tokens + seq.generated
        seq.prefilled = 0
        seq.preemptions += 1
        self._waiting.appendleft(seq)
        self.preemptions += 1

    def _hits(self, seq: Seq) -> tuple[int, int]:
        """(cached leading blocks of the prompt, how many of them are evictable); one prompt token is always
        left to compute, since the first output token comes from the prefill's last position."""
        if self.cache is None or seq.hashes is None:
            return 0, 0
        return self.cache.match(seq.hashes, (seq.prompt_len - 1) // self.block_tokens)

    def _admissible(self) -> bool:
        if not self._waiting or len(self._running) >= self.max_batch:
            return False
        seq = self._waiting[0]
        hits, evictable_hits = self._hits(seq)
        need = self.blocks_for(seq.prompt_len) - hits
        return need + self.watermark_blocks <= self._avail() - evictable_hits

    def _admit(self, seq: Seq) -> None:
        """Waiting -> prefill: pin the cached prefix (which then needs no prefill) and allocate the rest."""
        hits, _ = self._hits(seq)
        if seq.hashes is not None:
            self.cache.acquire(seq.hashes[:hits], seq.prompt_len)
        if seq.preemptions == 0:
            seq.cached_tokens = hits * self.block_tokens
        seq.phase = PREFILL
        seq.reg = hits
        seq.prefilled = hits * self.block_tokens
        seq.blocks = self.blocks_for(seq.prompt_len) - hits
        self._used += seq.blocks
        self._fit()
        self._running[seq.key] = seq
        self._prefilling.append(seq)

    def _register_filled(self, seq: Seq) -> None:
        """Cache the prompt blocks the prefill has filled so far (one copy per name: a duplicate is freed)."""
        hashes = seq.hashes
        full = min(len(hashes), seq.prefilled // self.block_tokens)
        if full <= seq.reg:
            return
        for i in range(seq.reg, full):
            self.cache.register(hashes[i])
        n = full - seq.reg
        seq.reg = full
        seq.blocks -= n
        self._used -= n

    def _start_decode(self, seq: Seq, first_step: int) -> None:
        seq.phase = DECODE
        seq.base_step = first_step
        seq.base_ctx = seq.prompt_len
        seq.base_gen = seq.generated
        seq.finish_step = first_step + (seq.target - seq.generated) - 1
        self._decoding[seq.key] = seq
        self._class_count[(first_step - seq.prompt_len) % self.block_tokens] += 1
        self._ctx_sum += seq.prompt_len
        self._used += self.blocks_for(seq.prompt_len) - seq.reg - seq.blocks  # 0: prefill allocated them all
        seq.blocks = 0
        self._heap_tie += 1
        heapq.heappush(self._finish_heap, (seq.finish_step, self._heap_tie, seq))

    def _finish(self, seq: Seq) -> None:
        self._release(seq)
        seq.phase = DONE
        del self._seqs[seq.key]
        self.requests_completed += 1

    # ------------------------------------------------------------------ the step
    def step(self, now: float = 0.0) -> StepPlan | None:
        """Plan and commit the next step; None when there is nothing to do. ``now`` is informational only."""
        if not self._running and not self._waiting:
            return None
        k = self._step
        preempted: list = []
        if self._decoding:
            bt = self.block_tokens
            residue = k % bt
            need = self._class_count[residue]
            while need > self._avail():
                victim = self._running[next(reversed(self._running))]
                if victim.phase == DECODE and (victim.base_step - victim.base_ctx) % bt == residue:
                    need -= 1
                self._preempt(victim)
                preempted.append(victim.key)
            self._used += need
            self._fit()
        decoded = list(self._decoding)
        n_dec = len(decoded)
        decode_ctx = self._ctx_sum + n_dec

        admitted: list = []
        cached: dict = {}
        if not preempted:
            pending = sum(s.prompt_len - s.prefilled for s in self._prefilling)
            while pending < self.max_prefill_tokens and self._admissible():
                seq = self._waiting.popleft()
                self._admit(seq)
                pending += seq.prompt_len - seq.prefilled
                if seq.preemptions == 0:
                    admitted.append(seq.key)
                    if seq.cached_tokens:
                        cached[seq.key] = seq.cached_tokens

        first: list = []
        finished: list = []
        prefill_tokens = 0
        prefill_pairs = 0.0
        prefill_seqs = 0
        if self._prefilling:
            budget = self.max_prefill_tokens
            done: list[Seq] = []
            for seq in self._prefilling:
                chunk = min(seq.prompt_len - seq.prefilled, budget)
                prefill_pairs += chunk * (seq.prefilled + (chunk + 1) / 2)
                prefill_tokens += chunk
                prefill_seqs += 1
                seq.prefilled += chunk
                budget -= chunk
                if seq.hashes is not None:
                    self._register_filled(seq)
                if seq.prefilled == seq.prompt_len:
                    done.append(seq)
                if budget == 0:
                    break
            for seq in done:
                self._prefilling.remove(seq)
                seq.generated += 1
                first.append(seq.key)
                if seq.generated >= seq.target:
                    self._used -= seq.blocks
                    seq.blocks = 0
                    self._uncache(seq, seq.prompt_len)
                    del self._running[seq.key]
                    del self._seqs[seq.key]
                    seq.phase = DONE
                    self.requests_completed += 1
                    finished.append(seq.key)
                else:
                    self._start_decode(seq, k + 1)

        # Commit the decode tokens: every decoder of this step gains one token of context, then the ones whose
        # last token this was leave (released with the post-step context they hold blocks for).
        self._step = k + 1
        self._ctx_sum += n_dec
        heap = self._finish_heap
        while heap and heap[0][0] <= k:
            fstep, _, seq = heapq.heappop(heap)
            if seq.phase == DECODE and seq.finish_step == fstep:
                self._finish(seq)
                finished.append(seq.key)
        self.steps += 1
        tokens = n_dec + len(first)
        self.tokens_generated += tokens
        shape = StepShape(n_dec, decode_ctx, prefill_seqs, prefill_tokens, prefill_pairs)
        cost = self.cost_fn(shape) if self.cost_fn is not None else None
        return StepPlan(k, shape, cost, decoded, first, finished, preempted, admitted, cached)

    # ------------------------------------------------------------------ fast-forward (simulation)
    def plain_steps_available(self) -> int:
        """How many next steps are pure decode: nobody admitted, prefilled, finished or preempted."""
        if self._prefilling or not self._decoding or self._admissible():
            return 0
        heap = self._finish_heap
        while heap and not (heap[0][2].phase == DECODE and heap[0][2].finish_step == heap[0][0]):
            heapq.heappop(heap)
        k = self._step
        until_finish = heap[0][0] - k  # the finishing step itself must be a normal step
        n = len(self._decoding)
        bt = self.block_tokens
        free = self._avail()
        cycles = free // n
        m = cycles * bt
        rest = free - cycles * n
        for _ in range(bt):
            c = self._class_count[(k + m) % bt]
            if c > rest:
                break
            rest -= c
            m += 1
        return max(0, min(until_finish, m))

    def advance_plain(self, steps: int) -> PlainRun:
        """Commit ``steps`` pure-decode steps at once (``steps`` <= ``plain_steps_available()``)."""
        if steps < 1 or steps > self.plain_steps_available():
            raise ValueError(f"cannot fast-forward {steps} steps")
        k = self._step
        n = len(self._decoding)
        bt = self.block_tokens
        new_blocks = (steps // bt) * n
        for i in range(steps % bt):
            new_blocks += self._class_count[(k + i) % bt]
        self._used += new_blocks
        self._fit()
        run = PlainRun(steps, n, self._ctx_sum + n, self._ctx_sum + n * steps)
        self._ctx_sum += n * steps
        self._step = k + steps
        self.steps += steps
        self.tokens_generated += n * steps
        return run
