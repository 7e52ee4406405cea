"""What parsing a finished streamed response costs the event loop, per response and per SSE event.

``loadgen run`` keeps the raw network chunks of a response while it streams and parses them once it has ended
(``loadgen.transport.common.finish_http_stream``): still on the one event loop, so at a few thousand requests a
second the parse is a sizeable share of the core (benchmarks/RESULTS.md, "Where the CPU goes"). This times that
exact call (a fresh parser, every chunk fed in arrival order, per-chunk token counts recorded, ``finish``) on
synthetic bodies of 64 tokens:

* ``triton-1``: Triton generate_stream, ``data: {"text_output":" tok"}`` (what stream_server.c sends), one event
  per network chunk;
* ``triton-8``: the same events, eight to a network chunk (a client that reads late, or a batching server);
* ``triton-trtllm``: one event per chunk shaped like TensorRT-LLM's ensemble (model name, version, sequence
  flags, ``num_output_tokens`` as a tensor, ``num_input_tokens`` on the first);
* ``openai-chat``: an OpenAI chat stream as vLLM sends it with ``include_usage``: a role chunk, 64 content
  chunks, a finish chunk, the usage chunk and ``[DONE]``, one event per network chunk.

"before" is the reference parser kept in tests/test_codec_equivalence.py (the pre-optimisation code, unchanged
in its operations), "after" the package's parsers; both run in this process under the same conditions, so their
ratio is fair even on a busy machine (their rounds alternate). Figures are the median of ``--rounds`` rounds of
``--responses`` responses each, with the garbage collector off while timing (collections are a separate cost,
RESULTS.md item 2).

Usage: ``.venv/bin/python benchmarks/parse_cost.py [--responses 2000] [--rounds 7] [--json out.json]``
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadgen.codecs.openai import OpenAIStreamParser  # noqa: E402
from loadgen.codecs.triton_http import TritonStreamParser  # noqa: E402
from loadgen.core.records import RequestRecord  # noqa: E402
from loadgen.transport.common import finish_http_stream  # noqa: E402

TOKENS = 64
ORACLE = ROOT / "tests" / "test_codec_equivalence.py"


def _event(obj: Any) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else orjson.dumps(obj)) + b"\n\n"


def triton_chunks(per_chunk: int) -> list[bytes]:
    """64 stream_server.c events, ``per_chunk`` to a network chunk."""
    events = [b'data: {"text_output":" tok"}\n\n'] * TOKENS
    return [b"".join(events[i:i + per_chunk]) for i in range(0, TOKENS, per_chunk)]


def trtllm_chunks() -> list[bytes]:
    """64 events shaped like the TensorRT-LLM ensemble's, one to a network chunk."""
    out = []
    for i in range(TOKENS):
        obj: dict[str, Any] = {"model_name": "ensemble", "model_version": "1", "sequence_end": False,
                               "sequence_id": 0, "sequence_start": False, "text_output": " tok",
                               "num_output_tokens": [1]}
        if i == 0:
            obj["num_input_tokens"] = [128]
        out.append(_event(obj))
    return out


def openai_chat_chunks() -> list[bytes]:
    """A vLLM-style chat stream with include_usage: role, 64 content chunks, finish, usage, [DONE]."""
    head = {"id": "chatcmpl-5f0c2b9a", "object": "chat.completion.chunk", "created": 1767225600, "model": "m"}

    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        return _event({**head, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                            "finish_reason": finish}]})

    out = [chunk({"role": "assistant", "content": ""}, None)]
    out += [chunk({"content": " tok"}, None) for _ in range(TOKENS)]
    out.append(chunk({}, "length"))
    out.append(_event({**head, "choices": [], "usage": {"prompt_tokens": 128, "total_tokens": 128 + TOKENS,
                                                          "completion_tokens": TOKENS}}))
    out.append(_event(b"[DONE]"))
    return out


def time_pair(makers: tuple[Callable[[], Any], Callable[[], Any]], chunks: list[bytes], responses: int,
              rounds: int) -> tuple[float, float]:
    """Median µs per response of ``finish_http_stream`` with a fresh parser from each maker.

    Rounds of the two alternate, so a burst of load from elsewhere on the machine falls on both alike.
    """
    times = [1_000_000 + 50_000 * i for i in range(len(chunks))]
    per_round: tuple[list[float], list[float]] = ([], [])
    gc.collect()
    gc.disable()
    try:
        for _ in range(rounds):
            for make, out in zip(makers, per_round, strict=True):
                start = time.perf_counter_ns()
                for _ in range(responses):
                    rec = RequestRecord(index=0, scheduled_ns=0, issued_ns=0)
                    finish_http_stream(rec, make(), times, chunks, 0)
                out.append((time.perf_counter_ns() - start) / responses / 1000)
    finally:
        gc.enable()
    return statistics.median(per_round[0]), statistics.median(per_round[1])


def load_reference() -> Any:
    spec = importlib.util.spec_from_file_location("codec_oracle", ORACLE)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{ORACLE}: cannot load the reference parsers; run from a full checkout")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def scenarios(ref: Any) -> list[tuple[str, list[bytes], int, Callable[[], Any], Callable[[], Any]]]:
    """(name, chunks, SSE events, reference parser factory, package parser factory)."""
    chat = openai_chat_chunks()
    return [
        ("triton-1", triton_chunks(1), TOKENS, ref.RefTritonParser, TritonStreamParser),
        ("triton-8", triton_chunks(8), TOKENS, ref.RefTritonParser, TritonStreamParser),
        ("triton-trtllm", trtllm_chunks(), TOKENS, ref.RefTritonParser, TritonStreamParser),
        ("openai-chat", chat, len(chat), lambda: ref.RefOpenAIParser(True), lambda: OpenAIStreamParser(True)),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--responses", type=int, default=2000, help="responses per timed round (default 2000)")
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds; the median is reported (default 7)")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args()
    if args.responses < 1 or args.rounds < 1:
        raise SystemExit("--responses and --rounds must be at least 1")
    ref = load_reference()
    rows = []
    print(f"{'scenario':<14} {'events':>6} {'before us/resp':>15} {'after us/resp':>14} "
          f"{'before us/ev':>13} {'after us/ev':>12} {'speed-up':>9}")
    for name, chunks, events, make_ref, make_new in scenarios(ref):
        before, after = time_pair((make_ref, make_new), chunks, args.responses, args.rounds)
        rows.append({"scenario": name, "chunks": len(chunks), "events": events, "before_us": before,
                     "after_us": after, "before_us_per_event": before / events,
                     "after_us_per_event": after / events, "speedup": before / after})
        print(f"{name:<14} {events:>6} {before:>15.1f} {after:>14.1f} {before / events:>13.2f} "
              f"{after / events:>12.2f} {before / after:>8.2f}x")
    if args.json:
        args.json.write_text(orjson.dumps({"python": sys.version.split()[0], "rows": rows},
                                          option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
