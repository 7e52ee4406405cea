"""From a mapping (file + flags) to a checked, resolved ``Scenario``, before anything starts.

Every bad value is found here, in one line that names the flag (or the file's key) and says what to do, with
exit code 2: sizes, rates, durations, SLOs, ``--fail-on`` names and units, an output directory that cannot be
written, a trace that cannot be read. Nothing here starts a server or sends a request; it is also what makes
``loadgen run --input-tokens foo`` fail in a fraction of a second.

Resolution fills what depends on other fields or the environment: the model name's default per backend and the
API key from ``$LOADGEN_API_KEY`` / ``$OPENAI_API_KEY``.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from loadgen.errors import UsageError
from loadgen.scenario.flags import flag_of
from loadgen.scenario.model import SECTIONS, Scenario

API_KEY_ENVS = ("LOADGEN_API_KEY", "OPENAI_API_KEY")
MAX_WORKERS = 64


def _where(loc: tuple[Any, ...], source: str) -> str:
    """A pydantic error location as the user knows it: the flag, or ``FILE [section].key`` for a file."""
    if len(loc) >= 2 and loc[0] in SECTIONS and isinstance(loc[1], str) and loc[1] in SECTIONS[loc[0]].model_fields:
        flag = flag_of(loc[0], loc[1])
        return flag if source == "flags" else f"{flag} ([{loc[0]}] {loc[1]} in {source})"
    path = ".".join(str(x) for x in loc)
    return f"{source} [{path}]" if source != "flags" else path


def _one_line(err: ValidationError, source: str) -> UsageError:
    first = err.errors()[0]
    loc = tuple(first.get("loc", ()))
    where = _where(loc, source)
    if first["type"] == "extra_forbidden":
        section = loc[0] if len(loc) > 1 else None
        known = list(SECTIONS[section].model_fields) if section in SECTIONS else list(SECTIONS)
        return UsageError(f"{source}: unknown key {'.'.join(map(str, loc))!r}; expected one of {', '.join(known)}")
    msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    value = first.get("input")
    shown = f" {value!r}" if value is not None and not isinstance(value, dict) else ""
    return UsageError(f"{where}{shown}: {msg[0].lower() + msg[1:] if msg else 'invalid'}")


def build(mapping: dict[str, Any], source: str = "flags") -> Scenario:
    """Type-check a nested mapping into a ``Scenario`` (unknown keys and wrong types are one-line errors)."""
    try:
        return Scenario.model_validate(mapping)
    except ValidationError as err:
        raise _one_line(err, source) from None


def resolve(sc: Scenario, *, check_paths: bool = True, level: bool = True) -> Scenario:
    """Check everything that spans fields; fill the derived defaults. Returns the same object.

    ``level=False``: the scenario is a sweep's base, whose load levels come from the sweep's grid; the load is
    checked point by point instead."""
    _check_choices(sc)
    if level:
        _check_load(sc)
        _check_ramp(sc)
    _check_cancel(sc)
    _check_trace(sc)
    _check_sessions(sc)
    _check_target(sc, level)
    _check_texts(sc)
    _check_limits(sc)
    if check_paths:
        check_out_dir(sc.results.out_dir)
        _check_files(sc)
    return sc


def _check_choices(sc: Scenario) -> None:
    """Fields with a fixed set of values (``--on-late``, ``--lengths``, ``--http-client``...)."""
    from loadgen.scenario.flags import fields

    for section, name, _info, meta in fields():
        choices = meta.get("choices")
        value = getattr(getattr(sc, section), name)
        if choices and value is not None and value not in choices:
            raise UsageError(f"{meta['flag']} {value!r}: choose one of {', '.join(choices)}")


def _positive(value: float | None, flag: str, what: str) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise UsageError(f"{flag} {value:g}: must be a positive {what}")


def _check_load(sc: Scenario) -> None:
    ld = sc.load
    _positive(ld.rate, "--rate", "number of requests per second")
    if ld.rate is None and ld.concurrency is None and not sc.replaying and not sc.synthetic:
        raise UsageError("give --rate R (open loop, req/s) or --concurrency N (closed loop)")
    if ld.duration is None and ld.requests is None and not sc.replaying:
        raise UsageError("give --duration (e.g. 60s) or --requests N so the run stops by itself")
    _positive(ld.duration, "--duration", "duration (e.g. 60s)")
    if ld.requests is not None and ld.requests < 1:
        raise UsageError(f"--requests {ld.requests}: must be at least 1")
    if ld.concurrency is not None and ld.concurrency < 1:
        raise UsageError(f"--concurrency {ld.concurrency}: must be at least 1")
    if ld.cooldown < 0:
        raise UsageError(f"--cooldown {ld.cooldown:g}: must not be negative")
    if ld.late_tolerance < 0:
        raise UsageError(f"--late-tolerance {ld.late_tolerance:g}: must not be negative")
    w = ld.warmup.strip()
    if not w.isdigit():
        from loadgen.core.units import parse_seconds

        if parse_seconds(w, "--warmup") < 0:
            raise UsageError(f"--warmup {w!r}: must not be negative")
    if ld.workers < 1 or ld.workers > MAX_WORKERS:
        raise UsageError(f"--workers {ld.workers}: must be between 1 and {MAX_WORKERS} (about one per spare core)")
    if ld.workers > 1 and ld.concurrency is not None and ld.concurrency < ld.workers:
        what = "closed-loop users" if ld.rate is None else "in-flight cap"
        raise UsageError(f"--workers {ld.workers} with --concurrency {ld.concurrency}: the {what} are split over "
                         "the workers, so give --concurrency >= --workers")
    if not sc.replaying and not sc.synthetic:
        from loadgen.level.plan import arrival_spec

        arrival_spec(sc).validate()


def _check_ramp(sc: Scenario) -> None:
    """``--ramp`` and ``--ramp-start-rate``: a ramp needs the built-in arrivals (a trace or a synthetic model has
    its own shape in time), a start rate needs an open loop with a ramp."""
    ld = sc.load
    if ld.ramp is None:
        if ld.ramp_start_rate is not None:
            raise UsageError("--ramp-start-rate applies with --ramp (e.g. --ramp 30s --ramp-start-rate 1)")
        return
    if not (math.isfinite(ld.ramp) and ld.ramp > 0):
        raise UsageError(f"--ramp {ld.ramp:g}: must be a positive duration (e.g. 30s)")
    if sc.replaying or sc.synthetic:
        raise UsageError("--ramp applies to --rate or --concurrency loads; a trace or a synthetic arrival model "
                         "already sets the load over time (drop --ramp)")
    if getattr(sc, "sessions", False):
        raise UsageError("--ramp does not apply to multi-turn sessions yet; use --warmup to leave out their start")
    if ld.ramp_start_rate is not None:
        if sc.closed_loop:
            raise UsageError("--ramp-start-rate applies to open loops (--rate); a closed loop ramps its users")
        if not (math.isfinite(ld.ramp_start_rate) and ld.ramp_start_rate >= 0):
            raise UsageError(f"--ramp-start-rate {ld.ramp_start_rate:g}: must be a non-negative rate (req/s)")


def _check_cancel(sc: Scenario) -> None:
    from loadgen.core.cancel import check_cancel

    if check_cancel(sc.load.cancel_rate, sc.load.cancel_after, sc.load.seed) and getattr(sc, "sessions", False):
        raise UsageError("--cancel-rate does not apply to multi-turn sessions yet (a turn's answer feeds the next "
                         "turn); drop it or run single requests")


def _check_trace(sc: Scenario) -> None:
    t, default = sc.trace, type(sc.trace)()
    if not sc.replaying:
        changed = [name for name in type(t).model_fields if name != "path" and getattr(t, name) != getattr(default, name)]
        if changed:
            raise UsageError(f"{flag_of('trace', changed[0])} applies to trace replay; add --trace FILE")
        return
    if sc.load.rate is not None:
        raise UsageError("--rate does not apply to --trace; use --target-rate R (or --speedup S)")
    if sc.load.arrival != "poisson":
        raise UsageError("--arrival does not apply to --trace: the trace gives the arrivals")
    _positive(t.speedup, "--speedup", "number (2 = twice as fast)")
    _positive(t.target_rate, "--target-rate", "number of requests per second")
    for flag, v in (("--max-input-tokens", t.max_input_tokens), ("--max-output-tokens", t.max_output_tokens)):
        if v is not None and v < 1:
            raise UsageError(f"{flag} {v}: must be at least 1")
    if str(t.burst_gap).strip().lower() != "auto":
        from loadgen.core.units import parse_seconds

        parse_seconds(t.burst_gap, "--burst-gap")
    if t.prompts is not None and not t.prompts.startswith("sharegpt:"):
        raise UsageError(f"--trace-prompts {t.prompts!r}: expected sharegpt:PATH (a ShareGPT-format JSON file)")
    if t.output_tokens is not None:
        from loadgen.core.sizes import parse_size

        parse_size(t.output_tokens, "--trace-output-tokens")


def _check_target(sc: Scenario, level: bool = True) -> None:
    from loadgen.codecs.registry import BACKENDS

    tg = sc.target
    if tg.backend not in BACKENDS:
        raise UsageError(f"--backend {tg.backend!r} is not known; choose one of {', '.join(BACKENDS)}")
    for h in tg.headers:
        name, sep, _ = h.partition(":")
        if not sep or not name.strip():
            raise UsageError(f"--header {h!r}: expected NAME:VALUE")
    from loadgen.codecs.base import parse_extra

    parse_extra(tg.extra, "--extra")
    parse_extra(tg.parameters, "--parameter")
    if tg.model is None:
        if tg.backend.startswith("openai") and tg.url:
            raise UsageError("--model is required for OpenAI-compatible servers (the served model's name)")
        tg.model = "ensemble"
    if tg.api_key is None:
        tg.api_key = next((os.environ[n] for n in API_KEY_ENVS if os.environ.get(n)), None)
    if tg.url is not None:
        from loadgen.scenario.files import split_credentials

        url, auth = split_credentials(tg.url)
        if auth is not None:  # user:secret@ in the URL: sent as a header, never kept in the URL
            tg.url = url
            if not any(h.partition(":")[0].strip().lower() == "authorization" for h in tg.headers):
                tg.headers = [*tg.headers, auth]
        BACKENDS[tg.backend].check_url(tg.url, "--url")
    elif level:
        _check_server(sc)


def _check_server(sc: Scenario) -> None:
    """The embedded server's settings, checked as the model repository would check them (one line each)."""
    from loadgen.serve.repository import EmulatedModelSpec

    s = sc.server
    if sc.target.backend.startswith("openai"):
        raise UsageError(f"--backend {sc.target.backend}: the embedded server speaks Triton's protocols; give "
                         "--url of an OpenAI-compatible server, or use --backend triton-http")
    if s.max_batch < 1:
        raise UsageError(f"--server-max-batch {s.max_batch}: must be at least 1")
    try:
        EmulatedModelSpec(model_name=sc.target.model or "ensemble", profile=s.model, gpu=s.gpu,
                          max_batch=s.max_batch, replicas=s.replicas, speed=s.speed, mps=s.mps == "on",
                          spread=s.spread, replica_memory=s.replica_memory, prefix_cache=s.prefix_cache == "on",
                          kv_block_tokens=s.kv_block_tokens).validate()
    except UsageError as err:
        text = str(err).replace("--replicas", "--server-replicas").replace("--speed", "--server-speed")
        raise UsageError(text) from None


def _check_texts(sc: Scenario) -> None:
    from loadgen.core.sizes import parse_size
    from loadgen.core.slo import parse_fail_on, parse_slo

    parse_size(sc.workload.input_tokens, "--input-tokens")
    parse_size(sc.workload.output_tokens, "--output-tokens")
    slo = parse_slo(sc.results.slo) if sc.results.slo else {}
    if sc.results.fail_on:
        checks = parse_fail_on(sc.results.fail_on)
        goodput = [c.text for c in checks if c.name.startswith("goodput") or c.name.startswith("slo_")]
        if goodput and not slo:
            raise UsageError(f"--fail-on {goodput[0]!r}: goodput needs --slo (e.g. --slo ttft=500ms,tpot=50ms)")
    from loadgen.power.monitor import check_power

    check_power(sc.power.source, sc.power.interval, sc.power.gpus, sc.power.idle)
    from loadgen.telemetry.server_metrics import check_server_metrics

    check_server_metrics(sc.results.server_metrics, sc.results.server_metrics_interval)


def _check_limits(sc: Scenario) -> None:
    lm = sc.limits
    _positive(lm.request_timeout, "--request-timeout", "duration (e.g. 300s)")
    if lm.drain_timeout < 0:
        raise UsageError(f"--drain-timeout {lm.drain_timeout:g}: must not be negative")
    if lm.max_response_bytes is not None and lm.max_response_bytes < 1024:
        raise UsageError(f"--max-response-bytes {lm.max_response_bytes}: use at least 1024 (or leave it out for the "
                         "bound derived from the tokens asked for)")
    if lm.max_connection_errors < 0:
        raise UsageError(f"--max-connection-errors {lm.max_connection_errors}: must not be negative (0 = never)")


def check_out_dir(path: str, flag: str = "--out-dir") -> None:
    """The output directory exists or can be made, and a file can be written in it. Whatever this check
    creates, it removes again: a run that fails later (a wrong URL) leaves no empty directory behind."""
    p = Path(path)
    made: list[Path] = []
    try:
        missing = [q for q in (p, *p.parents) if not q.exists()]
        for q in reversed(missing):
            q.mkdir()
            made.append(q)
        if not p.is_dir():
            raise UsageError(f"{flag} {path}: is a file, not a directory; give a directory")
        with tempfile.TemporaryFile(dir=p):
            pass
    except FileExistsError:
        raise UsageError(f"{flag} {path}: a file is in the way; give a directory") from None
    except NotADirectoryError:
        raise UsageError(f"{flag} {path}: a file is in the way; give a directory") from None
    except OSError as err:
        raise UsageError(f"{flag} {path}: cannot write there ({err.strerror or err}); give a writable "
                         "directory") from None
    finally:
        for q in reversed(made):
            with contextlib.suppress(OSError):
                q.rmdir()


def _check_files(sc: Scenario) -> None:
    """Files the level will read: there and readable now, not after the server started."""
    files = [("--tokenizer", sc.workload.tokenizer)]
    if sc.replaying:
        from loadgen.traces.catalog import resolve_trace

        path, _ = resolve_trace(str(sc.trace.path))
        files.append(("--trace", str(path)))  # the readers say the same; here it is said before anything starts
        if sc.trace.prompts:
            files.append(("--trace-prompts", sc.trace.prompts.split(":", 1)[1]))
    for flag, path in files:
        if path is None:
            continue
        if not os.path.exists(path):
            raise UsageError(f"{flag}: no file at {path!r}; check the path"
                             + (" (or `loadgen traces fetch NAME`)" if flag == "--trace" else ""))
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as err:
            raise UsageError(f"{flag} {path}: cannot read ({err.strerror or err}); check the path") from None


def _check_sessions(sc: Scenario) -> None:
    """``[session]``: one source of sessions, the settings it needs, and what does not apply to sessions."""
    se, default = sc.session, type(sc.session)()
    if not sc.sessions:
        changed = [n for n in type(se).model_fields if getattr(se, n) != getattr(default, n)]
        if changed:
            raise UsageError(f"{flag_of('session', changed[0])} applies to multi-turn sessions; add "
                             "--session-turns N, --session-conversations sharegpt:PATH or --session-key COL")
        return
    given = [f for f, v in (("--session-turns", se.turns), ("--session-conversations", se.conversations),
                            ("--session-key", se.key)) if v]
    if len(given) > 1:
        raise UsageError(f"{given[0]} and {given[1]}: choose one source of sessions")
    if se.key and not sc.replaying:
        raise UsageError("--session-key groups the rows of a trace into sessions; add --trace FILE")
    if sc.replaying and not se.key:
        raise UsageError(f"{given[0]} with --trace: give --session-key COL (or hash_ids) to take the sessions "
                         "from the trace, or drop --trace")
    if se.turn_column and not se.key:
        raise UsageError("--session-turn-column applies with --session-key COL")
    if sc.load.on_late != "issue":
        raise UsageError("--on-late drop does not apply to sessions: a session's turns wait for its answers, so "
                         "every turn is sent (lateness is still counted)")
    if sc.workload.lengths:
        raise UsageError("--lengths does not apply to sessions; use --session-user-tokens/--session-answer-tokens")
    if sc.synthetic:
        raise UsageError(f"--arrival {sc.load.arrival}: sessions start by poisson, gamma or constant arrivals, a "
                         "trace (--session-key), or --concurrency users")
    from loadgen.core.sessions import parse_think
    from loadgen.core.sizes import parse_size

    if se.turns:
        parse_size(se.turns, "--session-turns")
    parse_size(se.user_tokens, "--session-user-tokens")
    parse_size(se.answer_tokens, "--session-answer-tokens")
    parse_think(se.think_time)
    if se.system_tokens < 0:
        raise UsageError(f"--session-system-tokens {se.system_tokens}: must not be negative")
    if not 0.0 <= se.system_share <= 1.0:
        raise UsageError(f"--session-system-share {se.system_share:g}: must be between 0 and 1")
    if se.max_history < 0:
        raise UsageError(f"--session-max-history {se.max_history}: must not be negative (0 = no cap)")
    if se.conversations:
        from loadgen.traces.conversations import conversation_path

        if not os.path.isfile(conversation_path(se.conversations)):
            raise UsageError(f"--session-conversations {se.conversations!r}: no such file; give sharegpt:PATH of "
                             "a ShareGPT-format JSON file")
