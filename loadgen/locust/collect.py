"""The workers' records, brought back to the master's run directory over Locust's own messaging.

Why: exact percentiles (and the same ``summary.json`` / ``report.html`` as a single-process run) need every
record, and on real hosts the workers' files are on the workers' disks. Each worker writes its records to a spool
file on its own disk (the recorder, flushed 4x a second) and ships what was written, complete lines only, in
chunks of at most ``CHUNK_BYTES``, about once a second during the run and the rest before its last message; the
master appends each chunk to ``records.w<stripe>.jsonl`` in the run directory. Shipping during the run, not only at
the end, means a worker lost mid-run has left everything up to its last second with the master: the master reports
how many of its records it recovered. Messages of one worker arrive in order (one ZeroMQ connection); each chunk
names the byte offset it starts at, so a gap or repeat is detected, not silently merged. When the master has every
record of a stripe it says so and the worker removes its spool file; otherwise the file stays on the worker's disk
for the documented manual route (docs/DISTRIBUTED.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

RECORDS = "loadgen_records"
RECORDS_ACK = "loadgen_records_ack"  # master -> worker: every record arrived; the worker may drop its spool file
CHUNK_BYTES = 512 * 1024
log = logging.getLogger("loadgen.locust")


class RecordShipper:
    """Worker side: sends the complete lines of ``path`` not yet sent (``send(msg_type, data)``)."""

    def __init__(self, path: Path, stripe: int, send: Callable[[str, dict], None],
                 chunk_bytes: int = CHUNK_BYTES) -> None:
        self.path = path
        self.stripe = stripe
        self.send = send
        self.chunk_bytes = chunk_bytes
        self.offset = 0  # bytes shipped
        self.lines = 0  # records shipped

    def ship(self) -> int:
        """Ship what is complete now; the number of records sent."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return 0
        end = data.rfind(b"\n") + 1
        sent = 0
        pos = 0
        while pos < end:
            cut = min(end, pos + self.chunk_bytes)
            if cut < end:  # cut at a line boundary (a line longer than a chunk goes whole)
                nl = data.rfind(b"\n", pos, cut)
                cut = nl + 1 if nl >= pos else data.index(b"\n", cut) + 1
            piece = data[pos:cut]
            n = piece.count(b"\n")
            self.send(RECORDS, {"stripe": self.stripe, "offset": self.offset, "lines": n, "data": piece})
            self.offset += len(piece)
            self.lines += n
            sent += n
            pos = cut
        return sent


class RecordCollector:
    """Master side: appends each worker's chunks to ``run_dir/records.w<stripe>.jsonl``; counts what arrived."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.bytes: dict[int, int] = {}
        self.lines: dict[int, int] = {}
        self.gaps: dict[int, int] = {}

    def path(self, stripe: int) -> Path:
        return self.run_dir / f"records.w{stripe}.jsonl"

    def open(self, stripes: list[int]) -> None:
        """Empty files for every stripe (a worker that sends nothing still has its, empty, file)."""
        for s in stripes:
            self.path(s).write_bytes(b"")
            self.bytes[s], self.lines[s], self.gaps[s] = 0, 0, 0

    def receive(self, data: dict[str, Any]) -> None:
        stripe, offset, piece = int(data["stripe"]), int(data["offset"]), bytes(data["data"])
        have = self.bytes.get(stripe, 0)
        if offset < have:  # a repeat: already written
            log.warning("loadgen: records of worker %d: chunk at byte %d repeated (have %d); ignored", stripe,
                        offset, have)
            return
        if offset > have:  # a gap: records lost in transit; counted, so the summary is not called exact
            self.gaps[stripe] = self.gaps.get(stripe, 0) + 1
            log.warning("loadgen: records of worker %d: chunk at byte %d, expected %d: records lost in transit",
                        stripe, offset, have)
        with open(self.path(stripe), "ab") as f:
            f.write(piece)
        self.bytes[stripe] = offset + len(piece)
        self.lines[stripe] = self.lines.get(stripe, 0) + int(data.get("lines", piece.count(b"\n")))

    def complete(self, stripe: int, written: int) -> bool:
        return self.lines.get(stripe, 0) >= written and not self.gaps.get(stripe)


def drop_spool(path: Path) -> None:
    """A worker's spool file once the master has every record (and its directory, when it is empty)."""
    try:
        path.unlink()
        path.parent.rmdir()
    except OSError:
        pass
