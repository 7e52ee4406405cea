"""``install()``: what a locustfile calls once to plug the loadgen core into Locust.

It registers the scenario arguments, creates each process's ``LocustSession`` at ``init`` (with the web UI
additions and the custom messages of distributed runs: last message, stop, records chunks, clock pings), answers ``--print-scenario`` and checks a headless level
there (before Locust starts anything), and routes Locust's events to it. Several scenario files
call it (``locust -f scenarios/`` imports them all); only the first call registers anything.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from loadgen.errors import LoadgenError

_STATE = {"installed": False}
log = logging.getLogger("loadgen.locust")


def install() -> None:
    """Register the loadgen listeners on Locust's global event hooks (idempotent)."""
    if _STATE["installed"]:
        return
    _STATE["installed"] = True
    from locust import events

    from loadgen.locust.args import add_arguments

    events.init_command_line_parser.add_listener(lambda parser, **_: add_arguments(parser))
    events.init.add_listener(_on_init)
    events.test_start.add_listener(lambda environment, **_: _session(environment).on_test_start())
    events.test_stop.add_listener(lambda environment, **_: _session(environment).on_test_stop())
    events.quitting.add_listener(lambda environment, **_: _session(environment).on_quitting())


def _session(environment: Any) -> Any:
    from loadgen.locust.session import session_of

    return session_of(environment)


def _on_init(environment: Any, **_: Any) -> None:
    from loadgen.locust.clock import PING, PONG
    from loadgen.locust.collect import RECORDS, RECORDS_ACK
    from loadgen.locust.master import STOP_MESSAGE
    from loadgen.locust.session import DONE_MESSAGE, LocustSession

    session = LocustSession(environment)
    environment.loadgen_session = session
    runner = environment.runner
    events = environment.events
    # The report hooks carry no environment: each process binds its own session here, once.
    if session.role == "master":
        runner.register_message(DONE_MESSAGE, lambda environment, msg, **_: session.on_done_message(msg.data))
        runner.register_message(RECORDS, lambda environment, msg, **_: session.on_records(msg.data))
        runner.register_message(PONG, lambda environment, msg, **_: session.on_clock_pong(msg.node_id, msg.data))
        events.worker_report.add_listener(lambda client_id, data, **_: session.stats.merge(data.get("loadgen")))
    elif session.role == "worker":
        runner.register_message(STOP_MESSAGE, lambda environment, msg, **_: _stop_worker(session),
                                concurrent=True)
        runner.register_message(PING, lambda environment, msg, **_: _answer_clock(runner, msg.data))
        runner.register_message(RECORDS_ACK, lambda environment, msg, **_: session.on_records_ack())
        events.report_to_master.add_listener(lambda client_id, data, **_: _attach_delta(session, data))
    if environment.web_ui is not None:
        from loadgen.locust import web

        web.install(environment.web_ui, session)
    opts = environment.parsed_options
    if session.role != "worker" and opts is not None:
        _check_at_start(session, opts)


def _check_at_start(session: Any, opts: Any) -> None:
    """Before Locust starts anything: ``--print-scenario`` (print and exit 0), and in a headless or autostarted
    run the whole level checked (one line and the error's exit code on a bad value). A closed loop's users come
    from the scenario when ``-u`` is not given, so Locust spawns that many (all at once unless ``-r`` says)."""
    try:
        if getattr(opts, "print_scenario", False):
            from loadgen.scenario.load import scenario_toml

            level = session.validate_form(opts, check_paths=False)
            sys.stdout.write(scenario_toml(level.scenario))
            sys.stdout.flush()
            sys.exit(0)
        if opts.headless or opts.autostart:
            level = session.validate_form(opts)
            session.use_only(level.user_class)
            if level.mode == "closed" and opts.num_users is None:
                opts.num_users = level.users
                if opts.spawn_rate is None:
                    opts.spawn_rate = level.users
    except LoadgenError as err:
        sys.stderr.write(f"loadgen: error: {err}\n")
        sys.exit(err.exit_code)


def _stop_worker(session: Any) -> None:
    """The master is ending the level early: stop this worker's users and stripe (its test_stop sends the rest)."""
    runner = session.environment.runner
    if runner.state not in ("stopped", "stopping", "cleanup"):
        runner.stop()
    session.stop_node()


def _answer_clock(runner: Any, ping: dict) -> None:
    """A master's clock ping: stamp receipt and reply at once (``loadgen.locust.clock``)."""
    from loadgen.locust.clock import PONG, answer, wall_ns

    t2 = wall_ns()
    runner.send_message(PONG, answer(ping, t2))


def _attach_delta(session: Any, data: dict) -> None:
    delta = session.take_delta()
    if delta:
        data["loadgen"] = delta
