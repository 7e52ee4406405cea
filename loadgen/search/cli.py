"""``loadgen search``: the highest Poisson rate (or with ``--concurrency`` the most users) at which a ``--fail-on``
condition still holds, found by a bracket and a bisection of full load levels, each judged with a stated
confidence. The scenario is ``loadgen run``'s (flags or ``--scenario FILE``); the embedded server, when no
``--url`` is given, is started once for the whole search."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from loadgen.scenario.flags import add_flags, add_scenario_file_flags, dest_of

TRACE_LINE = ("loadgen search sets the rate itself: a trace replay (--trace) or synthetic arrivals cannot be "
              "searched; use --arrival poisson|gamma|constant")
DEFAULT_STEP_S = 10.0  # a level's length when neither --duration nor --requests is given

EPILOG = """\
How it works: a bracket (start at --start-rate, multiply by --growth until the condition does not hold; by
--growth squared while every condition's value is under a quarter of its threshold), then
bisection until first fail - last pass <= --precision x last pass, or until --budget is spent. Each step is a
full level (--duration long, default 10s) in <out>/steps/. A percentile condition (ttft_p90<300ms) is judged by
the order-statistic bound of the quantile, a share (error_rate<1%, goodput_ratio>=90%) by the Clopper-Pearson
bound, anything else by its point value ("no confidence bound"); a step is pass, fail or undecided at
--confidence. An undecided step is extended (one more level, records pooled) while that could decide it and
the budget allows; if it stays undecided the search goes on by its point values and says so (--strict: counts
it as a fail). A step whose queue grows through the level, or where fewer than 90 % of the requests sent
complete, is past saturation: a fail.

exit codes:
  0    the search finished; search.json holds max_rate_rps (max_concurrency), last_pass, first_fail, points
  2    bad input: no condition (--fail-on, or --slo), an unknown metric, a budget too small for one step,
       a trace replay or synthetic arrivals (the search sets the rate), an --out that is not empty
  3    the server stopped answering, or could not be reached
  4    the condition already fails (or is undecided) at the lowest load, --start-rate
  6    results could not be written
  130  interrupted (Ctrl-C): search.json holds the steps finished so far
"""


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    add_scenario_file_flags(p)
    g = p.add_argument_group("search")
    g.add_argument("--concurrency", action="store_true",
                   help="search the number of users (closed loop) instead of the Poisson rate")
    add_search_knobs(g)
    g.add_argument("--out", metavar="DIR", help="the search's directory (default <out-dir>/search-<name>)")
    g.add_argument("--no-plot", action="store_true", help="do not write plot.png")
    add_flags(p, skip={"--rate", "--concurrency"})


def add_search_knobs(g: Any) -> None:
    """The search's own settings (``loadgen search`` and ``loadgen sweep --search``)."""
    g.add_argument("--start-rate", type=float, default=1.0, metavar="LOAD",
                   help="the first load: req/s (users with --concurrency); default 1")
    g.add_argument("--growth", type=float, default=2.0, help="the bracket's factor (default 2)")
    g.add_argument("--max-rate", type=float, default=None, metavar="LOAD", help="never try a higher load")
    g.add_argument("--budget", default="10m", help="time for the steps, e.g. 90s, 10m (default 10m; the "
                   "embedded server's start is not counted)")
    g.add_argument("--precision", default="5%", help="stop when the bracket is this narrow, relative (default 5%%)")
    g.add_argument("--confidence", type=float, default=0.95, help="confidence of each verdict (default 0.95)")
    g.add_argument("--max-extends", type=int, default=2, help="further levels for an undecided step (default 2)")
    g.add_argument("--strict", action="store_true", help="an undecided step counts as a fail")
    g.add_argument("--goodput-share", default="90%", metavar="PCT",
                   help="with --slo and no --fail-on, the condition is goodput_ratio>=PCT (default 90%%)")


def _percent(text: str, flag: str) -> float:
    from loadgen.errors import UsageError

    t = text.strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected a share such as 5% or 0.05") from None
    if not 0 < value < 1:
        raise UsageError(f"{flag} {text!r}: must be between 0 and 100 %")
    return value


def _fill_load(args: argparse.Namespace) -> None:
    """The search sets the load; the step length defaults to DEFAULT_STEP_S unless the flags or the file give one."""
    from loadgen.errors import UsageError
    from loadgen.scenario.files import load_toml

    if getattr(args, dest_of("trace", "path"), None):
        raise UsageError(TRACE_LINE)
    if args.concurrency:
        setattr(args, dest_of("load", "concurrency"), max(1, int(args.start_rate)))
    else:
        setattr(args, dest_of("load", "rate"), args.start_rate)
    given = {n for n in ("duration", "requests") if getattr(args, dest_of("load", n), None) is not None}
    if not given and args.scenario:
        given = {n for n in ("duration", "requests") if n in (load_toml(args.scenario).get("load") or {})}
    if not given:
        setattr(args, dest_of("load", "duration"), DEFAULT_STEP_S)


def condition_of(sc: Any, args: argparse.Namespace) -> tuple[list[Any], str]:
    from loadgen.core.slo import parse_fail_on
    from loadgen.errors import UsageError

    text = sc.results.fail_on
    if not text and sc.results.slo:
        text = f"goodput_ratio>={100 * _percent(args.goodput_share, '--goodput-share'):g}%"
    if not text:
        raise UsageError("no condition to search for: give --fail-on 'ttft_p90<300ms,error_rate<1%' (or --slo "
                         "ttft=500ms for a goodput share)")
    return parse_fail_on(text), text


def settings_from(sc: Any, args: argparse.Namespace, users: bool) -> Any:
    """The search's settings from its flags, checked against the scenario (one step must fit the budget)."""
    from loadgen.core.slo import parse_duration_s
    from loadgen.search.algorithm import SearchSettings

    budget_s = parse_duration_s(args.budget, "--budget", "budget")
    precision = _percent(args.precision, "--precision")
    level_s = _check(sc, args, budget_s)
    return SearchSettings(start=max(1, int(args.start_rate)) if users else args.start_rate,
                          growth=args.growth, precision=precision, budget_s=budget_s, integer=users,
                          max_extends=args.max_extends, max_load=args.max_rate, step_estimate_s=level_s,
                          strict=args.strict)


def _check(sc: Any, args: argparse.Namespace, budget_s: float) -> float:
    """Checks that need the scenario; returns one level's expected length (s)."""
    from loadgen.errors import UsageError

    if sc.replaying or sc.synthetic:
        raise UsageError(TRACE_LINE)
    if args.start_rate <= 0 or args.growth <= 1 or args.max_extends < 0 or not 0.5 <= args.confidence < 1:
        raise UsageError("--start-rate must be > 0, --growth > 1, --max-extends >= 0, --confidence in [0.5, 1)")
    level_s = sc.load.duration if sc.load.duration else (sc.load.requests or 0) / max(args.start_rate, 1e-9)
    if budget_s < level_s:
        raise UsageError(f"--budget {args.budget}: too small for one step ({level_s:g} s a level); give at least "
                         f"--budget {int(level_s * 3)}s or a shorter --duration")
    return level_s


def execute(args: argparse.Namespace) -> int:
    import sys

    from loadgen.scenario.load import public_dict, scenario_from_args, scenario_toml

    _fill_load(args)
    sc, _ = scenario_from_args(args, check_paths=not args.print_scenario)
    if args.print_scenario:
        sys.stdout.write(scenario_toml(sc))
        return 0
    checks, condition = condition_of(sc, args)
    settings = settings_from(sc, args, users=args.concurrency)
    search_dir = _search_dir(sc, args)
    from loadgen.search.run import run_search

    return run_search(sc, checks, condition, settings, search_dir, args, public_dict(sc))


def _search_dir(sc: Any, args: argparse.Namespace) -> Path:
    from loadgen.errors import UsageError

    if args.out:
        out = Path(args.out)
        if out.exists() and any(out.iterdir()):
            raise UsageError(f"--out {out}: not empty; give a new directory (a search never mixes its steps)")
    else:
        name = sc.results.name or f"{sc.target.backend}-{'users' if args.concurrency else sc.load.arrival}"
        out = Path(sc.results.out_dir) / f"search-{name}"
        if out.exists() and any(out.iterdir()):
            out = out.with_name(f"{out.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out {out}: cannot create it ({err.strerror or err})") from None
    return out
