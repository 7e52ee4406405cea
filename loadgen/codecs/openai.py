"""OpenAI-compatible ``/v1/completions`` and ``/v1/chat/completions`` streaming (vLLM, trtllm-serve, SGLang, TGI).

SSE chunks ``data: {...}`` end with ``data: [DONE]``. ``stream_options.include_usage`` adds a last chunk with
``usage`` (the server's token counts). To honour the requested output length the codec sends ``ignore_eos`` and
``min_tokens`` (vLLM, SGLang, TensorRT-LLM accept them; turn them off for servers that reject unknown fields).

Token counting per chunk: with ``continuous_usage_stats`` (vLLM) every chunk carries the running
``completion_tokens`` and the difference is exact; otherwise a chunk with non-empty text counts as one token and the
server's final ``usage`` is kept beside it (a mismatch is reported: it means chunks carried several tokens).
"""

from __future__ import annotations

from typing import Any

import orjson

from loadgen.codecs.base import StreamTotals, drain_body
from loadgen.codecs.sse import SSEStreamParser
from loadgen.core.records import RequestSpec

_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


class OpenAICodec:
    def __init__(self, model: str, *, chat: bool, ignore_eos: bool = True, send_min_tokens: bool = True,
                 include_usage: bool = True, continuous_usage: bool = False,
                 extra: dict[str, Any] | None = None) -> None:
        self.model = model
        self.chat = chat
        self.name = "openai-chat" if chat else "openai-completions"
        self.path = "/v1/chat/completions" if chat else "/v1/completions"
        self.ignore_eos = ignore_eos
        self.send_min_tokens = send_min_tokens
        self.include_usage = include_usage
        self.continuous_usage = continuous_usage
        self.extra = dict(extra or {})

    def body(self, spec: RequestSpec) -> bytes:
        body: dict[str, Any] = {"model": self.model, "stream": True, "max_tokens": spec.max_tokens}
        if self.chat:
            body["messages"] = [{"role": "user", "content": spec.prompt}]
        else:
            body["prompt"] = spec.prompt
        if self.include_usage or self.continuous_usage:
            opts: dict[str, Any] = {"include_usage": True}
            if self.continuous_usage:
                opts["continuous_usage_stats"] = True
            body["stream_options"] = opts
        if self.ignore_eos:
            body["ignore_eos"] = True
        if self.send_min_tokens and spec.min_tokens:
            body["min_tokens"] = spec.min_tokens
        body.update(self.extra)
        body.update(spec.params)
        return orjson.dumps(body)

    def parser(self, spec: RequestSpec | None = None) -> OpenAIStreamParser:
        return OpenAIStreamParser(self.chat)


class OpenAIStreamParser(SSEStreamParser):
    """Parses an OpenAI stream. Runs once per event after the response ended, on the event loop, so the common
    chunk costs one JSON parse and a few dict look-ups; the results are those of the plain reading.

    Reasoning models (DeepSeek-R1 style on vLLM, SGLang) stream their thinking as ``delta.reasoning_content`` (or
    ``delta.reasoning``) before the answer's ``delta.content``. Every token counts as output (TTFT is the first
    token of either kind), and the parser also notes the ordinal (0-based, in the order counted) of the first
    reasoning token and of the first answer token, and how many tokens were reasoning: ``totals.extra["reasoning"]``
    (only when the stream had reasoning). The transport finds the chunk that carried each ordinal in the record's
    ``chunk_tokens`` and so its arrival time (``first_reasoning_ns``, ``first_answer_ns``); counting tokens keeps
    the per-event cost at one addition, where numbering the network chunks would cost a call per chunk.
    """

    __slots__ = ("_totals", "_chat", "_last_usage_out", "_done", "_ntok", "_first_r", "_first_a", "_r_tokens",
                 "_server_r_tokens")

    def __init__(self, chat: bool) -> None:
        super().__init__()
        self._totals = StreamTotals()
        self._chat = chat
        self._last_usage_out: int | None = None
        self._done = False
        self._ntok = 0  # output tokens counted so far
        self._first_r: int | None = None  # ordinal of the first reasoning token
        self._first_a: int | None = None  # ordinal of the first answer token
        self._r_tokens = 0
        self._server_r_tokens: int | None = None

    def _event(self, payload: bytes) -> int:
        try:
            obj = _loads(payload)
        except _JSONDecodeError:
            # The terminator is not JSON, so it is looked for only here, once a stream instead of every event.
            if payload.strip() == b"[DONE]":
                self._done = True
            else:
                self._totals.protocol_error = f"malformed JSON in stream: {payload[:80]!r}"
            return 0
        if type(obj) is not dict:  # orjson builds plain dicts only
            self._totals.protocol_error = f"unexpected stream event: {payload[:80]!r}"
            return 0
        if "error" in obj or obj.get("object") == "error":
            err = obj.get("error", obj)
            self._totals.error = str(err.get("message", err)) if isinstance(err, dict) else str(err)
            return 0
        text = False
        reasoning = False  # the event's tokens are reasoning (thinking): no choice brought answer text
        choices = obj.get("choices")
        if choices:
            if self._chat:
                for choice in choices:
                    delta = choice.get("delta")
                    if delta:
                        if delta.get("content") or delta.get("tool_calls"):
                            text = True
                        elif delta.get("reasoning_content") or delta.get("reasoning"):
                            reasoning = True
                if reasoning:
                    reasoning = not text
                    text = True
            else:
                for choice in choices:
                    if choice.get("text"):
                        text = True
        n = 1 if text else 0
        usage = obj.get("usage")
        if usage:
            t = self._totals
            if usage.get("prompt_tokens") is not None:
                t.server_input_tokens = int(usage["prompt_tokens"])
            details = usage.get("completion_tokens_details")
            if type(details) is dict and details.get("reasoning_tokens") is not None:
                self._server_r_tokens = int(details["reasoning_tokens"])
            out = usage.get("completion_tokens")
            if out is not None:
                out = int(out)
                prev = self._last_usage_out
                self._last_usage_out = out
                t.server_output_tokens = out
                if text and prev is not None:
                    # Usage on an earlier chunk too: continuous usage stats, so the difference is exact.
                    n = max(out - prev, 1)
        if text:
            if reasoning:
                self._r_tokens += n
                if self._first_r is None:
                    self._first_r = self._ntok
            elif self._first_a is None:
                self._first_a = self._ntok
            self._ntok += n
        return n

    def finish(self) -> StreamTotals:
        t = self._totals
        drain_body(self._sse, t, self._event, lambda obj: "error" in obj or obj.get("object") == "error")
        t.completed = self._done and t.error is None and t.protocol_error is None
        if self._first_r is not None or self._server_r_tokens:
            t.extra["reasoning"] = {
                "first_reasoning_token": self._first_r, "first_answer_token": self._first_a,
                "reasoning_tokens": self._server_r_tokens if self._server_r_tokens is not None else self._r_tokens,
            }
        return t
