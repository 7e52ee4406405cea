"""The scenario parameters as Locust custom arguments, and their validation into the runner's ``RunSettings``.

The flags carry the names and meanings of ``loadgen run`` (``--rate``, ``--arrival``, ``--trace``, ``--speedup``,
``--input-tokens``, ``--slo``, ``--fail-on``...), so one workload is written the same way for both front ends.
Locust shows the arguments added with ``parser.add_argument`` in its web UI start form; the less common trace
flags come from ``loadgen run``'s own trace group and are command-line only (argument groups are not shown).

Values from the web UI form arrive as strings, so every value is parsed here (never trusted to be typed) and then
handed to ``loadgen.runner.cli.settings_from_args``: the validation, the defaults and the error messages are the
asyncio runner's own.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

from loadgen.errors import UsageError

MODES = ("open", "trace", "closed")
THINK_DISTS = ("exponential", "constant")
CLOSED_FOREVER_S = 365 * 86400.0  # a closed loop without --duration/--requests runs until Locust stops it

# Trace flags of ``loadgen run`` that the web UI shows too (the rest stay command-line only).
UI_TRACE_FLAGS = ("trace", "speedup", "target_rate", "window")


def add_arguments(parser: Any) -> None:
    """Add the scenario flags to Locust's parser (``events.init_command_line_parser``)."""
    from loadgen.traces.runargs import add_trace_arguments

    a = parser.add_argument
    a("--backend", default="", help="triton-http | triton-grpc | openai-chat | openai-completions "
      "(default: the user class's own)")
    a("--model", default="", help="model name on the server (default ensemble for Triton; required for OpenAI)")
    a("--api-key", default="", is_secret=True, help="bearer token (else $LOADGEN_API_KEY / $OPENAI_API_KEY)")
    a("--arrival", default="poisson", help="open loop: poisson | gamma | constant, or a synthetic model "
      "(piecewise:..., diurnal:..., mmpp:...)")
    a("--rate", default="", help="open loop: target request rate, req/s")
    a("--cv", default="", help="--arrival gamma: coefficient of variation of the gaps")
    a("--duration", default="", help="how long to issue requests, e.g. 60s (default: Locust's --run-time)")
    a("--requests", default="", help="how many requests to issue (all workers together)")
    a("--seed", default="0", help="seed of the arrivals, sizes and prompts (default 0)")
    a("--input-tokens", default="128", help="prompt tokens: N, uniform:A,B, normal:M,S, lognormal:M,S, ...")
    a("--output-tokens", default="128", help="output tokens asked for (same forms)")
    a("--think-time", default="0s", help="closed-loop users: think time between a response and the next request")
    a("--think-dist", default="exponential", choices=THINK_DISTS,
      help="closed-loop think time: exponential (mean --think-time) or constant")
    a("--concurrency", default="", help="open loop: optional cap on requests in flight per worker")
    a("--on-late", default="issue", choices=("issue", "drop"),
      help="open loop, when the generator falls behind: issue late (default) or drop and count")
    a("--late-tolerance", default="10ms", help="lateness that counts as late (default 10ms)")
    a("--warmup", default="0", help="exclude the first N requests (e.g. 20) or seconds (e.g. 5s)")
    a("--cooldown", default="0s", help="exclude requests scheduled in the last S seconds")
    a("--request-timeout", default="300s", help="give up on one request after this long")
    a("--drain-timeout", default="60s", help="after issuing stops, wait this long for requests in flight")
    a("--slo", default="", help="goodput thresholds, e.g. ttft=500ms,tpot=50ms,e2e=10s")
    a("--fail-on", default="", help="exit code 4 when missed, e.g. 'ttft_p99<500ms,error_rate<1%%'")
    a("--perf-metrics", action="store_true", default=False,
      help="ask a TensorRT-LLM model for its per-request perf fields (server arrival time...)")
    a("--tokenizer", default="", help="tokenizer.json of the served model, for exact prompt lengths")
    a("--out-dir", default="runs", help="where run directories go (default runs/)")
    a("--run-name", default="", help="run directory name (default locust-BACKEND-LOAD)")
    add_trace_arguments(parser)
    for action in parser._actions:  # show the main replay flags in the web UI form as well
        if action.dest in UI_TRACE_FLAGS:
            action.include_in_web_ui = True
            action.is_secret = action.is_required = action.is_multiple = False


def _text(value: Any) -> str | None:
    """A form or command-line value as stripped text; None when empty."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _number(value: Any, flag: str, kind: type = float) -> Any:
    """A float (or int) from a typed value or form text; None when empty; UsageError naming ``flag`` otherwise."""
    text = _text(value)
    if text is None:
        return None
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or (kind is int and not number.is_integer()):
        what = "a whole number" if kind is int else "a finite number"
        raise UsageError(f"{flag} {text!r}: expected {what}")
    return int(number) if kind is int else number


@dataclass
class Scenario:
    """One Locust level: the runner's settings plus what only the Locust front end has."""

    settings: Any  # loadgen.runner.settings.RunSettings
    mode: str  # open | trace | closed
    user_class: str
    think_time_s: float = 0.0
    think_dist: str = "exponential"
    users: int | None = None  # closed loop: Locust users (the concurrency)

    def public_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "user_class": self.user_class, "think_time_s": self.think_time_s,
                "think_dist": self.think_dist, "users": self.users, "settings": self.settings.public_dict()}


def _namespace(options: Any, backend: str, mode: str, users: int | None, run_time: float | None
               ) -> argparse.Namespace:
    """A ``loadgen run`` namespace (its defaults) filled from the Locust options."""
    get = lambda name, default=None: getattr(options, name, default)  # noqa: E731
    rate = _number(get("rate"), "--rate")
    concurrency = _number(get("concurrency"), "--concurrency", int)
    duration = _text(get("duration"))
    requests = _number(get("requests"), "--requests", int)
    if mode == "closed":
        if rate is not None:
            raise UsageError("--rate applies to the open-loop classes (e.g. TritonHttpPoisson); a closed loop's "
                             "load is its users (-u) and --think-time")
        users = 1 if users is None else users  # Locust's own default in headless runs
        if users < 1:
            raise UsageError("closed loop: start at least one user (-u N, or 'Number of users' in the web UI)")
        concurrency = users
    if duration is None and run_time:
        duration = f"{run_time:g}s"
    if mode == "closed" and duration is None and requests is None:
        duration = f"{CLOSED_FOREVER_S:g}s"
    ns = argparse.Namespace(
        url=_text(get("host")), backend=backend, model=_text(get("model")), api_key=_text(get("api_key")),
        header=[], insecure=False, http_client="fast", extra=[], parameter=[],
        perf_metrics=bool(get("perf_metrics", False)), no_ignore_eos=False, no_min_tokens=False,
        continuous_usage=False, server_model="opt-1.3b", server_gpu="h100-64gb", server_replicas=1,
        server_max_batch=64, server_speed=1.0,
        arrival=_text(get("arrival")) or "poisson", rate=rate, cv=_number(get("cv"), "--cv"),
        concurrency=concurrency, duration=duration, requests=requests,
        seed=_number(get("seed"), "--seed", int) or 0, on_late=_text(get("on_late")) or "issue",
        late_tolerance=_text(get("late_tolerance")) or "10ms",
        input_tokens=_text(get("input_tokens")) or "128", output_tokens=_text(get("output_tokens")) or "128",
        tokenizer=_text(get("tokenizer")), warmup=_text(get("warmup")) or "0", cooldown=_text(get("cooldown")) or "0s",
        request_timeout=_text(get("request_timeout")) or "300s", drain_timeout=_text(get("drain_timeout")) or "60s",
        max_connection_errors=50, name=_text(get("run_name")), out_dir=_text(get("out_dir")) or "runs",
        slo=_text(get("slo")), fail_on=_text(get("fail_on")), no_live=True, power="none",
        power_interval="100ms", power_gpu=None, idle_seconds="5",
    )
    # loadgen run's trace flags (their defaults when Locust's parser lacks them, e.g. in a unit test)
    trace_defaults = {"trace": None, "trace_format": None, "trace_columns": None, "trace_time_unit": None,
                      "trace_where": [], "trace_keep_failed": False, "speedup": 1.0, "target_rate": None,
                      "window": None, "burst_gap": "auto", "trace_buckets": "together", "trace_bucket": "3s",
                      "max_input_tokens": None, "max_output_tokens": None, "length_mode": "clip",
                      "trace_prompts": None, "trace_output_tokens": None}
    for name, default in trace_defaults.items():
        value = get(name, default)
        if isinstance(default, str) or default is None:
            value = _text(value) if not isinstance(value, (int, float)) or isinstance(value, bool) else value
        setattr(ns, name, value if value is not None else default)
    ns.speedup = _number(ns.speedup, "--speedup") if ns.speedup is not None else 1.0
    ns.target_rate = _number(ns.target_rate, "--target-rate")
    for flag in ("max_input_tokens", "max_output_tokens"):
        setattr(ns, flag, _number(getattr(ns, flag), "--" + flag.replace("_", "-"), int))
    if isinstance(ns.trace_where, str):
        ns.trace_where = [ns.trace_where] if ns.trace_where else []
    return ns


def _check_texts(s: Any) -> None:
    """What ``loadgen run`` checks only when the level starts: fail at the form instead."""
    from loadgen.core.sizes import parse_size
    from loadgen.core.slo import parse_fail_on, parse_slo
    from loadgen.runner.run import build_arrival
    from loadgen.traces.runargs import is_synthetic

    if s.slo_text:
        parse_slo(s.slo_text)
    if s.fail_on_text:
        parse_fail_on(s.fail_on_text)
    parse_size(s.input_tokens, "--input-tokens")
    parse_size(s.output_tokens, "--output-tokens")
    if not s.trace and not is_synthetic(s.arrival):
        build_arrival(s)


def scenario_from_options(options: Any, user_class: type, users: int | None = None) -> Scenario:
    """Validate the Locust options for ``user_class`` (a ``loadgen.locust.users`` class); UsageError names the
    flag to fix."""
    from loadgen.runner.cli import settings_from_args

    mode = getattr(user_class, "mode", None)
    if mode not in MODES:
        raise UsageError(f"{user_class.__name__} is not a loadgen scenario class (no mode)")
    backend = _text(getattr(options, "backend", None)) or user_class.backend
    run_time = getattr(options, "run_time", None)
    ns = _namespace(options, backend, mode, users, float(run_time) if run_time else None)
    if mode == "trace" and ns.trace is None:
        raise UsageError(f"{user_class.__name__} replays a trace: give --trace FILE (e.g. traces/example_bursty.csv)")
    if mode != "trace" and ns.trace is not None:
        raise UsageError(f"--trace applies to the trace replay classes (names ending in Trace), not to "
                         f"{user_class.__name__}")
    settings = settings_from_args(ns)
    _check_texts(settings)
    think = 0.0
    think_text = _text(getattr(options, "think_time", None))
    if think_text is not None:
        from loadgen.runner.settings import parse_seconds

        think = parse_seconds(think_text, "--think-time")
    dist = _text(getattr(options, "think_dist", None)) or "exponential"
    if dist not in THINK_DISTS:
        raise UsageError(f"--think-dist {dist!r}: choose exponential or constant")
    if think and mode != "closed":
        raise UsageError("--think-time applies to the closed-loop classes (N users with think time)")
    return Scenario(settings, mode, user_class.__name__, think, dist, settings.concurrency if mode == "closed" else None)
