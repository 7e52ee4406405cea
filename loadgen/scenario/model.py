"""The scenario: one typed model of everything a load level needs, grouped as a user thinks of it.

Why one model: ``loadgen run``, ``loadgen sweep``, ``loadgen serve`` and the Locust front end used to write their
own flags, defaults and checks, and drifted apart. Now each field is declared once here, with its flag name, its
default and its help text; the command-line flags of every front end (``loadgen.scenario.flags``), the TOML
scenario file (``loadgen.scenario.files``) and ``config.json`` all come from these declarations.

pydantic (v2) does the typing and the per-field validation (a number where a number is due, no unknown key in a
file); the checks that span fields (``--rate`` or ``--concurrency``, a trace excludes ``--rate``...) are in
``loadgen.scenario.check``, which also turns pydantic's errors into one line naming the flag.

Durations are stored in seconds (``duration = 30.0``) and accepted as ``30``, ``"30s"``, ``"500ms"``, ``"2m"``.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from loadgen.core.units import parse_seconds
from loadgen.errors import UsageError


def _seconds(value: Any) -> Any:
    if value is None:
        return None
    try:
        return parse_seconds(value, "")
    except UsageError:
        raise ValueError("expected a duration such as 30, 30s, 500ms, 2m or 1h") from None


def _text(value: Any) -> Any:
    """Sizes and warm-up are text forms (``uniform:64,256``, ``20``, ``5s``); a number in a file is fine too."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return f"{value:g}"
    return value


def _on_off(value: Any) -> Any:
    """A switch written as on/off in flags and files; true/false in a file mean the same."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value).strip().lower() if isinstance(value, str) else value


Seconds = Annotated[float, BeforeValidator(_seconds)]
OnOff = Annotated[str, BeforeValidator(_on_off)]
OptSeconds = Annotated[float | None, BeforeValidator(_seconds)]
Text = Annotated[str, BeforeValidator(_text)]


def opt(default: Any, flag: str, help: str, *, metavar: str | None = None, choices: tuple[str, ...] | None = None,
        ui: bool = False, secret: bool = False) -> Any:
    """A scenario field: its default, its flag (the same in every front end) and its help text.

    ``ui``: also shown in Locust's web UI start form; ``secret``: never written to a file or printed.
    """
    extra = {"flag": flag, "metavar": metavar, "choices": list(choices) if choices else None, "ui": ui,
             "secret": secret}
    return Field(default, description=help, json_schema_extra=extra)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Target(Section):
    """Where the load goes and how it is spoken to."""

    url: str | None = opt(None, "--url", "server root, e.g. http://127.0.0.1:8000 (triton-grpc: 127.0.0.1:8001); "
                          "without it the embedded Triton server is started for the run", ui=True)
    backend: str = opt("triton-http", "--backend", "the protocol: triton-http (generate_stream), triton-grpc, "
                       "triton-generate, kserve-infer, openai-chat or openai-completions", ui=True)
    model: str | None = opt(None, "--model", "model name on the server (default: ensemble for Triton; required "
                            "for OpenAI-compatible servers)", ui=True)
    api_key: str | None = opt(None, "--api-key", "bearer token (else $LOADGEN_API_KEY or $OPENAI_API_KEY); never "
                              "written to disk", secret=True, ui=True)
    headers: list[str] = opt([], "--header", "extra HTTP header NAME:VALUE (repeatable)", metavar="NAME:VALUE")
    insecure: bool = opt(False, "--insecure", "do not verify TLS certificates (they are verified by default)")
    http_client: str = opt("fast", "--http-client", "HTTP client: fast (lean asyncio protocol, default) or aiohttp",
                           choices=("fast", "aiohttp"))
    extra: list[str] = opt([], "--extra", "pass-through request field (Triton input tensor / OpenAI body field), "
                           "JSON value (repeatable)", metavar="KEY=VALUE")
    parameters: list[str] = opt([], "--parameter", "Triton request parameter (the 'parameters' object of "
                                "generate_stream; repeatable)", metavar="KEY=VALUE")
    perf_metrics: bool = opt(False, "--perf-metrics", "ask a TensorRT-LLM model for its per-request perf fields "
                             "(return_perf_metrics)", ui=True)
    ignore_eos: bool = opt(True, "--no-ignore-eos", "OpenAI: do not send ignore_eos")
    min_tokens: bool = opt(True, "--no-min-tokens", "do not send min_tokens = max_tokens")
    continuous_usage: bool = opt(False, "--continuous-usage", "OpenAI (vLLM): ask for usage in every chunk, for "
                                 "exact per-chunk token counts")


class Load(Section):
    """When requests are sent: the arrival process (open loop) or N users (closed loop), and when to stop."""

    arrival: str = opt("poisson", "--arrival", "poisson | gamma | constant (open loop), or a synthetic model "
                       "piecewise:R@D,...  diurnal:MEAN,AMP,PERIOD  trace-rate:FILE  mmpp:R1,R2@D1,D2", ui=True)
    rate: float | None = opt(None, "--rate", "target request rate, req/s (open loop)", ui=True)
    cv: float | None = opt(None, "--cv", "gamma arrivals: coefficient of variation of the gaps", ui=True)
    concurrency: int | None = opt(None, "--concurrency", "closed loop: N requests in flight (no --rate); with "
                                  "--rate: a cap on requests in flight", ui=True)
    duration: OptSeconds = opt(None, "--duration", "how long to issue requests (e.g. 60, 60s, 2m)", ui=True)
    requests: int | None = opt(None, "--requests", "how many requests to issue", ui=True)
    count: str = opt("exact", "--arrival-count", "open loop with --duration: exact (default) sends round(rate x "
                     "duration) requests, the process conditioned on that count (Poisson stays Poisson); random: "
                     "the free process, whose count varies by about its square root", choices=("exact", "random"))
    seed: int = opt(0, "--seed", "seed of the arrivals, sizes and prompts (default 0)", ui=True)
    warmup: Text = opt("0", "--warmup", "exclude the first N requests (e.g. 20) or seconds (e.g. 5s)", ui=True)
    cooldown: Seconds = opt(0.0, "--cooldown", "exclude requests scheduled in the last S seconds", ui=True)
    on_late: str = opt("issue", "--on-late", "when the generator falls behind: issue (send late, default) or drop "
                       "(count and skip)", choices=("issue", "drop"), ui=True)
    late_tolerance: Seconds = opt(0.01, "--late-tolerance", "lateness that counts as late (default 10ms)", ui=True)
    workers: int = opt(1, "--workers", "worker processes sharing the one schedule (each sends every Nth request), "
                       "for rates past one core (~2,000 streamed req/s); default 1")
    ramp: OptSeconds = opt(None, "--ramp", "a linear ramp before the measured window (e.g. 30s): the rate rises "
                           "from --ramp-start-rate to --rate (open loop), or the users start one by one over it "
                           "(closed loop); its requests are recorded and excluded like warm-up")
    ramp_start_rate: float | None = opt(None, "--ramp-start-rate", "open loop with --ramp: the rate the ramp "
                                        "starts from, req/s (default 0)")
    cancel_rate: float | None = opt(None, "--cancel-rate", "share of requests the client abandons mid-flight "
                                    "(0..1, seeded per request; needs --cancel-after)")
    cancel_after: str | None = opt(None, "--cancel-after", "when an abandoned request is dropped, from its issue "
                                   "time: 2s, uniform:500ms,3s or exp:2s", metavar="DIST")


class Workload(Section):
    """What each request asks for."""

    input_tokens: Text = opt("128", "--input-tokens", "prompt tokens: N, uniform:A,B, normal:M,S, lognormal:M,S, "
                             "choice:A,B,..., exp:MEAN", ui=True)
    output_tokens: Text = opt("128", "--output-tokens", "output tokens asked for (same forms)", ui=True)
    lengths: str | None = opt(None, "--lengths", "the study's ShareGPT-like lengths (mean 111 in / 292 out) "
                              "instead of --input-tokens/--output-tokens", choices=("sharegpt",))
    tokenizer: str | None = opt(None, "--tokenizer", "tokenizer.json of the served model, for exact prompt lengths "
                                "(needs the tokenizers package)", ui=True)


class Trace(Section):
    """Trace replay (``--trace FILE`` replaces ``--rate``/``--arrival``): part of the workload."""

    path: str | None = opt(None, "--trace", "replay a trace: Azure CSV, Mooncake JSONL, BurstGPT CSV, or any "
                           "CSV/JSONL with --trace-columns", metavar="FILE", ui=True)
    format: str | None = opt(None, "--trace-format", "azure | mooncake | burstgpt | csv | jsonl (default: detect)")
    columns: str | None = opt(None, "--trace-columns", "generic traces: time=COL,input=COL,output=COL[,hash_ids=COL]",
                              metavar="MAP")
    time_unit: str | None = opt(None, "--trace-time-unit", "generic traces: s | ms | us | ns | datetime (default s)")
    where: list[str] = opt([], "--trace-where", "keep only rows whose column has this value (e.g. 'Model=GPT-4' "
                           "in BurstGPT; repeatable)", metavar="COL=VALUE")
    keep_failed: bool = opt(False, "--trace-keep-failed", "BurstGPT: replay failed rows (0 response tokens) too, "
                            "asking for 1 output token")
    speedup: float = opt(1.0, "--speedup", "time scaling: 2 replays twice as fast (default 1)", ui=True)
    target_rate: float | None = opt(None, "--target-rate", "mean rate of the replay, req/s: thinning whole bursts "
                                    "to go down, superposition of shifted copies to go up", ui=True)
    window: str | None = opt(None, "--window", "replay this part of the trace, in trace time (e.g. 0:5m, 10m:30m, "
                             "1h:)", metavar="START:DURATION", ui=True)
    burst_gap: Text = opt("auto", "--burst-gap", "--target-rate: gap that separates bursts, e.g. 1s (0 = single "
                          "requests; default auto)")
    buckets: str = opt("together", "--trace-buckets", "bucketed timestamps (Mooncake, 3 s): fire each bucket "
                       "together (default) or spread it", choices=("together", "spread"))
    bucket: Seconds = opt(3.0, "--trace-bucket", "bucket width for --trace-buckets (default 3s)")
    max_input_tokens: int | None = opt(None, "--max-input-tokens", "fit prompts to a short context (see "
                                       "--length-mode)")
    max_output_tokens: int | None = opt(None, "--max-output-tokens", "cap the output lengths (see --length-mode)")
    length_mode: str = opt("clip", "--length-mode", "clip each length to the maximum, or scale all so the longest "
                           "fits (default clip)", choices=("clip", "scale"))
    prompts: str | None = opt(None, "--trace-prompts", "real prompt text from a ShareGPT JSON file instead of "
                              "synthesised prompts", metavar="sharegpt:PATH")
    output_tokens: str | None = opt(None, "--trace-output-tokens", "ask for output lengths from this distribution "
                                    "(N, uniform:A,B, ...) instead of the trace's", metavar="SIZE")


class Sessions(Section):
    """Multi-turn sessions (``loadgen.core.sessions``): each user's turns resend the conversation so far."""

    turns: Text | None = opt(None, "--session-turns", "multi-turn sessions: turns per session (N, uniform:A,B, "
                             "...); --rate/--requests/--concurrency then count sessions", ui=True)
    conversations: str | None = opt(None, "--session-conversations", "multi-turn sessions replaying the "
                                    "conversations of a ShareGPT-format file", metavar="sharegpt:PATH")
    key: str | None = opt(None, "--session-key", "with --trace: rows with the same value of this column form one "
                          "session, in time order; 'hash_ids': Mooncake chains that extend turn by turn",
                          metavar="COL|hash_ids")
    turn_column: str | None = opt(None, "--session-turn-column", "with --session-key: the column numbering the "
                                  "turns (checked to rise with time)", metavar="COL")
    user_tokens: Text = opt("64", "--session-user-tokens", "synthetic sessions: tokens of each new user message "
                            "(same forms as --input-tokens; default 64)", ui=True)
    answer_tokens: Text = opt("64", "--session-answer-tokens", "synthetic sessions: answer tokens asked for each "
                              "turn (default 64)", ui=True)
    think_time: str = opt("0", "--session-think-time", "pause between an answer and the next turn: 2s, exp:2s or "
                          "uniform:1s,3s (default 0)", metavar="DIST", ui=True)
    system_tokens: int = opt(0, "--session-system-tokens", "synthetic sessions: a system prompt of this many "
                             "tokens starts each session (default 0: none)", ui=True)
    system_share: float = opt(1.0, "--session-system-share", "share of sessions whose system prompt is the same "
                              "text (the rest get their own; default 1)")
    max_history: int = opt(1536, "--session-max-history", "cap on a turn's prompt in tokens: past it the oldest "
                           "user/answer pairs are dropped (the system prompt stays; default 1536, 0 = no cap)")


class Limits(Section):
    """How long to wait, and when to give up."""

    request_timeout: Seconds = opt(300.0, "--request-timeout", "give up on one request after this long "
                                   "(default 300s)", ui=True)
    drain_timeout: Seconds = opt(60.0, "--drain-timeout", "after issuing stops, wait this long for requests in "
                                 "flight (default 60s)", ui=True)
    max_connection_errors: int = opt(50, "--max-connection-errors", "stop the run after this many connection "
                                     "errors in a row (server gone; default 50)")
    max_response_bytes: int | None = opt(None, "--max-response-bytes", "bound on one response's body: past it the "
                                         "request is a too_large error and its connection is closed (default: "
                                         "64 KiB + 4 KiB per output token asked + 16 bytes per prompt token)")


class Results(Section):
    """Where the results go and what makes the run fail."""

    name: str | None = opt(None, "--name", "run name (default: backend-arrival-rate)")
    out_dir: str = opt("runs", "--out-dir", "where run directories go (default runs/)", ui=True)
    slo: str | None = opt(None, "--slo", "goodput thresholds, e.g. ttft=500ms,tpot=50ms,e2e=10s", ui=True)
    fail_on: str | None = opt(None, "--fail-on", "exit 4 when missed, e.g. 'ttft_p99<500ms,error_rate<1%%'", ui=True)
    live: bool = opt(True, "--no-live", "no live progress display")
    server_metrics: str = opt("auto", "--server-metrics", "scrape the server's Prometheus metrics during the run "
                              "into server_metrics.jsonl (queue, batch, KV cache): auto (the embedded server's; "
                              "Triton: http://HOST:8002/metrics; OpenAI-compatible: URL/metrics), a URL, or off",
                              metavar="URL|auto|off")
    server_metrics_interval: Seconds = opt(0.5, "--server-metrics-interval", "time between two scrapes of "
                                           "--server-metrics (default 500ms = 2 Hz; 100ms to 10s)")


class Power(Section):
    """Power and energy: a side-car process samples power; J/token in the summary."""

    source: str = opt("none", "--power", "nvml | triton[=METRICS_URL] | nvidia-smi | none (default none)",
                      metavar="SOURCE")
    interval: Seconds = opt(0.1, "--power-interval", "sampling interval (default 100ms = 10 Hz)")
    gpus: str | None = opt(None, "--power-gpu", "GPUs to sample: indexes or UUIDs, comma separated")
    idle: Seconds = opt(5.0, "--idle-seconds", "idle power measured this long before the load (default 5)")


class Server(Section):
    """The embedded Triton server hosting the emulated SLM engine (used when no --url is given)."""

    model: str = opt("opt-1.3b", "--server-model", "emulated SLM profile (default opt-1.3b)")
    gpu: str = opt("h100-64gb", "--server-gpu", "emulated GPU profile (default h100-64gb)")
    max_batch: int = opt(64, "--server-max-batch", "engine max running batch per replica (default 64)")
    replicas: int = opt(1, "--server-replicas", "engine replicas on the emulated GPU (default 1)")
    speed: float = opt(1.0, "--server-speed", "emulated GPU speed relative to real time (<1 is slower, for small "
                       "machines; default 1)")
    mps: OnOff = opt("on", "--mps", "replicas share the emulated GPU under NVIDIA MPS (on, default) or by time "
                     "slicing (off)", choices=("on", "off"))
    spread: str = opt("even", "--server-spread", "requests over replicas: even (round robin, as the study's load "
                      "balancer; default) or triton (Triton's own instance scheduling)", choices=("even", "triton"))
    replica_memory: float | None = opt(None, "--server-replica-memory", "share of the GPU memory budget each "
                                       "replica gets (default 1/replicas)", metavar="SHARE")
    prefix_cache: OnOff = opt("off", "--server-prefix-cache", "automatic prefix caching: KV blocks of earlier "
                              "prompts (and answers) are reused, cached tokens skip prefill (on, as vLLM v1 and "
                              "SGLang; off, default, as the study's vLLM 0.5: levels that resend the same seeded "
                              "prompts stay independent); with a TensorRT-LLM repository it sets "
                              "enable_kv_cache_reuse",
                              choices=("on", "off"))
    kv_block_tokens: int = opt(16, "--server-kv-block-tokens", "KV-cache block size in tokens, the prefix cache's "
                               "unit of reuse (default 16)")


SECTIONS: dict[str, type[Section]] = {
    "target": Target, "load": Load, "workload": Workload, "trace": Trace, "session": Sessions,
    "limits": Limits, "results": Results,
    "power": Power, "server": Server,
}
SECTION_TITLES = {
    "target": "target (without --url, the embedded Triton server is started for the run)",
    "load": "load",
    "workload": "workload",
    "trace": "trace replay (--trace FILE replaces --rate/--arrival)",
    "session": "multi-turn sessions (each turn resends the conversation so far)",
    "limits": "limits",
    "results": "results",
    "power": "power and energy (a side-car process samples power; J/token in the summary)",
    "server": "embedded server (used when --url is not given)",
}


class Scenario(BaseModel):
    """One load level, fully described. ``loadgen.scenario.check.resolve`` fills what depends on other fields."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    target: Target = Field(default_factory=Target)
    load: Load = Field(default_factory=Load)
    workload: Workload = Field(default_factory=Workload)
    trace: Trace = Field(default_factory=Trace)
    session: Sessions = Field(default_factory=Sessions)
    limits: Limits = Field(default_factory=Limits)
    results: Results = Field(default_factory=Results)
    power: Power = Field(default_factory=Power)
    server: Server = Field(default_factory=Server)

    # -- derived facts, so that no front end works them out again -------------------------------------------
    @property
    def replaying(self) -> bool:
        return self.trace.path is not None

    @property
    def synthetic(self) -> bool:
        from loadgen.core.arrivals import is_synthetic

        return is_synthetic(self.load.arrival)

    @property
    def sessions(self) -> bool:
        """Multi-turn sessions (``[session]``): the load counts sessions, each of several turns."""
        s = self.session
        return bool(s.turns or s.conversations or s.key)

    @property
    def closed_loop(self) -> bool:
        return self.load.rate is None and not self.replaying and not self.synthetic

    @property
    def warmup_requests(self) -> int:
        w = self.load.warmup.strip()
        return int(w) if w.isdigit() else 0

    @property
    def warmup_s(self) -> float:
        """Seconds excluded at the start of the schedule: the ramp (``--ramp``), then the warm-up in seconds."""
        w = self.load.warmup.strip()
        return (self.load.ramp or 0.0) + (0.0 if w.isdigit() else parse_seconds(w, "--warmup"))

    def default_name(self) -> str:
        import re

        if self.results.name:
            return self.results.name
        backend = self.target.backend
        if self.replaying:
            return f"{backend}-trace-{re.sub(r'[.].*$', '', str(self.trace.path).split('/')[-1])}"
        if self.load.rate is None and not self.closed_loop:  # synthetic arrivals at the model's own rates
            return f"{backend}-{self.load.arrival.split(':', 1)[0]}"
        load = (f"c{self.load.concurrency}" if self.closed_loop
                else f"{self.load.arrival.split(':', 1)[0]}-{self.load.rate:g}rps")
        return f"{backend}-{load}"
