"""The optimised SSE framing and stream parsers must give exactly what the original ones gave.

The ``Ref*`` classes below are the parsers as they were before the fast paths went in (same operations in the same
order, so the same results and the same exceptions); benchmarks/parse_cost.py times them as its "before". Random
streams (fixed seeds) of well-formed, odd and broken events, with random line ends and random network-chunk
boundaries, go through both; every per-chunk token count, every decoded payload, the undecoded remainder and the
final totals must match. Inputs the original rejected with an exception must raise the same exception type.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import orjson
import pytest

from loadgen.codecs.base import StreamTotals
from loadgen.codecs.openai import OpenAIStreamParser
from loadgen.codecs.sse import SSEDecoder
from loadgen.codecs.triton_http import TritonStreamParser
from loadgen.core.records import RequestRecord
from loadgen.transport.common import finish_http_stream

# -- the oracle: the original semantics ---------------------------------------------------------------------------
REF_PERF_FIELDS = ("arrival_time_ns", "first_scheduled_time_ns", "first_token_time_ns", "last_token_time_ns",
                   "kv_cache_alloc_new_blocks", "kv_cache_reused_blocks")


def ref_scalar(value: Any) -> Any:
    while isinstance(value, list):
        if not value:
            return None
        value = value[0]
    return value


class RefSSE:
    """Line-by-line SSE framing: normalise CR/CRLF, dispatch ``data`` lines on each blank line."""

    __slots__ = ("_buf", "_data", "_has_data")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._has_data = False

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf + chunk if self._buf else chunk
        tail = b""
        if b"\r" in buf:
            if buf.endswith(b"\r"):
                buf, tail = buf[:-1], b"\r"
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        events: list[bytes] = []
        pos = 0
        while (nl := buf.find(b"\n", pos)) >= 0:
            line, pos = buf[pos:nl], nl + 1
            if not line:
                if self._has_data:
                    events.append(b"\n".join(self._data))
                self._data, self._has_data = [], False
                continue
            if not line.startswith(b"data"):
                continue
            if line[4:5] == b":":
                value = line[5:]
                if value[:1] == b" ":
                    value = value[1:]
            elif len(line) == 4:
                value = b""
            else:
                continue
            self._data.append(value)
            self._has_data = True
        self._buf = buf[pos:] + tail
        return events

    def flush(self) -> list[bytes]:
        events = self.feed(b"\n") if self._buf else []
        if self._has_data:
            events.append(b"\n".join(self._data))
            self._data, self._has_data = [], False
        return events

    @property
    def pending(self) -> bytes:
        return self._buf


def ref_drain(sse: RefSSE, totals: StreamTotals, on_event: Any, plain_json_ok: Any) -> None:
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


class RefTritonParser:
    def __init__(self) -> None:
        self._sse = RefSSE()
        self._totals = StreamTotals()
        self._out: int | None = None
        self._in: int | None = None

    def feed(self, data: bytes) -> int:
        tokens = 0
        for payload in self._sse.feed(data):
            tokens += self._event(payload)
        return tokens

    def _event(self, payload: bytes) -> int:
        t = self._totals
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            t.protocol_error = f"malformed JSON in stream: {payload[:80]!r}"
            return 0
        if not isinstance(obj, dict):
            t.protocol_error = f"unexpected stream event: {payload[:80]!r}"
            return 0
        if "error" in obj:
            t.error = str(obj["error"])
            return 0
        n_in = ref_scalar(obj.get("num_input_tokens"))
        if n_in is not None:
            self._in = int(n_in)
        for key in REF_PERF_FIELDS:
            if key in obj:
                if t.perf is None:
                    t.perf = {}
                v = ref_scalar(obj[key])
                if v is not None:
                    t.perf[key] = int(v)
        n_out = ref_scalar(obj.get("num_output_tokens"))
        if n_out is not None:
            n = int(n_out)
            self._out = (self._out or 0) + n
            return n
        return 1 if ref_scalar(obj.get("text_output")) else 0

    def finish(self) -> StreamTotals:
        t = self._totals
        ref_drain(self._sse, t, self._event, lambda obj: True)
        t.server_input_tokens, t.server_output_tokens = self._in, self._out
        t.completed = t.error is None and t.protocol_error is None
        return t


class RefOpenAIParser:
    def __init__(self, chat: bool) -> None:
        self._sse = RefSSE()
        self._totals = StreamTotals()
        self._chat = chat
        self._last_usage_out: int | None = None
        self._done = False
        self._counted = 0  # output tokens so far: the reasoning timings name a token by its ordinal
        self._first: dict[str, int] = {}  # "reasoning" / "answer" -> ordinal of the first such token
        self._reasoning = 0
        self._server_reasoning: int | None = None

    def feed(self, data: bytes) -> int:
        tokens = 0
        for payload in self._sse.feed(data):
            tokens += self._event(payload)
        return tokens

    def _event(self, payload: bytes) -> int:
        t = self._totals
        if payload.strip() == b"[DONE]":
            self._done = True
            return 0
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            t.protocol_error = f"malformed JSON in stream: {payload[:80]!r}"
            return 0
        if not isinstance(obj, dict):
            t.protocol_error = f"unexpected stream event: {payload[:80]!r}"
            return 0
        if "error" in obj or obj.get("object") == "error":
            err = obj.get("error", obj)
            t.error = str(err.get("message", err)) if isinstance(err, dict) else str(err)
            return 0
        answer = thinking = False
        for choice in obj.get("choices") or ():
            if self._chat:
                delta = choice.get("delta") or {}
                if delta.get("content") or delta.get("tool_calls"):
                    answer = True
                elif delta.get("reasoning_content") or delta.get("reasoning"):
                    thinking = True
            elif choice.get("text"):
                answer = True
        n = 1 if (answer or thinking) else 0
        usage = obj.get("usage")
        if usage:
            if usage.get("prompt_tokens") is not None:
                t.server_input_tokens = int(usage["prompt_tokens"])
            details = usage.get("completion_tokens_details")
            if isinstance(details, dict) and details.get("reasoning_tokens") is not None:
                self._server_reasoning = int(details["reasoning_tokens"])
            out = usage.get("completion_tokens")
            if out is not None:
                out = int(out)
                prev = self._last_usage_out
                self._last_usage_out = out
                t.server_output_tokens = out
                if n and prev is not None:
                    n = max(out - prev, 1)
        if answer:  # an event with answer text is the answer's, whatever else it carries
            self._first.setdefault("answer", self._counted)
        elif thinking:
            self._first.setdefault("reasoning", self._counted)
            self._reasoning += n
        self._counted += n
        return n

    def finish(self) -> StreamTotals:
        t = self._totals
        ref_drain(self._sse, t, self._event, lambda obj: "error" in obj or obj.get("object") == "error")
        t.completed = self._done and t.error is None and t.protocol_error is None
        if "reasoning" in self._first or self._server_reasoning:
            t.extra["reasoning"] = {
                "first_reasoning_token": self._first.get("reasoning"),
                "first_answer_token": self._first.get("answer"),
                "reasoning_tokens": self._reasoning if self._server_reasoning is None else self._server_reasoning,
            }
        return t


# -- running a stream through a parser ----------------------------------------------------------------------------
def run(parser: Any, chunks: list[bytes]) -> tuple[list[int], dict[str, Any] | None, str | None]:
    """Per-chunk counts, the final totals, and the exception type name if the parser raised (then totals None)."""
    counts: list[int] = []
    try:
        for chunk in chunks:
            counts.append(parser.feed(chunk))
        return counts, dataclasses.asdict(parser.finish()), None
    except (TypeError, ValueError, AttributeError, OverflowError) as err:
        return counts, None, type(err).__name__


def split_randomly(rng: random.Random, body: bytes) -> list[bytes]:
    """Cut a body at random points: sometimes per event, sometimes per byte, sometimes with empty chunks."""
    mode = rng.random()
    if mode < 0.15 or len(body) < 2:
        return [body]
    if mode < 0.25:
        return [body[i:i + 1] for i in range(len(body))]
    if mode < 0.45:  # after line ends only: a server that writes line by line
        ends = [i + 1 for i, c in enumerate(body) if c in b"\r\n"]
        cuts = sorted(set(rng.sample(ends, min(len(ends), rng.randint(1, 12))))) if ends else []
        bounds = [0, *[c for c in cuts if c < len(body)], len(body)]
        return [body[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    cuts = sorted(rng.sample(range(1, len(body)), min(len(body) - 1, rng.randint(1, 12))))
    if rng.random() < 0.3:
        cuts.append(rng.choice(cuts))  # a repeated cut: an empty chunk
        cuts.sort()
    bounds = [0, *cuts, len(body)]
    return [body[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def chunk_per_event(rng: random.Random, events: list[bytes]) -> list[bytes]:
    """Whole events, one or several to a chunk: the network pattern the fast paths are for."""
    out, i = [], 0
    while i < len(events):
        k = rng.choice((1, 1, 1, 2, 3, 8))
        out.append(b"".join(events[i:i + k]))
        i += k
    return out


# -- random streams -----------------------------------------------------------------------------------------------
def tensor(rng: random.Random, value: Any) -> Any:
    """A value as Triton may wrap it: bare, [v], [[v]], or an empty tensor."""
    r = rng.random()
    if r < 0.5:
        return value
    if r < 0.75:
        return [value]
    if r < 0.9:
        return [[value]]
    return []


def count_value(rng: random.Random) -> Any:
    r = rng.random()
    if r < 0.85:
        return tensor(rng, rng.choice((0, 1, 1, 1, 2, 3, 17)))
    return rng.choice((None, True, 2.7, "4", "x", {"n": 1}, [None], -1))


def triton_event(rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.03:
        return rng.choice((b"{not json", b"", b"[1, 2]", b"5", b'"text"', b"null", b"{}"))
    if r < 0.06:
        return orjson.dumps({"error": rng.choice(("engine failed", 3, None, {"m": "x"})), "text_output": "a"})
    obj: dict[str, Any] = {}
    if rng.random() < 0.4:
        obj.update(model_name="ensemble", model_version="1", sequence_end=False, sequence_id=0)
    if rng.random() < 0.9:
        obj["text_output"] = tensor(rng, rng.choice((" tok", "", " a b", None, 0, " é")))
    if rng.random() < 0.4:
        obj["num_output_tokens"] = count_value(rng)
    if rng.random() < 0.15:
        obj["num_input_tokens"] = count_value(rng)
    if rng.random() < 0.15:
        for key in rng.sample(REF_PERF_FIELDS, rng.randint(1, 3)):
            obj[key] = tensor(rng, rng.choice((123456789, 0, None, 7)))
    keys = list(obj)
    rng.shuffle(keys)
    raw = orjson.dumps({k: obj[k] for k in keys})
    if rng.random() < 0.05:  # the same keys spelled with JSON escapes: the raw bytes no longer show them
        raw = raw.replace(b"_", b"\\u005f")
    if rng.random() < 0.05:
        raw = orjson.dumps({k: obj[k] for k in keys}, option=orjson.OPT_INDENT_2)  # multi-line payload
    return raw


def openai_event(rng: random.Random, chat: bool) -> bytes:
    r = rng.random()
    if r < 0.03:
        return rng.choice((b"{not json", b"", b"[1]", b"7", b"null"))
    if r < 0.06:
        return rng.choice((b"[DONE]", b" [DONE] ", b"[DONE]\n"))
    if r < 0.09:
        return orjson.dumps(rng.choice(({"error": {"message": "oom", "code": 500}}, {"error": "bad"},
                                        {"object": "error", "message": "out of memory"},
                                        {"object": "error", "detail": "x"})))
    obj: dict[str, Any] = {"id": "c1", "object": "chat.completion.chunk" if chat else "text_completion"}
    n_choices = rng.choice((0, 1, 1, 1, 1, 2))
    choices: list[Any] = []
    for _ in range(n_choices):
        if chat:
            delta: dict[str, Any] = {}
            for key in ("role", "content", "reasoning_content", "reasoning", "tool_calls"):
                if rng.random() < (0.7 if key == "content" else 0.1):
                    delta[key] = rng.choice(("", " tok", None, [{"id": "t"}], []))
            choice: Any = {"index": 0, "delta": rng.choice((delta, delta, delta, None, {}))}
        else:
            choice = {"index": 0, "text": rng.choice(("", " tok", None, " two words"))}
        if rng.random() < 0.01:
            choice = rng.choice(("text", 3, None))  # not an object: the original raises
        choices.append(choice)
    obj["choices"] = rng.choice((choices, choices, choices, choices, None)) if choices else rng.choice(([], None))
    if rng.random() < 0.25:
        usage: dict[str, Any] = {}
        if rng.random() < 0.7:
            usage["prompt_tokens"] = rng.choice((12, 0, None, "12"))
        if rng.random() < 0.9:
            usage["completion_tokens"] = rng.choice((1, 2, 5, 9, 64, 0, None))
        if chat and rng.random() < 0.2:
            usage["completion_tokens_details"] = rng.choice(({"reasoning_tokens": 3}, {"reasoning_tokens": None}, {},
                                                             None))
        obj["usage"] = rng.choice((usage, usage, None, {}))
    return orjson.dumps(obj)


NEWLINES = (b"\n", b"\n", b"\n", b"\r\n", b"\r")


def sse_body(rng: random.Random, payloads: list[bytes]) -> tuple[bytes, list[bytes]]:
    """Frame payloads as SSE with random line ends, field spellings, comments and other fields.

    Returns the body and the events one by one (for chunking per event).
    """
    events = []
    plain = rng.random() < 0.6  # most streams: the common shape, plain "data: " and "\n\n"
    for payload in payloads:
        nl = b"\n" if plain else rng.choice(NEWLINES)
        lines: list[bytes] = []
        if not plain and rng.random() < 0.1:
            lines.append(rng.choice((b": keep-alive", b"event: message", b"id: 4", b"retry: 100", b"database: x")))
        parts = payload.split(b"\n")
        if not plain and len(parts) == 1 and len(payload) > 4 and rng.random() < 0.1:
            cut = rng.randrange(1, len(payload))
            parts = [payload[:cut], payload[cut:]]  # two data lines joined by a newline: JSON whitespace
        for part in parts:
            prefix = b"data: " if plain else rng.choice((b"data: ", b"data: ", b"data:", b"data:  "))
            lines.append(b"data" if (not part and not plain and rng.random() < 0.3) else prefix + part)
        blank = nl * (2 if plain or rng.random() < 0.9 else 3)
        events.append(nl.join(lines) + blank)
    if not plain and events and rng.random() < 0.15:
        events[-1] = events[-1].rstrip(b"\r\n")  # the last event never gets its blank line
    return b"".join(events), events


def random_body(rng: random.Random, make_event: Any) -> tuple[bytes, list[bytes]]:
    r = rng.random()
    if r < 0.04:  # not SSE: one plain JSON body, or garbage
        body = rng.choice((make_event(rng), b"not json at all", b"", b"  \n"))
        return body, [body]
    if r < 0.06:
        return b"\n\n\n", [b"\n\n\n"]
    return sse_body(rng, [make_event(rng) for _ in range(rng.randint(1, 40))])


def compare(ref: Any, new: Any, chunks: list[bytes]) -> None:
    assert run(new, chunks) == run(ref, chunks), chunks


# -- tests ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_sse_decoder_matches_reference_chunk_by_chunk(seed: int) -> None:
    rng = random.Random(1000 + seed)
    for _ in range(400):
        body, events = random_body(rng, triton_event)
        chunks = chunk_per_event(rng, events) if rng.random() < 0.5 else split_randomly(rng, body)
        ref, new = RefSSE(), SSEDecoder()
        for chunk in chunks:
            assert new.feed(chunk) == ref.feed(chunk), chunks
            assert new.pending == ref.pending
        assert new.flush() == ref.flush()
        assert new.pending == ref.pending == b""


@pytest.mark.parametrize("seed", range(4))
def test_triton_parser_matches_reference(seed: int) -> None:
    rng = random.Random(2000 + seed)
    for _ in range(400):
        body, events = random_body(rng, triton_event)
        chunks = chunk_per_event(rng, events) if rng.random() < 0.5 else split_randomly(rng, body)
        compare(RefTritonParser(), TritonStreamParser(), chunks)


@pytest.mark.parametrize("chat", [True, False])
@pytest.mark.parametrize("seed", range(2))
def test_openai_parser_matches_reference(seed: int, chat: bool) -> None:
    rng = random.Random(3000 + seed + 10 * chat)
    for _ in range(400):
        body, events = random_body(rng, lambda r: openai_event(r, chat))
        chunks = chunk_per_event(rng, events) if rng.random() < 0.5 else split_randomly(rng, body)
        compare(RefOpenAIParser(chat), OpenAIStreamParser(chat), chunks)


def test_the_random_streams_reach_every_outcome() -> None:
    """The generators are only worth something if they produce each kind of result the parsers can give."""
    rng = random.Random(7)
    seen: set[str] = set()
    for _ in range(600):
        body, events = random_body(rng, triton_event)
        chunks = chunk_per_event(rng, events) if rng.random() < 0.5 else split_randomly(rng, body)
        counts, totals, raised = run(RefTritonParser(), chunks)
        if raised:
            seen.add("raised")
            continue
        assert totals is not None
        seen.update(k for k in ("error", "protocol_error", "perf", "server_input_tokens", "server_output_tokens")
                    if totals[k] is not None)
        seen.update(("completed",) if totals["completed"] else ())
        seen.update(("tail",) if totals["tail_tokens"] else ())
        seen.update(("multi-token chunk",) if any(c > 1 for c in counts) else ())
    assert seen == {"raised", "error", "protocol_error", "perf", "server_input_tokens", "server_output_tokens",
                    "completed", "tail", "multi-token chunk"}


EDGE_TRITON = {
    "crlf": [b'data: {"text_output": " a"}\r\n\r\ndata: {"text_output": " b"}\r', b'\n\r\n'],  # CR apart from LF
    "lone-cr": [b'data: {"text_output": " a"}\r\rdata: {"text_output": " b"}\r\r'],
    "multi-line": [b'data: {"text_output":\ndata: " a", "num_output_tokens": [[5]]}\n\n'],  # and [[5]]
    "multi-line-split": [b'data: {"text_output":\n', b'data: " a"}\n\n'],  # split after its first line
    "split": [b'data: {"text_', b'output": " a"}\n', b'\ndata: {"text_output": " b"}\n\n'],
    "plain-json": [b'{"text_output": "whole", "num_output_tokens": [64], "num_input_tokens": [9]}'],
    "error-after-200": [b'data: {"text_output": " a"}\n\n', b'data: {"error": "engine failed"}\n\n'],
    "malformed": [b"data: {not json\n\n", b'data: {"text_output": " a"}\n\n'],
    "empty-chunks": [b"", b'data: {"text_output": " a"}\n\n', b"", b""],
    "one-token": [b'data: {"text_output": [[" a"]], "num_output_tokens": [[1]]}\n\n'],
    "multi-token": [b'data: {"text_output": " a b c", "num_output_tokens": 3, "first_token_time_ns": [5]}\n\n'
                    b'data: {"text_output": " d", "num_output_tokens": [1], "last_token_time_ns": [[9]]}\n\n'],
    "no-final-blank": [b'data: {"text_output": " a"}\n\ndata: {"text_output": " b"}'],
    "extra-blank": [b'data: {"text_output": " a"}\n\n\n\ndata: {"text_output": " b"}\n\n'],
    "field-spellings": [b'data: {"text_output": " a"}\n\ndata:{"text_output": " b"}\n\ndata\n\n'],
}
EDGE_OPENAI = {
    "chat": [b'data: {"choices": [{"delta": {"role": "assistant", "content": ""}}]}\n\n',
             b'data: {"choices": [{"delta": {"content": "Hi"}}]}\r\n\r\n',
             b'data: {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}\n\ndata: [DONE]\n\n'],
    "continuous-usage": [
        b'data: {"choices": [{"delta": {"content": "a"}}], "usage": {"completion_tokens": 1}}\n\n'
        b'data: {"choices": [{"delta": {"content": "bcd"}}], "usage": {"completion_tokens": 4}}\n\n'],
    "error-object": [b'data: {"object": "error", "message": "out of memory", "code": 500}\n\n'],
    "plain-json": [b'{"choices": [{"text": "whole answer"}]}'],
    "plain-json-error": [b'{"error": {"message": "model not found"}}'],
    "padded-done": [b'data: {"choices": [{"delta": {"content": "a"}}]}\n\ndata:  [DONE] \n\n'],
}


@pytest.mark.parametrize("case", EDGE_TRITON)
def test_triton_edge_cases(case: str) -> None:
    chunks = EDGE_TRITON[case]
    compare(RefTritonParser(), TritonStreamParser(), chunks)
    compare(RefTritonParser(), TritonStreamParser(), [b"".join(chunks)])
    compare(RefTritonParser(), TritonStreamParser(), [bytes([c]) for c in b"".join(chunks)])


@pytest.mark.parametrize("case", EDGE_OPENAI)
def test_openai_edge_cases(case: str) -> None:
    chunks = EDGE_OPENAI[case]
    for chat in (True, False):
        compare(RefOpenAIParser(chat), OpenAIStreamParser(chat), chunks)
        compare(RefOpenAIParser(chat), OpenAIStreamParser(chat), [bytes([c]) for c in b"".join(chunks)])


def test_edge_cases_give_the_expected_figures() -> None:
    """A few edge cases checked against known answers, not only against the reference."""
    counts, totals, _ = run(TritonStreamParser(), EDGE_TRITON["crlf"])
    assert counts == [1, 1] and totals is not None and totals["completed"]
    counts, totals, _ = run(TritonStreamParser(), EDGE_TRITON["plain-json"])
    assert totals is not None and (totals["tail_tokens"], totals["server_output_tokens"]) == (64, 64)
    counts, totals, _ = run(TritonStreamParser(), EDGE_TRITON["multi-token"])
    assert counts == [4] and totals is not None
    assert totals["perf"] == {"first_token_time_ns": 5, "last_token_time_ns": 9}
    counts, totals, _ = run(TritonStreamParser(), EDGE_TRITON["malformed"])
    assert counts == [0, 1] and totals is not None and totals["protocol_error"].startswith("malformed JSON")
    counts, totals, _ = run(TritonStreamParser(), EDGE_TRITON["multi-line-split"])
    assert counts == [0, 1] and totals is not None and totals["server_output_tokens"] is None
    decoder = SSEDecoder()
    assert (decoder.feed(b"data: a\n"), decoder.feed(b"data: b\n\n")) == ([], [b"a\nb"])
    counts, totals, _ = run(OpenAIStreamParser(True), EDGE_OPENAI["chat"])
    assert counts == [0, 1, 0] and totals is not None and totals["completed"]


def test_records_from_finish_http_stream_match() -> None:
    """The transports' real call: per-chunk counts land with their chunk's arrival time, tail tokens at the end."""
    rng = random.Random(11)
    for _ in range(200):
        body, events = random_body(rng, triton_event)
        chunks = chunk_per_event(rng, events) if rng.random() < 0.5 else split_randomly(rng, body)
        times = [1_000_000 + 37_000 * i for i in range(len(chunks))]
        recs = []
        for parser in (RefTritonParser(), TritonStreamParser()):
            rec = RequestRecord(index=0, scheduled_ns=0, issued_ns=500_000)
            try:
                finish_http_stream(rec, parser, times, chunks, 0)
            except (TypeError, ValueError, AttributeError, OverflowError) as err:
                rec.error = type(err).__name__
            recs.append(dataclasses.asdict(rec))
        assert recs[0] == recs[1]
