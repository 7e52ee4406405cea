"""Plan a load level: from a scenario to the schedule and the request source, before anything starts.

Every front end plans the same way, so the same scenario gives the same requests at the same offsets whether the
asyncio loop, its worker processes or Locust's dispatcher sends them. Kinds of plan:

- built-in arrivals (poisson, gamma, constant) or a closed loop (no offsets): ``loadgen.core.arrivals``;
- a trace replay or a synthetic arrival model: ``loadgen.traces.replay``;
- the study's ShareGPT-like lengths (``--lengths sharegpt``): the emulator's length sampler, on either arrival kind.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from loadgen.core.arrivals import ArrivalSpec
from loadgen.core.records import RequestSpec
from loadgen.errors import UsageError
from loadgen.scenario.model import Scenario

SHAREGPT_POOL = 4096  # lengths drawn for an open or closed loop with --lengths sharegpt (cycled past that)


MAX_COUNTED_SESSIONS = 200_000  # past this, a progress bar counts without a total rather than wait to add them up


@dataclass
class LevelPlan:
    """What a driver sends: ``offsets`` (sorted int64 ns from t0; None for a closed loop) and ``source``
    (``spec(index) -> RequestSpec``), plus what the summary and the report must state."""

    offsets: np.ndarray | None
    source: Any
    target_rate: float | None  # the rate the user asked for (a replay: its mean rate)
    arrival: dict[str, Any]  # LevelContext.arrival
    extra: dict[str, Any] = field(default_factory=dict)  # LevelContext.extra
    describe: list[str] = field(default_factory=list)  # lines for the console and report.txt
    replay: bool = False  # a trace replay or synthetic model: open loop whatever target_rate says
    sessions: Any = None  # multi-turn sessions (loadgen.core.sessions.SessionSetup): offsets are session starts

    @property
    def total(self) -> int | None:
        """Requests the plan will send, when known (a progress bar's total): the schedule's length, or with
        sessions the turns of the sessions planned (counted from the seeded source; None when the sessions are
        bounded by time only)."""
        if self.sessions is not None:
            n = len(self.offsets) if self.offsets is not None else self.sessions.max_sessions
            if n is None or n > MAX_COUNTED_SESSIONS:
                return None
            return sum(len(self.sessions.source.session(sid).turns) for sid in range(n))
        return len(self.offsets) if self.offsets is not None else None


def arrival_spec(sc: Scenario) -> ArrivalSpec:
    ld = sc.load
    if sc.closed_loop:
        return ArrivalSpec(kind="closed", concurrency=ld.concurrency, duration_s=ld.duration,
                           max_requests=ld.requests, seed=ld.seed)
    return ArrivalSpec(kind=ld.arrival, rate=ld.rate, cv=ld.cv, concurrency=ld.concurrency, duration_s=ld.duration,
                       max_requests=ld.requests, seed=ld.seed, count=ld.count)


def request_source(sc: Scenario) -> Any:
    from loadgen.core.prompts import PromptBuilder, RequestSource
    from loadgen.core.sizes import parse_size

    w = sc.workload
    builder = PromptBuilder(tokenizer=w.tokenizer, seed=sc.load.seed)
    return RequestSource(parse_size(w.input_tokens, "--input-tokens"), parse_size(w.output_tokens, "--output-tokens"),
                         builder, seed=sc.load.seed, params={}, min_tokens_equal_max=sc.target.min_tokens)


class LengthsSource:
    """Requests with given (input, output) lengths, cycled; prompts built up front when ``prebuild`` says so
    (an offline level sends every request at t=0, with no time to build them on the way)."""

    def __init__(self, inputs: np.ndarray, outputs: np.ndarray, builder: Any, min_tokens: bool,
                 prebuild: int = 0) -> None:
        self.inputs, self.outputs = inputs, outputs
        self.builder = builder
        self.min_tokens = min_tokens
        self._cache: dict[int, tuple[str, int]] = {}
        for i in range(min(prebuild, len(inputs))):
            self._cache[i] = builder.build(int(inputs[i]), i)

    def spec(self, index: int) -> RequestSpec:
        k = index % len(self.inputs)
        prompt, count = self._cache.pop(index, None) or self.builder.build(int(self.inputs[k]), index)
        n_out = int(self.outputs[k])
        return RequestSpec(index=index, prompt=prompt, input_tokens=count, max_tokens=n_out,
                           min_tokens=n_out if self.min_tokens else None)


def sharegpt_source(sc: Scenario, n: int, prebuild: int = 0) -> LengthsSource:
    """The study's ShareGPT-like lengths (``loadgen.emulator.simulate``), capped at the study's 2,048 tokens or
    the emulated model's context (``[server] model``) when that is shorter."""
    from loadgen.core.prompts import PromptBuilder
    from loadgen.emulator.profiles import get_model
    from loadgen.emulator.simulate import sharegpt_like_lengths

    try:
        max_len = min(2048, get_model(sc.server.model).max_model_len)
    except UsageError:
        max_len = 2048
    inputs, outputs = sharegpt_like_lengths(n, seed=sc.load.seed, max_model_len=max_len)
    return LengthsSource(inputs, outputs, PromptBuilder(tokenizer=None, seed=sc.load.seed), sc.target.min_tokens,
                         prebuild=prebuild)


def plan_level(sc: Scenario, *, offline: bool = False) -> LevelPlan:
    """The level's schedule and source. ``offline``: every request at t=0 (the study's offline benchmark: a
    closed loop of N users with one request each), prompts built up front."""
    if sc.sessions:
        from loadgen.level.session_plan import plan_sessions

        return LevelPlan(**plan_sessions(sc, arrival_spec))
    if sc.replaying or sc.synthetic:
        from loadgen.traces.replay import synthetic_workload, trace_workload

        w = trace_workload(sc) if sc.replaying else synthetic_workload(sc)
        return with_cancellation(LevelPlan(w.offsets, w.source, w.target_rate, w.arrival, dict(w.extra),
                                           list(w.describe), True), sc)
    spec = arrival_spec(sc).validate()
    offsets = None
    ramp_requests = 0
    if spec.is_open_loop:
        from loadgen.core.arrivals import build_offsets_with_ramp

        offsets, ramp_requests = build_offsets_with_ramp(spec, ramp_of(sc))
        if len(offsets) == 0:
            raise UsageError("the schedule is empty: --duration is too short for --rate (no arrival fell inside it)")
    if sc.workload.lengths == "sharegpt":
        n = int(sc.load.requests or 0) if offline else max(SHAREGPT_POOL, sc.load.requests or 0)
        source: Any = sharegpt_source(sc, n, prebuild=n if offline else 0)
    else:
        source = request_source(sc)
    plan = LevelPlan(offsets, source, sc.load.rate, asdict(spec))
    add_ramp(plan, sc, ramp_requests)
    return with_cancellation(plan, sc)


def ramp_of(sc: Scenario) -> Any:
    """The open loop's rate ramp (``--ramp``), or None."""
    from loadgen.core.arrivals import Ramp

    if not sc.load.ramp or sc.closed_loop:
        return None
    return Ramp(float(sc.load.ramp), float(sc.load.ramp_start_rate or 0.0))


def add_ramp(plan: LevelPlan, sc: Scenario, ramp_requests: int) -> None:
    """State the ramp (``--ramp``) in the plan: its requests come first and are excluded like warm-up
    (``Scenario.warmup_s`` includes the ramp)."""
    if not sc.load.ramp:
        return
    ramp = {"ramp_s": sc.load.ramp}
    if sc.closed_loop:
        ramp["users"] = sc.load.concurrency
        plan.describe.append(f"ramp: {sc.load.concurrency} users start one by one over {sc.load.ramp:g} s, "
                             "excluded from the measured window")
    else:
        start = float(sc.load.ramp_start_rate or 0.0)
        ramp.update(start_rate_rps=start, requests=ramp_requests)
        plan.describe.append(f"ramp: {start:g} -> {sc.load.rate:g} req/s over {sc.load.ramp:g} s "
                             f"({ramp_requests} requests), excluded from the measured window")
    plan.extra["ramp"] = ramp


def with_cancellation(plan: LevelPlan, sc: Scenario) -> LevelPlan:
    """Client cancellation (``--cancel-rate``/``--cancel-after``): each spec carries its planned delay, decided
    from the seed and its index (``loadgen.core.cancel``), so that every driver only honours it."""
    from loadgen.core.cancel import CancellingSource, check_cancel

    cancel = check_cancel(sc.load.cancel_rate, sc.load.cancel_after, sc.load.seed)
    if cancel is None:
        return plan
    plan.source = CancellingSource(plan.source, cancel)
    plan.extra["cancel"] = cancel.to_dict()
    plan.describe.append(cancel.describe())
    return plan


def level_context(sc: Scenario, plan: LevelPlan, url: str, name: str) -> Any:
    """The ``LevelContext`` of the summary: what the records do not say about the level."""
    from loadgen.core.prompts import PromptBuilder
    from loadgen.core.slo import parse_slo
    from loadgen.core.summary import LevelContext

    ctx = LevelContext(name=name, backend=sc.target.backend, url=url, model=sc.target.model or "",
                       target_rate=plan.target_rate, concurrency=sc.load.concurrency, arrival=dict(plan.arrival),
                       warmup_s=sc.warmup_s, warmup_requests=sc.warmup_requests, cooldown_s=sc.load.cooldown,
                       slo=parse_slo(sc.results.slo) if sc.results.slo else {},
                       prompt_method=PromptBuilder(tokenizer=sc.workload.tokenizer, seed=sc.load.seed).method,
                       on_late=sc.load.on_late, late_threshold_ms=sc.load.late_tolerance * 1e3)
    if plan.replay:
        ctx.open_loop = True
    ctx.extra = dict(plan.extra)
    if sc.workload.lengths:
        ctx.extra["lengths"] = sc.workload.lengths
    return ctx
