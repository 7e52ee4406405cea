"""KServe v2 inference over HTTP (``POST /v2/models/{m}/infer``) with the TensorRT-LLM string interface.

The request is the tensor protocol in JSON: ``text_input`` (BYTES) and ``max_tokens`` (INT32), each one element
shaped ``[1, 1]`` for a batching model (``max_batch_size > 0``) or ``[1]`` otherwise, plus the optional flags the
model declares (``min_tokens``, ``exclude_input_in_output``, the token counts, the perf metrics). The answer is one
JSON body (``outputs``: ``text_output``, ``num_output_tokens``, ...): KServe ``/infer`` does not stream, and
rejects decoupled models, so the probe checks the model's transaction policy first.

Like the other non-streaming responses, every output token arrives with the end of the body: the first and last
token times are that moment and TTFT equals E2E. An error before inference comes back as ``{"error": "..."}``
with a 4xx/5xx status, which the transports record as an HTTP error (the body is never parsed then).
"""

from __future__ import annotations

from typing import Any

import orjson

from loadgen.codecs.base import StreamTotals, scalar, whole_text_tokens
from loadgen.codecs.triton_grpc import INPUT_TYPES
from loadgen.codecs.triton_http import OPTIONAL_FLAGS, PERF_FIELDS
from loadgen.core.records import RequestSpec


class KServeInferCodec:
    name = "kserve-infer"

    def __init__(self, model: str, *, model_inputs: dict[str, str] | None = None, batched: bool = True,
                 perf_metrics: bool = False, extra: dict[str, Any] | None = None,
                 parameters: dict[str, Any] | None = None) -> None:
        """``model_inputs``: input name -> datatype from the model's metadata (None: send the two required)."""
        self.model = model
        self.model_inputs = model_inputs
        self.batched = batched
        self.perf_metrics = perf_metrics and self._declares("return_perf_metrics")
        self.extra = dict(extra or {})
        self.parameters = dict(parameters or {})
        self.path = f"/v2/models/{model}/infer"

    def _declares(self, name: str) -> bool:
        return self.model_inputs is not None and name in self.model_inputs

    def _tensor(self, name: str, value: Any) -> dict[str, Any]:
        dtype = (self.model_inputs or {}).get(name) or INPUT_TYPES.get(name)
        if dtype is None:
            dtype = "BYTES" if isinstance(value, str) else "FP32" if isinstance(value, float) else "INT32"
        data = value if isinstance(value, list) else [value]
        shape = [1, len(data)] if self.batched else [len(data)]
        return {"name": name, "shape": shape, "datatype": dtype, "data": data}

    def body(self, spec: RequestSpec) -> bytes:
        values: dict[str, Any] = {"text_input": spec.prompt, "max_tokens": spec.max_tokens}
        if self._declares("stream"):
            values["stream"] = False
        if spec.min_tokens and self._declares("min_tokens"):
            values["min_tokens"] = spec.min_tokens
        if self._declares("exclude_input_in_output"):
            values["exclude_input_in_output"] = True
        for flag in OPTIONAL_FLAGS:
            if self._declares(flag):
                values[flag] = True
        if self.perf_metrics:
            values["return_perf_metrics"] = True
        values.update(self.extra)
        values.update(spec.params)
        body: dict[str, Any] = {"id": str(spec.index), "inputs": [self._tensor(k, v) for k, v in values.items()]}
        if self.parameters:
            body["parameters"] = self.parameters
        return orjson.dumps(body)

    def parser(self, spec: RequestSpec | None = None) -> KServeInferParser:
        echoed = spec is not None and not self._declares("exclude_input_in_output")
        return KServeInferParser(prompt=spec.prompt if echoed else None)


class KServeInferParser:
    """Keeps the body's bytes (a read boundary means nothing in a JSON body) and reads them once it has ended."""

    __slots__ = ("_chunks", "_prompt")

    def __init__(self, prompt: str | None = None) -> None:
        self._chunks: list[bytes] = []
        self._prompt = prompt  # the prompt, when the model may echo it in text_output

    def feed(self, data: bytes) -> int:
        self._chunks.append(data)
        return 0

    def finish(self) -> StreamTotals:
        t = StreamTotals()
        body = b"".join(self._chunks)
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            t.protocol_error = f"infer response is not JSON: {body[:80]!r}"
            return t
        if not isinstance(obj, dict):
            t.protocol_error = f"infer response is not a JSON object: {body[:80]!r}"
        elif "error" in obj:
            t.error = str(obj["error"])
        else:
            self._outputs(obj, t)
        return t

    def _outputs(self, obj: dict[str, Any], t: StreamTotals) -> None:
        outputs = obj.get("outputs")
        if not isinstance(outputs, list):
            t.protocol_error = "infer response has no outputs list"
            return
        data = {o["name"]: o.get("data") for o in outputs if isinstance(o, dict) and "name" in o}
        if "text_output" not in data:
            t.protocol_error = f"infer response has no text_output (outputs: {', '.join(sorted(data)) or 'none'})"
            return
        n_in = scalar(data.get("num_input_tokens"))
        if n_in is not None:
            t.server_input_tokens = int(n_in)
        perf = {key: int(v) for key in PERF_FIELDS if (v := scalar(data.get(key))) is not None}
        if perf:
            t.perf = perf
        n_out = scalar(data.get("num_output_tokens"))
        if n_out is not None:
            t.server_output_tokens = int(n_out)
            t.tail_tokens = int(n_out)
        else:
            t.tail_tokens = whole_text_tokens(scalar(data["text_output"]), self._prompt)
        t.completed = True
