"""The performance model: how long one engine step takes, from the bytes it moves and the FLOPs it does.

One step of a continuous-batching engine = a host (CPU) phase followed by a GPU phase; within one engine they
do not overlap (the study measured the GPU idle during about 25 % of a step at batch 1 and 37 % at batch 512
for OPT-1.3B). Every term below is physics over an effective rate, plus a few per-step overheads:

GPU phase
  * weights: every step streams all weights from HBM once, ``W / BW``; when the step has many tokens (prefill)
    the same matrix multiplies become compute-bound, ``2 * params * tokens / FLOPS``; the step pays the larger
    (roofline).
  * KV cache: decode attention reads the whole K and V of every running sequence, ``context_tokens * kv_bytes
    / BW``. This is the term that keeps large-batch decode memory-bound ("Mind the Memory Gap").
  * prefill attention: ``4 * layers * hidden`` FLOPs per (query token, key token) pair, over the compute rate.
  * per-layer overhead: kernel launches, synchronisation and small latency-bound kernels (layer norms, rotary,
    residuals), ``layers * layer_overhead_s``, independent of batch.
  * per-sequence overhead: sampling, logits processing, cache writes, ``running * seq_overhead_s``.
Host phase
  * ``host_base_s + host_per_seq_s * running``: scheduling, input preparation, detokenisation and stop checks.

``BW = hbm_bandwidth * bw_efficiency`` and ``FLOPS = fp16_flops * flops_efficiency`` (profiles.py). The GPU
time is split into a latency-bound part (``fixed_s``: does not compete with other replicas for bandwidth) and
work that does (``mem_s``, ``compute_s``); gpu.py uses that split for MPS sharing and power.py for watts.
"""

from __future__ import annotations

from dataclasses import dataclass

from loadgen.emulator.profiles import GpuProfile, ModelProfile


@dataclass(frozen=True, slots=True)
class StepShape:
    """What one step does. ``prefill_pairs``: sum over prefill chunks of tokens * mean attended context."""

    decode_seqs: int = 0
    decode_ctx_tokens: int = 0
    prefill_seqs: int = 0
    prefill_tokens: int = 0
    prefill_pairs: float = 0.0

    @property
    def seqs(self) -> int:
        return self.decode_seqs + self.prefill_seqs


@dataclass(frozen=True, slots=True)
class StepCost:
    """Durations of one step in emulated seconds, measured as if the engine had the GPU to itself."""

    host_s: float
    fixed_s: float  # latency-bound GPU time
    mem_s: float  # HBM-bound GPU time
    compute_s: float  # FLOP-bound GPU time

    @property
    def gpu_s(self) -> float:
        return self.fixed_s + self.mem_s + self.compute_s

    @property
    def total_s(self) -> float:
        return self.host_s + self.gpu_s

    @property
    def utilisation(self) -> float:
        """Share of the GPU phase spent on work that saturates the shared GPU (bandwidth or SMs)."""
        gpu = self.gpu_s
        return (self.mem_s + self.compute_s) / gpu if gpu > 0 else 0.0


def host_time(gpu: GpuProfile, running: int) -> float:
    return gpu.host_base_s + gpu.host_per_seq_s * running


def step_cost(model: ModelProfile, gpu: GpuProfile, shape: StepShape) -> StepCost:
    """Cost of one fused step (prefill chunks + one decode token per running sequence), GPU unshared."""
    bw, flops = gpu.bandwidth, gpu.flops
    tokens = shape.decode_seqs + shape.prefill_tokens
    mem = 0.0
    compute = 0.0
    weights_mem = model.weight_bytes / bw
    weights_compute = model.matmul_flops_per_token * tokens / flops
    if weights_compute > weights_mem:
        compute += weights_compute
    else:
        mem += weights_mem
    mem += shape.decode_ctx_tokens * model.kv_bytes_per_token / bw
    mem += shape.seqs * gpu.seq_overhead_s
    if shape.prefill_pairs:
        compute += 4.0 * model.layers * model.hidden * shape.prefill_pairs / flops
    fixed = model.layers * gpu.layer_overhead_s
    return StepCost(host_time(gpu, shape.seqs), fixed, mem, compute)


def decode_step_time(model: ModelProfile, gpu: GpuProfile, batch: int, mean_context: float) -> float:
    """Wall time of a pure decode step (host + GPU) for ``batch`` sequences of ``mean_context`` tokens."""
    shape = StepShape(decode_seqs=batch, decode_ctx_tokens=int(round(batch * mean_context)))
    return step_cost(model, gpu, shape).total_s


def prefill_time(model: ModelProfile, gpu: GpuProfile, prompt_tokens: int) -> float:
    """Wall time of a step that only prefills one prompt of ``prompt_tokens`` tokens."""
    shape = StepShape(
        prefill_seqs=1, prefill_tokens=prompt_tokens, prefill_pairs=prompt_tokens * prompt_tokens / 2
    )
    return step_cost(model, gpu, shape).total_s


def steady_decode_throughput(model: ModelProfile, gpu: GpuProfile, batch: int, mean_context: float) -> float:
    """Output tokens/s of a full batch decoding steadily: the asymptote the batch sweep approaches."""
    return batch / decode_step_time(model, gpu, batch, mean_context)
