"""Per-turn figures of a multi-turn level: TTFT and prompt length by turn (``summary["sessions"]``).

Why by turn: each turn resends the conversation, so its prompt grows; with a prefix cache the time to first token
of later turns should not grow with it. A level's overall TTFT mixes short first turns with long later ones and
hides exactly that. Only measured records (after warm-up, before cool-down) count, as everywhere in the summary.
"""

from __future__ import annotations

from array import array
from typing import Any

import numpy as np

from loadgen.core.records import STATUS_CANCELLED, STATUS_ERROR, STATUS_OK, RequestRecord

MAX_TURNS_SHOWN = 64  # turns past this are pooled into the last row ("64+")


class TurnStats:
    """One pass over the records, memory bounded by the measured turns (two numbers per completed turn)."""

    def __init__(self) -> None:
        self._rows: dict[int, list[Any]] = {}  # turn -> [turns, ok, errors, not sent, ttft ms, input tokens]
        self.sessions: set[int] = set()
        self.ended_by_failure = 0

    def add(self, r: RequestRecord) -> None:
        if r.turn is None:
            return
        k = min(int(r.turn), MAX_TURNS_SHOWN)
        row = self._rows.get(k)
        if row is None:
            row = self._rows[k] = [0, 0, 0, 0, array("d"), array("q")]
        row[0] += 1
        if r.session_id is not None:
            self.sessions.add(r.session_id)
        if r.status == STATUS_OK:
            row[1] += 1
            ftn = r.first_token_ns
            if ftn is not None and r.issued_ns is not None:
                row[4].append((ftn - r.issued_ns) / 1e6)
            row[5].append(r.server_input_tokens if r.server_input_tokens is not None else r.input_tokens)
        elif r.status == STATUS_ERROR:
            row[2] += 1
            self.ended_by_failure += 1
        elif r.status == STATUS_CANCELLED and r.issued_ns is None:
            row[3] += 1

    def __bool__(self) -> bool:
        return bool(self._rows)

    def to_dict(self) -> dict[str, Any]:
        """``summary["sessions"]`` (docs/SUMMARY_SCHEMA.md)."""
        by_turn = []
        for k in sorted(self._rows):
            n, ok, err, unsent, ttft, inp = self._rows[k]
            t = np.frombuffer(ttft, dtype=np.float64) if len(ttft) else np.zeros(0)
            i = np.frombuffer(inp, dtype=np.int64) if len(inp) else np.zeros(0, dtype=np.int64)
            by_turn.append({
                "turn": k, "turns": n, "completed": ok, "errors": err, "not_sent": unsent,
                "ttft_p50_ms": _q(t, 50), "ttft_p90_ms": _q(t, 90), "ttft_mean_ms": _mean(t),
                "input_tokens_mean": _mean(i), "input_tokens_max": int(i.max()) if i.size else None,
            })
        return {"sessions": len(self.sessions), "sessions_ended_by_failure": self.ended_by_failure,
                "turns_shown_max": MAX_TURNS_SHOWN, "by_turn": by_turn}


def _q(a: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(a, q)), 3) if a.size else None


def _mean(a: np.ndarray) -> float | None:
    return round(float(a.mean()), 3) if a.size else None
