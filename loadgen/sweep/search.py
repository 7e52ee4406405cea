"""``loadgen sweep --search``: the capacity search (``loadgen.search``) once per server configuration of a sweep
grid, answering the study's question directly: the highest Poisson rate at which each configuration still meets
the condition, and which configurations are Pareto-optimal between that rate and the energy per token it costs.

Each configuration's server is started (or restarted) once, as for a sweep point; its search writes the same
``search.json``, steps and plot as ``loadgen search`` under ``<sweep>/search/<configuration>/``. The energy per
token of a configuration is read from its last passing step (the load it can sustain), so the frontier compares
configurations where each is useful. Emulated servers at ``--server-speed s`` are rescaled to real time like sweep
points (rates and throughput / s, J/token x s).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any

from loadgen.errors import LoadgenError, UsageError
from loadgen.sweep.grid import SweepSpec, Target

SEARCH_FILE = "search.json"


def prepare_args(args: argparse.Namespace) -> None:
    """A search sets the load itself: a grid of load levels or a closed loop has no place; the base level gets
    the first rate (so that the grid parses) and a step length unless one is given."""
    from loadgen.scenario.flags import dest_of
    from loadgen.search.cli import DEFAULT_STEP_S

    given = [f for f, v in (("--rates", args.rates), ("--offline", args.offline),
                            ("--concurrencies", args.concurrencies),
                            ("--concurrency", getattr(args, dest_of("load", "concurrency"), None)),
                            ("--rate", getattr(args, dest_of("load", "rate"), None))) if v]
    if given:
        raise UsageError(f"{given[0]} does not apply with --search: the search chooses the rates itself; give "
                         "the grid's server configurations only (e.g. --server-max-batch 8,32)")
    setattr(args, dest_of("load", "rate"), args.start_rate)
    if all(getattr(args, dest_of("load", n), None) is None for n in ("duration", "requests")):
        setattr(args, dest_of("load", "duration"), DEFAULT_STEP_S)


def check_grid(spec: SweepSpec) -> None:
    """Checks that need the grid: its own load tables (from a file) and trace replays have no place."""
    if spec.base.replaying or spec.base.synthetic:
        raise UsageError("--search needs Poisson, gamma or constant arrivals (--arrival): a trace replay sets its "
                         "own rate")


def scenario_for(spec: SweepSpec, target: Target, url: str, out_dir: Path) -> Any:
    """The base scenario for one configuration, with a rate to be set by each step."""
    from loadgen.scenario.check import resolve
    from loadgen.scenario.model import Scenario
    from loadgen.search.cli import DEFAULT_STEP_S
    from loadgen.sweep.point import target_dict

    d = target_dict(spec, target, url, target.slug, out_dir)
    ld = d["load"]
    if ld.get("duration") is None and ld.get("requests") is None:
        ld["duration"] = DEFAULT_STEP_S
    ld.update(rate=1.0, concurrency=None)
    return resolve(Scenario.model_validate(d), check_paths=False)


def config_row(target: Target, outcome: Any, search_dir: Path) -> dict[str, Any]:
    """One configuration's answer: the rate found, the bracket, and what the last passing step cost."""
    from loadgen.search.output import confirmed_max

    sp = float(target.speed) if target.kind == "embedded" else 1.0
    row: dict[str, Any] = {"config": target.label, "max_batch": target.max_batch, "replicas": target.replicas,
                           "profile": target.profile, "speed": sp, "search_dir": str(search_dir),
                           "stop_reason": outcome.stop_reason, "max_rate_rps": outcome.max_load,
                           "confirmed_max_rate_rps": confirmed_max(outcome),
                           "first_fail_rps": outcome.first_fail.load if outcome.first_fail is not None else None,
                           "steps": len(outcome.points), "elapsed_s": round(outcome.elapsed_s, 1),
                           "j_per_token": None, "throughput_tps": None, "mean_power_w": None}
    row["max_rate_rps_real_time"] = None if outcome.max_load is None else outcome.max_load / sp
    lp = outcome.last_pass
    if lp is not None and lp.run_dirs:
        summary = _read(Path(lp.run_dirs[-1]) / "summary.json")
        energy = summary.get("energy") if isinstance(summary.get("energy"), dict) else {}
        jpt = energy.get("joules_per_total_token")
        tps = summary.get("total_token_throughput_tps")
        row.update(j_per_token=None if jpt is None else jpt * sp, throughput_tps=None if tps is None else tps / sp,
                   mean_power_w=energy.get("mean_power_w"))
    return row


def _read(path: Path) -> dict[str, Any]:
    import orjson

    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


def mark_frontier(rows: list[dict[str, Any]]) -> list[int]:
    """Indices of the configurations on the Pareto frontier: highest SLO rate (real time) against J/token."""
    from loadgen.sweep.analysis import frontier_indices

    idx = frontier_indices([r["max_rate_rps_real_time"] for r in rows], [r["j_per_token"] for r in rows])
    for i, r in enumerate(rows):
        r["pareto"] = i in idx
    return idx


def run_sweep_search(spec: SweepSpec, sweep_dir: Path, console: Any, args: argparse.Namespace) -> int:
    """Search every configuration in turn; 0 when each finished, 3 when one could not be measured, 130 on Ctrl-C."""
    from loadgen.search.cli import condition_of, settings_from

    check_grid(spec)
    checks, condition = condition_of(spec.base, args)
    settings = settings_from(scenario_for(spec, spec.targets[0], "http://127.0.0.1:1", sweep_dir), args,
                             users=False)
    console.print(f"[bold]loadgen sweep --search[/] {condition}: {len(spec.targets)} configuration(s), budget "
                  f"{settings.budget_s:g} s each -> {sweep_dir}", highlight=False)
    if spec.base.power.source == "none":
        console.print("[yellow]no --power: J/token stays unknown and there is no frontier (the embedded server's "
                      "emulated GPU: --power triton; a real GPU: --power nvml)[/]")
    rows: list[dict[str, Any]] = []
    code = 0
    for target in spec.targets:
        console.print(f"[bold]configuration {target.label}[/]", highlight=False)
        try:
            rows.append(_search_one(spec, target, checks, condition, settings, sweep_dir, console, args))
        except KeyboardInterrupt:
            console.print("[yellow]interrupted: the configurations searched so far are in search.json[/]")
            _write(sweep_dir, rows, condition, args, settings, spec, console)
            return 130
        except LoadgenError as err:  # this configuration could not be measured: say so, go on with the next
            console.print(f"[red]configuration {target.label}: {err}[/]")
            rows.append({"config": target.label, "error": str(err), "max_rate_rps": None,
                         "max_rate_rps_real_time": None, "j_per_token": None})
            code = 3
    _write(sweep_dir, rows, condition, args, settings, spec, console)
    return code


def _search_one(spec: SweepSpec, target: Target, checks: list[Any], condition: str, settings: Any,
                sweep_dir: Path, console: Any, args: argparse.Namespace) -> dict[str, Any]:
    """One configuration: its server started, its search run and written, its server stopped; its row."""
    from loadgen.scenario.load import public_dict
    from loadgen.search.algorithm import search
    from loadgen.search.output import answer_line
    from loadgen.search.run import DRAIN_CAP, step_line, write_search
    from loadgen.search.step import LevelStepper
    from loadgen.sweep.targets import start_target

    search_dir = sweep_dir / "search" / target.slug
    search_dir.mkdir(parents=True, exist_ok=True)
    running = start_target(target, sweep_dir / "servers")
    try:
        sc = scenario_for(spec, target, running.url, search_dir / "steps")
        stepper = LevelStepper(sc, checks, running.url, running.metrics_url, search_dir, users=False,
                               confidence=args.confidence,
                               drain_cap_s=max(2.0, DRAIN_CAP * (sc.load.duration or 10.0)))
        steps: list[Any] = []

        def on_step(step: Any) -> None:
            steps.append(step)
            console.print("  " + step_line(len(steps), step, False), markup=False, highlight=False,
                          soft_wrap=True)

        outcome = search(stepper, settings, on_step=on_step)
    finally:
        th = running.stop()
        if th is not None:
            th.join()
    write_search(outcome, condition, False, args.confidence, asdict(settings), public_dict(sc), search_dir,
                 plot=not args.no_plots)
    console.print("  " + answer_line(outcome, condition, False, args.confidence), markup=False, highlight=False,
                  soft_wrap=True)
    return config_row(target, outcome, search_dir)


def _write(sweep_dir: Path, rows: list[dict[str, Any]], condition: str, args: argparse.Namespace, settings: Any,
           spec: SweepSpec, console: Any) -> None:
    from loadgen.level.rundir import write_json

    measured = [r for r in rows if "error" not in r]
    idx = mark_frontier(measured) if measured else []
    doc = {"condition": condition, "confidence": args.confidence, "settings": asdict(settings),
           "configurations": rows, "pareto": [measured[i]["config"] for i in idx],
           "sweep": spec.to_dict()}
    write_json(sweep_dir / SEARCH_FILE, doc)
    if measured:
        console.print(configs_table(rows))
    plot = None if args.no_plots or not measured else write_frontier_plot(measured, sweep_dir / "search.png", condition)
    console.print(f"search.json: {sweep_dir / SEARCH_FILE}" + (f"   plot: {plot}" if plot else ""), soft_wrap=True)
    console.print(answer(rows, condition), markup=False, highlight=False, soft_wrap=True)


def configs_table(rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    def num(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    table = Table(title="highest rate meeting the condition, per configuration")
    for name, justify in (("configuration", "left"), ("max rate", "right"), ("confirmed", "right"),
                          ("first fail", "right"), ("tok/s at max", "right"), ("J/token", "right"),
                          ("Pareto", "center"), ("steps", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        if "error" in r:
            table.add_row(r["config"], "[red]failed[/]", "", "", "", "", "", "")
            continue
        table.add_row(r["config"], num(r["max_rate_rps_real_time"], ".3g") + " req/s",
                      num(r["confirmed_max_rate_rps"], ".3g"), num(r["first_fail_rps"], ".3g"),
                      num(r["throughput_tps"], ",.0f"), num(r["j_per_token"], ".3g"),
                      "*" if r.get("pareto") else "", str(r["steps"]))
    return table


def answer(rows: list[dict[str, Any]], condition: str) -> str:
    """The one-line answer: the best configuration by rate, and the frontier against J/token."""
    measured = [r for r in rows if r.get("max_rate_rps_real_time") is not None]
    if not measured:
        return f"highest rate meeting {condition}: no configuration meets it at its lowest rate"
    best = max(measured, key=lambda r: r["max_rate_rps_real_time"])
    front = [r for r in measured if r.get("pareto")]

    def brief(r: dict[str, Any]) -> str:
        j = r.get("j_per_token")
        return f"{r['config']} ({r['max_rate_rps_real_time']:.3g} req/s" + (f", {j:.3g} J/token)" if j else ")")

    tail = f"; Pareto vs J/token: {', '.join(brief(r) for r in front)}" if front else ""
    return (f"highest rate meeting {condition}: {best['config']} at {best['max_rate_rps_real_time']:.3g} req/s"
            + tail)


def write_frontier_plot(rows: list[dict[str, Any]], path: Path, condition: str) -> Path | None:
    """Each configuration's highest SLO rate against its J/token, the Pareto frontier joined."""
    pts = [r for r in rows if r.get("max_rate_rps_real_time") is not None and r.get("j_per_token") is not None]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for r in pts:
        ax.scatter([r["j_per_token"]], [r["max_rate_rps_real_time"]],
                   color="tab:red" if r.get("pareto") else "tab:grey", zorder=3)
        ax.annotate(r["config"], (r["j_per_token"], r["max_rate_rps_real_time"]), fontsize=8,
                    textcoords="offset points", xytext=(4, 4))
    front = sorted((r for r in pts if r.get("pareto")), key=lambda r: r["j_per_token"])
    if len(front) > 1:
        ax.plot([r["j_per_token"] for r in front], [r["max_rate_rps_real_time"] for r in front], color="tab:red",
                label="Pareto frontier")
        ax.legend(fontsize=8)
    ax.set_xlabel("energy per token at that rate (J/token)")
    ax.set_ylabel("highest rate meeting the condition (req/s)")
    ax.set_title(condition, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
