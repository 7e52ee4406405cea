"""Model and GPU profiles for the emulated SLM engine, and the memory arithmetic that sizes its KV cache.

A profile holds public facts (layer count, hidden size, parameter count; datasheet memory, bandwidth, FLOP/s,
power limits) plus a handful of efficiency constants. The efficiency constants were fitted once, on the
h100-64gb profile against the study's OPT-1.3B batch sweep only (``benchmarks/calibrate_emulator.py --fit``);
every other model and GPU is a prediction from its public figures and those same constants. Nothing here looks
up a reference result.

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
    """Datasheet figures plus the efficiency constants that turn them into step times and watts.

    Fitted on h100-64gb / OPT-1.3B (see benchmarks/CALIBRATION.md): ``bw_efficiency``, ``layer_overhead_s``,
    ``seq_overhead_s``, ``host_base_s``, ``host_per_seq_s`` (performance) and ``mem_frac`` (power).
    Assumed, not fitted: ``flops_efficiency`` (dense fp16 GEMM at these shapes; decode never reaches the
    compute roof, so the sweep cannot pin it), ``reserved_bytes`` (read off the study's stated KV pools) and
    ``floor_frac`` (a GPU with clocks up and no kernel running draws roughly 40 W over idle).
    """

    name: str
    memory_bytes: float
    hbm_bandwidth: float  # nominal bytes/s
    fp16_flops: float  # nominal dense fp16 FLOP/s
    idle_w: float  # board power with nothing running
    max_w: float  # board power limit (TDP)
    bw_efficiency: float  # achieved / nominal HBM bandwidth when streaming weights and KV
    flops_efficiency: float  # achieved / nominal FLOP/s in prefill GEMMs
    layer_overhead_s: (
        float  # GPU time per layer per step that does not depend on batch: launches, syncs, norms
    )
    seq_overhead_s: float  # GPU time per running sequence per step: sampling, elementwise, cache writes
    host_base_s: float  # CPU time per step: scheduling, input preparation, output processing
    host_per_seq_s: float  # CPU time per running sequence per step: detokenisation, stop checks, bookkeeping
    reserved_bytes: float  # activations, workspace and graphs kept out of the KV pool
    floor_frac: (
        float  # power level while active but waiting (host phases, launch-bound kernels), of max - idle
    )
    mem_frac: float  # power level while streaming HBM at the achieved bandwidth, of max - idle

    @property
    def bandwidth(self) -> float:
        """Effective bytes/s the performance model charges HBM traffic at."""
        return self.hbm_bandwidth * self.bw_efficiency

    @property
    def flops(self) -> float:
        return self.fp16_flops * self.flops_efficiency


# Efficiency constants shared by every GPU profile (fitted on h100-64gb; see module docstring).
_FITTED = dict(
    bw_efficiency=0.8161,  # fitted
    flops_efficiency=0.55,  # assumed
    layer_overhead_s=48.19e-6,  # fitted
    seq_overhead_s=18.81e-6,  # fitted
    host_base_s=0.9015e-3,  # fitted
    host_per_seq_s=43.00e-6,  # fitted
    reserved_bytes=1.1 * GIB,  # assumed (the study's KV pools)
    floor_frac=0.06,  # assumed
    mem_frac=0.6226,  # fitted
)

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
        GpuProfile("h100-64gb", 64 * GIB, 2.0e12, 989e12, idle_w=70.0, max_w=700.0, **_FITTED),
        GpuProfile("h100-80gb", 80 * GIB, 3.35e12, 989e12, idle_w=70.0, max_w=700.0, **_FITTED),
        GpuProfile("a100-80gb", 80 * GIB, 2.0e12, 312e12, idle_w=55.0, max_w=400.0, **_FITTED),
        GpuProfile("h200", 141e9, 4.8e12, 989e12, idle_w=75.0, max_w=700.0, **_FITTED),
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
