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
from loadgen.codecs.sse import SSEDecoder
from loadgen.core.records import RequestSpec


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

    def parser(self) -> OpenAIStreamParser:
        return OpenAIStreamParser(self.chat)


class OpenAIStreamParser:
    __slots__ = ("_sse", "_totals", "_chat", "_last_usage_out", "_done")

    def __init__(self, chat: bool) -> None:
        self._sse = SSEDecoder()
        self._totals = StreamTotals()
        self._chat = chat
        self._last_usage_out: int | None = None
        self._done = False

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
        text = False
        for choice in obj.get("choices") or ():
            if self._chat:
                delta = choice.get("delta") or {}
                if delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"):
                    text = True
            elif choice.get("text"):
                text = True
        usage = obj.get("usage")
        if usage:
            if usage.get("prompt_tokens") is not None:
                t.server_input_tokens = int(usage["prompt_tokens"])
            out = usage.get("completion_tokens")
            if out is not None:
                out = int(out)
                prev = self._last_usage_out
                self._last_usage_out = out
                t.server_output_tokens = out
                if text and prev is not None:
                    # Usage on an earlier chunk too: continuous usage stats, so the difference is exact.
                    return max(out - prev, 1)
        return 1 if text else 0

    def finish(self) -> StreamTotals:
        t = self._totals
        drain_body(self._sse, t, self._event, lambda obj: "error" in obj or obj.get("object") == "error")
        t.completed = self._done and t.error is None and t.protocol_error is None
        return t
