"""How a front end gets its scenario: ``--scenario FILE`` (optional) under the flags given, checked and resolved.

The same three steps for ``loadgen run``, ``loadgen sweep`` and Locust, so a file that one front end prints with
``--print-scenario`` runs unchanged in the others, and ``config.json`` keeps the same ``scenario`` object.
"""

from __future__ import annotations

from typing import Any

from loadgen.scenario.check import build, resolve
from loadgen.scenario.files import REDACTED, dump_toml, is_secret_header, load_toml
from loadgen.scenario.flags import merge, overlay_from_args
from loadgen.scenario.model import SECTIONS, Scenario

PRINT_COMMENT = ("slm-loadgen scenario (the resolved settings of one load level).\n"
                 "Run it with: loadgen run --scenario FILE | loadgen sweep --scenario FILE | "
                 "locust -f scenarios/ --headless --scenario FILE\n"
                 "Secrets (API keys, credential headers) are never written here: give them with --api-key, "
                 "--header or $LOADGEN_API_KEY.")


def level_tables(mapping: dict[str, Any]) -> dict[str, Any]:
    """The tables of a scenario file that describe the level (a sweep file adds its own beside them)."""
    return {k: v for k, v in mapping.items() if k in SECTIONS}


def scenario_from(file_mapping: dict[str, Any], overlay: dict[str, Any], source: str, *,
                  check_paths: bool = True) -> Scenario:
    """Build and resolve a scenario: the file's level tables under the flags' overlay."""
    mapping = merge(level_tables(file_mapping), overlay)
    return resolve(build(mapping, source if file_mapping else "flags"), check_paths=check_paths)


def scenario_from_args(args: Any, *, check_paths: bool = True) -> tuple[Scenario, dict[str, Any]]:
    """(scenario, the whole file mapping) from a front end's parsed arguments (``args.scenario`` = the file)."""
    path = getattr(args, "scenario", None)
    file_mapping = load_toml(path) if path else {}
    source = f"--scenario {path}" if path else "flags"
    return scenario_from(file_mapping, overlay_from_args(args), source, check_paths=check_paths), file_mapping


def public_dict(sc: Scenario, *, for_file: bool = False) -> dict[str, Any]:
    """The scenario as written to ``config.json`` (credential headers kept by name, their value redacted) or to
    a scenario file (``for_file``: left out, since a file is run again). Never the API key."""
    d = sc.model_dump(mode="json")
    d["target"].pop("api_key", None)
    headers = d["target"]["headers"]
    if for_file:
        d["target"]["headers"] = [h for h in headers if not is_secret_header(h)]
        if d["trace"]["path"] is None:  # no replay: its table would only repeat defaults that do not apply
            d.pop("trace")
    else:
        d["target"]["headers"] = [f"{h.partition(':')[0].strip()}: {REDACTED}" if is_secret_header(h) else h
                                  for h in headers]
    return d


def scenario_toml(sc: Scenario, extra_tables: dict[str, Any] | None = None) -> str:
    """``--print-scenario``: the resolved scenario as TOML (plus a sweep's own tables)."""
    return dump_toml({**public_dict(sc, for_file=True), **(extra_tables or {})}, PRINT_COMMENT)
