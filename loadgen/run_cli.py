"""``loadgen run``: flags, validation into a ``RunSettings``, then ``loadgen.runner.run.run_level``."""

from __future__ import annotations

import argparse
import math
import os

from loadgen.errors import UsageError
from loadgen.runner.backends import BACKENDS
from loadgen.runner.settings import RunSettings, parse_seconds
from loadgen.traces.runargs import add_trace_arguments, is_synthetic, trace_options

API_KEY_ENVS = ("LOADGEN_API_KEY", "OPENAI_API_KEY")


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = _epilog()
    t = p.add_argument_group("target (without --url, the embedded Triton server is started for the run)")
    t.add_argument("--url", help="server root, e.g. http://127.0.0.1:8000 (triton-grpc: 127.0.0.1:8001)")
    t.add_argument("--backend", default="triton-http", help=f"one of {', '.join(BACKENDS)} (default triton-http)")
    t.add_argument("--model", default=None,
                   help="model name on the server (default: ensemble for Triton; required for OpenAI servers)")
    t.add_argument("--api-key", default=None,
                   help=f"bearer token (else ${API_KEY_ENVS[0]} or ${API_KEY_ENVS[1]}); never written to disk")
    t.add_argument("--header", action="append", default=[], metavar="NAME:VALUE", help="extra HTTP header")
    t.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    t.add_argument("--http-client", default="fast", choices=("fast", "aiohttp"),
                   help="HTTP client: fast (lean asyncio protocol, default) or aiohttp")
    t.add_argument("--extra", action="append", default=[], metavar="KEY=VALUE",
                   help="pass-through request field (Triton input tensor / OpenAI body field), JSON value")
    t.add_argument("--parameter", action="append", default=[], metavar="KEY=VALUE",
                   help="Triton request parameter (the 'parameters' object of generate_stream)")
    t.add_argument("--perf-metrics", action="store_true",
                   help="ask a TensorRT-LLM model for its per-request perf fields (return_perf_metrics)")
    t.add_argument("--no-ignore-eos", action="store_true", help="OpenAI: do not send ignore_eos")
    t.add_argument("--no-min-tokens", action="store_true", help="do not send min_tokens = max_tokens")
    t.add_argument("--continuous-usage", action="store_true",
                   help="OpenAI (vLLM): ask for usage in every chunk, for exact per-chunk token counts")
    e = p.add_argument_group("embedded server (used when --url is not given)")
    e.add_argument("--server-model", default="opt-1.3b", help="emulated SLM profile (default opt-1.3b)")
    e.add_argument("--server-gpu", default="h100-64gb", help="emulated GPU profile (default h100-64gb)")
    e.add_argument("--server-replicas", type=int, default=1, help="engine replicas on the emulated GPU")
    e.add_argument("--server-max-batch", type=int, default=64, help="engine max running batch")
    e.add_argument("--server-speed", type=float, default=1.0,
                   help="emulated GPU speed relative to real time (<1 is slower, for small machines)")
    lo = p.add_argument_group("load")
    lo.add_argument("--arrival", default="poisson", help="poisson | gamma | constant (open loop; default poisson)")
    lo.add_argument("--rate", type=float, default=None, help="target request rate, req/s (open loop)")
    lo.add_argument("--cv", type=float, default=None, help="gamma arrivals: coefficient of variation")
    lo.add_argument("--concurrency", type=int, default=None,
                    help="closed loop: N requests in flight (no --rate); with --rate: an in-flight cap")
    lo.add_argument("--duration", default=None, help="how long to issue requests (e.g. 60, 60s, 2m)")
    lo.add_argument("--requests", type=int, default=None, help="how many requests to issue")
    lo.add_argument("--seed", type=int, default=0, help="seed for arrivals, sizes and prompts (default 0)")
    lo.add_argument("--on-late", default="issue", help="issue (send late, default) | drop (count and skip)")
    lo.add_argument("--late-tolerance", default="10ms", help="lateness that counts as late (default 10ms)")
    lo.add_argument("--input-tokens", default="128", help="prompt tokens: N, uniform:A,B, normal:M,S, ...")
    lo.add_argument("--output-tokens", default="128", help="output tokens asked for (same forms)")
    lo.add_argument("--tokenizer", default=None, help="tokenizer.json of the served model, for exact prompt lengths")
    lo.add_argument("--warmup", default="0", help="exclude the first N requests (e.g. 20) or seconds (e.g. 5s)")
    lo.add_argument("--cooldown", default="0s", help="exclude requests scheduled in the last S seconds")
    lo.add_argument("--request-timeout", default="300s", help="give up on one request after this long")
    lo.add_argument("--drain-timeout", default="60s", help="after issuing stops, wait this long for in-flight")
    lo.add_argument("--workers", type=int, default=1,
                    help="worker processes sharing the one schedule (each sends every Nth request), for rates "
                         "past one core (~2,000 streamed req/s); default 1")
    lo.add_argument("--max-connection-errors", type=int, default=50,
                    help="stop the run after this many connection errors in a row (server gone)")
    add_trace_arguments(p)
    r = p.add_argument_group("results")
    r.add_argument("--name", default=None, help="run name (default: backend-arrival-rate)")
    r.add_argument("--out-dir", default="runs", help="where run directories go (default runs/)")
    r.add_argument("--slo", default=None, help="goodput thresholds, e.g. ttft=500ms,tpot=50ms,e2e=10s")
    r.add_argument("--fail-on", default=None, help="exit 4 when missed, e.g. 'ttft_p99<500ms,error_rate<1%%'")
    r.add_argument("--no-live", action="store_true", help="no live progress display")
    pw = p.add_argument_group("power and energy (a side-car process samples power; J/token in the summary)")
    pw.add_argument("--power", default="none", metavar="SOURCE",
                    help="nvml | triton[=METRICS_URL] | nvidia-smi | none (default none)")
    pw.add_argument("--power-interval", default="100ms", help="sampling interval (default 100ms = 10 Hz)")
    pw.add_argument("--power-gpu", default=None, help="GPUs to sample: indexes or UUIDs, comma separated")
    pw.add_argument("--idle-seconds", default="5", help="idle power measured this long before the load (default 5)")


def _epilog() -> str:
    try:
        from loadgen.core.metrics import metrics_help

        return metrics_help()
    except Exception:  # the legend is a convenience; --help must work regardless
        return ""


def _api_key(args: argparse.Namespace) -> str | None:
    if args.api_key:
        return args.api_key
    for name in API_KEY_ENVS:
        if os.environ.get(name):
            return os.environ[name]
    return None


def settings_from_args(args: argparse.Namespace) -> RunSettings:
    if args.rate is not None and (math.isnan(args.rate) or args.rate <= 0 or math.isinf(args.rate)):
        raise UsageError(f"--rate {args.rate}: must be a positive number of requests per second")
    trace = trace_options(args)  # None without --trace
    if args.rate is None and args.concurrency is None and trace is None and not is_synthetic(args.arrival):
        raise UsageError("give --rate R (open loop, req/s) or --concurrency N (closed loop)")
    if args.backend not in BACKENDS:
        raise UsageError(f"--backend {args.backend!r} is not known; choose one of {', '.join(BACKENDS)}")
    if args.on_late not in ("issue", "drop"):
        raise UsageError(f"--on-late {args.on_late!r}: choose issue or drop")
    if args.duration is None and args.requests is None and trace is None:
        raise UsageError("give --duration (e.g. 60s) or --requests N so the run stops by itself")
    if args.requests is not None and args.requests < 1:
        raise UsageError(f"--requests {args.requests}: must be at least 1")
    _check_workers(args)
    headers = {}
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            raise UsageError(f"--header {h!r}: expected NAME:VALUE")
        headers[name.strip()] = value.strip()
    key = _api_key(args)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    model = args.model
    if model is None:
        if args.backend.startswith("openai") and args.url:
            raise UsageError("--model is required for OpenAI-compatible servers (the served model's name)")
        model = "ensemble"
    warmup_requests, warmup_s = 0, 0.0
    w = str(args.warmup).strip()
    if w.isdigit():
        warmup_requests = int(w)
    else:
        warmup_s = parse_seconds(w, "--warmup")
    return RunSettings(
        url=args.url, backend=args.backend, model=model, headers=headers, verify_tls=not args.insecure,
        extra_items=args.extra, parameter_items=args.parameter, perf_metrics=args.perf_metrics,
        ignore_eos=not args.no_ignore_eos, min_tokens=not args.no_min_tokens,
        continuous_usage=args.continuous_usage, http_client=args.http_client,
        server_model=args.server_model, server_gpu=args.server_gpu, server_replicas=args.server_replicas,
        server_max_batch=args.server_max_batch, server_speed=args.server_speed,
        arrival=args.arrival, rate=args.rate, cv=args.cv, concurrency=args.concurrency,
        duration_s=parse_seconds(args.duration, "--duration") if args.duration is not None else None,
        max_requests=args.requests, seed=args.seed, on_late=args.on_late,
        late_tolerance_s=parse_seconds(args.late_tolerance, "--late-tolerance"),
        input_tokens=args.input_tokens, output_tokens=args.output_tokens, tokenizer=args.tokenizer,
        warmup_requests=warmup_requests, warmup_s=warmup_s, cooldown_s=parse_seconds(args.cooldown, "--cooldown"),
        request_timeout_s=parse_seconds(args.request_timeout, "--request-timeout"),
        drain_timeout_s=parse_seconds(args.drain_timeout, "--drain-timeout"),
        max_connection_errors=args.max_connection_errors,
        name=args.name, out_dir=args.out_dir, slo_text=args.slo, fail_on_text=args.fail_on, live=not args.no_live,
        power=args.power, power_interval_s=parse_seconds(args.power_interval, "--power-interval"),
        power_gpus=args.power_gpu, idle_s=parse_seconds(args.idle_seconds, "--idle-seconds"),
        trace=trace, workers=getattr(args, "workers", 1),
    )


def _check_workers(args: argparse.Namespace) -> None:
    from loadgen.runner.workers import MAX_WORKERS

    n = getattr(args, "workers", 1)  # Locust builds these settings without it
    if n < 1 or n > MAX_WORKERS:
        raise UsageError(f"--workers {n}: must be between 1 and {MAX_WORKERS} (about one per spare core)")
    if n > 1 and args.concurrency is not None and args.concurrency < n:
        what = "closed-loop users" if args.rate is None else "in-flight cap"
        raise UsageError(f"--workers {n} with --concurrency {args.concurrency}: the {what} are split over the "
                         f"workers, so give --concurrency >= --workers")


def execute(args: argparse.Namespace) -> int:
    from loadgen.runner.run import run_from_settings

    return run_from_settings(settings_from_args(args))
