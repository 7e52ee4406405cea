"""Executing a sweep: configurations in order, each point a run directory, resume, early stop at saturation.

Layout of a sweep directory::

    sweep.json            the spec (what was asked) and the point ids in order
    points/<id>/          one run directory per point (config.json, records.jsonl, summary.json, report.txt)
                          plus point.json: status (done | skipped | failed | interrupted), the point's definition
    incomplete/           directories of points that did not finish, moved aside when the sweep resumes
    results.json/.csv     one row per point (rescaled to real time for emulated servers) and the analysis
    report.txt, plots/*.png, index.html

Resume: running the same sweep into the same directory reruns only what has no ``done`` point.json whose
definition (server configuration, load, workload) equals the current one; a changed definition is an error
rather than a silent mix. Early stop: after each point the series (one configuration, one load kind, increasing
load) is checked for saturation (``saturation_reason``); the rest of the series is recorded as skipped.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from loadgen.errors import LoadgenError, UsageError
from loadgen.level.rundir import write_json
from loadgen.sweep.grid import Point, SweepSpec, Target

DONE, SKIPPED, FAILED, INTERRUPTED = "done", "skipped", "failed", "interrupted"
LATENCIES = ("ttft", "tpot", "itl", "e2e")
ROW_STATS = ("mean", "p50", "p90", "p99")


def _read(path: Path) -> Any:
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None


# ---------------------------------------------------------------------------------------------------- rows
def point_row(point: Point, summary: dict[str, Any], status: str = DONE) -> dict[str, Any]:
    """The flat row of one finished point. Emulated servers at speed s are rescaled to real time: throughput
    / s, latencies x s, J/token x s (the emulated GPU at speed s runs s times real time)."""
    t, load = point.target, point.load
    sp = float(t.speed) if t.kind == "embedded" else 1.0
    extra = summary.get("extra") or {}
    watch = extra.get("server_watch") or {}
    energy = summary.get("energy") if isinstance(summary.get("energy"), dict) else {}

    def per_s(v: Any) -> float | None:
        return None if v is None else v / sp

    row: dict[str, Any] = {
        "point": point.id, "config": t.label, "load": load.label, "load_kind": load.kind, "load_value": load.value,
        "status": status, "kind": t.kind, "backend": t.backend, "model": t.model, "url": summary.get("url"),
        "profile": t.profile, "gpu": t.gpu, "max_batch": t.max_batch, "replicas": t.replicas, "speed": sp,
        "mps": t.mps,
        "throughput": per_s(summary.get("total_token_throughput_tps")),
        "output_throughput": per_s(summary.get("output_token_throughput_tps")),
        "request_throughput": per_s(summary.get("request_throughput_rps")),
        "measured_throughput": summary.get("total_token_throughput_tps"),
        "completed": summary.get("completed_requests"), "error_rate": summary.get("error_rate"),
        "window_s": summary.get("window_s"), "achieved_ratio": summary.get("achieved_ratio"),
        "in_flight": summary.get("mean_running_requests"),
    }
    for name in LATENCIES:
        stats = summary.get(f"{name}_ms") or {}
        for st in ROW_STATS:
            v = stats.get(st)
            row[f"{name}_{st}"] = None if v is None else v * sp
    running = watch.get("engine_running_mean")
    row["batch"] = running
    row["batch_source"] = "server" if running is not None else None
    if running is None and row["in_flight"] is not None and load.kind == "concurrency":
        row["batch"], row["batch_source"] = row["in_flight"] / (t.replicas or 1), "client"
    row["kv_peak"] = watch.get("kv_peak")
    row["preemptions"] = watch.get("preemptions")
    row["step_lag_p99_ms_max"] = watch.get("step_lag_p99_ms_max")
    row["send_delay_p99_ms_max"] = watch.get("send_delay_p99_ms_max")
    row["requests_per_replica"] = watch.get("requests_per_replica")
    rate = extra.get("completion_rate_rps")
    row["completion_rate"] = per_s(rate)
    # Judged against what was scheduled, never the nominal target: a schedule that drew fewer requests than
    # rate x duration is not a server falling behind.
    scheduled = summary.get("scheduled_rate_rps") or (load.value if load.kind == "rate" else None)
    row["scheduled_rate"] = per_s(scheduled)
    row["served_ratio"] = (rate / scheduled) if (rate is not None and scheduled and load.kind == "rate") else None
    jpt = energy.get("joules_per_total_token") if energy else None
    row["j_per_token"] = None if jpt is None else jpt * sp
    row["mean_power_w"] = energy.get("mean_power_w") if energy else None
    row["energy_status"] = energy.get("status") if energy else None
    row["preempted"] = bool(row["preemptions"])
    row["valid"] = bool(summary.get("valid")) and status == DONE
    row["warnings"] = list(summary.get("warnings") or [])
    return row


# ---------------------------------------------------------------------------------------------------- saturation
def saturation_reason(spec: SweepSpec, point: Point, row: dict[str, Any], previous: dict[str, Any] | None
                      ) -> str | None:
    """Why this point saturates its series (so higher loads are skipped), or None."""
    stop, load = spec.stop, point.load
    if not stop.enabled:
        return None
    if load.kind == "rate":
        ach = row.get("achieved_ratio")
        if ach is not None and ach < stop.min_achieved_ratio:
            return f"the client sent {ach:.0%} of the scheduled requests on time (< {stop.min_achieved_ratio:.0%})"
        served = row.get("served_ratio")
        if served is not None and served < stop.min_served_ratio:
            return (f"the server completed {served:.0%} of the scheduled requests per second "
                    f"(< {stop.min_served_ratio:.0%})")
    if stop.latency:
        from loadgen.sweep.analysis import parse_slo_bounds

        failed = [b for b in parse_slo_bounds(stop.latency) if not b.holds(row.get(b.name))]
        if failed:
            b = failed[0]
            got = row.get(b.name)
            return f"latency bound {b.text} missed ({b.name} = {'-' if got is None else f'{got:.4g}'})"
    if stop.min_gain is not None and load.kind == "concurrency" and previous is not None:
        t0, t1 = previous.get("throughput"), row.get("throughput")
        if t0 and t1 is not None and t1 < (1 + stop.min_gain) * t0:
            return f"throughput grew {t1 / t0 - 1:+.1%} over the previous level (< {stop.min_gain:.0%})"
    return None


# ---------------------------------------------------------------------------------------------------- runner
class SweepRunner:
    """Runs ``spec`` into ``sweep_dir``; ``executor`` and ``starter`` are replaceable for tests."""

    def __init__(self, spec: SweepSpec, sweep_dir: Path, console: Any, executor: Callable | None = None,
                 starter: Callable | None = None) -> None:
        from loadgen.sweep.point import run_point
        from loadgen.sweep.targets import start_target

        self.spec = spec
        self.dir = Path(sweep_dir)
        self.console = console
        self.executor = executor or run_point
        self.starter = starter or start_target
        self.points = spec.points()
        self.rows: dict[str, dict[str, Any]] = {}
        self.ran: list[str] = []  # point ids executed by this invocation (the rest were reused or skipped)
        self.interrupted = False
        self._stoppers: list[Any] = []

    # -- state ------------------------------------------------------------------------------------------------
    def point_dir(self, p: Point) -> Path:
        return self.dir / "points" / p.id

    def _state(self, p: Point) -> dict[str, Any] | None:
        st = _read(self.point_dir(p) / "point.json")
        return st if isinstance(st, dict) else None

    def _write_state(self, p: Point, status: str, **more: Any) -> None:
        d = self.point_dir(p)
        d.mkdir(parents=True, exist_ok=True)
        write_json(d / "point.json", {"status": status, "definition": p.definition(self.spec.workload), **more})

    def _prepare(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = {"schema": "slm-loadgen/sweep/1", "spec": self.spec.to_dict(), "points": [p.id for p in self.points],
                "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}
        for p in self.points:
            st = self._state(p)
            if st and st.get("status") == DONE and st.get("definition") != _jsonable(p.definition(self.spec.workload)):
                raise UsageError(f"sweep directory {self.dir}: point {p.id} was measured with different settings; "
                                 "use a new --out directory (or remove that point's directory to remeasure it)")
        write_json(self.dir / "sweep.json", meta)

    def _move_aside(self, p: Point) -> None:
        d = self.point_dir(p)
        if d.exists():
            dest = self.dir / "incomplete" / f"{p.id}-{time.strftime('%Y%m%d-%H%M%S')}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(d), str(dest))

    # -- the loop ---------------------------------------------------------------------------------------------
    def run(self) -> int:
        """0 when every point is done or skipped, 130 when interrupted, 3 when a configuration failed."""
        self._prepare()
        by_target: dict[str, list[Point]] = {}
        targets: dict[str, Target] = {}
        for p in self.points:
            by_target.setdefault(p.target.label, []).append(p)
            targets[p.target.label] = p.target
        code = 0
        try:
            for label, pts in by_target.items():
                code = max(code, self._run_target(targets[label], pts))
                if self.interrupted:
                    return 130
        except KeyboardInterrupt:
            self.interrupted = True
            self.console.print("[yellow]interrupted: finished points are kept; run the same command to resume[/]")
            return 130
        finally:
            for th in self._stoppers:
                th.join()
        return code

    def _run_target(self, target: Target, pts: list[Point]) -> int:
        running = None
        saturated: dict[str, str] = {}  # load kind -> reason
        previous: dict[str, dict[str, Any]] = {}
        code = 0
        try:
            for p in pts:
                series = p.load.kind
                st = self._state(p)
                if st and st.get("status") == DONE:
                    summary = _read(self.point_dir(p) / "summary.json")
                    if isinstance(summary, dict):
                        row = point_row(p, summary)
                        self.rows[p.id] = row
                        reason = saturation_reason(self.spec, p, row, previous.get(series))
                        previous[series] = row
                        if reason and series not in saturated:
                            saturated[series] = f"{p.load.label}: {reason}"
                        continue
                if series in saturated:
                    self._move_aside(p)
                    self._write_state(p, SKIPPED, reason=f"series saturated at {saturated[series]}")
                    self.console.print(f"  skip {p.id}: saturated at {saturated[series]}")
                    continue
                self._move_aside(p)
                if running is None:
                    try:
                        running = self.starter(target, self.dir / "servers")
                    except LoadgenError as err:
                        self.console.print(f"[red]configuration {target.label}: {err}[/]")
                        for q in pts:
                            if not (self._state(q) or {}).get("status") == DONE:
                                self._write_state(q, FAILED, reason=str(err))
                        return 3
                self._announce(p)
                try:
                    out = self.executor(self.spec, p, running, self.point_dir(p), self.console)
                except LoadgenError as err:
                    self._write_state(p, FAILED, reason=str(err))
                    self.console.print(f"[red]  {p.id} failed: {err}[/]")
                    code = 3
                    continue
                self.ran.append(p.id)
                if out.interrupted:
                    self._write_state(p, INTERRUPTED, wall_s=out.wall_s)
                    self.interrupted = True
                    self.console.print("[yellow]interrupted: finished points are kept; run the same command to "
                                       "resume[/]")
                    return 130
                if out.server_gone:
                    self._write_state(p, FAILED, reason=f"the server stopped answering: {out.server_gone}")
                    self.console.print(f"[red]  {p.id}: the server stopped answering ({out.server_gone})[/]")
                    return 3
                row = point_row(p, out.summary)
                reason = saturation_reason(self.spec, p, row, previous.get(series))
                previous[series] = row
                self.rows[p.id] = row
                self._write_state(p, DONE, wall_s=round(out.wall_s, 3), saturated=reason)
                self._print_row(row, out.wall_s, reason)
                if reason:
                    saturated[series] = f"{p.load.label}: {reason}"
        finally:
            if running is not None:
                th = running.stop()
                if th is not None:
                    self._stoppers.append(th)
        return code

    def _announce(self, p: Point) -> None:
        n = self.points.index(p) + 1
        self.console.print(f"[bold][{n}/{len(self.points)}][/] {p.target.label} / {p.load.label}", highlight=False)

    def _print_row(self, row: dict[str, Any], wall_s: float, reason: str | None) -> None:
        def f(v: Any, spec: str = ",.0f") -> str:
            return "-" if v is None else format(v, spec)

        sp = row["speed"]
        scaled = f" (speed {sp:g}: rescaled to real time)" if sp != 1 else ""
        line = (f"  {f(row['throughput'])} tok/s, batch {f(row['batch'], '.1f')}, TPOT mean "
                f"{f(row['tpot_mean'], '.1f')} ms, E2E p99 {f(row['e2e_p99'], ',.0f')} ms{scaled}; "
                f"{row['completed']} requests in {wall_s:.1f} s")
        if not row["valid"]:
            line += " [INVALID: " + "; ".join(row["warnings"]) + "]"
        self.console.print(line, highlight=False, markup=False)
        if reason:
            self.console.print(f"  saturated: {reason}", highlight=False, markup=False)

    # -- results ----------------------------------------------------------------------------------------------
    def all_rows(self) -> list[dict[str, Any]]:
        """Rows of every point in sweep order: finished ones, then a stub for skipped/failed ones."""
        return collect_rows(self.dir, self.spec, self.points)


def collect_rows(sweep_dir: Path, spec: SweepSpec, points: list[Point]) -> list[dict[str, Any]]:
    out = []
    for p in points:
        st = _read(sweep_dir / "points" / p.id / "point.json") or {}
        status = st.get("status") if isinstance(st, dict) else None
        summary = _read(sweep_dir / "points" / p.id / "summary.json")
        if status == DONE and isinstance(summary, dict):
            row = point_row(p, summary)
            row["saturated"] = st.get("saturated")
            out.append(row)
        else:
            out.append({"point": p.id, "config": p.target.label, "load": p.load.label, "status": status or "pending",
                        "reason": st.get("reason") if isinstance(st, dict) else None, "valid": False,
                        "speed": p.target.speed if p.target.kind == "embedded" else 1.0,
                        "max_batch": p.target.max_batch, "replicas": p.target.replicas, "mps": p.target.mps,
                        "profile": p.target.profile,
                        "gpu": p.target.gpu, "load_kind": p.load.kind, "load_value": p.load.value})
    return out


def _jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), to compare stored and current definitions."""
    return orjson.loads(orjson.dumps(obj))
