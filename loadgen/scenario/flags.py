"""Command-line flags generated from the scenario model, for every front end.

Each field of ``loadgen.scenario.model`` declares its flag, default and help once; ``add_flags`` turns them into
argparse arguments (grouped by section), and ``overlay_from_args`` turns the flags a user actually gave into a
nested mapping in the scenario file's layout. Flags never carry defaults of their own (argparse ``SUPPRESS``):
the defaults are the model's, so a flag given beside ``--scenario FILE`` overrides the file and a flag not given
leaves the file's value alone.

Locust's parser (configargparse) gets the same flags through ``add_flags(..., locust=True)``: values typed into
its web UI arrive as text, which the model parses like command-line text.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from typing import Any

from pydantic.fields import FieldInfo

from loadgen.scenario.model import SECTION_TITLES, SECTIONS

SUPPRESS = argparse.SUPPRESS
LIST_FIELDS = frozenset({("target", "headers"), ("target", "extra"), ("target", "parameters"), ("trace", "where")})


def fields(sections: Iterable[str] | None = None) -> Iterator[tuple[str, str, FieldInfo, dict[str, Any]]]:
    """(section, field name, pydantic field, flag metadata) of every scenario field."""
    for section, cls in SECTIONS.items():
        if sections is not None and section not in sections:
            continue
        for name, info in cls.model_fields.items():
            meta = info.json_schema_extra
            assert isinstance(meta, dict), f"{section}.{name} has no flag"
            yield section, name, info, meta


def flag_of(section: str, name: str) -> str:
    """The flag of a field, for error messages: ``--rate`` for ``load.rate``."""
    meta = SECTIONS[section].model_fields[name].json_schema_extra
    return str(meta["flag"]) if isinstance(meta, dict) else f"{section}.{name}"


def dest_of(section: str, name: str) -> str:
    return f"sc__{section}__{name}"


def _is_bool(info: FieldInfo) -> bool:
    return info.annotation is bool


def _help(info: FieldInfo, meta: dict[str, Any]) -> str:
    text = info.description or ""
    if meta.get("choices") and "|" not in text and " or " not in text:
        text += f" ({' | '.join(meta['choices'])})"
    return text


def add_flags(parser: Any, sections: Iterable[str] | None = None, *, skip: Iterable[str] = (),
              locust: bool = False, group_titles: dict[str, str] | None = None) -> None:
    """Add the scenario's flags (all sections, or those named) to ``parser``.

    ``skip``: flags not to add (a front end's own option means the same, e.g. Locust's ``--host`` for ``--url``).
    ``locust``: Locust's parser: no argument groups (its web UI shows only top-level arguments), and the fields
    marked ``ui`` are shown in the web UI's start form.
    """
    skip = set(skip)
    groups: dict[str, Any] = {}
    for section, name, info, meta in fields(sections):
        flag = meta["flag"]
        if flag in skip:
            continue
        if locust:
            target = parser
        else:
            if section not in groups:
                title = (group_titles or {}).get(section, SECTION_TITLES[section])
                groups[section] = parser.add_argument_group(title)
            target = groups[section]
        # Locust's web UI shows an argument's default in its form, so there "not given" is None, not SUPPRESS.
        kw: dict[str, Any] = {"dest": dest_of(section, name), "default": None if locust else SUPPRESS,
                              "help": _help(info, meta)}
        if _is_bool(info):
            # --no-x turns a default-on switch off, --x turns a default-off switch on
            kw["action"] = "store_false" if info.default else "store_true"
        else:
            # the metavar argparse would derive from dest is "SC__LOAD__RATE": say RATE instead
            kw["metavar"] = meta.get("metavar") or name.upper()
            if (section, name) in LIST_FIELDS:
                kw["action"] = "append"
        if locust:
            kw["include_in_web_ui"] = bool(meta.get("ui"))
            if meta.get("secret"):
                kw["is_secret"] = True
        target.add_argument(flag, **kw)


def overlay_from_args(args: Any, sections: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """The scenario flags that were given, as ``{section: {field: value}}`` (the file's layout)."""
    out: dict[str, dict[str, Any]] = {}
    for section, name, _info, _meta in fields(sections):
        value = getattr(args, dest_of(section, name), SUPPRESS)
        if value is SUPPRESS or value is None:
            continue
        if isinstance(value, str) and (section, name) not in LIST_FIELDS:
            value = value.strip()
            if value == "":  # an empty web-UI box means "not given"
                continue
        out.setdefault(section, {})[name] = value
    return out


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``overlay`` (from flags) over ``base`` (the scenario file), table by table; lists given as flags replace
    the file's lists."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for table, values in overlay.items():
        if isinstance(values, dict):
            if not isinstance(out.get(table), dict):
                out[table] = {}
            out[table].update(values)
        else:
            out[table] = values
    return out


def add_scenario_file_flags(p: Any) -> None:
    """``--scenario`` and ``--print-scenario``: the same two flags on every front end."""
    p.add_argument("--scenario", metavar="FILE.toml",
                   help="read the scenario from a TOML file; flags given beside it override its values")
    p.add_argument("--print-scenario", action="store_true",
                   help="print the fully resolved scenario as TOML and exit (a file the other front ends run)")
