"""One Locust process's part in a load level: plan it (master or local runner), run a stripe (local runner or
worker), merge the statistics and write the run directory (master or local runner).

A level goes through the shared pipeline's steps (``loadgen.level``): ``plan_level`` (schedule and request source),
the target (``start_embedded``/``url_of``), ``config.json`` from ``base_config`` (the same ``scenario`` object as
``loadgen run`` writes), and ``settle_config``/``write_results``/``judge`` at the end. Only the waiting and the
summary's source differ: the exact summary from every records file, or the merged histograms when the master
cannot read the workers' records.

Distributed runs: at ``test_start`` the master probes the target, creates the run directory, builds the schedule
(to validate it and to know its rate) and puts a *plan* in ``parsed_options`` (Locust copies custom options into
every spawn message): the resolved scenario, the run directory, the target URL, a wall-clock t0 a little ahead,
and each connected worker's stripe number. Each worker rebuilds the same schedule from the same scenario and
seed, keeps request indices ``i % n == stripe`` (``offsets_for_stripe``), converts t0 to its own monotonic clock
and issues its stripe at the absolute deadlines. So the union of the stripes is exactly the planned arrival process, with no
coordination during the run. Before choosing t0 the master measures each worker's wall-clock offset and hands it
t0 on its own clock (``loadgen.locust.clock``; ``t0_skew_ms`` in the summary). Workers write their records to a
spool on their own disk and ship them to the master's run directory as they go (``loadgen.locust.collect``), send
histogram deltas with Locust's stats reports and a last delta with a ``loadgen_done`` message; the master ends the
test when every stripe is done or lost (no heartbeat: reported with the records recovered).

``LocustSession`` keeps the level's lifecycle; what only a master does (clocks, collection, lost workers, the
distributed client block) is ``loadgen.locust.master.MasterSide``, what only a worker does is
``loadgen.locust.worker.WorkerSide``, and the ``--engine asyncio`` node is ``loadgen.locust.engine.EngineNode``.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import gevent
from locust.exception import StopUser

from loadgen.core.histogram import LogHistogram
from loadgen.core.records import STATUS_ERROR, STATUS_OK, RequestRecord
from loadgen.errors import LoadgenError, UsageError
from loadgen.level.target import start_embedded, url_of
from loadgen.locust import clock as lclock
from loadgen.locust import report as lreport
from loadgen.locust.args import (
    MODES,
    LocustLevel,
    class_for_file,
    file_choice,
    level_to_wire,
    scenario_from_options,
)
from loadgen.locust.collect import RecordCollector, RecordShipper
from loadgen.locust.dispatch import DispatchOutcome, OpenLoopDispatcher, run_request, sleep_until
from loadgen.locust.engine import LOCAL_LEAD_NS, EngineNode
from loadgen.locust.level import locust_context
from loadgen.locust.master import MasterSide
from loadgen.locust.sessions import SessionDispatcher, is_sessions, run_session
from loadgen.locust.stats import LLMStats, MeasureWindow, NodeStats
from loadgen.locust.worker import WorkerSide
from loadgen.scenario.model import Scenario

log = logging.getLogger("loadgen.locust")
DONE_MESSAGE = "loadgen_done"
DISTRIBUTED_LEAD_S = 2.0  # t0 this far after planning: spawn messages, schedule and probe on every worker
ENGINE_EXTRA_LEAD_S = 3.0  # --engine asyncio: the child's start (interpreter, probe, schedule) before t0
LOST_WORKER_EXIT = 5  # a worker lost mid-run: the exit code of `loadgen run --workers` when a worker dies
SHIP_EVERY = 4  # a worker ships its new records every this many flushes (about once a second)


class LLMRequestError(Exception):
    """A failed LLM request as Locust's failure statistics show it: the error kind (and HTTP status)."""


def session_of(environment: Any) -> LocustSession:
    session = getattr(environment, "loadgen_session", None)
    if session is None:
        raise RuntimeError("loadgen.locust.plugin.install() was not called by the locustfile")
    return session


class LocustSession(MasterSide, WorkerSide, EngineNode):
    def __init__(self, environment: Any) -> None:
        from locust.runners import MasterRunner, WorkerRunner

        self.environment = environment
        runner = environment.runner
        self.role = "worker" if isinstance(runner, WorkerRunner) else "master" if isinstance(runner, MasterRunner) \
            else "local"
        self.stats = LLMStats()
        self.run_dir: Path | None = None
        self.summary: dict[str, Any] | None = None
        self.server: Any = None  # embedded Triton, started when --host is empty
        self.server_metrics: Any = None  # the level's server-metrics sampler (master or local runner)
        self.seed = 0
        self.think_time_s = 0.0
        self.think_dist = "exponential"
        self._user_numbers = itertools.count()
        self._level: dict[str, Any] | None = None
        self._clock: lclock.ClockCheck | None = None  # the master's clock measurements of the current level

    @property
    def options(self) -> Any:
        return self.environment.parsed_options

    def next_user_number(self) -> int:
        return next(self._user_numbers)

    # -- choosing and validating -----------------------------------------------------------------------------
    def pick_class(self, names: list[str] | None = None, options: Any = None) -> type:
        """The one scenario class selected; with several (none named) and ``--scenario FILE``, the one matching
        the file's backend and mode."""
        env = self.environment
        if names:
            classes = [env.available_user_classes[n] for n in names if n in (env.available_user_classes or {})]
        else:
            classes = list(env.user_classes)
        llm = [c for c in classes if getattr(c, "mode", None) in MODES]
        if len(llm) > 1:
            choice = file_choice(self.options if options is None else options)
            if choice is not None:
                return class_for_file(llm, *choice)
        if len(llm) != 1:
            listed = ", ".join(sorted(c.__name__ for c in llm)) or "none"
            raise UsageError(f"pick exactly one scenario class (selected: {listed}); e.g. `locust -f scenarios/ "
                             "TritonHttpPoisson`, or --class-picker in the web UI")
        return llm[0]

    def validate_form(self, options: Any, names: list[str] | None = None, *, check_paths: bool = True
                      ) -> LocustLevel:
        """The level the options describe (one line naming the flag otherwise), before anything starts."""
        return scenario_from_options(options, self.pick_class(names, options), getattr(options, "num_users", None),
                                     check_paths=check_paths)

    def use_only(self, class_name: str) -> None:
        """Spawn users of the level's class only. Why: with the class picked from ``--scenario FILE`` every class
        is still selected, and Locust would share the users out among them (a closed loop's concurrency too).
        Effective before Locust's dispatcher exists: at init, or at a local runner's test start."""
        env = self.environment
        chosen = [c for c in env.user_classes if c.__name__ == class_name]
        if chosen and len(env.user_classes) > 1:
            env.user_classes = chosen

    def _fail(self, err: LoadgenError) -> None:
        """One clear line, the error's exit code, and the test stopped."""
        log.error("loadgen: %s", err)
        self.environment.process_exit_code = err.exit_code
        if self.role == "master":
            self.options.loadgen_plan = None  # the workers start nothing
        if self.role != "worker":
            self._stop_server_metrics()
            self._level = None
            self._end_test()

    # -- test start ------------------------------------------------------------------------------------------
    def on_test_start(self) -> None:
        try:
            if self.role == "worker":
                self._start_worker()
            else:
                self._plan_level()
        except LoadgenError as err:
            self._fail(err)

    def _target(self, sc: Scenario) -> str:
        """The URL given (-H or the file's), else the embedded server's, started once per process."""
        if sc.target.url:
            return sc.target.url
        if self.server is None:
            self.server = start_embedded(sc, lambda text: log.info("loadgen: no --host; %s", text))
        return url_of(self.server, sc.target.backend)

    def _probe(self, sc: Scenario, url: str) -> tuple[Any, dict[str, Any]]:
        """A started backend and the probe's answers; a target that cannot be used is one line (exit code 3)."""
        from loadgen.locust.backends import make_backend
        from loadgen.scenario.backend import backend_options

        backend = make_backend(sc.target.backend, backend_options(sc, url))
        backend.start()
        try:
            return backend, backend.probe()
        except LoadgenError:
            backend.close()
            raise

    def _plan_level(self) -> None:
        """Master or local runner: check, plan, probe, create the run directory and config.json, then start
        (the local node) or hand the plan to the workers (with the next spawn message)."""
        from loadgen.level.plan import plan_level
        from loadgen.level.rundir import make_run_dir

        level = self.validate_form(self.options)
        self.use_only(level.user_class)
        sc = level.scenario
        level_plan = plan_level(sc)  # the schedule before anything starts: an impossible level fails here
        url = self._target(sc)
        backend, info = self._probe(sc, url)
        name = sc.results.name or f"locust-{sc.default_name()}"
        run_dir = make_run_dir(Path(sc.results.out_dir), name)
        self.stats = LLMStats()
        self.run_dir, self.summary = run_dir, None
        self._start_server_metrics(sc, url, run_dir)
        self.seed, self.think_time_s, self.think_dist = sc.load.seed, level.think_time_s, level.think_dist
        if self.role == "master":
            runner = self.environment.runner
            nodes = sorted(n.id for n in runner.clients.ready + runner.clients.running + runner.clients.spawning)
            stripes = {node: k for k, node in enumerate(nodes)}
            backend.close()
            backend = None
            clock = self._sync_clocks(nodes)
            offsets = clock.offsets_ns()
            collector = RecordCollector(run_dir)
            collector.open(list(stripes.values()))
        else:
            stripes = {"local": 0}
            clock, offsets, collector = None, {}, None
        # duration_s: resolved here, since it may come from --run-time, which Locust does not send to workers
        plan = {"run_dir": str(run_dir), "url": url, "user_class": level.user_class, "users": level.users,
                "duration_s": sc.load.duration, "t0_wall_ns": time.time_ns() + int(self._lead_s() * 1e9),
                "stripes": stripes, "n": len(stripes), "level": level_to_wire(level), "clock_offsets_ns": offsets}
        ctx = locust_context(level, level_plan, url, name)
        ctx.extra["locust"] = {**level.public_dict(), "role": self.role, "workers": len(stripes),
                               "plan": {k: v for k, v in plan.items() if k not in ("stripes", "level")}}
        config = self._write_config(level, url, ctx, info, run_dir)
        self._level = {"level": level, "ctx": ctx, "config": config, "plan": plan, "level_plan": level_plan,
                       "dones": {}, "finalized": False, "ending": False, "stop_sent": False, "clock": clock,
                       "collector": collector, "lost": {}}
        log.info("loadgen: %s -> %s (%s, model %s); run directory %s", level.user_class, url, sc.target.backend,
                 sc.target.model, run_dir)
        for line in level_plan.describe:
            log.info("loadgen: %s", line)
        if self.role == "master":
            self.options.loadgen_plan = plan
            self._level["ticker"] = gevent.spawn(self._tick_loop, None)
            self._level["watch"] = gevent.spawn(self._watch_workers, self._level)
        else:
            self._start_node(plan, 0, level, level_plan, backend)

    def _lead_s(self) -> float:
        """How far ahead the master puts t0: a worker with ``--engine asyncio`` first starts its child process."""
        engine = getattr(self.options, "engine", "gevent")
        return DISTRIBUTED_LEAD_S + (ENGINE_EXTRA_LEAD_S if engine == "asyncio" else 0.0)

    def _write_config(self, level: LocustLevel, url: str, ctx: Any, info: dict[str, Any], run_dir: Path
                      ) -> dict[str, Any]:
        """config.json: the pipeline's common keys (``scenario`` as ``loadgen run`` writes it), plus Locust's."""
        from loadgen.level.pipeline import LevelOptions, base_config
        from loadgen.level.rundir import write_json

        opts = LevelOptions(front_end="locust", config_extra={"event_loop": "gevent"})
        config = base_config(level.scenario, opts, url, self.server, ctx)
        config["server_info"] = info
        write_json(run_dir / "config.json", config)
        return config

    def _start_server_metrics(self, sc: Scenario, url: str, run_dir: Path) -> None:
        """The pipeline's server-metrics side task, once per level (master or local runner, never a worker),
        from before the load to the finish; its latest values feed the web UI's server charts."""
        from loadgen.telemetry.server_metrics import sampler_for

        self._stop_server_metrics()
        known = self.server.metrics_url if self.server is not None and not sc.target.url else None
        res = sc.results
        sampler = sampler_for(res.server_metrics, res.server_metrics_interval, sc.target.backend, url, known,
                              lambda text: log.warning("loadgen: %s", text))
        if sampler is not None:
            sampler.open(run_dir)
            sampler.start()
            self.stats.server_source = lambda: sampler.latest
        self.server_metrics = sampler

    def _stop_server_metrics(self) -> None:
        if self.server_metrics is not None:
            self.server_metrics.stop()

    # -- a node: the local runner or a worker --------------------------------------------------------------
    def _start_node(self, plan: dict, stripe: int, level: LocustLevel, level_plan: Any, backend: Any) -> None:
        from loadgen.core.arrivals import offsets_for_stripe, user_start_offsets
        from loadgen.core.slo import parse_slo
        from loadgen.level.recorder import Recorder

        lv = self._level
        assert lv is not None
        sc = level.scenario
        if backend is None:
            backend, _ = self._probe(sc, plan["url"])
        run_dir = Path(plan["run_dir"])
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "records.jsonl" if self.role == "local" else self._spool(run_dir, stripe)
        offsets = level_plan.offsets
        cool_ns = int(sc.load.cooldown * 1e9)
        sched_end = float(offsets[-1] - cool_ns) if offsets is not None and cool_ns else math.inf
        window = MeasureWindow(sc.warmup_requests, sc.warmup_s, sched_end, sc.load.late_tolerance * 1e9)
        slo = parse_slo(sc.results.slo) if sc.results.slo else None
        n = plan["n"]
        lv.update(backend=backend, source=level_plan.source, stripe=stripe, n=n, records=path,
                  recorder=Recorder(path), node=NodeStats(window, slo), node_done=False, cpu0=time.process_time(),
                  wall0=time.perf_counter(), hub_lag=LogHistogram(), inflight=0, exhausted=False,
                  closed_k=itertools.count(), issued=0)
        lv["flusher"] = gevent.spawn(self._flush_loop, lv)
        lv["lag_monitor"] = gevent.spawn(self._hub_lag_loop, lv)
        if self.role == "local":
            lv["t0"] = time.perf_counter_ns() + (LOCAL_LEAD_NS if level.mode != "closed" else 0)
            lv["ticker"] = gevent.spawn(self._tick_loop, lv)
        else:  # t0 on this worker's own wall clock: the master measured the offset (loadgen.locust.clock)
            mine = plan["t0_wall_ns"] + int(plan.get("clock_offsets_ns", {}).get(self.environment.runner.client_id, 0))
            lv["t0"] = time.perf_counter_ns() + (mine - lclock.wall_ns())
            lv["shipper"] = RecordShipper(path, stripe, self.environment.runner.send_message)
            lv["t0_watch"] = gevent.spawn(self._t0_watch, lv)
        if level.mode == "closed":
            m, duration = sc.load.requests, sc.load.duration
            lv["closed_limit"] = None if m is None else max(0, -(-(m - stripe) // n))
            lv["closed_end"] = lv["t0"] + int(((sc.load.ramp or 0.0) + duration) * 1e9) if duration else None
            lv["ramp_starts"] = user_start_offsets(sc.load.concurrency or 1, sc.load.ramp)  # --ramp: users join
            lv["ramped"] = set()                                                             # one by one
            return
        if getattr(self.options, "engine", "gevent") == "asyncio" and not is_sessions(level_plan.source):
            self._start_engine(lv, level, plan["url"], path)
            return
        indices, _ = offsets_for_stripe(offsets, stripe, n)
        cap = sc.load.concurrency  # the level's in-flight cap, shared out as loadgen run --workers does
        if cap:
            cap = max(1, cap // n + (1 if stripe < cap % n else 0))
        dispatcher = SessionDispatcher if is_sessions(level_plan.source) else OpenLoopDispatcher
        lv["dispatcher"] = dispatcher(
            backend, level_plan.source, self._on_record, offsets, indices, lv["t0"], on_late=sc.load.on_late,
            late_tolerance_ns=int(sc.load.late_tolerance * 1e9), concurrency=cap,
            drain_timeout_s=sc.limits.drain_timeout, worker=stripe)
        lv["dispatch_greenlet"] = gevent.spawn(self._dispatch, lv)

    def _dispatch(self, lv: dict) -> None:
        outcome = lv["dispatcher"].run()
        self._node_finished(lv, outcome)

    def _on_record(self, rec: RequestRecord) -> None:
        lv = self._level
        if lv is None or lv.get("node_done"):
            return
        lv["recorder"].add(rec)
        lv["node"].add(rec)
        if rec.status not in (STATUS_OK, STATUS_ERROR) or rec.issued_ns is None:
            return
        backend = lv["backend"]
        end = rec.last_token_ns if rec.status == STATUS_OK and rec.last_token_ns is not None else rec.end_ns
        rt = max(0.0, ((end if end is not None else rec.issued_ns) - rec.issued_ns) / 1e6)
        exc = None
        if rec.status == STATUS_ERROR:
            kind = rec.error_kind or "error"
            exc = LLMRequestError(f"{kind} {rec.http_status}" if rec.http_status and kind == "http_status" else kind)
        self.environment.events.request.fire(
            request_type=backend.name, name=backend.endpoint, response_time=rt,
            response_length=rec.output_tokens if rec.status == STATUS_OK else 0, exception=exc, context={})

    def closed_loop_request(self, user: int | None = None) -> None:
        """One request of a closed-loop user (raises StopUser when this node's share is done). ``user``: the
        user's number, whose first request waits for its turn in a ``--ramp``."""
        lv = self._level
        if lv is None or "closed_limit" not in lv or lv["node_done"]:
            raise StopUser()
        if time.perf_counter_ns() < lv["t0"]:  # a distributed level starts at the planned t0 on every worker
            sleep_until(lv["t0"])
        if user is not None and lv.get("ramp_starts") and user not in lv["ramped"]:
            lv["ramped"].add(user)
            starts = lv["ramp_starts"]
            sleep_until(lv["t0"] + starts[user % len(starts)])
        k = next(lv["closed_k"])
        now = time.perf_counter_ns()
        if (lv["closed_limit"] is not None and k >= lv["closed_limit"]) or \
                (lv["closed_end"] is not None and now >= lv["closed_end"]):
            lv["exhausted"] = True
            self._closed_check(lv)
            raise StopUser()
        lv["inflight"] += 1
        try:
            if is_sessions(lv["source"]):  # multi-turn: this user runs one whole session (loadgen.locust.sessions)
                run_session(lv["backend"], lv["source"], k * lv["n"] + lv["stripe"], now - lv["t0"], lv["t0"],
                            lv["stripe"], self._on_record, end_abs_ns=lv["closed_end"],
                            on_issue=lambda: lv.__setitem__("issued", lv["issued"] + 1))
            else:
                lv["issued"] += 1
                run_request(lv["backend"], lv["source"], k * lv["n"] + lv["stripe"], now - lv["t0"], lv["t0"],
                            lv["stripe"], self._on_record)
        finally:
            lv["inflight"] -= 1
        self._closed_check(lv)

    def _closed_check(self, lv: dict) -> None:
        if lv["exhausted"] and lv["inflight"] == 0 and not lv["node_done"]:
            gevent.spawn(self._node_finished, lv, self._closed_outcome(lv, interrupted=False))

    def _closed_outcome(self, lv: dict, interrupted: bool) -> DispatchOutcome:
        now = time.perf_counter_ns() - lv["t0"]
        return DispatchOutcome(lv["t0"], now, now, lv["issued"], 0, 0, lv["inflight"], interrupted)

    def _flush_loop(self, lv: dict) -> None:
        """Flush the records 4x a second; records that cannot be written stop this node's load (exit 6)."""
        from loadgen.errors import ResultsError

        flushes = 0
        while not lv["node_done"]:
            gevent.sleep(0.25)
            recorder = lv["recorder"]
            recorder.flush()
            if lv.get("tail") is not None:  # --engine asyncio: the child's records, into the statistics
                self._take_tail(lv)
            flushes += 1
            if lv.get("shipper") is not None and flushes % SHIP_EVERY == 0 and recorder.error is None:
                lv["shipper"].ship()
            if recorder.error is not None:
                log.error("loadgen: %s", recorder.describe_error())
                self.environment.process_exit_code = ResultsError.exit_code
                gevent.spawn(self.stop_node)
                return

    def _hub_lag_loop(self, lv: dict) -> None:
        """How late the gevent hub wakes a 10 ms sleeper: the event-loop lag of this generator process."""
        while not lv["node_done"]:
            t = time.perf_counter_ns()
            gevent.sleep(0.01)
            lv["hub_lag"].record(max(1, time.perf_counter_ns() - t - 10_000_000))

    def _tick_loop(self, lv: dict | None) -> None:
        while True:
            gevent.sleep(1.0)
            if lv is not None:
                if lv["node_done"]:
                    return
                self.stats.merge(lv["node"].take())
            self.stats.tick()

    def _node_finished(self, lv: dict, outcome: DispatchOutcome) -> None:
        if lv["node_done"]:
            return
        lv["node_done"] = True
        lv["recorder"].close()
        cpu_s, wall_s = time.process_time() - lv["cpu0"], time.perf_counter() - lv["wall0"]
        lag = lv["hub_lag"]
        done = {"stripe": lv["stripe"], "records": str(lv["records"]), "written": lv["recorder"].written,
                "outcome": asdict(outcome), "delta": lv["node"].take(), "cpu_seconds": round(cpu_s, 3),
                "wall_seconds": round(wall_s, 3), "t0_monotonic_ns": lv["t0"], "hub_lag_p99_ms": round(lag.percentile(99) / 1e6, 3)
                if lag.count else 0.0}
        child = lv.get("engine_client")
        if child is not None:  # --engine asyncio: the child's CPU and event-loop lag count as this node's
            done.update(engine="asyncio", cpu_seconds=round(cpu_s + child.get("cpu_seconds", 0.0), 3),
                        hub_lag_p99_ms=max(done["hub_lag_p99_ms"], child.get("loop_lag_p99_ms") or 0.0),
                        engine_client={k: child.get(k) for k in ("cpu_seconds", "loop_lag_p99_ms", "wake_method",
                                                                 "event_loop", "saturation_reason")})
        lv["backend"].close()
        if self.role == "worker":
            if lv.get("t0_watch") is not None:
                lv["t0_watch"].kill(block=False)
            lv["shipper"].ship()  # the rest of the records, before the last message
            done.update(client_id=self.environment.runner.client_id, t0_start_wall_ns=lv.get("t0_start_wall_ns"),
                        shipped=lv["shipper"].lines)
            self.environment.runner.send_message(DONE_MESSAGE, done)
            return
        self.on_done_message(done)

    def stop_node(self) -> None:
        """Stop issuing; what is in flight is cancelled and recorded; the node's last message goes out."""
        lv = self._level
        if lv is None or "node" not in lv or lv["node_done"]:
            return
        if "dispatcher" in lv:
            lv["dispatcher"].stop()
            lv["dispatch_greenlet"].join(timeout=30)
        if "engine" in lv:  # the child stops issuing, records what was in flight and reports done
            lv["engine"].stop()
            lv["dispatch_greenlet"].join(timeout=60)
        if not lv["node_done"]:
            self._node_finished(lv, self._closed_outcome(lv, interrupted=True))

    # -- the master / local side ---------------------------------------------------------------------------
    def _end_test(self) -> None:
        """Every stripe is done (or the level failed): stop Locust the way --run-time would."""
        lv = self._level
        if lv is not None:
            if lv["ending"]:
                return
            lv["ending"] = True
        opts, runner = self.options, self.environment.runner
        if getattr(opts, "headless", False):
            gevent.spawn(runner.quit)
            return
        gevent.spawn(runner.stop)
        autoquit = getattr(opts, "autoquit", -1)
        if getattr(opts, "autostart", False) and autoquit is not None and autoquit >= 0:
            gevent.spawn_later(autoquit, self._quit_all)

    def _quit_all(self) -> None:
        self.environment.runner.quit()
        if self.environment.web_ui is not None:
            self.environment.web_ui.stop()

    def on_test_stop(self) -> None:
        if self.role == "worker":
            self.stop_node()
            return
        lv = self._level
        if lv is None or lv["finalized"]:
            return
        lv["stopping"] = True  # Locust is stopping already: the last stripe must not stop it again
        if self.role == "local":
            self.stop_node()
        else:
            self._wait_for_workers(lv)
        try:
            self._finalize(lv)
        except LoadgenError as err:
            log.error("loadgen: %s", err)
            self.environment.process_exit_code = err.exit_code

    def _finalize(self, lv: dict) -> None:
        """The pipeline's finish (``loadgen.level.finish``), with the summary from every records file when the
        master can read them all, else from the merged histograms; then Locust's own files and the verdict."""
        from rich.console import Console

        from loadgen.errors import TargetError
        from loadgen.level.finish import judge, no_success, settle_config, write_results
        from loadgen.report import output_width, render_report

        lv["finalized"] = True
        if lv.get("ticker") is not None:
            lv["ticker"].kill(block=False)
        self.stats.tick()
        ctx, run_dir = lv["ctx"], Path(lv["plan"]["run_dir"])
        dones = list(lv["dones"].values())
        run_end = max(d["outcome"]["issue_end_ns"] for d in dones) if dones else None
        settle_config(run_dir, ctx, lv["config"], run_end, self._client(lv, dones))
        collector = lv.get("collector")
        if collector is not None:  # master: the records the workers shipped here; a lost worker's recovered part
            files = [collector.path(k) for k in sorted(lv["plan"]["stripes"].values())]
            readable = len(dones) + len(lv["lost"]) == lv["plan"]["n"] and \
                all(collector.complete(d["stripe"], d["written"]) for d in dones)
        else:
            files = [Path(d["records"]) for d in dones]
            readable = len(dones) == lv["plan"]["n"] and all(lreport.count_lines(f) >= d["written"]
                                                              for f, d in zip(files, dones, strict=True))
        if readable:
            summary = lreport.exact_summary(files, ctx)
        else:
            summary = lreport.histogram_summary(self.stats, ctx, lv["level_plan"].offsets)
        if self.server_metrics is not None:
            self._stop_server_metrics()
            self.server_metrics.contribute(run_dir, summary)
        self.summary = summary
        write_results(run_dir, summary, lv["level_plan"].describe)
        lreport.write_stats_csv(run_dir / "llm_stats.csv", self.stats)
        lreport.write_history_json(run_dir / "llm_history.json", self.stats)
        prefix = getattr(self.options, "csv_prefix", None)
        if prefix:
            lreport.write_stats_csv(Path(f"{prefix}_llm_stats.csv"), self.stats)
            lreport.write_history_csv(Path(f"{prefix}_llm_stats_history.csv"), self.stats)
        console = Console(width=output_width())
        render_report([summary], console, title=f"loadgen (Locust) {ctx.name}", show_legend=False)
        how = "exact, from every records file" if readable else \
            "from the merged histograms; copy the workers' records.w*.jsonl here and run `loadgen report`"
        if lv.get("lost"):
            how += "; lost worker(s): " + ", ".join(f"{r['stripe']} ({r['records_recovered']} records recovered)"
                                                   for r in sorted(lv["lost"].values(), key=lambda r: r["stripe"]))
        if self.role == "master":
            clock = summary.get("client", {}).get("clock", {})
            console.print(f"workers' start vs t0: t0_skew_ms {clock.get('t0_skew_ms')} (spread "
                          f"{clock.get('t0_spread_ms')} ms); clock offsets ms: "
                          + ", ".join(f"w{w['stripe']} {w['offset_ms']}" for w in clock.get("workers", [])))
        console.print(f"run directory: {run_dir} (summary {how}; what happened during the run: "
                      f"{run_dir / 'report.html'})")
        if lv.get("lost"):
            self.environment.process_exit_code = LOST_WORKER_EXIT
        failed = no_success(run_dir, summary)  # nothing succeeded: exit 3 with the likely cause
        if failed is not None:
            raise TargetError(failed)
        judge(lv["level"].scenario.results.fail_on, summary)  # ThresholdFailed: exit code 4 (on_test_stop)

    def on_quitting(self) -> None:
        self._stop_server_metrics()
        html_file = getattr(self.options, "html_file", None)
        if html_file and self.role != "worker" and Path(html_file).is_file():
            page = Path(html_file).read_text(encoding="utf-8")
            Path(html_file).write_text(lreport.inject_html(page, lreport.html_block(self.summary, self.stats)),
                                       encoding="utf-8")
        if self.server is not None:
            self.server.stop()
            self.server = None

    def take_delta(self) -> dict | None:
        lv = self._level
        if lv is None or "node" not in lv or lv["node_done"]:
            return None
        return lv["node"].take()
