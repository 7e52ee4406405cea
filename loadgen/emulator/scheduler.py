"""Continuous (in-flight) batching as a pure state machine: no clock reads, no sleeping, no threads.

The same object drives the real-time engine (engine.py) and the virtual-time simulator (simulate.py), so what
the calibration measures is what the server emulates.

Policy (vLLM-like, with chunked prefill fused into the decode step as in TensorRT-LLM's in-flight batcher):

1. Every running sequence that has finished its prefill gets one decode token per step. Before the step, each
   of them that crosses a 16-token block boundary needs a new KV block; if the pool is exhausted the newest
   running sequence is preempted (recompute: its blocks are freed and it goes back to the front of the waiting
   queue with prompt = input + tokens generated so far) until the allocation succeeds.
2. If nothing was preempted, waiting requests are admitted first-come-first-served while the running set is
   below ``max_batch``, prefill budget remains, and the pool has blocks for the whole prompt plus a 1 %
   watermark.
3. Prefill chunks (at most ``max_prefill_tokens`` tokens per step over all admitted prompts) run in the same
   step; a sequence whose prompt completes emits its first token at the end of that step and decodes from the
   next.
4. A request produces exactly ``min(max_tokens, max_model_len - input)`` tokens.

Cost is O(events) per step, not O(batch): a decoding sequence's token count, context and block count follow
from the step counter, completions are kept in a heap by step, and block demand per step is counted per
residue class (step - context) mod 16. That lets the simulator fast-forward runs of plain decode steps
(``plain_steps_available`` / ``advance_plain``).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from loadgen.emulator.perfmodel import StepCost, StepShape
from loadgen.emulator.profiles import BLOCK_TOKENS, blocks_for
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
    )

    def __init__(self, key: Hashable, input_tokens: int, target: int) -> None:
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
    ) -> None:
        if max_batch < 1 or kv_blocks < 1 or max_prefill_tokens < 1:
            raise UsageError("scheduler needs max_batch, kv_blocks and max_prefill_tokens of 1 or more")
        self.max_batch = int(max_batch)
        self.kv_total_blocks = int(kv_blocks)
        self.max_model_len = int(max_model_len)
        self.max_prefill_tokens = int(max_prefill_tokens)
        self.watermark_blocks = math.ceil(kv_blocks * watermark) if watermark > 0 else 0
        self.cost_fn = cost_fn
        self._seqs: dict[Hashable, Seq] = {}
        self._waiting: deque[Seq] = deque()
        self._running: dict[Hashable, Seq] = {}  # admission order; newest last
        self._prefilling: list[Seq] = []
        self._decoding: dict[Hashable, Seq] = {}
        self._finish_heap: list[tuple[int, int, Seq]] = []
        self._heap_tie = 0
        self._class_count = [0] * BLOCK_TOKENS  # decoding seqs by (base_step - base_ctx) % 16
        self._ctx_sum = 0  # KV tokens of decoding seqs at the start of the current step
        self._used = 0
        self._step = 0
        self.preemptions = 0
        self.steps = 0
        self.tokens_generated = 0
        self.requests_completed = 0

    # ------------------------------------------------------------------ requests
    def add(self, key: Hashable, input_tokens: int, max_tokens: int) -> int:
        """Queue a request; returns how many tokens it will produce (UsageError if it can never run)."""
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
        if blocks_for(input_tokens + target) + self.watermark_blocks > self.kv_total_blocks:
            raise UsageError(
                f"a request of {input_tokens}+{target} tokens cannot fit in the KV pool of "
                f"{self.kv_total_blocks * BLOCK_TOKENS} tokens: send a shorter request"
            )
        seq = Seq(key, int(input_tokens), target)
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
        return self._used

    @property
    def step_index(self) -> int:
        return self._step

    # ------------------------------------------------------------------ internals
    def _ctx(self, seq: Seq) -> int:
        return seq.base_ctx + (self._step - seq.base_step)

    def _release(self, seq: Seq) -> None:
        """Take a running sequence out of every running structure and free its blocks."""
        del self._running[seq.key]
        if seq.phase == PREFILL:
            self._prefilling.remove(seq)
            self._used -= seq.blocks
        elif seq.phase == DECODE:
            del self._decoding[seq.key]
            ctx = self._ctx(seq)
            seq.generated = seq.base_gen + (self._step - seq.base_step)
            self._class_count[(seq.base_step - seq.base_ctx) % BLOCK_TOKENS] -= 1
            self._ctx_sum -= ctx
            self._used -= blocks_for(ctx)
            seq.finish_step = -1
        seq.blocks = 0

    def _preempt(self, seq: Seq) -> None:
        self._release(seq)
        seq.phase = WAITING
        seq.prompt_len = seq.input_tokens + seq.generated
        seq.prefilled = 0
        seq.preemptions += 1
        self._waiting.appendleft(seq)
        self.preemptions += 1

    def _admissible(self) -> bool:
        if not self._waiting or len(self._running) >= self.max_batch:
            return False
        need = blocks_for(self._waiting[0].prompt_len)
        return need + self.watermark_blocks <= self.kv_total_blocks - self._used

    def _start_decode(self, seq: Seq, first_step: int) -> None:
        seq.phase = DECODE
        seq.base_step = first_step
        seq.base_ctx = seq.prompt_len
        seq.base_gen = seq.generated
        seq.finish_step = first_step + (seq.target - seq.generated) - 1
        self._decoding[seq.key] = seq
        self._class_count[(first_step - seq.prompt_len) % BLOCK_TOKENS] += 1
        self._ctx_sum += seq.prompt_len
        self._used += blocks_for(seq.prompt_len) - seq.blocks
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
            residue = k % BLOCK_TOKENS
            need = self._class_count[residue]
            while need > self.kv_total_blocks - self._used:
                victim = self._running[next(reversed(self._running))]
                if victim.phase == DECODE and (victim.base_step - victim.base_ctx) % BLOCK_TOKENS == residue:
                    need -= 1
                self._preempt(victim)
                preempted.append(victim.key)
            self._used += need
        decoded = list(self._decoding)
        n_dec = len(decoded)
        decode_ctx = self._ctx_sum + n_dec

        admitted: list = []
        if not preempted:
            pending = sum(s.prompt_len - s.prefilled for s in self._prefilling)
            while pending < self.max_prefill_tokens and self._admissible():
                seq = self._waiting.popleft()
                seq.phase = PREFILL
                seq.blocks = blocks_for(seq.prompt_len)
                self._used += seq.blocks
                self._running[seq.key] = seq
                self._prefilling.append(seq)
                pending += seq.prompt_len
                if seq.preemptions == 0:
                    admitted.append(seq.key)

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
        return StepPlan(k, shape, cost, decoded, first, finished, preempted, admitted)

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
        free = self.kv_total_blocks - self._used
        cycles = free // n
        m = cycles * BLOCK_TOKENS
        rest = free - cycles * n
        for _ in range(BLOCK_TOKENS):
            c = self._class_count[(k + m) % BLOCK_TOKENS]
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
        new_blocks = (steps // BLOCK_TOKENS) * n
        for i in range(steps % BLOCK_TOKENS):
            new_blocks += self._class_count[(k + i) % BLOCK_TOKENS]
        self._used += new_blocks
        run = PlainRun(steps, n, self._ctx_sum + n, self._ctx_sum + n * steps)
        self._ctx_sum += n * steps
        self._step = k + steps
        self.steps += steps
        self.tokens_generated += n * steps
        return run
