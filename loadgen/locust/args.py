"""The Locust front end's arguments: the scenario model's flags, plus the few only Locust has.

Every scenario flag comes from ``loadgen.scenario.flags.add_flags`` (names, help and meaning are ``loadgen run``'s),
except those Locust already has or that mean what one of its own options means (``LOCUST_SKIP``; ``--url`` is
Locust's ``-H/--host``). The Locust-only ones are declared here: ``--think-time``/``--think-dist`` (closed-loop
users), ``--scenario FILE.toml``, ``--print-scenario`` and ``--run-name`` (the old spelling of ``--name``).

A level is the file (``--scenario``) under the flags given, under what only Locust knows (``LOCUST_FACTS``):
the host, ``--run-time``, the user class's backend and mode, and a closed loop's users. ``scenario_from`` checks
and resolves the result exactly as for ``loadgen run``, so one file gives the same ``scenario`` in both front
ends' ``config.json``. Values typed into the web UI arrive as text; the model parses them like command-line text.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from types import SimpleNamespace
from typing import Any

from loadgen.errors import UsageError
from loadgen.scenario.model import Scenario

MODES = ("open", "trace", "closed")
THINK_DISTS = ("exponential", "constant")
CLOSED_FOREVER_S = 365 * 86400.0  # a closed loop without --duration/--requests runs until Locust stops it

# Scenario flags Locust does not take: --url is its -H/--host and --workers its --processes; --no-live and
# --http-client are the asyncio runner's display and client; the power side-car is ``loadgen run``'s.
LOCUST_SKIP = frozenset({"--url", "--workers", "--no-live", "--http-client", "--power", "--power-interval",
                         "--power-gpu", "--idle-seconds"})

LOCUST_FACTS = """what only Locust knows, applied over the file and the flags:
-H/--host -> --url; --run-time -> --duration (when neither the file nor a flag gives one); the user class's
backend (when neither gives --backend); closed-loop classes: -u users -> --concurrency."""


def ui_name(flag: str) -> str:
    """The option's name in Locust's namespace and web form: ``--input-tokens`` -> ``input_tokens``.

    Why not the model's ``sc__load__rate`` names: Locust's web UI labels each form field with its option name.
    """
    return flag.lstrip("-").replace("-", "_")


@dataclass
class LocustLevel:
    """One Locust level: the scenario (the model ``loadgen run`` uses) plus what only the Locust front end has."""

    scenario: Scenario
    mode: str  # open | trace | closed (the user class's)
    user_class: str
    think_time_s: float = 0.0
    think_dist: str = "exponential"
    users: int | None = None  # closed loop: Locust users (the concurrency)

    def public_dict(self) -> dict[str, Any]:
        """The Locust-only fields (config.json and the summary hold the scenario itself elsewhere)."""
        return {k: v for k, v in asdict(self).items() if k != "scenario"}


def add_arguments(parser: Any) -> None:
    """Add the scenario flags to Locust's parser (``events.init_command_line_parser``).

    A flag Locust's parser already has (by option or by name) is left to Locust, found here rather than listed,
    so a newer Locust with a clashing option still starts.
    """
    from loadgen.scenario.flags import add_flags, fields

    own_flags = set(parser._option_string_actions)
    own_dests = {a.dest for a in parser._actions}
    skip = set(LOCUST_SKIP)
    for _section, _name, _info, meta in fields():
        if meta["flag"] in own_flags or ui_name(meta["flag"]) in own_dests:
            skip.add(meta["flag"])
    add_flags(parser, locust=True, skip=skip)
    for action in parser._actions:
        if action.dest.startswith("sc__"):
            action.dest = ui_name(action.option_strings[0])
    a = parser.add_argument
    a("--think-time", default="0s", include_in_web_ui=True,
      help="closed-loop users: think time between a response and the next request (default 0s)")
    a("--think-dist", default="exponential", choices=THINK_DISTS, include_in_web_ui=True,
      help="closed-loop think time: exponential (mean --think-time) or constant")
    a("--scenario", metavar="FILE.toml", default=None, include_in_web_ui=False,
      help="read the scenario from a TOML file (e.g. from loadgen run --print-scenario); flags given beside it "
      "override its values; without a class name the scenario class matching the file is used")
    a("--print-scenario", action="store_true", default=False, include_in_web_ui=False,
      help="print the fully resolved scenario as TOML and exit (a file loadgen run and loadgen sweep run)")
    a("--run-name", default=None, include_in_web_ui=False, help="the same as --name (kept for older command lines)")
    a("--engine", default="gevent", choices=("gevent", "asyncio"), include_in_web_ui=False,
      help="open-loop levels: who sends the requests of this node's stripe: gevent (greenlets in the Locust "
      "process) or asyncio (the asyncio runner's worker process beside it: about 1,400 req/s per core within the "
      "timing targets against 800, see benchmarks/LOCUST.md)")
    a("--clock-tolerance-ms", type=float, default=5.0, include_in_web_ui=False,
      help="distributed runs: report a worker whose wall clock is further than this from the master's (measured "
      "before t0 and corrected; default 5 ms)")


def _text(value: Any) -> str | None:
    """A form or command-line value as stripped text; None when empty."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def options_overlay(options: Any) -> dict[str, dict[str, Any]]:
    """The scenario flags given in Locust's ``options`` as ``{section: {field: value}}``."""
    from loadgen.scenario.flags import dest_of, fields, overlay_from_args

    ns = SimpleNamespace()
    for section, name, _info, meta in fields():
        flag = meta["flag"]
        if flag in LOCUST_SKIP:
            continue
        dest = dest_of(section, name)  # options parsed under the model's own names work too
        setattr(ns, dest, getattr(options, dest) if hasattr(options, dest) else getattr(options, ui_name(flag), None))
    overlay = overlay_from_args(ns)
    run_name = _text(getattr(options, "run_name", None))
    if run_name is not None:
        overlay.setdefault("results", {}).setdefault("name", run_name)
    return overlay


def scenario_file(options: Any) -> tuple[dict[str, Any], str]:
    """(the ``--scenario`` file's mapping, its source for error messages); empty without one."""
    from loadgen.scenario.files import load_toml

    path = _text(getattr(options, "scenario", None))
    if path is None:
        return {}, "flags"
    return load_toml(path), f"--scenario {path}"


def _given(file_mapping: dict[str, Any], overlay: dict[str, Any], section: str, key: str) -> bool:
    table = file_mapping.get(section)
    return key in overlay.get(section, {}) or (isinstance(table, dict) and key in table)


def _value(file_mapping: dict[str, Any], overlay: dict[str, Any], section: str, key: str) -> Any:
    if key in overlay.get(section, {}):
        return overlay[section][key]
    table = file_mapping.get(section)
    return table.get(key) if isinstance(table, dict) else None


def file_choice(options: Any) -> tuple[str, str] | None:
    """(mode, backend) of the level that ``--scenario FILE`` (and the flags beside it) describe, to pick the
    scenario class matching it; None without a file."""
    from loadgen.scenario.check import build
    from loadgen.scenario.flags import merge
    from loadgen.scenario.load import level_tables

    file_mapping, source = scenario_file(options)
    if not file_mapping:
        return None
    sc = build(merge(level_tables(file_mapping), options_overlay(options)), source)
    mode = "trace" if sc.replaying else "closed" if sc.closed_loop else "open"
    return mode, sc.target.backend


def class_for_file(classes: list[type], mode: str, backend: str) -> type:
    """The scenario class for a file's level: its mode, and its backend (else one of the same protocol family,
    which the file's backend then overrides, e.g. openai-completions on an OpenAIChat class)."""
    from loadgen.codecs.registry import BACKENDS

    def family(name: str) -> str:
        kind = BACKENDS.get(name)
        return "openai" if name.startswith("openai") else "grpc" if kind is not None and kind.is_grpc else "http"

    same_mode = [c for c in classes if c.mode == mode]
    found = [c for c in same_mode if c.backend == backend] or [c for c in same_mode
                                                                if family(c.backend) == family(backend)]
    if len(found) != 1:
        what = {"open": "an open-loop", "trace": "a trace replay", "closed": "a closed-loop"}[mode]
        how = "several scenario classes run" if found else "no scenario class selected runs"
        listed = ", ".join(sorted(c.__name__ for c in found or classes))
        raise UsageError(f"--scenario: {how} {what} {backend} level ({listed}); name the class to run, e.g. "
                         "`locust -f scenarios/ TritonHttpPoisson --scenario FILE`")
    return found[0]


def _check_mode(cls_name: str, mode: str, file_mapping: dict[str, Any], overlay: dict[str, Any]) -> None:
    """The class's mode against the level's (before the model's own checks, whose advice is ``loadgen run``'s)."""
    from loadgen.core.arrivals import is_synthetic

    trace = _given(file_mapping, overlay, "trace", "path")
    rate = _given(file_mapping, overlay, "load", "rate")
    if mode == "trace" and not trace:
        raise UsageError(f"{cls_name} replays a trace: give --trace FILE (e.g. traces/example_bursty.csv)")
    if mode != "trace" and trace:
        raise UsageError(f"--trace applies to the trace replay classes (names ending in Trace), not to {cls_name}")
    if mode == "closed" and rate:
        raise UsageError("--rate applies to the open-loop classes (e.g. TritonHttpPoisson); a closed loop's load is "
                         "its users (-u) and --think-time")
    if mode == "open" and not rate and not is_synthetic(_text(_value(file_mapping, overlay, "load", "arrival"))):
        raise UsageError(f"{cls_name} is an open-loop class: give --rate R (req/s) or a synthetic --arrival; for "
                         "N users in a closed loop pick a class ending in Users")


def _closed_users(file_mapping: dict[str, Any], overlay: dict[str, Any], users: int | None) -> int:
    """A closed loop's users: Locust's -u, else the scenario's --concurrency, else 1 (Locust's headless default)."""
    flag_c = _text(overlay.get("load", {}).get("concurrency"))
    if users is None:
        given = _text(_value(file_mapping, overlay, "load", "concurrency"))
        if given is None:
            return 1
        try:
            return int(given)
        except ValueError:
            raise UsageError(f"--concurrency {given!r}: expected a whole number of users") from None
    if flag_c is not None and flag_c != str(users):
        raise UsageError(f"--concurrency {flag_c} and -u {users} disagree: a closed loop's concurrency is its Locust "
                         "users; give one of them")
    return users


def _locust_facts(options: Any, cls: type, mode: str, file_mapping: dict[str, Any], overlay: dict[str, Any],
                  users: int | None) -> int | None:
    """Put what only Locust knows into ``overlay`` (see ``LOCUST_FACTS``); returns a closed loop's users."""
    load = overlay.setdefault("load", {})
    host = _text(getattr(options, "host", None))
    if host is not None:
        overlay.setdefault("target", {})["url"] = host
    if not _given(file_mapping, overlay, "target", "backend"):
        overlay.setdefault("target", {})["backend"] = cls.backend
    run_time = getattr(options, "run_time", None)
    if run_time and not _given(file_mapping, overlay, "load", "duration"):
        load["duration"] = float(run_time)
    if mode != "closed":
        return None
    users = _closed_users(file_mapping, overlay, users)
    if users < 1:
        raise UsageError("closed loop: start at least one user (-u N, or 'Number of users' in the web UI)")
    load["concurrency"] = users
    if not _given(file_mapping, overlay, "load", "duration") and not _given(file_mapping, overlay, "load", "requests"):
        load["duration"] = CLOSED_FOREVER_S
    return users


def _think(options: Any, mode: str) -> tuple[float, str]:
    from loadgen.core.units import parse_seconds

    think = 0.0
    think_text = _text(getattr(options, "think_time", None))
    if think_text is not None:
        think = parse_seconds(think_text, "--think-time")
        if think < 0:
            raise UsageError(f"--think-time {think_text!r}: must not be negative")
    dist = _text(getattr(options, "think_dist", None)) or "exponential"
    if dist not in THINK_DISTS:
        raise UsageError(f"--think-dist {dist!r}: choose exponential or constant")
    if think and mode != "closed":
        raise UsageError("--think-time applies to the closed-loop classes (N users with think time)")
    return think, dist


def _not_here(sc: Scenario) -> None:
    """What a scenario file may ask for that this front end does not do: refused, never ignored."""
    if sc.load.workers > 1:
        raise UsageError(f"--workers {sc.load.workers}: Locust runs worker processes itself; give --processes "
                         f"{sc.load.workers} (and leave workers at 1 in the scenario file)")
    if (sc.power.source or "none").split("=", 1)[0] != "none":
        raise UsageError(f"--power {sc.power.source}: the Locust front end does not measure power; run this "
                         "scenario with loadgen run --scenario FILE")


def scenario_from_options(options: Any, user_class: type, users: int | None = None, *,
                          check_paths: bool = True) -> LocustLevel:
    """The level Locust's ``options`` describe for ``user_class`` (a ``loadgen.locust.users`` class): the file,
    the flags and Locust's facts, checked and resolved by the model. UsageError names the flag to fix."""
    from loadgen.scenario.load import scenario_from

    mode = getattr(user_class, "mode", None)
    if mode not in MODES:
        raise UsageError(f"{user_class.__name__} is not a loadgen scenario class (no mode)")
    file_mapping, source = scenario_file(options)
    overlay = options_overlay(options)
    _check_mode(user_class.__name__, mode, file_mapping, overlay)
    users = _locust_facts(options, user_class, mode, file_mapping, overlay, users)
    think, dist = _think(options, mode)
    try:
        sc = scenario_from(file_mapping, overlay, source, check_paths=check_paths)
    except UsageError as err:
        text = str(err)
        if text.startswith("--url ") and _text(getattr(options, "host", None)) is not None:
            raise UsageError("--host " + text.removeprefix("--url ")) from None  # Locust's name for it
        raise
    _not_here(sc)
    return LocustLevel(sc, mode, user_class.__name__, think, dist, users)


def level_to_wire(level: LocustLevel) -> dict[str, Any]:
    """The resolved level as a distributed run's plan carries it to the workers (no API key: each worker takes
    its own from --api-key or the environment, as it did before the plan existed)."""
    dump = level.scenario.model_dump(mode="json")
    dump["target"]["api_key"] = None
    return {"scenario": dump, "locust": level.public_dict()}


def level_from_wire(wire: dict[str, Any], options: Any) -> LocustLevel:
    """A worker's copy of the master's level: exactly the scenario the master planned (so the same schedule)."""
    from loadgen.scenario.check import API_KEY_ENVS

    sc = Scenario.model_validate(wire["scenario"])
    sc.target.api_key = _text(getattr(options, "api_key", None)) or next(
        (os.environ[n] for n in API_KEY_ENVS if os.environ.get(n)), None)
    return LocustLevel(sc, **wire["locust"])
