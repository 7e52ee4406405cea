"""Trace readers on the real public files in ../shared/traces, on the other formats users meet (BurstGPT, Azure
2024 timestamps, generic CSV/JSONL), on malformed inputs (one clear line naming the file and row), and streaming:
memory does not grow with the file and a window stops reading at its end."""

from __future__ import annotations

import gzip
import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from loadgen.core.stats import cv, index_of_dispersion, interarrival_s
from loadgen.errors import UsageError
from loadgen.traces.info import file_info
from loadgen.traces.readers import detect_format, open_trace, parse_datetime_ns
from loadgen.traces.scaling import load_window

SHARED = Path(__file__).resolve().parents[2] / "shared" / "traces"
CONV = SHARED / "azure-llm-2023" / "AzureLLMInferenceTrace_conv.csv"
CODE = SHARED / "azure-llm-2023" / "AzureLLMInferenceTrace_code.csv"
MOONCAKE = SHARED / "mooncake" / "synthetic_trace.jsonl"

# ../shared/traces/README.md. Its 60-s dispersion uses the population variance (ddof=0) over the complete windows;
# loadgen.core.stats uses the sample variance, so ours is larger by k/(k-1) with k = 58, 57 and 17 windows.
REFERENCE = {
    CONV: dict(rows=19366, span=3501.7, rate=5.53, cv=1.09, iod1=1.39, iod60=16.1 * 58 / 57,
               inp=(1020, 2735, 4142, 14050), out=(129, 424, 601, 1000)),
    CODE: dict(rows=8819, span=3435.9, rate=2.57, cv=13.15, iod1=13.19, iod60=164.0 * 57 / 56,
               inp=(1469, 5188, 7436, 7437), out=(13, 55, 251, 1899)),
    MOONCAKE: dict(rows=3993, span=1022.0, rate=3.91, cv=1.01, iod1=1.09, iod60=1.19 * 17 / 16,
                   inp=(11587, 38611, 66456, 191378), out=(69, 389, 768, 893)),
}


@pytest.mark.parametrize("path", list(REFERENCE), ids=["azure-conv", "azure-code", "mooncake"])
def test_real_files_match_the_reference_statistics(path):
    ref = REFERENCE[path]
    res = file_info(open_trace(str(path)))
    assert res["requests"] == ref["rows"]
    assert res["span_s"] == pytest.approx(ref["span"], abs=0.06)
    assert res["mean_rate_rps"] == pytest.approx(ref["rate"], abs=0.006)
    assert res["interarrival_cv"] == pytest.approx(ref["cv"], abs=0.006)
    assert res["index_of_dispersion"]["1s"] == pytest.approx(ref["iod1"], abs=0.006)
    assert res["index_of_dispersion"]["60s"] == pytest.approx(ref["iod60"], rel=0.005)
    for key, want in (("input_tokens", ref["inp"]), ("output_tokens", ref["out"])):
        got = res[key]
        assert [got["p50"], got["p90"], got["p99"], got["max"]] == pytest.approx(list(want), abs=1.0)


def test_streaming_stats_equal_the_core_statistics_on_the_whole_array():
    rows = list(open_trace(str(CODE)))
    t = np.array([r.time_ns for r in rows], dtype=np.int64)
    res = file_info(open_trace(str(CODE)))
    assert res["interarrival_cv"] == pytest.approx(cv(interarrival_s(t)), abs=1e-4)
    for w in (1.0, 60.0):
        assert res["index_of_dispersion"][f"{w:g}s"] == pytest.approx(index_of_dispersion(t, w), abs=1e-4)
    assert t[0] == 0 and np.all(np.diff(t) >= 0)


def test_mooncake_rows_carry_prefix_blocks():
    reader = open_trace(str(MOONCAKE))
    assert reader.format == "mooncake"
    rows = list(reader)
    assert all(len(r.hash_ids) == math.ceil(r.input_tokens / 512) for r in rows)
    assert rows[0].time_ns == 0 and rows[2].time_ns == 40_000_000  # integer ms -> exact ns
    reuse = file_info(open_trace(str(MOONCAKE)))["prefix_reuse"]
    assert reuse["blocks"] == sum(len(r.hash_ids) for r in rows)
    assert 0.5 < reuse["reused_block_share"] < 0.8  # the synthetic trace reuses ~64 % of its blocks


def test_format_detection():
    assert detect_format(str(CONV)) == "azure"
    assert detect_format(str(MOONCAKE)) == "mooncake"


def test_azure_timestamps_of_2023_and_2024_parse_exactly(tmp_path):
    assert parse_datetime_ns("1970-01-01 00:00:01.0000001") == 1_000_000_100
    assert parse_datetime_ns("2024-05-10 00:00:00+00:00") == parse_datetime_ns("2024-05-10 00:00:00")
    assert parse_datetime_ns("2024-05-10 02:00:00+02:00") == parse_datetime_ns("2024-05-10T00:00:00Z")
    f = tmp_path / "azure2024.csv"
    f.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                 "2024-05-10 00:00:00.009930+00:00,4808,10\n"
                 "2024-05-10 00:00:01+00:00,100,20\n"
                 "2024-05-10 00:00:01.5+00:00,7,0\n")
    rows = list(open_trace(str(f)))
    assert [r.time_ns for r in rows] == [0, 990_070_000, 1_490_070_000]
    assert [(r.input_tokens, r.output_tokens, r.line) for r in rows] == [(4808, 10, 2), (100, 20, 3), (7, 0, 4)]


BURSTGPT = ("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
            "5,ChatGPT,472,18,490,Conversation log\n"
            "45,ChatGPT,1087,0,1087,Conversation log\n"
            "118,GPT-4,417,276,693,API log\n"
            "118.5,ChatGPT,1360,97,1457,Conversation log\n")


def test_burstgpt_skips_failed_rows_unless_asked_and_filters(tmp_path):
    f = tmp_path / "BurstGPT_sample.csv"
    f.write_text(BURSTGPT)
    reader = open_trace(str(f))
    assert reader.format == "burstgpt"
    rows = list(reader)
    assert [r.time_ns for r in rows] == [0, 113_000_000_000, 113_500_000_000]
    assert reader.skipped_failed == 1 and reader.origin == "5"
    kept = list(open_trace(str(f), keep_failed=True))
    assert len(kept) == 4 and kept[1].output_tokens == 0
    gpt4 = open_trace(str(f), where={"Model": "GPT-4"})
    assert [(r.input_tokens, r.output_tokens) for r in gpt4] == [(417, 276)]
    assert gpt4.skipped_filtered == 3


def test_generic_csv_and_jsonl_with_a_column_mapping(tmp_path):
    c = tmp_path / "mine.csv"
    c.write_text("when,prompt,gen,blocks\n1000,10,5,\"[1, 2]\"\n1500,20,6,[1]\n")
    rows = list(open_trace(str(c), "csv", "time=when,input=prompt,output=gen,hash_ids=blocks", "ms"))
    assert [(r.time_ns, r.input_tokens, r.output_tokens, r.hash_ids) for r in rows] == [
        (0, 10, 5, (1, 2)), (500_000_000, 20, 6, (1,))]
    j = tmp_path / "mine.jsonl"
    j.write_text('{"t": "2024-01-01 00:00:00", "i": 3, "o": 4}\n\n{"t": "2024-01-01 00:00:02.25", "i": 5, "o": 6}\n')
    rows = list(open_trace(str(j), None, "time=t,input=i,output=o", "datetime"))
    assert [(r.time_ns, r.input_tokens) for r in rows] == [(0, 3), (2_250_000_000, 5)]
    g = tmp_path / "conv.csv.gz"
    with gzip.open(g, "wt") as fh:
        fh.write(CONV.read_text()[:2000].rsplit("\n", 1)[0] + "\n")
    assert next(iter(open_trace(str(g), "azure"))).input_tokens == 374


MALFORMED = [
    ("bad.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,374,44\n2023-13-16 18:15:47,1,2\n",
     ":3: bad timestamp '2023-13-16 18:15:47' in TIMESTAMP"),
    ("bad.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,374,44\n", ":2: bad timestamp 'yesterday'"),
    ("bad.csv", "TIMESTAMP,ContextTokens\n2023-11-16 18:15:46.68,374\n", ": missing column 'GeneratedTokens'"),
    ("bad.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,-3,44\n",
     ":2: negative length -3 in ContextTokens"),
    ("bad.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,many,44\n",
     ":2: ContextTokens is 'many', not a whole number of tokens"),
    ("bad.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:47,1,1\n2023-11-16 18:15:46,1,1\n",
     ":3: rows are not sorted by time"),
    ("bad.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:47,1\n", ":2: 2 fields where the header"),
    ("bad.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [1]}\n{"timestamp": 5\n',
     ":2: not valid JSON"),
    ("bad.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [1]}\n'
                  '{"timestamp": 9, "input_length": 5}\n', ":2: missing key 'output_length'"),
    ("bad.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [1]}\n'
                  '{"timestamp": "x", "input_length": 5, "output_length": 1}\n', ":2: bad timestamp 'x'"),
    ("bad.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": ["a"]}\n',
     ":1: hash_ids is not a list of integers"),
]


@pytest.mark.parametrize("name,text,expected", MALFORMED)
def test_malformed_inputs_get_one_line_naming_file_and_row(tmp_path, name, text, expected):
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(UsageError) as err:
        list(open_trace(str(f)))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(f)) and expected in msg, msg


def test_unusable_inputs_say_what_to_do(tmp_path):
    assert "no trace file" in str(pytest.raises(UsageError, open_trace, str(tmp_path / "nope.csv")).value)
    odd = tmp_path / "odd.csv"
    odd.write_text("a,b,c\n1,2,3\n")
    assert "--trace-columns" in str(pytest.raises(UsageError, open_trace, str(odd)).value)
    assert "--trace-columns" in str(pytest.raises(UsageError, open_trace, str(odd), "csv").value)
    assert "--trace-format" in str(pytest.raises(UsageError, open_trace, str(odd), "parquet").value)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert "empty" in str(pytest.raises(UsageError, open_trace, str(empty)).value)


def _big_azure(path: Path, n: int) -> None:
    rng = np.random.default_rng(5)
    t = np.cumsum(rng.exponential(0.01, n))  # 100 req/s
    with open(path, "w") as f:
        f.write("TIMESTAMP,ContextTokens,GeneratedTokens\n")
        for k in range(0, n, 10_000):
            part = t[k:k + 10_000]
            f.writelines(f"2024-05-10 {int(s // 3600):02d}:{int(s % 3600 // 60):02d}:{s % 60:09.6f},{a},{b}\n"
                         for s, a, b in zip(part, rng.integers(1, 9000, len(part)), rng.integers(1, 2000, len(part)),
                                            strict=True))


def test_memory_does_not_grow_with_the_file_and_a_window_keeps_only_its_rows(tmp_path):
    small, big = tmp_path / "small.csv", tmp_path / "big.csv"
    _big_azure(small, 15_000)
    _big_azure(big, 60_000)
    peaks = []
    for f in (small, big):
        tracemalloc.start()
        res = file_info(open_trace(str(f)))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert res["requests"] in (15_000, 60_000)
    assert peaks[1] < 1.2 * peaks[0] + 200_000, peaks  # 4x the rows, the same memory (about 0.6 MB here)
    assert peaks[1] < 2_000_000, peaks
    reader = open_trace(str(big))
    tracemalloc.start()
    src = load_window(reader, 10.0, 5.0)
    window_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert 300 < len(src) < 700 and src.time_ns[0] >= 0 and src.time_ns[-1] < 5_000_000_000
    # Read to the end, only to check that the rows are sorted (an unsorted file must not be cut silently), and
    # only the window's rows kept: memory is that of a few hundred rows, not of 60,000.
    assert reader.lines_read >= 60_000 and window_peak < 500_000, window_peak


def test_a_byte_order_mark_is_accepted(tmp_path):
    """Excel writes UTF-8 CSV with a byte-order mark first; it must not glue itself to the first column."""
    f = tmp_path / "excel.csv"
    f.write_bytes(b"\xef\xbb\xbfTIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,374,44\n"
                  b"2023-11-16 18:15:47.00,10,2\n")
    rows = list(open_trace(str(f)))
    assert [(r.time_ns, r.input_tokens, r.output_tokens) for r in rows] == [(0, 374, 44), (320_000_000, 10, 2)]


def test_an_unsorted_trace_is_refused_with_a_window_too(tmp_path):
    """A window used to stop reading at its end, so rows out of order after it went unseen and the replay was
    silently cut to the rows before them."""
    from loadgen.traces.scaling import load_window

    f = tmp_path / "unsorted.csv"
    f.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:00,1,1\n2023-11-16 18:20:00,1,1\n"
                 "2023-11-16 18:15:05,1,1\n2023-11-16 18:15:06,1,1\n")
    for window in ((0.0, 60.0), (0.0, None)):
        with pytest.raises(UsageError, match=":4: rows are not sorted by time"):
            load_window(open_trace(str(f)), *window)
    ok = load_window(open_trace(str(CONV)), 0.0, 60.0)
    assert ok.truncated and len(ok.time_ns) > 0
