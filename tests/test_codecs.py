"""Codec tests: SSE framing, Triton generate_stream and OpenAI stream parsing, request bodies."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from loadgen.codecs.base import parse_extra, scalar
from loadgen.codecs.openai import OpenAICodec
from loadgen.codecs.sse import SSEDecoder
from loadgen.codecs.triton_grpc import TritonGrpcCodec
from loadgen.codecs.triton_http import TritonGenerateCodec
from loadgen.core.records import RequestSpec
from loadgen.errors import UsageError


def _sse(*objs: object) -> bytes:
    return b"".join(b"data: " + (o if isinstance(o, bytes) else orjson.dumps(o)) + b"\n\n" for o in objs)


class TestSSE:
    def test_events_split_across_chunks_belong_to_the_completing_chunk(self):
        d = SSEDecoder()
        assert d.feed(b"data: {\"a\"") == []
        assert d.feed(b": 1}\n") == []
        assert d.feed(b"\ndata: 2\n\ndata: 3") == [b'{"a": 1}', b"2"]
        assert d.flush() == [b"3"]

    def test_crlf_and_lone_cr_line_ends(self):
        d = SSEDecoder()
        assert d.feed(b"data: x\r\n\r\ndata: y\r") == [b"x"]
        assert d.feed(b"\n\r\n") == [b"y"]
        d2 = SSEDecoder()
        # A CR at the end of a chunk may be half of a CRLF, so the event it ends waits for the next byte.
        assert d2.feed(b"data: a\r\rdata: b\r\r") == [b"a"]
        assert d2.flush() == [b"b"]

    def test_multiline_data_comments_and_other_fields(self):
        d = SSEDecoder()
        out = d.feed(b": keep-alive\n\nevent: msg\nid: 7\ndata: one\ndata: two\n\ndatabase: no\n\n")
        assert out == [b"one\ntwo"]

    def test_data_without_space_and_empty_data(self):
        d = SSEDecoder()
        assert d.feed(b"data:x\n\ndata\n\n") == [b"x", b""]


class TestTritonHttp:
    def test_body_sets_only_declared_optional_inputs(self):
        spec = RequestSpec(index=0, prompt="hello world", input_tokens=2, max_tokens=8, min_tokens=8,
                           params={"temperature": 0.0})
        bare = orjson.loads(TritonGenerateCodec("ensemble").body(spec))
        assert bare == {"text_input": "hello world", "max_tokens": 8, "stream": True, "temperature": 0.0}
        declared = {"text_input", "max_tokens", "stream", "min_tokens", "return_num_input_tokens",
                    "return_num_output_tokens", "return_perf_metrics"}
        codec = TritonGenerateCodec("m", model_inputs=declared, perf_metrics=True, parameters={"p": 1})
        body = orjson.loads(codec.body(spec))
        assert body["min_tokens"] == 8 and body["return_num_output_tokens"] is True
        assert body["return_perf_metrics"] is True and body["parameters"] == {"p": 1}
        assert codec.path == "/v2/models/m/generate_stream"

    def test_counts_from_text_when_server_gives_no_counts(self):
        p = TritonGenerateCodec("m").parser()
        assert p.feed(_sse({"text_output": " a"}, {"text_output": " b"})) == 2
        assert p.feed(_sse({"text_output": ""})) == 0  # an empty final response is not a token
        t = p.finish()
        assert t.completed and t.error is None and t.server_output_tokens is None

    def test_server_counts_are_summed_per_response_and_multi_token_responses_count(self):
        p = TritonGenerateCodec("m").parser()
        assert p.feed(_sse({"text_output": " a", "num_output_tokens": 1, "num_input_tokens": [12]})) == 1
        assert p.feed(_sse({"text_output": " b c", "num_output_tokens": [[2]],
                            "first_token_time_ns": 5, "last_token_time_ns": 9})) == 2
        t = p.finish()
        assert (t.server_input_tokens, t.server_output_tokens) == (12, 3)
        assert t.perf == {"first_token_time_ns": 5, "last_token_time_ns": 9}

    def test_error_after_200_inside_the_stream(self):
        p = TritonGenerateCodec("m").parser()
        assert p.feed(_sse({"text_output": " a"}) + _sse({"error": "engine failed"})) == 1
        t = p.finish()
        assert t.error == "engine failed" and not t.completed

    def test_malformed_json_is_a_protocol_error(self):
        p = TritonGenerateCodec("m").parser()
        p.feed(b"data: {not json\n\n")
        assert p.finish().protocol_error.startswith("malformed JSON")

    def test_last_event_without_blank_line_counts_as_tail(self):
        p = TritonGenerateCodec("m").parser()
        assert p.feed(b'data: {"text_output": " a"}\n\ndata: {"text_output": " b"}') == 1
        assert p.finish().tail_tokens == 1

    def test_plain_json_error_body(self):
        p = TritonGenerateCodec("m").parser()
        p.feed(b'{"error": "unexpected inference input \'x\'"}')
        assert "unexpected inference input" in p.finish().error


class TestOpenAI:
    def spec(self) -> RequestSpec:
        return RequestSpec(index=3, prompt="say hi", input_tokens=2, max_tokens=16, min_tokens=16)

    def test_completions_and_chat_bodies(self):
        comp = orjson.loads(OpenAICodec("m", chat=False).body(self.spec()))
        assert comp["prompt"] == "say hi" and comp["stream"] is True and comp["ignore_eos"] is True
        assert comp["stream_options"] == {"include_usage": True} and comp["min_tokens"] == 16
        chat = orjson.loads(OpenAICodec("m", chat=True, ignore_eos=False, send_min_tokens=False,
                                        continuous_usage=True).body(self.spec()))
        assert chat["messages"] == [{"role": "user", "content": "say hi"}]
        assert "ignore_eos" not in chat and "min_tokens" not in chat
        assert chat["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}

    def test_chat_role_chunk_is_not_a_token_and_usage_is_kept(self):
        p = OpenAICodec("m", chat=True).parser()
        n = p.feed(_sse({"choices": [{"delta": {"role": "assistant", "content": ""}}]},
                        {"choices": [{"delta": {"content": "Hi"}}]},
                        {"choices": [{"delta": {"content": " there"}}]}))
        assert n == 2
        assert p.feed(_sse({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}, b"[DONE]")) == 0
        t = p.finish()
        assert t.completed and (t.server_input_tokens, t.server_output_tokens) == (5, 3)

    def test_continuous_usage_gives_exact_per_chunk_counts(self):
        p = OpenAICodec("m", chat=False).parser()
        counts = [p.feed(_sse({"choices": [{"text": "a"}], "usage": {"completion_tokens": 1}})),
                  p.feed(_sse({"choices": [{"text": "bcd"}], "usage": {"completion_tokens": 4}})),
                  p.feed(_sse({"choices": [{"text": "e"}], "usage": {"completion_tokens": 5}}))]
        assert counts == [1, 3, 1]

    def test_usage_only_on_the_last_text_chunk_is_not_a_burst(self):
        p = OpenAICodec("m", chat=False).parser()
        p.feed(_sse({"choices": [{"text": "a"}]}))
        assert p.feed(_sse({"choices": [{"text": "b"}], "usage": {"completion_tokens": 2}})) == 1

    def test_missing_done_means_incomplete(self):
        p = OpenAICodec("m", chat=False).parser()
        p.feed(_sse({"choices": [{"text": "a"}]}))
        assert p.finish().completed is False

    def test_error_object_in_stream(self):
        p = OpenAICodec("m", chat=False).parser()
        p.feed(_sse({"object": "error", "message": "out of memory", "code": 500}))
        assert p.finish().error == "out of memory"

    def test_non_streamed_json_body_is_reported(self):
        p = OpenAICodec("m", chat=False).parser()
        p.feed(b'{"choices": [{"text": "whole answer"}]}')
        assert "one JSON body" in p.finish().protocol_error


class TestTritonGrpc:
    def test_tensors_follow_declared_types_and_batching(self):
        spec = RequestSpec(index=0, prompt="hé", input_tokens=1, max_tokens=4, min_tokens=4)
        inputs = {"text_input": "BYTES", "max_tokens": "INT32", "stream": "BOOL", "min_tokens": "INT32",
                  "return_num_output_tokens": "BOOL"}
        tensors = {n: (a, d) for n, a, d in TritonGrpcCodec("m", model_inputs=inputs, batched=True).encode(spec)}
        assert tensors["text_input"][0].shape == (1, 1) and tensors["text_input"][0][0, 0] == "hé".encode()
        assert tensors["max_tokens"][0].dtype == np.int32 and tensors["min_tokens"][0][0, 0] == 4
        assert tensors["return_num_output_tokens"][1] == "BOOL"
        unbatched = {n: a for n, a, _ in TritonGrpcCodec("m").encode(spec)}
        assert unbatched["max_tokens"].shape == (1,) and "min_tokens" not in unbatched

    def test_response_parsing(self):
        p = TritonGrpcCodec("m").parser()
        outs = [{"text_output": np.array([b" a"], dtype=object)},
                {"text_output": np.array([b" b c"], dtype=object), "num_output_tokens": np.array([2])},
                {"text_output": np.array([b""], dtype=object)}]
        assert [p.feed_response(o.get) for o in outs] == [1, 2, 0]
        t = p.finish(True)
        assert t.completed and t.server_output_tokens == 2


def test_scalar_and_extra_parsing():
    assert scalar([[7]]) == 7 and scalar(3) == 3 and scalar([]) is None
    assert parse_extra(["temperature=0.5", "stop=[\"x\"]", "name=abc"], "--extra") == {
        "temperature": 0.5, "stop": ["x"], "name": "abc"}
    with pytest.raises(UsageError, match="--extra"):
        parse_extra(["novalue"], "--extra")
