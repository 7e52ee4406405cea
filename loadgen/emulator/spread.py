"""Even spread of requests over the replicas of one emulated server, enforced from inside the replicas.

Why: Triton hands each request to whichever model instance is free first. The emulated model's ``execute`` only
parses a request and queues it for its engine, so "free first" is a race that one stub wins more often than the
others (one burst of 599 requests split 358/241 over two replicas). The study's load balancer spread requests
evenly. A replica cannot pass a request on to another process, but it can decide when it is ready for the next
one: Triton only gives a request to an instance whose ``execute`` has returned. So, after taking a request, a
replica that has now taken more than the replica with the fewest waits (inside ``execute``) until the others
caught up; Triton meanwhile gives the next requests to the replicas that are behind. Over a burst that is round
robin: the counts never differ by more than one.

The counts live in a small memory-mapped file beside the shared-GPU file (one unsigned 64-bit counter per
replica, updated under ``flock``), because every replica is its own process. The wait is bounded
(``max_wait_s``): when no request comes for a while the leader returns anyway (and its lead is forgiven), so the
server can always unload, a lull of one request at a time does not pile up a lead that would send the next
burst all to the others, and a replica that died cannot stall the others for longer than that.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import time
from collections.abc import Callable

from loadgen.errors import UsageError

SPREADS = ("even", "triton")
_COUNT = struct.Struct("<Q")
POLL_S = 0.0005  # how often a waiting replica re-reads the counts (a burst alternates within a few of these)
MAX_WAIT_S = 0.5  # longest a replica holds its instance busy waiting for the others


def check_spread(spread: str, flag: str = "--server-spread") -> str:
    """The spread policy name, or UsageError naming ``flag``."""
    value = str(spread).strip().lower()
    if value not in SPREADS:
        raise UsageError(f"{flag} {spread!r}: choose even (round robin over replicas, as the study's load "
                         "balancer) or triton (Triton's own instance scheduling)")
    return value


class AdmissionCounts:
    """Requests taken by each replica of one server, shared between processes through ``path``."""

    def __init__(self, replicas: int, path: str) -> None:
        if replicas < 1:
            raise UsageError(f"an even spread needs at least 1 replica, got {replicas}")
        self.replicas = int(replicas)
        size = _COUNT.size * self.replicas
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise UsageError(f"cannot open the spread counter file {path}: {exc.strerror}; give a writable "
                             "path") from exc
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            have = os.fstat(self._fd).st_size
            if have not in (0, size):
                raise UsageError(f"spread counter file {path} was made for {have // _COUNT.size} replica(s), not "
                                 f"{self.replicas}: remove it or give each server its own path")
            if have == 0:
                os.ftruncate(self._fd, size)
            self._mm = mmap.mmap(self._fd, size)
        except BaseException:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            raise
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def counts(self) -> list[int]:
        fcntl.flock(self._fd, fcntl.LOCK_SH)
        try:
            return [_COUNT.unpack_from(self._mm, i * _COUNT.size)[0] for i in range(self.replicas)]
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def take(self, slot: int, n: int = 1) -> int:
        """Count ``n`` requests taken by ``slot``; returns its new total."""
        if not 0 <= slot < self.replicas:
            raise UsageError(f"replica index {slot} is out of range: use 0 to {self.replicas - 1}")
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            value = _COUNT.unpack_from(self._mm, slot * _COUNT.size)[0] + int(n)
            _COUNT.pack_into(self._mm, slot * _COUNT.size, value)
            return value
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def lead(self, slot: int) -> int:
        """How many requests ``slot`` has taken beyond the replica with the fewest."""
        counts = self.counts()
        return counts[slot] - min(counts)

    def wait_turn(self, slot: int, max_wait_s: float = MAX_WAIT_S, stopping: Callable[[], bool] | None = None,
                  sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> bool:
        """Block while ``slot`` leads; True when the others caught up, False after ``max_wait_s`` (or a stop).

        After ``max_wait_s`` without a request for the others, the lead is forgiven (``slot``'s count drops to
        the lowest): it came from a lull (one request at a time), and carried forward it would send the whole of
        the next burst to the others."""
        deadline = clock() + max_wait_s
        while self.lead(slot) > 0:
            if stopping is not None and stopping():
                return False
            if clock() >= deadline:
                self._level(slot)
                return False
            sleep(POLL_S)
        return True

    def _level(self, slot: int) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            counts = [_COUNT.unpack_from(self._mm, i * _COUNT.size)[0] for i in range(self.replicas)]
            _COUNT.pack_into(self._mm, slot * _COUNT.size, min(counts))
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if not self._mm.closed:
            self._mm.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
