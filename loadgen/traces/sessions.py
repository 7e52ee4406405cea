"""Sessions from a request trace (``--trace FILE --session-key COL|hash_ids``).

Two ways a trace says which rows are one user's conversation:

- a column (``--session-key COL``): rows with the same value are one session, its turns in time order; with
  ``--session-turn-column COL`` the turn numbers are checked to rise with time (a trace whose turns are out of
  order is bad input, exit 2);
- Mooncake-style ``hash_ids`` (``--session-key hash_ids``): a row whose hash ids start with all the full blocks of
  an earlier row's (every id but that row's last, possibly partial, block), and go on past them, with a longer
  prompt, is that conversation's next turn: its prompt is the earlier prompt plus more. (The public synthetic
  Mooncake trace shares prefixes between requests but has no such chains: each row is a one-turn session.) Chains are found in one pass with a
  rolling hash of each row's id prefixes.

Each session starts at its first row's time (over ``--speedup``); a later turn goes when the previous answer has
ended plus nothing, but never before its own row's time. Turn ``k``'s new user message is the growth of the
prompt: ``input_k - input_(k-1) - output_(k-1)`` tokens (at least 1); the answer asked for is the row's output.
The rest of the replay options (``--window``, ``--target-rate``) do not apply to sessions.
"""

from __future__ import annotations

import csv
from typing import Any

import numpy as np
import orjson

from loadgen.core.sessions import Session, Turn
from loadgen.errors import UsageError
from loadgen.traces.readers import TraceRow, open_trace, parse_where

HASH_KEY = "hash_ids"
_P = (1 << 61) - 1
_B = 1_000_003


class TraceSessions:
    """Sessions built from grouped trace rows (``rows[sid]`` in time order)."""

    kind = "trace"

    def __init__(self, groups: list[list[TraceRow]], speedup: float, source: str, key: str) -> None:
        self.groups, self.speedup, self.source, self.key = groups, speedup, source, key
        self.stride = max(len(g) for g in groups)

    def session(self, sid: int) -> Session:
        rows = self.groups[sid % len(self.groups)]
        t0 = rows[0].time_ns
        turns = []
        for k, r in enumerate(rows):
            if k == 0:
                user = r.input_tokens
            else:
                prev = rows[k - 1]
                user = r.input_tokens - prev.input_tokens - prev.output_tokens
            at = int((r.time_ns - t0) / self.speedup) if k else None
            turns.append(Turn(max(1, user), max(1, r.output_tokens), 0, at))
        return Session(sid, tuple(turns))

    def describe(self) -> str:
        multi = sum(1 for g in self.groups if len(g) > 1)
        turns = sum(len(g) for g in self.groups)
        return (f"sessions: {len(self.groups)} from {self.source} by {self.key} ({multi} with several turns, "
                f"{turns} turns in all)")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "key": self.key, "sessions": len(self.groups),
                "speedup": self.speedup}


def trace_sessions(sc: Any) -> tuple[np.ndarray, TraceSessions, list[str]]:
    """Session start offsets (ns, sorted), the source, and the plan's description lines."""
    t, key = sc.trace, sc.session.key
    if not t.path:
        raise UsageError("--session-key needs --trace FILE: the trace whose rows it groups into sessions")
    from loadgen.traces.catalog import resolve_trace

    path, defaults = resolve_trace(str(t.path))
    reader = open_trace(path, t.format or defaults.get("format"), t.columns or defaults.get("columns"),
                        t.time_unit or defaults.get("time_unit"), t.keep_failed, parse_where(t.where))
    if key == HASH_KEY:
        rows = list(reader)
        if rows and all(r.hash_ids is None for r in rows):
            raise UsageError(f"--session-key hash_ids: {path} has no hash_ids (only Mooncake-style traces, or "
                             "--trace-columns ...,hash_ids=COL, have them)")
        groups = chain_groups(rows)
    else:
        values = column_values(path, reader.spec.kind, key, sc.session.turn_column)
        rows = list(reader)
        groups = column_groups(rows, values, path, key, sc.session.turn_column)
    if not groups:
        raise UsageError(f"--trace {path}: no rows to group into sessions")
    groups.sort(key=lambda g: g[0].time_ns)
    speed = float(t.speedup or 1.0)
    offsets = np.array([int(g[0].time_ns / speed) for g in groups], dtype=np.int64)
    offsets -= offsets[0]
    src = TraceSessions(groups, speed, path, key)
    return offsets, src, [src.describe()]


def chain_groups(rows: list[TraceRow]) -> list[list[TraceRow]]:
    """Mooncake chains: each row joins the chain whose last row's full blocks it extends (see the module doc)."""
    groups: list[list[TraceRow]] = []
    open_ends: dict[tuple[int, int], int] = {}  # (prefix length, rolling hash) of a chain's last full blocks
    for r in rows:
        h = r.hash_ids or ()
        found = None
        acc = 0
        prefixes = []
        for n, x in enumerate(h, 1):
            acc = (acc * _B + (x & _P) + 1) % _P
            prefixes.append((n, acc))
        for n, acc in reversed(prefixes[:-1]):  # the longest earlier chain this row extends (and goes past)
            g = open_ends.get((n, acc))
            last = groups[g][-1] if g is not None else None
            if last is not None and last.input_tokens < r.input_tokens and tuple(last.hash_ids or ())[:n] == h[:n]:
                found = g
                break
        if found is None:
            found = len(groups)
            groups.append([])
        else:
            last = groups[found][-1].hash_ids or ()
            open_ends.pop((len(last) - 1, _roll(last[:-1])), None)
        groups[found].append(r)
        if len(h) > 1:
            open_ends[(len(h) - 1, prefixes[-2][1])] = found
    return groups


def _roll(ids: Any) -> int:
    acc = 0
    for x in ids:
        acc = (acc * _B + (x & _P) + 1) % _P
    return acc


def column_values(path: str, kind: str, key: str, turn_col: str | None) -> dict[int, tuple[str, Any]]:
    """line -> (session value, turn value) of every row, read from the file's own columns."""
    from loadgen.traces.readers import _open_text

    out: dict[int, tuple[str, Any]] = {}
    wanted = [c for c in (key, turn_col) if c]
    if kind == "csv":
        with _open_text(path) as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            for c in wanted:
                if c not in header:
                    flag = "--session-key" if c == key else "--session-turn-column"
                    raise UsageError(f"{flag} {c}: {path} has no such column (header has: {', '.join(header)})")
            ik = header.index(key)
            it = header.index(turn_col) if turn_col else None
            for rec in reader:
                if len(rec) > ik:
                    out[reader.line_num] = (rec[ik].strip(), rec[it].strip() if it is not None else None)
        return out
    with _open_text(path) as f:
        for line, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                obj = orjson.loads(text)
            except orjson.JSONDecodeError:
                raise UsageError(f"{path}:{line}: not valid JSON; a JSONL trace has one object per line") from None
            for c in wanted:
                if not isinstance(obj, dict) or c not in obj:
                    flag = "--session-key" if c == key else "--session-turn-column"
                    keys = ", ".join(sorted(obj)) if isinstance(obj, dict) else "none"
                    raise UsageError(f"{flag} {c}: {path}:{line} has no such key (keys: {keys})")
            out[line] = (str(obj[key]), obj.get(turn_col) if turn_col else None)
    return out


def column_groups(rows: list[TraceRow], values: dict[int, tuple[str, Any]], path: str, key: str,
                  turn_col: str | None) -> list[list[TraceRow]]:
    by: dict[str, list[TraceRow]] = {}
    last_turn: dict[str, float] = {}
    for r in rows:
        sess, turn = values[r.line]
        if turn_col:
            try:
                tn = float(turn)
            except (TypeError, ValueError):
                raise UsageError(f"{path}:{r.line}: {turn_col} {turn!r} is not a number") from None
            if sess in last_turn and tn <= last_turn[sess]:
                raise UsageError(f"{path}:{r.line}: session {sess!r} turn {turn} comes after turn "
                                 f"{last_turn[sess]:g} in time (turns out of order); fix {turn_col} or the "
                                 "row times")
            last_turn[sess] = tn
        by.setdefault(sess, []).append(r)
    return list(by.values())
