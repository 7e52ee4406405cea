"""What a request asks (``RequestSpec``) and what happened to it (``RequestRecord``).

Records hold raw timestamps only; every metric is computed afterwards from them (``loadgen.core.metrics``), so the
asyncio runner and the Locust front end report numbers from the same code path.

Time base: every ``*_ns`` field is nanoseconds on the monotonic clock *relative to the run's t0* (the
``anchor`` in ``config.json`` pairs t0 with the wall clock). Token arrival times are stored compactly as
``chunk_offsets_us``: microseconds after ``issued_ns``, one entry per token-bearing chunk, with ``chunk_tokens``
giving how many tokens that chunk carried (a chunk can carry several: speculative decoding, detokenizer buffering).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

# Final states of a request.
STATUS_OK = "ok"  # the response completed without an error (it may still be short: see metrics)
STATUS_ERROR = "error"  # an error: see error_kind
STATUS_DROPPED = "dropped"  # never issued: the client was late and --on-late drop was in force
STATUS_CANCELLED = "cancelled"  # in flight when the run was stopped early (Ctrl-C, a fatal error): not measured
# Abandoned on purpose by the client after its planned delay (--cancel-rate/--cancel-after): the connection was closed
# (or the gRPC stream cancelled) so that the server frees the slot. Neither a success nor an error (METRICS.md).
STATUS_CANCELLED_BY_CLIENT = "cancelled_by_client"

# Error kinds, so that reports can count errors by kind.
ERR_HTTP = "http_status"  # a non-2xx status before streaming (http_status says which)
ERR_STREAM = "stream_error"  # the server reported an error inside a stream that had started (after HTTP 200)
ERR_TIMEOUT = "timeout"  # --request-timeout passed
ERR_CONNECTION = "connection"  # refused, reset or closed mid-response
ERR_PROTOCOL = "protocol"  # a response the codec could not understand (malformed SSE/JSON)
ERR_EMPTY = "empty"  # a response that completed without a single output token (an empty 200, only [DONE])
ERR_TOO_LARGE = "too_large"  # the response passed its size bound (--max-response-bytes); the connection was closed
ERR_ABANDONED = "abandoned"  # still in flight when the drain ended (--drain-timeout): the server never finished it
ERROR_KINDS = (ERR_HTTP, ERR_STREAM, ERR_TIMEOUT, ERR_CONNECTION, ERR_PROTOCOL, ERR_EMPTY, ERR_TOO_LARGE,
               ERR_ABANDONED)


@dataclass(slots=True)
class RequestSpec:
    """One request of the workload, fully decided before the run's clock starts mattering."""

    index: int  # position in the schedule (also the stripe key in distributed runs)
    prompt: str  # the text sent (or the chat user message)
    input_tokens: int  # prompt length in tokens as built (by the named tokenizer, or the word-level estimate)
    max_tokens: int  # output tokens asked for
    min_tokens: int | None = None  # ask the server to generate at least this many (honour the requested length)
    prefix_group: int | None = None  # requests with the same group share a prompt prefix (traces with hash ids)
    params: dict[str, Any] = field(default_factory=dict)  # pass-through sampling / backend parameters
    answer: list[str] | None = None  # multi-turn sessions: the answer's text is collected here (codecs.answers)
    cancel_after_s: float | None = None  # abandon the request this long after it was issued (planned: core.cancel)


@dataclass(slots=True)
class RequestRecord:
    index: int
    scheduled_ns: int
    issued_ns: int | None = None
    first_byte_ns: int | None = None  # first byte of the response body (any byte, token or not)
    end_ns: int | None = None  # end of the response (stream closed / final response), or when the error was seen
    chunk_offsets_us: list[int] = field(default_factory=list)  # token-bearing chunks, µs after issued_ns
    chunk_tokens: list[int] = field(default_factory=list)  # tokens in each of those chunks (client count)
    status: str = STATUS_CANCELLED
    error_kind: str | None = None
    error: str | None = None
    http_status: int | None = None
    input_tokens: int = 0  # requested prompt length (client side)
    max_tokens: int = 0  # requested output length
    server_input_tokens: int | None = None  # server's count (OpenAI usage.prompt_tokens, TRT-LLM num_input_tokens)
    server_output_tokens: int | None = None  # server's count (usage.completion_tokens, num_output_tokens)
    server_perf: dict[str, int] | None = None  # TRT-LLM perf metrics when asked for (server clock, ns)
    worker: int = 0  # generator worker / process that sent it
    replica: str | None = None  # which server instance answered, when the server says
    session_id: int | None = None  # multi-turn sessions: the session (conversation) this turn belongs to
    turn: int | None = None  # multi-turn sessions: the turn's position in its session, from 0
    cancel_after_s: float | None = None  # the planned client cancellation delay, from the issue time (None: none)
    # Reasoning models (OpenAI ``reasoning_content`` deltas); None when the stream carried no reasoning.
    first_reasoning_ns: int | None = None  # arrival of the first chunk with reasoning tokens (run-relative)
    first_answer_ns: int | None = None  # arrival of the first chunk with answer tokens (run-relative)
    reasoning_tokens: int | None = None  # server's count (completion_tokens_details) where given, else the client's

    # -- derived views -------------------------------------------------------------------------------------
    @property
    def client_output_tokens(self) -> int:
        return sum(self.chunk_tokens)

    @property
    def output_tokens(self) -> int:
        """Server count where the server gave one, else the client count (METRICS.md)."""
        if self.server_output_tokens is not None:
            return self.server_output_tokens
        return self.client_output_tokens

    def chunk_times_ns(self) -> list[int]:
        """Absolute (run-relative) arrival time of each token-bearing chunk."""
        if self.issued_ns is None:
            return []
        base = self.issued_ns
        return [base + off * 1000 for off in self.chunk_offsets_us]

    @property
    def first_token_ns(self) -> int | None:
        if not self.chunk_offsets_us or self.issued_ns is None:
            return None
        return self.issued_ns + self.chunk_offsets_us[0] * 1000

    @property
    def last_token_ns(self) -> int | None:
        if not self.chunk_offsets_us or self.issued_ns is None:
            return None
        return self.issued_ns + self.chunk_offsets_us[-1] * 1000

    # -- serialisation -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The record as ``records.jsonl`` holds it: fields whose value is None are left out (most optional
        fields are unset on most requests: about 260 of a short record's 610 bytes); ``from_dict`` restores them,
        and every reader goes through it. Shallow (the lists are the record's own), so cheap enough for the
        recorder's hot path: about 0.1 µs more than serialising the dataclass whole, where ``asdict`` costs 40+."""
        return {k: v for k in _FIELD_ORDER if (v := getattr(self, k)) is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RequestRecord:
        known = _FIELD_NAMES
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown record field(s): {', '.join(sorted(unknown))}")
        return cls(**d)


_FIELD_ORDER = tuple(f.name for f in fields(RequestRecord))
_FIELD_NAMES = frozenset(_FIELD_ORDER)
