"""What every codec shares: the per-stream parser protocol and its totals.

A codec is sans-IO: it turns a ``RequestSpec`` into what goes on the wire and turns what came back (bytes of an
HTTP body, or one gRPC response at a time) into token counts and errors. It never reads a clock and never does
I/O, so one codec serves the asyncio transports, the Locust (gevent) transports and the unit tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(slots=True)
class StreamTotals:
    """What a finished stream told us beyond per-chunk token counts."""

    server_input_tokens: int | None = None
    server_output_tokens: int | None = None
    perf: dict[str, int] | None = None
    error: str | None = None  # an error reported inside the stream (after the status line)
    protocol_error: str | None = None  # the stream could not be understood
    completed: bool = False  # the server said the response is complete ([DONE], final flag, clean end)
    tail_tokens: int = 0  # tokens found only when the body ended (an event without its blank line, a JSON body)
    replica: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class StreamParser(Protocol):
    def feed(self, data: bytes) -> int:
        """Consume one network chunk; return the number of output tokens that chunk completed (0 if none)."""
        ...

    def finish(self) -> StreamTotals:
        """The body ended (cleanly or not): return what the stream reported."""
        ...


def scalar(value: Any) -> Any:
    """Unwrap Triton's JSON tensors: ``5``, ``[5]`` and ``[[5]]`` all mean 5."""
    while isinstance(value, list):
        if not value:
            return None
        value = value[0]
    return value


def whole_text_tokens(text: Any, prompt: str | None) -> int:
    """Output tokens of a non-streamed response that gave no server count: the word-level estimate the prompts are
    built with (``approx_token_count``), after removing the echoed prompt (a TensorRT-LLM model returns it in front
    of the output unless asked for ``exclude_input_in_output``, a known source of wrong output lengths)."""
    from loadgen.core.prompts import approx_token_count

    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not text:
        return 0
    text = str(text)
    if prompt and text.startswith(prompt):
        text = text[len(prompt):]
    return approx_token_count(text)


def parse_extra(items: list[str] | None, flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` pairs from the command line; VALUE is JSON when it parses as JSON, else a string."""
    import orjson

    from loadgen.errors import UsageError

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} {item!r}: expected KEY=VALUE, e.g. {flag} temperature=0.0")
        try:
            out[key] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            out[key] = raw
    return out


def drain_body(sse: Any, totals: StreamTotals, on_event: Any, plain_json_ok: Any) -> None:
    """End of body: dispatch the last SSE event, or read a body that was not SSE at all (one JSON object).

    ``on_event(payload) -> tokens``; ``plain_json_ok(obj) -> bool`` says whether a plain JSON body is acceptable
    (an error object, a non-streamed Triton response); otherwise it is a protocol error.
    """
    import orjson

    pending = sse.pending.strip()
    if pending and not pending.startswith(b"data"):
        try:
            obj = orjson.loads(pending)
        except orjson.JSONDecodeError:
            totals.protocol_error = f"response is neither SSE nor JSON: {pending[:80]!r}"
            return
        if isinstance(obj, dict) and plain_json_ok(obj):
            totals.tail_tokens = on_event(orjson.dumps(obj))
        else:
            totals.protocol_error = "expected a streamed (SSE) response; the server sent one JSON body"
        return
    for payload in sse.flush():
        totals.tail_tokens += on_event(payload)
