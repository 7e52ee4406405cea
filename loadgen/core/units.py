"""Durations as people write them on a command line or in a scenario file: ``60``, ``60s``, ``500ms``, ``2m``."""

from __future__ import annotations

import re

from loadgen.errors import UsageError

_DUR = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {None: 1.0, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_seconds(text: str | float | int, flag: str) -> float:
    """'60' and '60s' -> 60.0; '2m' -> 120.0; '500ms' -> 0.5. A bare number means seconds."""
    if isinstance(text, bool):
        raise UsageError(f"{flag} {text!r}: expected a duration such as 30, 30s, 500ms, 2m or 1h")
    if isinstance(text, (int, float)):
        value = float(text)
        if value != value or value in (float("inf"), float("-inf")):
            raise UsageError(f"{flag} {text!r}: expected a finite duration")
        return value
    m = _DUR.match(str(text))
    if not m:
        raise UsageError(f"{flag} {text!r}: expected a duration such as 30, 30s, 500ms, 2m or 1h")
    return float(m.group(1)) * _UNITS[m.group(2)]
