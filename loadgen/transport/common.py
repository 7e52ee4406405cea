"""Turning what a transport captured (arrival stamps + raw chunks) into a finished RequestRecord.

Transports only stamp and keep bytes while a response streams in (timing rule 4: stamp before parsing, nothing
else on the hot path); this runs once the response has ended.
"""

from __future__ import annotations

from loadgen.codecs.base import StreamParser, StreamTotals
from loadgen.core.records import (
    ERR_CONNECTION,
    ERR_EMPTY,
    ERR_PROTOCOL,
    ERR_STREAM,
    STATUS_CANCELLED_BY_CLIENT,
    STATUS_ERROR,
    STATUS_OK,
    RequestRecord,
)


def wait_limit(timeout_s: float | None, cancel_after_s: float | None) -> tuple[float | None, bool]:
    """How long a transport waits for a response after issuing it, and whether reaching that limit is the
    client's planned cancellation (``RequestSpec.cancel_after_s``) rather than ``--request-timeout``."""
    if cancel_after_s is not None and (not timeout_s or cancel_after_s < timeout_s):
        return max(0.0, cancel_after_s), True
    return (timeout_s or None), False


def cancelled_by_client(rec: RequestRecord) -> None:
    """The client abandoned the request on purpose (``--cancel-rate``) after closing its connection or stream:
    whatever had arrived stays in the record (its chunks), but the outcome is neither a success nor an error."""
    rec.status, rec.error_kind = STATUS_CANCELLED_BY_CLIENT, None
    rec.error = f"abandoned by the client {rec.cancel_after_s:g} s after issue (--cancel-after)"


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
    elif rec.output_tokens == 0:  # an empty 200, a stream of only [DONE]: nothing a user would call an answer
        rec.status, rec.error_kind = STATUS_ERROR, ERR_EMPTY
        rec.error = "the response completed without any output token"
    else:
        rec.status = STATUS_OK


RESPONSE_BASE_BYTES = 64 * 1024
RESPONSE_BYTES_PER_OUTPUT_TOKEN = 4 * 1024  # a streamed token costs 150-600 bytes of SSE/JSON; 4 KiB is generous
RESPONSE_BYTES_PER_INPUT_TOKEN = 16  # a non-streaming answer may echo the prompt


def response_limit(rec: RequestRecord, override: int | None) -> int:
    """The most body bytes one response may bring before the request ends as ``too_large`` and its connection
    is closed: derived from the tokens asked for, so a server that streams without end cannot exhaust memory.
    Bodies are parsed once they end, so one SSE line is bounded by the same figure."""
    if override:
        return override
    return (RESPONSE_BASE_BYTES + RESPONSE_BYTES_PER_OUTPUT_TOKEN * max(1, rec.max_tokens)
            + RESPONSE_BYTES_PER_INPUT_TOKEN * max(0, rec.input_tokens))


def too_large_error(limit: int) -> str:
    return (f"the response passed {limit:,} bytes, its bound for the tokens asked for; the connection was closed "
            "(--max-response-bytes sets another bound)")


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
    totals = parser.finish()
    apply_totals(rec, totals, last)
    reasoning = totals.extra.get("reasoning")
    if reasoning is not None:
        apply_reasoning(rec, reasoning)


def apply_reasoning(rec: RequestRecord, reasoning: dict) -> None:
    """A reasoning model's stream (``OpenAIStreamParser``): the arrival of the chunk that carried the first
    reasoning token and of the one that carried the first answer token (the parser gives their ordinals among the
    output tokens, which the record's ``chunk_tokens`` place in a chunk), run-relative like every record time."""
    if rec.issued_ns is not None:
        for key, attr in (("first_reasoning_token", "first_reasoning_ns"), ("first_answer_token", "first_answer_ns")):
            ordinal = reasoning.get(key)
            if ordinal is None:
                continue
            seen = 0
            for off, k in zip(rec.chunk_offsets_us, rec.chunk_tokens, strict=True):
                seen += k
                if ordinal < seen:
                    setattr(rec, attr, rec.issued_ns + off * 1000)
                    break
    rec.reasoning_tokens = reasoning.get("reasoning_tokens")


def finish_grpc_stream(rec: RequestRecord, parser, times: list[int], responses: list, error: str | None,
                       completed: bool, t0: int, now_ns: int) -> None:
    """Decode a finished gRPC request's responses (stamped on arrival) into the record.

    Shared by the asyncio and the gevent transports. ``error`` is the stream's error for this request, if any;
    an error that says the stream itself ended counts as a connection error, others as errors inside the stream.
    """
    from tritonclient.grpc import InferResult

    rec.end_ns = (times[-1] if times else now_ns) - t0
    if times:
        rec.first_byte_ns = times[0] - t0
    issued_abs = t0 + (rec.issued_ns or 0)
    for t, resp in zip(times, responses, strict=False):
        result = InferResult(resp)
        names = {o.name for o in resp.outputs}
        n = parser.feed_response(lambda name, r=result, ns=names: r.as_numpy(name) if name in ns else None)
        if n:
            rec.chunk_offsets_us.append((t - issued_abs) // 1000)
            rec.chunk_tokens.append(n)
    if error is not None:
        if not completed and rec.status != STATUS_ERROR and error.startswith("stream ended"):
            rec.status, rec.error_kind, rec.error = STATUS_ERROR, ERR_CONNECTION, error[:500]
        else:
            parser.error(error)
    apply_totals(rec, parser.finish(completed), None)


def http_target(base_url: str, headers: dict[str, str] | None) -> tuple[str, int, str, bool, bytes]:
    """(host, port, path prefix, tls, the request-head lines after the request line) for a base URL."""
    from urllib.parse import urlsplit

    u = urlsplit(base_url.rstrip("/"))
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    head_tail = (f"Host: {u.netloc}\r\nContent-Type: application/json\r\n"
                 f"Accept: text/event-stream, application/json\r\n{extra}").encode()
    return (u.hostname or "127.0.0.1", u.port or (443 if u.scheme == "https" else 80), u.path.rstrip("/"),
            u.scheme == "https", head_tail)
