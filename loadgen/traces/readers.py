"""Streaming readers for request traces: one ``TraceRow`` at a time, whatever the file's size.

Why streaming: the week-long Azure 2024 files are about 1 GB and BurstGPT's are millions of rows; ``traces info``
and a windowed replay must not hold the file in memory. Every reader is a generator over the file's lines, and a
replay that only needs a window stops reading at the window's end (rows are sorted by time).

Formats (``FORMATS``):

- ``azure``: Azure LLM inference 2023/2024 CSV, ``TIMESTAMP,ContextTokens,GeneratedTokens``; timestamps are
  ``YYYY-MM-DD HH:MM:SS[.fraction][timezone]`` (any number of fractional digits up to 9; no timezone = UTC).
- ``mooncake``: Mooncake JSONL, ``timestamp`` (integer ms since the first request), ``input_length``,
  ``output_length``, ``hash_ids`` (512-token prefix blocks).
- ``burstgpt``: BurstGPT CSV, ``Timestamp`` (s), ``Model``, ``Request tokens``, ``Response tokens``,
  ``Total tokens``, ``Log Type``. Failed requests have 0 response tokens: skipped unless ``keep_failed``.
- ``csv`` / ``jsonl``: any other trace, with a column mapping ``time=COL,input=COL,output=COL[,hash_ids=COL]``
  and a time unit (``s``, ``ms``, ``us``, ``ns`` or ``datetime``).

Times are returned in integer nanoseconds relative to the first row, so arithmetic on them is exact. Bad input
raises ``UsageError`` with one line naming the file and line: a bad timestamp, a missing column, a negative or
non-numeric length, rows out of time order.
"""

from __future__ import annotations

import csv
import datetime as _dt
import gzip
import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from loadgen.errors import UsageError

FORMATS = ("azure", "mooncake", "burstgpt", "csv", "jsonl")
TIME_UNITS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1, "datetime": 0}
MOONCAKE_BLOCK = 512  # tokens per hash id in Mooncake traces

_DATETIME = re.compile(
    r"\s*(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?\s*(Z|[+-]\d{2}(?::?\d{2})?)?\s*$")
_EPOCH_ORDINAL = _dt.date(1970, 1, 1).toordinal()


@dataclass(frozen=True, slots=True)
class TraceRow:
    """One request of a trace. ``time_ns`` is relative to the first row of the file."""

    time_ns: int
    input_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...] | None = None
    line: int = 0  # 1-based line of the file, for messages


@dataclass(frozen=True)
class FormatSpec:
    """Where a format keeps its fields. ``failed_zero_output``: rows with 0 output tokens are failed requests."""

    name: str
    kind: str  # csv | jsonl
    time: str
    input: str
    output: str
    hash_ids: str | None = None
    time_unit: str = "s"
    failed_zero_output: bool = False


KNOWN = {
    "azure": FormatSpec("azure", "csv", "TIMESTAMP", "ContextTokens", "GeneratedTokens", time_unit="datetime"),
    "mooncake": FormatSpec("mooncake", "jsonl", "timestamp", "input_length", "output_length", "hash_ids",
                           time_unit="ms"),
    "burstgpt": FormatSpec("burstgpt", "csv", "Timestamp", "Request tokens", "Response tokens", time_unit="s",
                           failed_zero_output=True),
}


def parse_datetime_ns(text: str) -> int:
    """``YYYY-MM-DD HH:MM:SS[.fraction][Z|+HH:MM]`` to integer ns since the Unix epoch (UTC); ValueError if not."""
    m = _DATETIME.match(text)
    if m is None:
        raise ValueError(text)
    y, mo, d, h, mi, s, frac, tz = m.groups()
    if int(h) > 23 or int(mi) > 59 or int(s) > 60:
        raise ValueError(text)
    days = _dt.date(int(y), int(mo), int(d)).toordinal() - _EPOCH_ORDINAL
    ns = (days * 86_400 + int(h) * 3_600 + int(mi) * 60 + int(s)) * 1_000_000_000
    if frac:
        ns += int(frac.ljust(9, "0"))
    if tz and tz != "Z":
        sign = -1 if tz[0] == "-" else 1
        digits = tz[1:].replace(":", "")
        offset_min = int(digits[:2]) * 60 + (int(digits[2:4]) if len(digits) >= 4 else 0)
        ns -= sign * offset_min * 60 * 1_000_000_000
    return ns


def parse_columns(text: str | None) -> dict[str, str]:
    """``time=ts,input=prompt_len,output=gen_len[,hash_ids=blocks]`` to a dict; UsageError naming the fix."""
    if not text:
        return {}
    out: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value or key not in ("time", "input", "output", "hash_ids"):
            raise UsageError(f"--trace-columns {text!r}: expected time=COL,input=COL,output=COL[,hash_ids=COL]")
        out[key] = value
    return out


def _open_text(path: str) -> IO[str]:
    """UTF-8, with or without the byte-order mark that Excel and some exporters put first (utf-8-sig drops it;
    left in, it would glue itself to the first column's name)."""
    if path.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _first_line(path: str) -> str:
    try:
        with _open_text(path) as f:
            for line in f:
                if line.strip():
                    return line.strip()
    except (OSError, UnicodeDecodeError, EOFError) as err:
        raise UsageError(f"{path}: cannot read the trace ({err}); check the path") from None
    raise UsageError(f"{path}: the trace file is empty")


def detect_format(path: str) -> str:
    """Tell a known format from the file's first line (a CSV header or a JSON object)."""
    first = _first_line(path)
    if first.startswith("{"):
        try:
            obj = orjson.loads(first)
        except orjson.JSONDecodeError:
            obj = {}
        if isinstance(obj, dict) and {"input_length", "output_length", "hash_ids"} & set(obj):
            return "mooncake"  # a missing field is then reported by the reader, naming it
        raise UsageError(f"{path}: a JSONL trace of unknown layout; pass --trace-format jsonl and "
                         "--trace-columns time=KEY,input=KEY,output=KEY (and --trace-time-unit)")
    header = {h.strip() for h in next(csv.reader([first]))}
    if {"ContextTokens", "GeneratedTokens"} & header or "TIMESTAMP" in header:
        return "azure"  # as for the others, a missing column is then reported by the reader
    if {"Request tokens", "Response tokens", "Log Type"} & header:
        return "burstgpt"
    raise UsageError(f"{path}: cannot tell the trace format from its header ({first[:80]!r}); pass --trace-format "
                     f"csv with --trace-columns time=COL,input=COL,output=COL (formats: {', '.join(FORMATS)})")


def _int_field(value: Any, path: str, line: int, column: str) -> int:
    if isinstance(value, bool):
        raise UsageError(f"{path}:{line}: {column} is {value!r}, not a token count")
    if isinstance(value, int):
        n = value
    else:
        try:
            n = int(value)
        except (TypeError, ValueError):
            try:
                f = float(value)
            except (TypeError, ValueError):
                raise UsageError(f"{path}:{line}: {column} is {value!r}, not a whole number of tokens") from None
            if not f.is_integer():
                raise UsageError(f"{path}:{line}: {column} is {value!r}, not a whole number of tokens") from None
            n = int(f)
    if n < 0:
        raise UsageError(f"{path}:{line}: negative length {n} in {column}; token counts must be >= 0")
    return n


def _number_time(value: Any, unit_ns: int, path: str, line: int, column: str) -> int:
    if isinstance(value, bool):
        raise UsageError(f"{path}:{line}: bad timestamp {value!r} in {column}")
    if isinstance(value, int):
        return value * unit_ns
    try:
        return int(value) * unit_ns
    except (TypeError, ValueError):
        pass
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{path}:{line}: bad timestamp {value!r} in {column} (expected a number)") from None
    if f != f or f in (float("inf"), float("-inf")):
        raise UsageError(f"{path}:{line}: bad timestamp {value!r} in {column} (expected a finite number)")
    return round(f * unit_ns)


@dataclass
class TraceReader:
    """Iterate ``TraceRow``s of one trace file; each iteration reads the file afresh (nothing is cached).

    ``skipped_failed`` counts BurstGPT-style failed rows left out during the last iteration, ``rows`` the rows
    yielded, ``origin`` the first row's raw timestamp (as written in the file).
    """

    path: str
    format: str
    spec: FormatSpec
    keep_failed: bool = False
    where: dict[str, str] = field(default_factory=dict)
    rows: int = 0
    skipped_failed: int = 0
    skipped_filtered: int = 0
    origin: str | None = None
    lines_read: int = 0

    def __iter__(self) -> Iterator[TraceRow]:
        self.rows = self.skipped_failed = self.skipped_filtered = self.lines_read = 0
        gen = self._csv_rows() if self.spec.kind == "csv" else self._jsonl_rows()
        prev: int | None = None
        base: int | None = None
        unit = TIME_UNITS[self.spec.time_unit]
        tcol = self.spec.time
        for line, raw_t, n_in, n_out, hashes in gen:
            if unit == 0:
                try:
                    t = parse_datetime_ns(raw_t) if isinstance(raw_t, str) else _bad_dt(raw_t)
                except (ValueError, OverflowError):
                    raise UsageError(f"{self.path}:{line}: bad timestamp {raw_t!r} in {tcol} (expected "
                                     "YYYY-MM-DD HH:MM:SS[.fraction])") from None
            else:
                t = _number_time(raw_t, unit, self.path, line, tcol)
            if prev is not None and t < prev:
                raise UsageError(f"{self.path}:{line}: rows are not sorted by time ({tcol} {raw_t!r} is earlier "
                                 "than the previous row's); sort the file by time first")
            prev = t
            if self.spec.failed_zero_output and n_out == 0 and not self.keep_failed:
                self.skipped_failed += 1
                continue
            if base is None:
                base = t
                self.origin = str(raw_t)
            self.rows += 1
            yield TraceRow(t - base, n_in, n_out, hashes, line)

    # -- CSV -----------------------------------------------------------------------------------------------
    def _csv_rows(self) -> Iterator[tuple[int, Any, int, int, tuple[int, ...] | None]]:
        s = self.spec
        with _open_text(self.path) as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise UsageError(f"{self.path}: the trace file is empty")
            names = [h.strip() for h in header]
            wanted = [s.time, s.input, s.output] + ([s.hash_ids] if s.hash_ids else []) + list(self.where)
            missing = [c for c in wanted if c not in names]
            if missing:
                raise UsageError(f"{self.path}: missing column {missing[0]!r} for the {self.format} format "
                                 f"(header has: {', '.join(names)})")
            it, ii, io_ = names.index(s.time), names.index(s.input), names.index(s.output)
            ih = names.index(s.hash_ids) if s.hash_ids else None
            filters = [(names.index(k), v) for k, v in self.where.items()]
            width = len(names)
            for rec in reader:
                self.lines_read = reader.line_num
                if not rec or (len(rec) == 1 and not rec[0].strip()):
                    continue
                line = reader.line_num
                if len(rec) < width:
                    raise UsageError(f"{self.path}:{line}: {len(rec)} fields where the header has {width}; "
                                     "the row is cut or the file is not a CSV of this format")
                if filters and any(rec[i].strip() != v for i, v in filters):
                    self.skipped_filtered += 1
                    continue
                hashes = _hash_list(rec[ih], self.path, line, s.hash_ids) if ih is not None else None
                yield (line, rec[it].strip(), _int_field(rec[ii].strip(), self.path, line, s.input),
                       _int_field(rec[io_].strip(), self.path, line, s.output), hashes)

    # -- JSONL ---------------------------------------------------------------------------------------------
    def _jsonl_rows(self) -> Iterator[tuple[int, Any, int, int, tuple[int, ...] | None]]:
        s = self.spec
        with _open_text(self.path) as f:
            for line, text in enumerate(f, 1):
                self.lines_read = line
                if not text.strip():
                    continue
                try:
                    obj = orjson.loads(text)
                except orjson.JSONDecodeError:
                    raise UsageError(f"{self.path}:{line}: not valid JSON; a JSONL trace has one object per "
                                     "line") from None
                if not isinstance(obj, dict):
                    raise UsageError(f"{self.path}:{line}: not a JSON object")
                for key in (s.time, s.input, s.output):
                    if key not in obj:
                        raise UsageError(f"{self.path}:{line}: missing key {key!r} for the {self.format} format "
                                         f"(keys: {', '.join(sorted(obj))})")
                if self.where and any(str(obj.get(k)) != v for k, v in self.where.items()):
                    self.skipped_filtered += 1
                    continue
                hashes = None
                if s.hash_ids and obj.get(s.hash_ids) is not None:
                    hashes = _hash_list(obj[s.hash_ids], self.path, line, s.hash_ids)
                yield (line, obj[s.time], _int_field(obj[s.input], self.path, line, s.input),
                       _int_field(obj[s.output], self.path, line, s.output), hashes)


def _bad_dt(value: Any) -> int:
    raise ValueError(value)


def _hash_list(value: Any, path: str, line: int, column: str) -> tuple[int, ...]:
    if isinstance(value, str):
        text = value.strip()
        try:
            value = orjson.loads(text) if text.startswith("[") else [int(x) for x in text.split() if x]
        except (orjson.JSONDecodeError, ValueError):
            raise UsageError(f"{path}:{line}: {column} is not a list of integers") from None
    if not isinstance(value, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        raise UsageError(f"{path}:{line}: {column} is not a list of integers")
    return tuple(value)


def open_trace(path: str, fmt: str | None = None, columns: dict[str, str] | str | None = None,
               time_unit: str | None = None, keep_failed: bool = False,
               where: dict[str, str] | None = None) -> TraceReader:
    """A reader for ``path``: the format is detected from the header unless ``fmt`` is given.

    ``columns``/``time_unit`` describe a generic ``csv``/``jsonl`` trace, or override a known format's fields.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UsageError(f"--trace: no trace file at {path!r}; check the path (or `loadgen traces fetch NAME`)")
    if fmt is not None and fmt not in FORMATS:
        raise UsageError(f"--trace-format {fmt!r}: use one of {', '.join(FORMATS)}")
    if time_unit is not None and time_unit not in TIME_UNITS:
        raise UsageError(f"--trace-time-unit {time_unit!r}: use one of {', '.join(TIME_UNITS)}")
    cols = parse_columns(columns) if isinstance(columns, str) or columns is None else dict(columns)
    if fmt is None:
        fmt = ("jsonl" if path.endswith((".jsonl", ".jsonl.gz", ".json")) else "csv") if cols else detect_format(path)
    if fmt in KNOWN:
        base = KNOWN[fmt]
        spec = FormatSpec(base.name, base.kind, cols.get("time", base.time), cols.get("input", base.input),
                          cols.get("output", base.output), cols.get("hash_ids", base.hash_ids),
                          time_unit or base.time_unit, base.failed_zero_output)
    else:
        missing = [k for k in ("time", "input", "output") if k not in cols]
        if missing:
            raise UsageError(f"--trace-format {fmt} needs --trace-columns time=COL,input=COL,output=COL "
                             f"(missing {', '.join(missing)})")
        spec = FormatSpec(fmt, fmt, cols["time"], cols["input"], cols["output"], cols.get("hash_ids"),
                          time_unit or "s")
    return TraceReader(path=path, format=fmt, spec=spec, keep_failed=keep_failed, where=dict(where or {}))


def parse_where(items: list[str] | None) -> dict[str, str]:
    """``COL=VALUE`` filters (e.g. BurstGPT ``Model=GPT-4``): keep only rows whose column equals the value."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--trace-where {item!r}: expected COLUMN=VALUE, e.g. 'Log Type=API log'")
        out[key.strip()] = value.strip()
    return out
