"""Offline batch runs of the emulated engine in virtual time: the study's sweep without waiting for it.

Uses the engine's own pieces: the scheduler (scheduler.py) decides every step, the performance model
(perfmodel.py) prices it, replicas share the GPU through the same stretch rule as the real-time engine
(gpu.py: a GPU phase slows by the GPU's oversubscription; host phases overlap freely), and power.py turns
activity into watts. Only the clock differs: events instead of sleeps. One replica fast-forwards runs of plain
decode steps (the scheduler knows how many are coming), which keeps a 2,000-request point well under a second.

Metric conventions follow the study: throughput = (input + output tokens) / duration (all requests sent at
t=0; duration = last token); mean ITL = each request's mean gap between consecutive tokens, averaged over
requests (per-request TPOT, as benchmark tools report it; the gap-weighted mean is also returned); batch =
time-weighted mean running requests per replica.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from loadgen.emulator.gpu import stretch_factor
from loadgen.emulator.perfmodel import StepCost, StepShape, step_cost
from loadgen.emulator.power import PowerModel
from loadgen.emulator.profiles import (
    BLOCK_TOKENS,
    DEFAULT_GPU_MEMORY_FRACTION,
    GpuProfile,
    ModelProfile,
    check_batch_fits,
    get_gpu,
    get_model,
)
from loadgen.emulator.scheduler import Scheduler
from loadgen.errors import UsageError

# ShareGPT-like workload of the study (OPT tokenizer): mean 111 prompt / 292 output tokens, max model length
# 2,048.
SHAREGPT_MEAN_INPUT = 111
SHAREGPT_MEAN_OUTPUT = 292
SHAREGPT_SIGMA_INPUT = 1.0  # lognormal shape: prompts are heavy-tailed (median about 60 tokens)
SHAREGPT_SIGMA_OUTPUT = 0.8  # answers: median about 210 tokens, a long tail to the context limit


def sharegpt_like_lengths(
    n: int,
    *,
    seed: int = 0,
    mean_input: float = SHAREGPT_MEAN_INPUT,
    mean_output: float = SHAREGPT_MEAN_OUTPUT,
    max_model_len: int = 2048,
    sigma_input: float = SHAREGPT_SIGMA_INPUT,
    sigma_output: float = SHAREGPT_SIGMA_OUTPUT,
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded lognormal prompt/output lengths, clipped like vLLM's ShareGPT filter, with the requested means.

    Prompts are kept within [4, 1024] and outputs within [4, max_model_len - prompt]; the lognormal location
    is corrected after clipping so the sample means land on ``mean_input`` / ``mean_output``.
    """
    if n < 1:
        raise UsageError(f"n={n} is invalid: ask for at least 1 request")
    rng = np.random.default_rng(seed)
    z_in = rng.standard_normal(n)
    z_out = rng.standard_normal(n)
    mu_in = np.log(mean_input) - sigma_input**2 / 2
    mu_out = np.log(mean_output) - sigma_output**2 / 2
    for _ in range(6):
        inp = np.clip(np.rint(np.exp(mu_in + sigma_input * z_in)), 4, min(1024, max_model_len - 4))
        out = np.clip(np.rint(np.exp(mu_out + sigma_output * z_out)), 4, max_model_len - inp)
        mu_in += np.log(mean_input / inp.mean())
        mu_out += np.log(mean_output / out.mean())
    return inp.astype(np.int64), out.astype(np.int64)


class _Replica:
    __slots__ = ("sched", "cost", "plan", "phase", "t_end", "remaining", "util", "dyn_w", "busy_s", "host_s")

    def __init__(self, sched: Scheduler) -> None:
        self.sched = sched
        self.cost: StepCost | None = None
        self.plan = None
        self.phase = "idle"
        self.t_end = 0.0
        self.remaining = 0.0
        self.util = 0.0
        self.dyn_w = 0.0
        self.busy_s = 0.0
        self.host_s = 0.0


def simulate_offline(
    model: ModelProfile | str,
    gpu: GpuProfile | str,
    max_batch: int,
    n_requests: int = 2000,
    input_lengths: Sequence[int] | None = None,
    output_lengths: Sequence[int] | None = None,
    replicas: int = 1,
    mps: bool = True,
    *,
    seed: int = 0,
    gpu_memory_fraction: float = DEFAULT_GPU_MEMORY_FRACTION,
    max_prefill_tokens: int = 2048,
) -> dict:
    """All ``n_requests`` arrive at t=0, spread round-robin over ``replicas`` engines of ``max_batch`` each.

    Lengths default to ``sharegpt_like_lengths(n_requests, seed=seed, max_model_len=min(2048, model's))``.
    Returns the study's metrics (see module docstring) plus power and KV figures.
    """
    m, g = get_model(model), get_gpu(gpu)
    blocks = check_batch_fits(m, g, max_batch, replicas, gpu_memory_fraction)
    if input_lengths is None or output_lengths is None:
        input_lengths, output_lengths = sharegpt_like_lengths(
            n_requests, seed=seed, max_model_len=min(2048, m.max_model_len)
        )
    inp = np.asarray(input_lengths, dtype=np.int64)[:n_requests]
    out = np.asarray(output_lengths, dtype=np.int64)[:n_requests]
    if len(inp) < n_requests or len(out) < n_requests:
        raise UsageError(f"need {n_requests} input and output lengths, got {len(inp)} and {len(out)}")

    def cost_fn(shape):
        return step_cost(m, g, shape)

    reps = [
        _Replica(
            Scheduler(
                max_batch,
                blocks,
                max_model_len=m.max_model_len,
                max_prefill_tokens=max_prefill_tokens,
                cost_fn=cost_fn,
            )
        )
        for _ in range(replicas)
    ]
    target = np.zeros(n_requests, dtype=np.int64)
    for i in range(n_requests):
        target[i] = reps[i % replicas].sched.add(i, int(inp[i]), int(out[i]))
    first_t = np.full(n_requests, np.nan)
    last_t = np.full(n_requests, np.nan)
    power = PowerModel.for_gpu(g)
    acc = {"energy": 0.0, "batch_time": 0.0, "kv_peak": 0}

    if replicas == 1:
        t = _run_single(reps[0], power, first_t, last_t, acc)
    else:
        t = _run_shared(reps, power, mps, first_t, last_t, acc)

    n_tok = target.astype(np.float64)
    gaps = n_tok - 1
    multi = gaps > 0
    itl = float(np.sum((last_t - first_t)[multi]) / np.sum(gaps[multi])) if multi.any() else 0.0
    tpot = float(np.mean((last_t - first_t)[multi] / gaps[multi])) if multi.any() else 0.0
    total_tokens = float(inp.sum() + target.sum())
    energy = acc["energy"]
    return {
        "model": m.name,
        "gpu": g.name,
        "max_batch": int(max_batch),
        "replicas": int(replicas),
        "mps": bool(mps),
        "requests": int(n_requests),
        "mean_input_tokens": float(inp.mean()),
        "mean_output_tokens": float(target.mean()),
        "duration_s": t,
        "total_tokens_per_s": total_tokens / t,
        "output_tokens_per_s": float(target.sum()) / t,
        "mean_itl_ms": tpot * 1e3,
        "mean_itl_token_weighted_ms": itl * 1e3,
        "mean_ttft_ms": float(np.mean(first_t)) * 1e3,
        "mean_e2e_ms": float(np.mean(last_t)) * 1e3,
        "mean_running_batch": acc["batch_time"] / t / replicas,
        "preemptions": int(sum(r.sched.preemptions for r in reps)),
        "steps": int(sum(r.sched.steps for r in reps)),
        "kv_total_blocks": int(blocks),
        "kv_peak_usage": acc["kv_peak"] / blocks,
        "host_fraction": sum(r.host_s for r in reps) / max(1e-12, sum(r.busy_s for r in reps)),
        "mean_power_w": energy / t,
        "energy_j": energy,
        "joules_per_token": energy / total_tokens,
        "tokens_per_joule": total_tokens / energy if energy > 0 else 0.0,
        "kv_block_tokens": BLOCK_TOKENS,
    }


def _record(plan, t: float, first_t: np.ndarray, last_t: np.ndarray) -> None:
    for key in plan.first:
        if np.isnan(first_t[key]):
            first_t[key] = t
    for key in plan.finished:
        last_t[key] = t


def _run_single(
    rep: _Replica, power: PowerModel, first_t: np.ndarray, last_t: np.ndarray, acc: dict
) -> float:
    """One replica owns the GPU: steps run back to back; plain decode runs are priced in one go."""
    sched = rep.sched
    cost_fn = sched.cost_fn
    t = 0.0
    energy = 0.0
    batch_time = 0.0
    kv_peak = 0
    while True:
        m = sched.plain_steps_available()
        if m >= 2:
            run = sched.advance_plain(m)
            # Step cost is affine in the attended context, which grows linearly: average the two ends.
            c1 = cost_fn(StepShape(run.decode_seqs, run.first_ctx_tokens))
            c2 = cost_fn(StepShape(run.decode_seqs, run.last_ctx_tokens))
            dt = m * (c1.total_s + c2.total_s) / 2
            energy += m * (power.step_energy_j(c1) + power.step_energy_j(c2)) / 2
            rep.host_s += m * c1.host_s
            batch_time += run.decode_seqs * dt
            t += dt
            rep.busy_s += dt
            kv_peak = max(kv_peak, sched.kv_used_blocks)
            continue
        plan = sched.step(t)
        if plan is None:
            break
        kv_peak = max(kv_peak, sched.kv_used_blocks)
        cost = plan.cost
        dt = cost.total_s
        energy += power.step_energy_j(cost)
        batch_time += plan.shape.seqs * dt
        rep.host_s += cost.host_s
        rep.busy_s += dt
        t += dt
        _record(plan, t, first_t, last_t)
    acc["energy"] += energy
    acc["batch_time"] += batch_time
    acc["kv_peak"] = max(acc["kv_peak"], kv_peak)
    return t


def _run_shared(
    reps: list[_Replica], power: PowerModel, mps: bool, first_t: np.ndarray, last_t: np.ndarray, acc: dict
) -> float:
    """Several replicas on one GPU: event-driven; a GPU phase progresses at 1/stretch of its lone speed."""
    t = 0.0

    def begin_step(rep: _Replica, now: float) -> None:
        plan = rep.sched.step(now)
        if plan is None:
            rep.phase = "idle"
            rep.plan = None
            return
        rep.plan = plan
        rep.cost = plan.cost
        rep.phase = "host"
        rep.t_end = now + plan.cost.host_s
        rep.host_s += plan.cost.host_s
        rep.busy_s += plan.cost.total_s
        acc["kv_peak"] = max(acc["kv_peak"], rep.sched.kv_used_blocks)

    for rep in reps:
        begin_step(rep, 0.0)
    eps = 1e-12
    while True:
        active = [r for r in reps if r.phase != "idle"]
        if not active:
            break
        on_gpu = [r for r in active if r.phase == "gpu"]
        s = stretch_factor([r.util for r in on_gpu], mps)
        t_next = min(r.t_end if r.phase == "host" else t + r.remaining * s for r in active)
        dt = max(0.0, t_next - t)
        acc["energy"] += power.total_w(True, [r.dyn_w for r in on_gpu], s) * dt
        acc["batch_time"] += sum(r.plan.shape.seqs for r in active) * dt
        for r in on_gpu:
            r.remaining -= dt / s
        t = t_next
        for r in active:
            if r.phase == "host" and r.t_end <= t + eps:
                cost = r.cost
                r.phase = "gpu"
                r.remaining = cost.gpu_s
                r.util = cost.utilisation
                r.dyn_w = power.phase_dynamic_w(cost)
            elif r.phase == "gpu" and r.remaining <= eps * max(1.0, r.cost.gpu_s):
                _record(r.plan, t, first_t, last_t)
                begin_step(r, t)
    return t
