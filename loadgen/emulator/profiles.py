"""Model and GPU profiles for the emulated SLM engine, and the memory arithmetic that sizes its KV cache.

A profile holds public facts (layer count, hidden size, parameter count; datasheet memory, bandwidth, FLOP/s,
power limits) plus the constants of the performance and power models (perfmodel.py, power.py), each listed in
``CONSTANTS`` with its source: fitted once, on the h100-64gb profile against the study's OPT-1.3B figures only
(``benchmarks/calibrate_emulator.py --fit``), or assumed from public figures. Every other model and GPU is a
prediction from its public figures and those same constants. Nothing here looks up a reference result.

Memory arithmetic (vLLM's): the budget is ``gpu_memory_fraction`` of the GPU memory; with N replicas on one
GPU each gets 1/N of it; a replica's KV pool is its budget minus the weights minus a fixed
activation/workspace reserve (``reserved_bytes``: the study's pools, 54 GiB for OPT-1.3B and 44 GiB for
Llama-2-7B on a 64 GiB card at 0.9, both leave about 1.1 GiB besides the weights).

When does a max batch "fit"? The KV pool is paged (16-token blocks) and grows as sequences grow, so no batch
is strictly impossible; but a max batch is meaningless when the pool cannot give every one of its slots a
typical prompt. Definition used here: max batch B fits when the pool holds B sequences of
``FIT_CONTEXT_TOKENS`` (128: the study's mean ShareGPT prompt of 111 tokens plus its first output tokens,
rounded up to whole blocks) and, as vLLM requires, at least one sequence of ``max_model_len``. Batches that
fit can still preempt when long sequences grow (Llama-2-7B at 256 in the study): that is reported by the
scheduler's preemption counter, not refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from loadgen.errors import UsageError

GIB = 1024**3
BLOCK_TOKENS = 16
FIT_CONTEXT_TOKENS = 128
DEFAULT_GPU_MEMORY_FRACTION = 0.9


@dataclass(frozen=True)
class ModelProfile:
    """A decoder-only transformer, as the performance model sees it: bytes to read, FLOPs to do."""

    name: str
    layers: int
    hidden: int
    params: float
    vocab: int
    max_model_len: int = 2048
    bytes_per_param: int = 2

    @property
    def weight_bytes(self) -> float:
        return self.params * self.bytes_per_param

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V, every layer, full hidden width (multi-head attention), fp16."""
        return 2 * self.layers * self.hidden * self.bytes_per_param

    @property
    def matmul_flops_per_token(self) -> float:
        """Two FLOPs (multiply, add) per parameter per token: every weight matrix, LM head included."""
        return 2.0 * self.params


@dataclass(frozen=True)
class GpuProfile:
    """Datasheet figures plus the constants that turn them into step times and watts.

    Every constant, and where its value comes from, is listed at ``_CONSTANTS`` below and in
    benchmarks/CALIBRATION.md.
    """

    name: str
    memory_bytes: float
    hbm_bandwidth: float  # nominal bytes/s
    fp16_flops: float  # nominal dense fp16 FLOP/s
    idle_w: float  # board power with nothing running
    max_w: float  # board power limit (TDP)
    bw_efficiency: float  # achieved / nominal HBM bandwidth when streaming the weights (GEMV/GEMM reads)
    kv_bw_efficiency: float  # achieved / nominal HBM bandwidth of decode attention reading the paged KV cache
    flops_efficiency: float  # achieved / nominal FLOP/s of large matrix multiplies (many rows)
    gemm_half_tokens: float  # rows (tokens) at which a GEMM reaches half of that: few rows fill few tiles
    layer_overhead_s: float  # GPU time per layer per pass: launches, syncs, norms (does not depend on batch)
    attn_overhead_s: float  # GPU time per running sequence per layer in decode attention, besides its KV reads
    host_base_s: float  # CPU time per engine iteration: scheduling, input preparation, output processing
    host_per_seq_s: float  # CPU time per running sequence per decode iteration: sampling output, detokenisation
    eager_layer_s: float  # CPU time to launch one layer's kernels one by one (prefill runs without CUDA graphs)
    prefill_host_per_token_s: float  # CPU time per prompt token of a prefill pass: positions, slot mapping
    reserved_bytes: float  # activations, workspace and graphs kept out of the KV pool
    active_frac: float  # static power while the engine has work (clocks up), share of max_w - idle_w
    j_per_byte: float  # energy per byte of HBM traffic (DRAM access and the on-chip path to the SMs)
    j_per_flop: float  # energy per fp16 FLOP of the matrix and attention arithmetic

    @property
    def bandwidth(self) -> float:
        """Effective bytes/s the performance model charges HBM traffic at."""
        return self.hbm_bandwidth * self.bw_efficiency

    @property
    def kv_bandwidth(self) -> float:
        """Effective bytes/s of decode attention's KV-cache reads (paged, per-sequence gathers)."""
        return self.hbm_bandwidth * self.kv_bw_efficiency

    @property
    def flops(self) -> float:
        """Effective FLOP/s of large GEMMs and of prefill attention."""
        return self.fp16_flops * self.flops_efficiency

    def gemm_flops(self, tokens: float) -> float:
        """Effective FLOP/s of the weight GEMMs over ``tokens`` rows (a batch's tokens)."""
        return self.flops * tokens / (tokens + self.gemm_half_tokens) if tokens > 0 else self.flops

    @property
    def active_w(self) -> float:
        """Watts over idle while the engine has work, whatever it does."""
        return self.active_frac * (self.max_w - self.idle_w)


# The constants every GPU profile shares: name -> (value, source, where the value comes from). "fitted": by
# ``benchmarks/calibrate_emulator.py --fit`` on the study's OPT-1.3B sweep (throughput and ITL at every max
# batch, the two host shares) and its two power figures, h100-64gb only; "assumed": a public figure or an
# engineering estimate, never tuned on the study's throughput or latency. benchmarks/cross_validate.py refits
# the fitted ones on one model and predicts the other.
CONSTANTS: dict[str, tuple[float, str, str]] = {
    "bw_efficiency": (0.7733, "fitted", "OPT-1.3B sweep; held near 0.8 (memory-bound kernels reach about 80 % of "
                      "nominal bandwidth): the 64 GB card's bandwidth is not on a datasheet, 2.0 TB/s nominal"),
    "kv_bw_efficiency": (0.8239, "fitted", "OPT-1.3B sweep (the per-context-token slope of the decode step)"),
    "flops_efficiency": (0.6, "assumed", "large dense fp16 GEMMs in PyTorch reach about 60 % of the datasheet "
                         "peak"),
    "gemm_half_tokens": (128.0, "assumed", "a GEMM of 128 rows runs at about half of that: few rows fill few "
                         "tiles and waves of the tensor cores"),
    "layer_overhead_s": (44.35e-6, "fitted", "OPT-1.3B sweep and host shares"),
    "attn_overhead_s": (0.7942e-6, "fitted", "OPT-1.3B sweep and host shares"),
    "host_base_s": (0.9018e-3, "fitted", "OPT-1.3B sweep and host shares (25 % of a step at batch 1)"),
    "host_per_seq_s": (42.85e-6, "fitted", "OPT-1.3B sweep and host shares (37 % of a step at batch 512)"),
    "eager_layer_s": (150e-6, "assumed", "about 15 PyTorch ops per decoder layer at about 10 us of CPU dispatch "
                      "each (prefill steps run without CUDA graphs)"),
    "prefill_host_per_token_s": (0.5e-6, "assumed", "vLLM 0.5 builds positions and the slot mapping per prompt "
                                 "token in Python"),
    "reserved_bytes": (1.1 * GIB, "assumed", "read off the study's stated KV pools (54 GiB and 44 GiB)"),
    "active_frac": (0.2222, "fitted", "OPT-1.3B power at batch 1 and 512 (256 W, 340 W)"),
    "j_per_byte": (60e-12, "assumed", "HBM access about 4 pJ/bit (30 pJ/B) plus about as much on the way to the "
                   "SMs"),
    "j_per_flop": (3.084e-12, "fitted", "OPT-1.3B power at batch 1 and 512; includes the on-chip operand traffic "
                   "of small-batch GEMMs, hence well above the datasheet peak's 0.6 pJ"),
}
FITTED_CONSTANTS = tuple(k for k, (_v, src, _why) in CONSTANTS.items() if src == "fitted")
_CONSTANTS = {k: v for k, (v, _src, _why) in CONSTANTS.items()}

MODELS: dict[str, ModelProfile] = {
    m.name: m
    for m in (
        ModelProfile("opt-125m", layers=12, hidden=768, params=125.2e6, vocab=50272),
        ModelProfile("opt-350m", layers=24, hidden=1024, params=331.2e6, vocab=50272),
        ModelProfile("opt-1.3b", layers=24, hidden=2048, params=1.316e9, vocab=50272),
        ModelProfile("opt-2.7b", layers=32, hidden=2560, params=2.651e9, vocab=50272),
        ModelProfile("opt-6.7b", layers=32, hidden=4096, params=6.658e9, vocab=50272),
        ModelProfile("llama-2-7b", layers=32, hidden=4096, params=6.738e9, vocab=32000, max_model_len=4096),
        ModelProfile("llama-2-13b", layers=40, hidden=5120, params=13.016e9, vocab=32000, max_model_len=4096),
    )
}

GPUS: dict[str, GpuProfile] = {
    g.name: g
    for g in (
        # The study's card: 64 GiB; nominal bandwidth taken as 2.0 TB/s (HBM2e class), its achieved share
        # fitted.
        GpuProfile("h100-64gb", 64 * GIB, 2.0e12, 989e12, idle_w=70.0, max_w=700.0, **_CONSTANTS),
        GpuProfile("h100-80gb", 80 * GIB, 3.35e12, 989e12, idle_w=70.0, max_w=700.0, **_CONSTANTS),
        GpuProfile("a100-80gb", 80 * GIB, 2.0e12, 312e12, idle_w=55.0, max_w=400.0, **_CONSTANTS),
        GpuProfile("h200", 141e9, 4.8e12, 989e12, idle_w=75.0, max_w=700.0, **_CONSTANTS),
    )
}


def get_model(name: ModelProfile | str) -> ModelProfile:
    """Look a model up by name (case-insensitive); a profile passes through."""
    if isinstance(name, ModelProfile):
        return name
    key = str(name).strip().lower()
    if key not in MODELS:
        raise UsageError(f"unknown model profile {name!r}: choose one of {', '.join(MODELS)}")
    return MODELS[key]


def get_gpu(name: GpuProfile | str) -> GpuProfile:
    """Look a GPU up by name (case-insensitive); a profile passes through."""
    if isinstance(name, GpuProfile):
        return name
    key = str(name).strip().lower()
    if key not in GPUS:
        raise UsageError(f"unknown GPU profile {name!r}: choose one of {', '.join(GPUS)}")
    return GPUS[key]


def blocks_for(tokens: int) -> int:
    """KV blocks needed to hold ``tokens`` tokens."""
    return -(-int(tokens) // BLOCK_TOKENS)


def kv_pool_bytes(
    model: ModelProfile,
    gpu: GpuProfile,
    replicas: int = 1,
    gpu_memory_fraction: float = DEFAULT_GPU_MEMORY_FRACTION,
) -> float:
    """Bytes of KV cache one replica gets; UsageError when the weights (plus reserve) do not fit its share."""
    if replicas < 1:
        raise UsageError(f"replicas={replicas} is invalid: use 1 or more")
    if not 0.0 < gpu_memory_fraction <= 1.0:
        raise UsageError(f"gpu_memory_fraction={gpu_memory_fraction} is invalid: use a value in (0, 1]")
    share = gpu.memory_bytes * gpu_memory_fraction / replicas
    pool = share - model.weight_bytes - gpu.reserved_bytes
    if pool < model.kv_bytes_per_token * BLOCK_TOKENS:
        raise UsageError(
            f"{model.name} does not fit on {gpu.name} with {replicas} replica(s) at gpu_memory_fraction "
            f"{gpu_memory_fraction}: each replica has {share / GIB:.1f} GiB for "
            f"{model.weight_bytes / GIB:.1f} GiB of "
            f"weights and {gpu.reserved_bytes / GIB:.1f} GiB of workspace; use fewer replicas or a bigger GPU"
        )
    return pool


def kv_pool_blocks(
    model: ModelProfile,
    gpu: GpuProfile,
    replicas: int = 1,
    gpu_memory_fraction: float = DEFAULT_GPU_MEMORY_FRACTION,
) -> int:
    """Whole 16-token blocks in one replica's KV pool."""
    pool = kv_pool_bytes(model, gpu, replicas, gpu_memory_fraction)
    return int(pool // (model.kv_bytes_per_token * BLOCK_TOKENS))


def largest_batch_that_fits(
    model: ModelProfile | str,
    gpu: GpuProfile | str,
    replicas: int = 1,
    gpu_memory_fraction: float = DEFAULT_GPU_MEMORY_FRACTION,
) -> int:
    """The largest max batch that fits under the definition in the module docstring (0 if none does)."""
    m, g = get_model(model), get_gpu(gpu)
    blocks = kv_pool_blocks(m, g, replicas, gpu_memory_fraction)
    if blocks < blocks_for(m.max_model_len):
        return 0
    return blocks // blocks_for(FIT_CONTEXT_TOKENS)


def check_batch_fits(
    model: ModelProfile | str,
    gpu: GpuProfile | str,
    max_batch: int,
    replicas: int = 1,
    gpu_memory_fraction: float = DEFAULT_GPU_MEMORY_FRACTION,
) -> int:
    """Raise UsageError unless ``max_batch`` fits; return the replica's KV pool size in blocks."""
    m, g = get_model(model), get_gpu(gpu)
    if int(max_batch) != max_batch or max_batch < 1:
        raise UsageError(f"max batch {max_batch!r} is invalid: use a whole number of 1 or more")
    blocks = kv_pool_blocks(m, g, replicas, gpu_memory_fraction)
    if blocks < blocks_for(m.max_model_len):
        raise UsageError(
            f"{m.name} on {g.name} with {replicas} replica(s): the KV pool ({blocks * BLOCK_TOKENS} tokens) "
            "cannot "
            f"hold one {m.max_model_len}-token sequence; use fewer replicas or a bigger GPU"
        )
    largest = blocks // blocks_for(FIT_CONTEXT_TOKENS)
    if max_batch > largest:
        raise UsageError(
            f"max batch {max_batch} does not fit: at most {largest} for {m.name} on {g.name} with {replicas} "
            f"replica(s) ({blocks * BLOCK_TOKENS} KV tokens, {FIT_CONTEXT_TOKENS} per running request)"
        )
    return blocks


def kv_bytes_summary(model: ModelProfile, gpu: GpuProfile, replicas: int = 1) -> str:
    """One line for logs: weights, pool, tokens."""
    pool = kv_pool_bytes(model, gpu, replicas)
    tokens = math.floor(pool / model.kv_bytes_per_token)
    return (
        f"{model.name} on {gpu.name} x{replicas}: weights {model.weight_bytes / GIB:.2f} GiB, "
        f"KV pool {pool / GIB:.1f} GiB = {tokens} tokens"
    )
