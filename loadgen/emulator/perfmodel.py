"""The performance model: how long one engine step takes, from the bytes it moves and the FLOPs it does.

A step = a host (CPU) phase, then a GPU phase; within one engine they do not overlap (the study measured the GPU
idle for about 25 % of a decode step at batch 1 and 37 % at batch 512 for OPT-1.3B). The scheduler fuses prefill
chunks into the decode step (TensorRT-LLM's in-flight batching, vLLM's chunked prefill), so a step is one of:

Decode (``B`` running sequences, ``C`` context tokens attended in all)
  * host: ``host_base_s + host_per_seq_s * B`` (scheduling, input preparation, sampling output, detokenisation);
  * weights: streamed from HBM once, ``weight_bytes / BW``, or, when the batch is large enough, the matrix work
    ``2 * params * B / FLOPS`` (roofline: the larger);
  * KV cache: attention reads every running sequence's K and V, ``C * kv_bytes_per_token / BW_kv`` (the term
    that keeps large-batch decode memory-bound, "Mind the Memory Gap"; paged gathers reach their own share of
    the bandwidth, ``kv_bw_efficiency``);
  * attention per sequence: a fixed cost per sequence and layer (``attn_overhead_s``: the paged-attention
    kernel's per-sequence work besides streaming: partition reduction, cache writes, sampling's share);
  * per layer: launches, synchronisation and small latency-bound kernels, ``layers * layer_overhead_s``.
Prefill only (``T`` prompt tokens, ``pairs`` = query x key token pairs; an idle engine's lone prompt)
  * host: ``host_base_s + prefill_host_per_token_s * T`` (positions, slot mapping per token);
  * kernel launches: a step with prompt tokens runs eagerly (CUDA graphs are captured for decode batches only),
    so the CPU issues every kernel, ``layers * eager_layer_s``; that overlaps the GPU work, and only what
    outlasts it leaves the GPU waiting (counted as host time). A lone short prompt is launch-bound;
  * weights ``max(weight_bytes / BW, 2 * params * T / FLOPS)``; attention ``4 * layers * hidden * pairs /
    FLOPS``; K and V written, ``T * kv_bytes / BW``; per layer ``layer_overhead_s``.
Decode with prefill chunks fused in
  * one weight read for all ``B + T`` tokens (roofline over them), so the decodes beside a chunk pay its matrix
    work once it tips the step into the compute roof, plus its attention FLOPs, its KV writes, its per-token host
    preparation and, if the step is short, the eager launches.

``BW = hbm_bandwidth * bw_efficiency``, ``FLOPS = fp16_flops * flops_efficiency`` (profiles.py says where every
constant comes from). The GPU time is split into a latency-bound part (``fixed_s``: does not compete with other
replicas), HBM-bound work (``mem_s``) and SM-bound work (``compute_s``: FLOPs and per-sequence attention work);
gpu.py uses the split for sharing under MPS. ``bytes`` and ``flops`` (what the step moves and computes) drive
power.py.
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
    """Durations of one step in emulated seconds, measured as if the engine had the GPU to itself, and the HBM
    bytes and FLOPs of its GPU phase."""

    host_s: float
    fixed_s: float  # latency-bound GPU time
    mem_s: float  # HBM-bound GPU time
    compute_s: float  # SM-bound GPU time (FLOPs, per-sequence attention work)
    bytes: float = 0.0  # HBM traffic of the GPU phase
    flops: float = 0.0  # arithmetic of the GPU phase

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
    """CPU time of one decode iteration over ``running`` sequences."""
    return gpu.host_base_s + gpu.host_per_seq_s * running


def _weights(model: ModelProfile, gpu: GpuProfile, tokens: int) -> tuple[float, float, float]:
    """(mem_s, compute_s, flops) of the matrix multiplies over ``tokens`` tokens: roofline of reading every
    weight once against doing ``2 * params`` FLOPs per token."""
    flops = model.matmul_flops_per_token * tokens
    mem, compute = model.weight_bytes / gpu.bandwidth, flops / gpu.gemm_flops(tokens)
    return (0.0, compute, flops) if compute > mem else (mem, 0.0, flops)


def decode_pass(model: ModelProfile, gpu: GpuProfile, seqs: int, ctx_tokens: int) -> StepCost:
    """One decode iteration: ``seqs`` sequences, one token each, attending ``ctx_tokens`` tokens in all."""
    w_mem, w_compute, flops = _weights(model, gpu, seqs)
    kv_bytes = ctx_tokens * model.kv_bytes_per_token
    mem = w_mem + kv_bytes / gpu.kv_bandwidth
    # the per-sequence attention work keeps SMs busy: it competes with other replicas like FLOP-bound work
    sm_busy = w_compute + seqs * model.layers * gpu.attn_overhead_s
    fixed = model.layers * gpu.layer_overhead_s
    flops += 4.0 * model.layers * model.hidden * ctx_tokens  # QK^T and PV: two multiply-adds per element
    return StepCost(host_time(gpu, seqs), fixed, mem, sm_busy, model.weight_bytes + kv_bytes, flops)


def prefill_pass(model: ModelProfile, gpu: GpuProfile, tokens: int, pairs: float) -> StepCost:
    """One prefill iteration over ``tokens`` prompt tokens with ``pairs`` (query, key) pairs, run eagerly."""
    w_mem, w_compute, flops = _weights(model, gpu, tokens)
    attn_flops = 4.0 * model.layers * model.hidden * pairs
    kv_bytes = tokens * model.kv_bytes_per_token
    mem = w_mem + kv_bytes / gpu.bandwidth
    compute = w_compute + attn_flops / gpu.flops
    fixed = model.layers * gpu.layer_overhead_s
    launch_wait = max(0.0, model.layers * gpu.eager_layer_s - (fixed + mem + compute))
    host = gpu.host_base_s + gpu.prefill_host_per_token_s * tokens + launch_wait
    return StepCost(host, fixed, mem, compute, model.weight_bytes + kv_bytes, flops + attn_flops)


def mixed_pass(model: ModelProfile, gpu: GpuProfile, shape: StepShape) -> StepCost:
    """A decode pass with prefill chunks fused in: one weight read for every token of the step, so the running
    sequences pay the chunk's matrix work (roofline over all tokens), its attention and its KV writes."""
    w_mem, w_compute, flops = _weights(model, gpu, shape.decode_seqs + shape.prefill_tokens)
    kv_read = shape.decode_ctx_tokens * model.kv_bytes_per_token
    kv_write = shape.prefill_tokens * model.kv_bytes_per_token
    mem = w_mem + kv_read / gpu.kv_bandwidth + kv_write / gpu.bandwidth
    attn_flops = 4.0 * model.layers * model.hidden * shape.prefill_pairs
    compute = w_compute + shape.seqs * model.layers * gpu.attn_overhead_s + attn_flops / gpu.flops
    fixed = model.layers * gpu.layer_overhead_s
    # a step with prompt tokens runs without CUDA graphs: launches that outlast the GPU work leave it waiting
    launch_wait = max(0.0, model.layers * gpu.eager_layer_s - (fixed + mem + compute))
    host = host_time(gpu, shape.decode_seqs) + gpu.prefill_host_per_token_s * shape.prefill_tokens + launch_wait
    flops += attn_flops + 4.0 * model.layers * model.hidden * shape.decode_ctx_tokens
    return StepCost(host, fixed, mem, compute, model.weight_bytes + kv_read + kv_write, flops)


def step_cost(model: ModelProfile, gpu: GpuProfile, shape: StepShape) -> StepCost:
    """Cost of one step (decode, prefill, or both fused), GPU unshared."""
    if not shape.prefill_tokens:
        return decode_pass(model, gpu, shape.decode_seqs, shape.decode_ctx_tokens)
    if not shape.decode_seqs:
        return prefill_pass(model, gpu, shape.prefill_tokens, shape.prefill_pairs)
    return mixed_pass(model, gpu, shape)


def decode_step_time(model: ModelProfile, gpu: GpuProfile, batch: int, mean_context: float) -> float:
    """Wall time of a pure decode step (host + GPU) for ``batch`` sequences of ``mean_context`` tokens."""
    shape = StepShape(decode_seqs=batch, decode_ctx_tokens=int(round(batch * mean_context)))
    return step_cost(model, gpu, shape).total_s


def prefill_time(model: ModelProfile, gpu: GpuProfile, prompt_tokens: int) -> float:
    """Wall time of a step that only prefills one prompt of ``prompt_tokens`` tokens (a lone prompt's TTFT on
    an idle engine)."""
    shape = StepShape(
        prefill_seqs=1, prefill_tokens=prompt_tokens, prefill_pairs=prompt_tokens * (prompt_tokens + 1) / 2
    )
    return step_cost(model, gpu, shape).total_s


def steady_decode_throughput(model: ModelProfile, gpu: GpuProfile, batch: int, mean_context: float) -> float:
    """Output tokens/s of a full batch decoding steadily: the asymptote the batch sweep approaches."""
    return batch / decode_step_time(model, gpu, batch, mean_context)
