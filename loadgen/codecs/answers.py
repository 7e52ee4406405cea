"""The text of an answer, for multi-turn sessions: the next turn resends what the server actually said.

Why a separate pass: the codecs' parsers count tokens on the hot path and keep no text (a plain level never needs
it). A session turn needs the answer text once the response has ended, so ``AnswerCodec`` wraps the backend's
codec for a session level: its parser forwards every chunk (or gRPC response) to the codec's own parser and keeps
the bytes (the same objects the transport already holds, bounded by the response size bound), and ``finish``
reads the text out of them once: OpenAI chat ``delta.content`` (reasoning deltas are not part of the answer a
client sends back), OpenAI completions ``text``, Triton ``text_output`` (streamed events, a plain ``generate``
body without the echoed prompt, KServe ``outputs``, gRPC responses). The text lands in ``spec.answer`` (a list
the session driver passed in) and nothing else changes: records, counts and timings are the codec's own.

A backend whose answers carry no text leaves ``spec.answer`` empty; the session then uses text of the answer's
token count (``loadgen.core.sessions``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from loadgen.codecs.base import scalar
from loadgen.codecs.sse import SSEDecoder

TEXT_KINDS = {"openai-chat": "chat", "openai-completions": "completion", "triton-http": "triton",
              "triton-generate": "triton", "kserve-infer": "kserve", "triton-grpc": "grpc"}


def _text_of(kind: str, obj: Any) -> str:
    if not isinstance(obj, dict):
        return ""
    if kind == "chat":
        return "".join(str((c.get("delta") or c.get("message") or {}).get("content") or "")
                       for c in obj.get("choices") or () if isinstance(c, dict))
    if kind == "completion":
        return "".join(str(c.get("text") or "") for c in obj.get("choices") or () if isinstance(c, dict))
    if kind == "kserve":
        for out in obj.get("outputs") or ():
            if isinstance(out, dict) and out.get("name") == "text_output":
                v = scalar(out.get("data"))
                return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v or "")
        return ""
    v = scalar(obj.get("text_output"))
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v or "")


def answer_text(kind: str, chunks: list[bytes], prompt: str | None = None) -> str:
    """The answer's text in an HTTP body (SSE events or one JSON object), for a ``TEXT_KINDS`` value."""
    body = b"".join(chunks)
    stripped = body.strip()
    parts: list[str] = []
    if stripped[:1] == b"{":  # one JSON body: a non-streamed response
        try:
            parts.append(_text_of(kind, orjson.loads(stripped)))
        except orjson.JSONDecodeError:
            return ""
    else:
        sse = SSEDecoder()
        for payload in sse.feed(body) + sse.feed(b"\n\n"):
            try:
                parts.append(_text_of(kind, orjson.loads(payload)))
            except orjson.JSONDecodeError:
                continue  # [DONE], or a malformed event (the codec's own parser reports it)
    text = "".join(parts)
    if prompt and text.startswith(prompt):  # a Triton model that echoes the prompt
        text = text[len(prompt):]
    return text


class _HttpAnswerParser:
    __slots__ = ("_inner", "_chunks", "_spec", "_kind")

    def __init__(self, inner: Any, spec: Any, kind: str) -> None:
        self._inner, self._spec, self._kind = inner, spec, kind
        self._chunks: list[bytes] = []

    def feed(self, data: bytes) -> int:
        self._chunks.append(data)
        return self._inner.feed(data)

    def finish(self) -> Any:
        totals = self._inner.finish()
        try:
            text = answer_text(self._kind, self._chunks, self._spec.prompt)
        except Exception:  # the answer text is a convenience: a body it cannot read leaves the count-based text
            text = ""
        if text:
            self._spec.answer.append(text)
        self._chunks = []
        return totals


class _GrpcAnswerParser:
    __slots__ = ("_inner", "_spec")

    def __init__(self, inner: Any, spec: Any) -> None:
        self._inner, self._spec = inner, spec

    def feed_response(self, get: Callable[[str], Any]) -> int:
        text = get("text_output")
        if text is not None and getattr(text, "size", 0):
            v = text.reshape(-1)[0]
            self._spec.answer.append(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v))
        return self._inner.feed_response(get)

    def error(self, message: str) -> None:
        self._inner.error(message)

    def finish(self, completed: bool) -> Any:
        return self._inner.finish(completed)


class AnswerCodec:
    """The backend's codec, with parsers that also keep the answer's text when ``spec.answer`` is a list."""

    def __init__(self, codec: Any, kind: str) -> None:
        self._codec = codec
        self._kind = TEXT_KINDS.get(kind)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._codec, name)

    def parser(self, spec: Any = None) -> Any:
        inner = self._codec.parser(spec)
        if self._kind is None or spec is None or getattr(spec, "answer", None) is None:
            return inner
        if self._kind == "grpc":
            return _GrpcAnswerParser(inner, spec)
        return _HttpAnswerParser(inner, spec, self._kind)


def keep_answers(backend: Any) -> None:
    """Wrap ``backend.codec`` (once probed) so that session turns get their answer text; idempotent."""
    codec = getattr(backend, "codec", None)
    if codec is not None and not isinstance(codec, AnswerCodec):
        backend.codec = AnswerCodec(codec, getattr(backend, "name", ""))
