"""The catalog of public traces (``traces/catalog.json``) and where fetched traces are cached.

Each entry names a public trace file: its URL, licence, citation, format, size and sha256, so that
``loadgen traces fetch NAME`` can download and verify it and ``--trace NAME`` can find it afterwards. Entries whose
checksum is not known say so (``sha256: null``); fetching them needs ``--sha256`` or ``--no-verify``. Bundled
examples (small traces the project generates itself, ``traces/make_examples.py``) are listed with ``bundled``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from loadgen.errors import UsageError

CATALOG_ENV = "LOADGEN_TRACE_CATALOG"
CACHE_ENV = "LOADGEN_CACHE"
_PACKAGE = Path(__file__).resolve().parents[1]
# In a checkout the catalog is traces/ beside the package; an installed wheel carries it as loadgen/_traces.
_REPO_TRACES = next((p for p in (_PACKAGE.parent / "traces", _PACKAGE / "_traces") if (p / "catalog.json").exists()),
                    _PACKAGE.parent / "traces")
REQUIRED = ("name", "format", "license", "citation")


def catalog_path() -> Path:
    env = os.environ.get(CATALOG_ENV)
    return Path(env) if env else _REPO_TRACES / "catalog.json"


def load_catalog(path: Path | None = None) -> list[dict[str, Any]]:
    """The catalog's entries; UsageError with the fix when it cannot be read."""
    path = path or catalog_path()
    try:
        data = orjson.loads(path.read_bytes())
    except OSError:
        raise UsageError(f"no trace catalog at {path}; it ships in the project's traces/ folder, or set "
                         f"${CATALOG_ENV} to a catalog.json") from None
    except orjson.JSONDecodeError as err:
        raise UsageError(f"{path}: the trace catalog is not valid JSON ({err})") from None
    entries = data.get("traces") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise UsageError(f"{path}: expected an object with a 'traces' list")
    for e in entries:
        missing = [k for k in REQUIRED if not e.get(k)]
        if missing or not (e.get("url") or e.get("bundled")):
            raise UsageError(f"{path}: entry {e.get('name', '?')!r} lacks {', '.join(missing) or 'url'}")
    return entries


def find_entry(name: str, entries: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    entries = load_catalog() if entries is None else entries
    for e in entries:
        if e["name"] == name:
            return e
    names = ", ".join(e["name"] for e in entries)
    raise UsageError(f"no trace named {name!r} in the catalog; known: {names}")


def cache_dir() -> Path:
    """``$LOADGEN_CACHE/traces``, else ``~/.cache/slm-loadgen/traces``."""
    base = os.environ.get(CACHE_ENV)
    root = Path(base) if base else Path.home() / ".cache" / "slm-loadgen"
    return root / "traces"


def local_path(entry: dict[str, Any]) -> Path:
    """Where an entry's file is (bundled) or will be once fetched (cache)."""
    if entry.get("bundled"):
        return catalog_path().parent / entry["file"]
    return cache_dir() / entry["file"]


def resolve_trace(name_or_path: str) -> tuple[str, dict[str, Any]]:
    """A trace argument as (file path, reader defaults): an existing path as is; a catalog name as its local copy
    with the entry's format (and column mapping, for generic traces)."""
    if os.path.exists(name_or_path) or os.sep in name_or_path or "." in os.path.basename(name_or_path):
        return name_or_path, {}
    try:
        entry = find_entry(name_or_path)
    except UsageError:
        return name_or_path, {}  # not a catalog name: the reader reports the missing file
    path = local_path(entry)
    if not path.is_file():
        raise UsageError(f"trace {name_or_path!r} is not downloaded yet; run `loadgen traces fetch {name_or_path}`")
    defaults = {k: entry[k] for k in ("format", "columns", "time_unit") if entry.get(k)}
    if defaults.get("format") == "sharegpt":
        raise UsageError(f"{name_or_path!r} is a prompt set, not a trace; use --trace-prompts sharegpt:{path}")
    return str(path), defaults
