"""Turning what a transport captured (arrival stamps + raw chunks) into a finished RequestRecord.

Transports only stamp and keep bytes while a response streams in (timing rule 4: stamp before parsing, nothing
else on the hot path); this runs once the response has ended.
"""

from __future__ import annotations

from loadgen.codecs.base import StreamParser, StreamTotals
from loadgen.core.records import (
    ERR_PROTOCOL,
    ERR_STREAM,
    STATUS_ERROR,
    STATUS_OK,
    RequestRecord,
)


def apply_totals(rec: RequestRecord, totals: StreamTotals, last_chunk_ns: int | None) -> None:
    """Copy a stream's totals into the record and settle its status (when no transport error was set)."""
    if totals.tail_tokens and last_chunk_ns is not None and rec.issued_ns is not None:
        rec.chunk_offsets_us.append(max(0, (last_chunk_ns - rec.issued_ns) // 1000))
        rec.chunk_tokens.append(totals.tail_tokens)
    rec.server_input_tokens = totals.server_input_tokens
    rec.server_output_tokens = totals.server_output_tokens
    if totals.perf:
        rec.server_perf = totals.perf
    if totals.replica:
        rec.replica = totals.replica
    if rec.status == STATUS_ERROR:  # a transport error (timeout, reset) already decided the outcome
        return
    if totals.error is not None:
        rec.status, rec.error_kind, rec.error = STATUS_ERROR, ERR_STREAM, totals.error[:500]
    elif totals.protocol_error is not None:
        rec.status, rec.error_kind, rec.error = STATUS_ERROR, ERR_PROTOCOL, totals.protocol_error[:500]
    else:
        rec.status = STATUS_OK


def finish_http_stream(rec: RequestRecord, parser: StreamParser, times: list[int], chunks: list[bytes],
                       t0: int) -> None:
    """Parse the captured body. ``times`` are absolute perf_counter_ns stamps; the record is run-relative."""
    issued_abs = t0 + (rec.issued_ns or 0)
    offsets = rec.chunk_offsets_us
    counts = rec.chunk_tokens
    for t, data in zip(times, chunks, strict=True):
        n = parser.feed(data)
        if n:
            offsets.append((t - issued_abs) // 1000)
            counts.append(n)
    last = times[-1] - t0 if times else None
    apply_totals(rec, parser.finish(), last)
