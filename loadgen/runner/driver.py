"""One load level, end to end: target, schedule, loop, records, summary, report, thresholds."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import platform
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from loadgen import __version__
from loadgen.codecs.base import parse_extra
from loadgen.core.arrivals import ArrivalSpec, build_offsets
from loadgen.core.clock import MonotonicClock, wall_anchor
from loadgen.core.records import ERR_CONNECTION, RequestRecord
from loadgen.errors import TargetError, ThresholdFailed
from loadgen.runner.backends import make_backend
from loadgen.runner.live import LiveDisplay, LiveStats, monitor_loop_lag
from loadgen.runner.loop import LoadLoop, LoopOutcome, LoopSettings
from loadgen.runner.recorder import Recorder
from loadgen.runner.rundir import make_run_dir, write_json
from loadgen.runner.settings import RunSettings


def install_uvloop() -> str:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        return "uvloop"
    except ImportError:
        return "asyncio"


class ConnectionWatch:
    """Stops the run when the server is gone: N connection errors in a row with no success between."""

    def __init__(self, loop: LoadLoop, limit: int) -> None:
        self.loop = loop
        self.limit = limit
        self.streak = 0
        self.tripped: str | None = None

    def __call__(self, rec: RequestRecord) -> None:
        if rec.error_kind == ERR_CONNECTION:
            self.streak += 1
            if self.limit and self.streak >= self.limit and self.tripped is None:
                self.tripped = rec.error or "connection error"
                self.loop.stop()
        elif rec.issued_ns is not None:
            self.streak = 0


def build_arrival(s: RunSettings) -> ArrivalSpec:
    if s.closed_loop:
        return ArrivalSpec(kind="closed", concurrency=s.concurrency, duration_s=s.duration_s,
                           max_requests=s.max_requests, seed=s.seed).validate()
    return ArrivalSpec(kind=s.arrival, rate=s.rate, cv=s.cv, concurrency=s.concurrency, duration_s=s.duration_s,
                       max_requests=s.max_requests, seed=s.seed).validate()


def build_source(s: RunSettings) -> Any:
    from loadgen.core.prompts import PromptBuilder, RequestSource
    from loadgen.core.sizes import parse_size

    builder = PromptBuilder(tokenizer=s.tokenizer, seed=s.seed)
    return RequestSource(parse_size(s.input_tokens, "--input-tokens"), parse_size(s.output_tokens, "--output-tokens"),
                         builder, seed=s.seed, params={}, min_tokens_equal_max=s.min_tokens)


def backend_for(s: RunSettings, url: str) -> Any:
    return make_backend(s.backend, url, s.model, headers=s.headers, verify_tls=s.verify_tls,
                        request_timeout_s=s.request_timeout_s, perf_metrics=s.perf_metrics,
                        extra=parse_extra(s.extra_items, "--extra"),
                        parameters=parse_extra(s.parameter_items, "--parameter"), ignore_eos=s.ignore_eos,
                        min_tokens=s.min_tokens, continuous_usage=s.continuous_usage, http_client=s.http_client)


async def probe_target(s: RunSettings, url: str) -> dict:
    """Check the target once (reachable, right backend, model served) and return what the server said."""
    backend = backend_for(s, url)
    await backend.start()
    try:
        return await backend.probe()
    finally:
        await backend.close()


async def run_level_async(s: RunSettings, url: str, prepare_dir: Any, console: Any, workload: Any = None,
                          part: Any = None) -> tuple[LoopOutcome, dict, str | None]:
    """Probe the target, then (only then) create the run directory through ``prepare_dir(info)`` and run.

    ``part`` (a ``loadgen.runner.workers.WorkerLink``) makes this process one of several worker processes of the
    level: it runs its stripe of the schedule from the t0 the parent hands out, writes ``records.w<K>.jsonl``
    and reports live figures to the parent instead of drawing them.
    """
    if workload is not None:  # trace replay or a synthetic arrival model (loadgen.traces.replay)
        source, offsets = workload.source, workload.offsets
    else:
        arrival = build_arrival(s)
        source = build_source(s)
        offsets = build_offsets(arrival) if arrival.is_open_loop else None
    if offsets is not None and len(offsets) == 0:
        from loadgen.errors import UsageError

        raise UsageError("the schedule is empty: --duration is too short for --rate (no arrival fell inside it)")
    backend = backend_for(s, url)
    await backend.start()
    try:
        info = await backend.probe()
        run_dir = prepare_dir(info)
        recorder = Recorder(run_dir / ("records.jsonl" if part is None else f"records.w{part.worker}.jsonl"))
        stats = LiveStats()
        loop_settings = LoopSettings(
            offsets_ns=offsets, concurrency=s.concurrency, duration_s=s.duration_s, max_requests=s.max_requests,
            on_late=s.on_late, late_tolerance_ns=int(s.late_tolerance_s * 1e9), drain_timeout_s=s.drain_timeout_s)
        if part is not None:
            part.share(loop_settings)
            loop_settings.t0_ns = await part.ready(loop_settings)
        clock = MonotonicClock()
        loop = LoadLoop(backend, source, recorder, clock, loop_settings, stats)
        watch = ConnectionWatch(loop, s.max_connection_errors)
        on_done = stats.on_done

        def observe(rec: RequestRecord) -> None:
            on_done(rec)
            watch(rec)

        stats.on_done = observe  # type: ignore[method-assign]
        aloop = asyncio.get_running_loop()
        interrupted = {"n": 0}

        def on_signal() -> None:
            interrupted["n"] += 1
            loop.stop()
            if interrupted["n"] > 1:
                raise KeyboardInterrupt

        # A worker process leaves Ctrl-C to its parent, which stops the workers with one SIGTERM each.
        handled = (signal.SIGINT, signal.SIGTERM) if part is None else (signal.SIGTERM,)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            for sig in handled:
                aloop.add_signal_handler(sig, on_signal)
        anchor = wall_anchor()
        recorder.start()
        lag_task = aloop.create_task(monitor_loop_lag(stats))
        total = len(offsets) if offsets is not None else s.max_requests
        display = LiveDisplay(stats, total=total, duration_s=s.duration_s if offsets is None else None,
                              target_rate=s.rate if workload is None else workload.target_rate, console=console,
                              enabled=s.live and part is None)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        with display:
            disp_task = aloop.create_task(display.run() if part is None else part.report(stats))
            # Collect once and freeze what exists now, so that no full garbage collection (13-15 ms measured)
            # stalls the loop in the middle of the run.
            gc.collect()
            gc.freeze()
            try:
                outcome = await loop.run()
            finally:
                gc.unfreeze()  # a sweep runs many levels in one process: let the next collection see it all
                clock.close()
                disp_task.cancel()
                lag_task.cancel()
                await recorder.stop()
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    for sig in handled:
                        aloop.remove_signal_handler(sig)
        cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
        lag_p99_ms = stats.loop_lag.percentile(99) / 1e6 if stats.loop_lag.count else 0.0
        client = {
            "event_loop": asyncio.get_event_loop_policy().__class__.__module__.split(".")[0],
            "wake_method": clock.wake_method,
            "cpu_seconds": round(cpu_s, 3), "wall_seconds": round(wall_s, 3),
            "cpu_utilisation": round(cpu_s / wall_s, 3) if wall_s else None,
            "cpu_seconds_per_1000_requests": round(1000 * cpu_s / outcome.issued, 3) if outcome.issued else None,
            "loop_lag_p99_ms": round(lag_p99_ms, 3), "issued": outcome.issued, "dropped": outcome.dropped,
            "late": outcome.late, "cancelled_at_end": outcome.cancelled, "interrupted": outcome.interrupted,
            "anchor": anchor, "t0_offset_ns": outcome.t0_ns - anchor["monotonic_ns"],
        }
        reasons = []
        if lag_p99_ms > 20:
            reasons.append(f"event-loop lag p99 {lag_p99_ms:.1f} ms")
        if wall_s and cpu_s / wall_s > 0.9:
            reasons.append(f"client CPU {100 * cpu_s / wall_s:.0f} % of one core")
        client["saturated"] = bool(reasons)
        client["saturation_reason"] = "; ".join(reasons) or None
        client["server"] = info
        return outcome, client, watch.tripped
    finally:
        await backend.close()


def finish_level(run_dir: Path, ctx: Any, config: dict, outcome: LoopOutcome | None, client: dict,
                 power: Any) -> dict:
    """After the load: settle config.json with what the run learnt, then summarise the records (and energy)."""
    from loadgen.core.summary import load_level_records, summarize

    ctx.client = client
    ctx.run_end_ns = outcome.issue_end_ns if outcome is not None else None
    config["level_context"] = asdict(ctx)
    if power is not None:
        config["power"] = power.describe()
    write_json(run_dir / "config.json", config)
    summary = summarize(load_level_records(run_dir), ctx)  # records.jsonl, or records.w<K>.jsonl of each worker
    if power is not None:
        summary["energy"] = power.finish(run_dir, summary)
    return summary


def run_from_settings(s: RunSettings) -> int:
    from rich.console import Console

    from loadgen.core.prompts import PromptBuilder
    from loadgen.core.slo import evaluate, parse_fail_on, parse_slo
    from loadgen.core.summary import LevelContext
    from loadgen.report import render_report, report_text

    console = Console(width=None if sys.stdout.isatty() else 120)
    slo = parse_slo(s.slo_text) if s.slo_text else {}
    checks = parse_fail_on(s.fail_on_text) if s.fail_on_text else []
    from loadgen.traces.replay import workload_for

    workload = workload_for(s)  # None unless --trace or a synthetic --arrival model
    if workload is None:
        build_arrival(s)  # validate before anything starts
    from loadgen.power.monitor import power_monitor

    power = power_monitor(s, console)  # None without --power; checks the power flags
    prompt_method = PromptBuilder(tokenizer=s.tokenizer, seed=s.seed).method
    loop_kind = install_uvloop()
    server = None
    url = s.url
    if url is None:
        server = start_embedded(s, console)
        url = server.grpc_url if s.backend == "triton-grpc" else server.http_url
    ctx = LevelContext(name=s.default_name(), backend=s.backend, url=url, model=s.model,
                       target_rate=s.rate if workload is None else workload.target_rate, concurrency=s.concurrency,
                       arrival=asdict(build_arrival(s)) if workload is None else workload.arrival, warmup_s=s.warmup_s,
                       warmup_requests=s.warmup_requests, cooldown_s=s.cooldown_s, slo=slo,
                       prompt_method=prompt_method, on_late=s.on_late, late_threshold_ms=s.late_tolerance_s * 1e3)
    if workload is not None:  # the replay facts go into summary.json / config.json
        ctx.open_loop, ctx.extra = True, {**ctx.extra, **workload.extra}
    config = {"loadgen_version": __version__, "python": platform.python_version(), "event_loop": loop_kind,
              "argv": redact_argv(sys.argv), "settings": s.public_dict(), "url": url,
              "embedded_server": server.describe() if server is not None and hasattr(server, "describe") else None,
              "level_context": asdict(ctx)}
    holder: dict[str, Path] = {}

    def prepare_dir(info: dict) -> Path:
        run_dir = make_run_dir(Path(s.out_dir), s.default_name())
        holder["dir"] = run_dir
        config["server_info"] = info
        write_json(run_dir / "config.json", config)
        console.print(f"[bold]loadgen run[/] {s.default_name()} -> {url} ({s.backend}, model {s.model})")
        console.print(f"run directory: {run_dir}")
        for line in workload.describe if workload is not None else []:
            console.print(line, markup=False, highlight=False)
        if power is not None:  # the side-car samples idle power first (blocking), then the load starts
            power.start(run_dir, getattr(server, "metrics_url", None), url)
        return run_dir

    failure = None
    try:
        try:
            if s.workers > 1:
                from loadgen.runner.workers import run_workers_async

                outcome, client, tripped, failure = asyncio.run(run_workers_async(
                    s, url, prepare_dir, console, workload, lambda: probe_target(s, url)))
            else:
                outcome, client, tripped = asyncio.run(run_level_async(s, url, prepare_dir, console, workload))
        except KeyboardInterrupt:
            outcome, client, tripped = None, {"interrupted": True}, None
            if "dir" not in holder:
                raise
        run_dir = holder["dir"]
        summary = finish_level(run_dir, ctx, config, outcome, client, power)
        write_json(run_dir / "summary.json", summary)
        replay_text = "".join(line + "\n" for line in workload.describe) if workload is not None else ""
        (run_dir / "report.txt").write_text(report_text([summary]) + replay_text)
        # The legend is long: the console gets the tables, report.txt (and loadgen run --help) the definitions.
        render_report([summary], console, show_legend=False)
        records = "records.jsonl" if s.workers == 1 else f"records.w{{0..{s.workers - 1}}}.jsonl"
        console.print(f"records: {run_dir / records}   summary: {run_dir / 'summary.json'}   "
                      f"definitions: {run_dir / 'report.txt'}")
        if tripped:
            raise TargetError(f"the server stopped answering mid-run ({s.max_connection_errors} connection errors "
                              f"in a row, last: {tripped}); the run directory {run_dir} keeps every record received")
        if failure is not None:
            raise failure
        if outcome is None or outcome.interrupted:
            console.print("[yellow]interrupted: the records received so far are saved[/]")
            return 130
        if checks:
            failed = [(c, actual) for c, actual, ok in evaluate(checks, summary) if not ok]
            if failed:
                parts = ", ".join(f"{c.text} (got {actual})" for c, actual in failed)
                raise ThresholdFailed(f"--fail-on missed: {parts}")
        return 0
    finally:
        if power is not None:
            power.stop()
        if server is not None:
            server.stop()


def redact_argv(argv: list[str]) -> list[str]:
    out, hide = [], False
    for a in argv:
        if hide:
            out.append("<redacted>")
            hide = False
            continue
        if a == "--api-key" or a == "--header":
            out.append(a)
            hide = True
        elif a.startswith("--api-key=") or a.startswith("--header="):
            out.append(a.split("=", 1)[0] + "=<redacted>")
        else:
            out.append(a)
    return out


def start_embedded(s: RunSettings, console: Any) -> Any:
    from loadgen.serve.launcher import EmbeddedServer, ServerConfig

    cfg = ServerConfig(model_name=s.model, profile=s.server_model, gpu=s.server_gpu, replicas=s.server_replicas,
                       max_batch=s.server_max_batch, speed=s.server_speed, http_port=0, grpc_port=0,
                       metrics_port=0)
    server = EmbeddedServer(cfg)
    console.print(f"starting the embedded Triton server ({s.server_model} on emulated {s.server_gpu}, "
                  f"{s.server_replicas} replica(s), max batch {s.server_max_batch}, speed {s.server_speed:g})...")
    server.start()
    return server

