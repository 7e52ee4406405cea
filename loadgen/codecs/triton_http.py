"""Triton's HTTP generate extension (``/v2/models/{m}/generate_stream``) for TensorRT-LLM-style string models.

The stream is SSE with one JSON object per model response and no terminator: it ends when the chunked body ends.
An error can arrive as ``data: {"error": "..."}`` after HTTP 200 (the status is fixed by the first response).
Streaming TensorRT-LLM sends only the new token(s) per response; when the model reports ``num_output_tokens`` the
count per response is taken from it (several tokens in one response are then counted as such), otherwise each
response with non-empty ``text_output`` counts as one token.

Non-streaming (``generate``, ``stream=False``) answers one JSON body holding the whole output. Its tokens all
arrive with the end of the body (first token time = last token time = end of body, so TTFT equals E2E); they are
``num_output_tokens`` when the model returns it, else the word-level count of ``text_output`` without the echoed
prompt (the codec asks for ``exclude_input_in_output`` where the model declares it).
"""

from __future__ import annotations

from typing import Any

import orjson

from loadgen.codecs.base import StreamTotals, drain_body, scalar, whole_text_tokens
from loadgen.codecs.sse import SSEStreamParser
from loadgen.core.records import RequestSpec

# Optional inputs of the TensorRT-LLM ensemble/BLS interface that the codec sets when the model declares them.
OPTIONAL_FLAGS = ("return_num_input_tokens", "return_num_output_tokens")
PERF_FIELDS = ("arrival_time_ns", "first_scheduled_time_ns", "first_token_time_ns", "last_token_time_ns",
               "kv_cache_alloc_new_blocks", "kv_cache_reused_blocks")
_PERF_SET = frozenset(PERF_FIELDS)
_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


class TritonGenerateCodec:
    name = "triton-http"

    def __init__(self, model: str, *, model_inputs: set[str] | None = None, stream: bool = True,
                 perf_metrics: bool = False, extra: dict[str, Any] | None = None,
                 parameters: dict[str, Any] | None = None) -> None:
        self.model = model
        self.stream = stream
        self.model_inputs = model_inputs
        self.perf_metrics = perf_metrics and (model_inputs is None or "return_perf_metrics" in model_inputs)
        self.extra = dict(extra or {})
        self.parameters = dict(parameters or {})
        endpoint = "generate_stream" if stream else "generate"
        self.path = f"/v2/models/{model}/{endpoint}"

    def _declares(self, name: str) -> bool:
        return self.model_inputs is not None and name in self.model_inputs

    def body(self, spec: RequestSpec) -> bytes:
        body: dict[str, Any] = {"text_input": spec.prompt, "max_tokens": spec.max_tokens}
        if self.model_inputs is None or "stream" in self.model_inputs:
            body["stream"] = self.stream
        if spec.min_tokens and self._declares("min_tokens"):
            body["min_tokens"] = spec.min_tokens
        if self.stream is False and self._declares("exclude_input_in_output"):
            body["exclude_input_in_output"] = True
        for flag in OPTIONAL_FLAGS:
            if self._declares(flag):
                body[flag] = True
        if self.perf_metrics:
            body["return_perf_metrics"] = True
        body.update(self.extra)
        body.update(spec.params)
        if self.parameters:
            body["parameters"] = self.parameters
        return orjson.dumps(body)

    def parser(self, spec: RequestSpec | None = None) -> TritonStreamParser:
        """A parser for one response; non-streaming, it needs the prompt when the model may echo it."""
        if self.stream:
            return TritonStreamParser()
        echoed = spec is not None and not self._declares("exclude_input_in_output")
        return TritonStreamParser(whole=True, prompt=spec.prompt if echoed else None)


class TritonStreamParser(SSEStreamParser):
    """Parses the generate_stream body; also accepts a plain JSON body (``generate``, or an error before SSE).

    Runs once per event after the response ended, on the event loop (RESULTS.md, "Where the CPU goes"), so the
    common event (text, maybe a count, as a plain value or a one-element tensor) is read with a few dict look-ups;
    the perf fields are only looked for when one set test says the event has any. Results, and the order in
    which state changes (so a bad value raises at the same point), are those of the plain reading of the spec.
    """

    __slots__ = ("_totals", "_out", "_in", "_whole", "_prompt")

    def __init__(self, whole: bool = False, prompt: str | None = None) -> None:
        """``whole``: the response is not streamed, so a text without a count carries every output token."""
        super().__init__()
        self._totals = StreamTotals()
        self._out: int | None = None
        self._in: int | None = None
        self._whole = whole
        self._prompt = prompt

    def _event(self, payload: bytes) -> int:
        try:
            obj = _loads(payload)
        except _JSONDecodeError:
            self._totals.protocol_error = f"malformed JSON in stream: {payload[:80]!r}"
            return 0
        if type(obj) is not dict:  # orjson builds plain dicts only
            self._totals.protocol_error = f"unexpected stream event: {payload[:80]!r}"
            return 0
        if "error" in obj:
            self._totals.error = str(obj["error"])
            return 0
        n_in = obj.get("num_input_tokens")
        if n_in is not None:
            if type(n_in) is list:
                n_in = n_in[0] if n_in and type(n_in[0]) is not list else scalar(n_in)
            if n_in is not None:
                self._in = int(n_in)
        if not _PERF_SET.isdisjoint(obj):
            self._perf(obj)
        n_out = obj.get("num_output_tokens")
        if n_out is not None:
            if type(n_out) is list:
                n_out = n_out[0] if n_out and type(n_out[0]) is not list else scalar(n_out)
            if n_out is not None:
                n = n_out if type(n_out) is int else int(n_out)
                self._out = (self._out or 0) + n
                return n
        text = obj.get("text_output")
        if type(text) is list:
            text = text[0] if text and type(text[0]) is not list else scalar(text)
        if self._whole:
            return whole_text_tokens(text, self._prompt)
        return 1 if text else 0

    def _perf(self, obj: dict[str, Any]) -> None:
        t = self._totals
        for key in PERF_FIELDS:
            if key in obj:
                if t.perf is None:
                    t.perf = {}
                v = scalar(obj[key])
                if v is not None:
                    t.perf[key] = int(v)

    def finish(self) -> StreamTotals:
        t = self._totals
        # A body that is not SSE at all is a plain JSON response (non-streaming generate, or an error object).
        drain_body(self._sse, t, self._event, lambda obj: True)
        t.server_input_tokens = self._in
        t.server_output_tokens = self._out
        t.completed = t.error is None and t.protocol_error is None
        return t
