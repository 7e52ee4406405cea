"""Clock agreement between a Locust master and its workers: each worker's wall-clock offset, and how far each
worker's actual start was from the planned t0.

Why: a distributed level starts at one wall-clock t0 that every worker converts to its own monotonic clock. Across
hosts that rests on the hosts' wall clocks (NTP/PTP). Before planning, the master measures each worker's offset the
way NTP does, over Locust's own messaging: it sends its wall time t1, the worker stamps receipt t2 and reply t3
with its clock, the master stamps the answer's arrival t4; offset = ((t2 - t1) + (t3 - t4)) / 2, known to within
half the round trip (t4 - t1) - (t3 - t2). Of several exchanges the one with the shortest round trip is kept. The
master then hands each worker t0 *on that worker's clock*, so an offset is corrected rather than trusted, and a
worker whose offset exceeds the tolerance is reported (log, summary). At the end each worker says when (on its
clock) it actually reached t0; back on the master's clock that gives the start spread, ``t0_skew_ms``.

Pure functions and a small state holder: no gevent, no Locust; the session wires the messages.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

PING = "loadgen_clock_ping"
PONG = "loadgen_clock_pong"
TOLERANCE_MS = 5.0  # a worker clock further off than this from the master's is reported
ROUNDS = 5  # exchanges per worker; the shortest round trip wins
OFFSET_ENV = "LOADGEN_TEST_CLOCK_OFFSET_MS"  # tests only: pretend this worker's wall clock is off by this much


def wall_ns() -> int:
    """This process's wall clock (ns), shifted by ``$LOADGEN_TEST_CLOCK_OFFSET_MS`` when a test sets it: one
    place where a worker reads the wall clock, so a test can give one worker a wrong clock without root tricks."""
    shift = os.environ.get(OFFSET_ENV)
    return time.time_ns() + (int(float(shift) * 1e6) if shift else 0)


@dataclass(frozen=True)
class Exchange:
    t1: int  # master sends (master clock)
    t2: int  # worker receives (worker clock)
    t3: int  # worker replies (worker clock)
    t4: int  # master receives the reply (master clock)

    @property
    def offset_ns(self) -> float:
        """Worker clock minus master clock."""
        return ((self.t2 - self.t1) + (self.t3 - self.t4)) / 2

    @property
    def rtt_ns(self) -> int:
        return (self.t4 - self.t1) - (self.t3 - self.t2)


def best(exchanges: list[Exchange]) -> Exchange | None:
    """The exchange with the shortest round trip (the tightest bound on the offset)."""
    valid = [e for e in exchanges if e.rtt_ns >= 0]
    return min(valid, key=lambda e: e.rtt_ns) if valid else None


@dataclass
class ClockCheck:
    """The master's measurements of one level: exchanges per worker, then offsets and the start spread."""

    tolerance_ms: float = TOLERANCE_MS
    exchanges: dict[str, list[Exchange]] = field(default_factory=dict)

    def add(self, client_id: str, pong: dict[str, Any], t4: int) -> None:
        self.exchanges.setdefault(client_id, []).append(Exchange(int(pong["t1"]), int(pong["t2"]),
                                                                 int(pong["t3"]), t4))

    def offsets_ns(self) -> dict[str, int]:
        """Worker clock minus master clock per worker that answered (0 assumed for one that did not)."""
        out = {}
        for cid, exs in self.exchanges.items():
            b = best(exs)
            if b is not None:
                out[cid] = int(round(b.offset_ns))
        return out

    def report(self, starts: dict[str, tuple[int, int]], t0_wall_ns: int) -> dict[str, Any]:
        """The summary's ``clock`` block. ``starts``: client id -> (stripe, the worker's wall time on reaching t0,
        on its own clock). Each start goes back to the master's clock with the measured offset; ``t0_skew_ms`` is
        the largest distance of a worker's start from t0, ``t0_spread_ms`` the distance between the first and the
        last worker's start."""
        offsets = self.offsets_ns()
        workers, off_limit, late = [], [], []
        for cid, (stripe, start_wall) in sorted(starts.items(), key=lambda kv: kv[1][0]):
            b = best(self.exchanges.get(cid, []))
            off = offsets.get(cid)
            start_master = start_wall - (off or 0)
            late.append(start_master - t0_wall_ns)
            row = {"stripe": stripe, "client_id": cid,
                   "offset_ms": None if off is None else round(off / 1e6, 3),
                   "offset_uncertainty_ms": None if b is None else round(b.rtt_ns / 2e6, 3),
                   "start_minus_t0_ms": round((start_master - t0_wall_ns) / 1e6, 3),
                   "measured": off is not None}
            if off is None or abs(off) > self.tolerance_ms * 1e6:
                off_limit.append(stripe)
            workers.append(row)
        return {"tolerance_ms": self.tolerance_ms, "workers": workers,
                "t0_skew_ms": round(max((abs(v) for v in late), default=0) / 1e6, 3),
                "t0_spread_ms": round((max(late) - min(late)) / 1e6, 3) if late else 0.0,
                "offset_beyond_tolerance": off_limit,
                "corrected": "each worker got t0 on its own clock (the measured offset applied)"}


def answer(ping: dict[str, Any], t2: int) -> dict[str, Any]:
    """The worker's reply to a ping received at ``t2`` (its clock)."""
    return {"t1": ping["t1"], "seq": ping.get("seq"), "t2": t2, "t3": wall_ns()}
