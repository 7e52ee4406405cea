"""The open-loop issue decision, written once for every driver (asyncio loop, worker processes, gevent).

Drivers only wait and send; what to do with a request whose deadline has come is decided here, without I/O:

- ``SEND``: on time (no later than the tolerance after its deadline);
- ``SEND_LATE``: later than the tolerance, and the policy is ``issue`` (the default): sent, and counted late;
- ``DROP``: later than the tolerance, or the in-flight cap is full, and the policy is ``drop``: not sent,
  recorded as ``dropped`` with how late it was.

With an in-flight cap and the ``issue`` policy a driver waits for a free slot and then asks again (the wait
makes the request late, and it is counted so). An unexpected exception inside a request (a codec or transport
bug) ends that request as a protocol error in every driver (``fail_unexpected``), and a request still in flight
when the drain ends is ``abandoned`` (``abandon``): neither is ever a silent ``cancelled``, which is kept for
requests stopped by the user (Ctrl-C) or a fatal error of the run.
"""

from __future__ import annotations

from dataclasses import dataclass

from loadgen.core.records import (
    ERR_ABANDONED,
    ERR_PROTOCOL,
    STATUS_CANCELLED,
    STATUS_DROPPED,
    STATUS_ERROR,
    RequestRecord,
    RequestSpec,
)

SEND, SEND_LATE, DROP = 0, 1, 2


@dataclass(slots=True)
class IssuePolicy:
    drop: bool = False  # --on-late drop
    tolerance_ns: int = 10_000_000  # --late-tolerance

    @classmethod
    def of(cls, on_late: str, tolerance_ns: int) -> IssuePolicy:
        return cls(drop=on_late == "drop", tolerance_ns=tolerance_ns)

    def decide(self, late_ns: int) -> int:
        """``late_ns``: now minus the request's deadline."""
        if late_ns <= self.tolerance_ns:
            return SEND
        return DROP if self.drop else SEND_LATE

    def drop_when_full(self) -> bool:
        """The in-flight cap is full: drop now (``drop``), or wait for a slot (``issue``)."""
        return self.drop


@dataclass
class IssueOutcome:
    """What a driver reports when its part of a level is done (times relative to t0)."""

    t0_ns: int
    issue_end_ns: int  # when issuing stopped
    end_ns: int  # when the last request finished (or was abandoned)
    issued: int
    dropped: int
    late: int  # issued later than the tolerance after their deadline
    cancelled: int  # still in flight when the drain ended
    interrupted: bool  # stopped before the schedule was done (Ctrl-C, server gone, a failure)
    stopped_early: str | None = None  # ended on purpose before the schedule was done (why), not interrupted


def dropped_record(spec: RequestSpec, scheduled_ns: int, late_ns: int, worker: int) -> RequestRecord:
    return RequestRecord(index=spec.index, scheduled_ns=scheduled_ns, status=STATUS_DROPPED,
                         error=f"not issued: {late_ns / 1e6:.1f} ms late (--on-late drop)",
                         input_tokens=spec.input_tokens, max_tokens=spec.max_tokens, worker=worker)


def abandon(rec: RequestRecord, drain_timeout_s: float) -> None:
    """A request still in flight when the drain ended (the transport marked it cancelled as its task was
    stopped): an error of its own kind, counted in the error rate, never a silent ``cancelled``."""
    if rec.status == STATUS_CANCELLED:
        rec.status, rec.error_kind = STATUS_ERROR, ERR_ABANDONED
        rec.error = f"still in flight when the drain ended ({drain_timeout_s:g} s after issuing stopped; " \
                    "--drain-timeout)"


def fail_unexpected(rec: RequestRecord, err: BaseException, now_rel_ns: int) -> None:
    """An exception the transport did not turn into a record state: a protocol error, with its text."""
    if rec.issued_ns is None:
        rec.issued_ns = now_rel_ns
    rec.end_ns = now_rel_ns
    rec.status, rec.error_kind = STATUS_ERROR, ERR_PROTOCOL
    rec.error = f"{type(err).__name__}: {err}"[:500]
