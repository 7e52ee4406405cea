"""Triton gRPC streaming (``ModelStreamInfer``) for TensorRT-LLM-style string models, as numpy tensors.

The transport turns ``encode``'s tensors into tritonclient ``InferInput`` objects and hands each streamed response
to ``GrpcStreamParser.feed_response`` through a getter (``name -> ndarray | None``) so this module needs no
tritonclient import. Shapes follow the model: with ``max_batch_size > 0`` every tensor gets a leading batch dim.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from loadgen.codecs.base import StreamTotals
from loadgen.codecs.triton_http import OPTIONAL_FLAGS, PERF_FIELDS
from loadgen.core.records import RequestSpec

# Triton datatypes of the TensorRT-LLM interface's inputs.
INPUT_TYPES: dict[str, str] = {
    "text_input": "BYTES", "max_tokens": "INT32", "stream": "BOOL", "min_tokens": "INT32", "end_id": "INT32",
    "pad_id": "INT32", "top_k": "INT32", "beam_width": "INT32", "top_p": "FP32", "temperature": "FP32",
    "length_penalty": "FP32", "repetition_penalty": "FP32", "presence_penalty": "FP32",
    "frequency_penalty": "FP32", "seed": "UINT64", "bad_words": "BYTES", "stop_words": "BYTES",
    "exclude_input_in_output": "BOOL", "return_num_input_tokens": "BOOL", "return_num_output_tokens": "BOOL",
    "return_perf_metrics": "BOOL", "return_log_probs": "BOOL",
}
_NP = {"BYTES": np.object_, "INT32": np.int32, "INT64": np.int64, "UINT64": np.uint64, "BOOL": np.bool_,
       "FP32": np.float32, "FP16": np.float16}
Tensor = tuple[str, np.ndarray, str]


class TritonGrpcCodec:
    name = "triton-grpc"

    def __init__(self, model: str, *, model_inputs: dict[str, str] | None = None, batched: bool = False,
                 perf_metrics: bool = False, extra: dict[str, Any] | None = None) -> None:
        """``model_inputs``: input name -> Triton datatype, from the model's metadata (None: send the minimum)."""
        self.model = model
        self.model_inputs = model_inputs
        self.batched = batched
        self.perf_metrics = perf_metrics and (model_inputs is None or "return_perf_metrics" in model_inputs)
        self.extra = dict(extra or {})

    def _tensor(self, name: str, value: Any) -> Tensor:
        dtype = (self.model_inputs or {}).get(name) or INPUT_TYPES.get(name)
        if dtype is None:
            dtype = "BYTES" if isinstance(value, str) else "FP32" if isinstance(value, float) else "INT32"
        if dtype == "BYTES":
            value = value.encode() if isinstance(value, str) else value
        arr = np.array([value], dtype=_NP.get(dtype, np.object_))
        if self.batched:
            arr = arr.reshape(1, 1)
        return name, arr, dtype

    def encode(self, spec: RequestSpec) -> list[Tensor]:
        declared = self.model_inputs
        values: dict[str, Any] = {"text_input": spec.prompt, "max_tokens": spec.max_tokens}
        if declared is None or "stream" in declared:
            values["stream"] = True
        if spec.min_tokens and declared is not None and "min_tokens" in declared:
            values["min_tokens"] = spec.min_tokens
        for flag in OPTIONAL_FLAGS:
            if declared is not None and flag in declared:
                values[flag] = True
        if self.perf_metrics:
            values["return_perf_metrics"] = True
        values.update(self.extra)
        values.update(spec.params)
        return [self._tensor(k, v) for k, v in values.items()]

    def parser(self, spec: RequestSpec | None = None) -> GrpcStreamParser:
        return GrpcStreamParser()


class GrpcStreamParser:
    __slots__ = ("_totals", "_out", "_in")

    def __init__(self) -> None:
        self._totals = StreamTotals()
        self._out: int | None = None
        self._in: int | None = None

    def feed_response(self, get: Callable[[str], np.ndarray | None]) -> int:
        """One streamed response: return its output token count."""
        n_in = get("num_input_tokens")
        if n_in is not None and n_in.size:
            self._in = int(n_in.reshape(-1)[0])
        self._read_perf(get)
        n_out = get("num_output_tokens")
        if n_out is not None and n_out.size:
            n = int(n_out.reshape(-1)[0])
            self._out = (self._out or 0) + n
            return n
        text = get("text_output")
        if text is None or not text.size:
            return 0
        first = text.reshape(-1)[0]
        return 1 if first else 0

    def _read_perf(self, get: Callable[[str], np.ndarray | None]) -> None:
        for key in PERF_FIELDS:
            v = get(key)
            if v is not None and v.size:
                if self._totals.perf is None:
                    self._totals.perf = {}
                self._totals.perf[key] = int(v.reshape(-1)[0])

    def error(self, message: str) -> None:
        self._totals.error = message

    def finish(self, completed: bool) -> StreamTotals:
        t = self._totals
        t.server_input_tokens = self._in
        t.server_output_tokens = self._out
        t.completed = completed and t.error is None
        return t
