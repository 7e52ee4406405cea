"""What a run's page shows, read from its run directory: the time series, the TTFT and E2E distributions with a
sample of (input length, TTFT), the server's metrics and the GPU power, each on the run's time axis.

Everything from the records comes from ONE pass (``scan_records``), with memory bounded whatever the run's
length: the time series' own bound (``loadgen.core.timeseries``), two log histograms for the CDFs and a
fixed-size reservoir sample for the scatter.
"""

from __future__ import annotations

import math
import os
import random
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from loadgen.core.histogram import LogHistogram
from loadgen.core.metrics import NS_PER_MS, token_chunks
from loadgen.core.records import STATUS_OK, RequestRecord
from loadgen.core.summary import level_records_files, load_level_records
from loadgen.core.timeseries import TimeSeriesBuilder
from loadgen.errors import LoadgenError
from loadgen.power.energy import load_power_file, t0_abs_ns

TIMESERIES_FILE = "timeseries.json"
SERVER_METRICS_FILE = "server_metrics.jsonl"
POWER_FILE = "power.jsonl"
SCATTER_POINTS = 3000
MAX_LINE_POINTS = 4000  # server and power samples drawn per series (every k-th beyond that)
SERVER_KEYS = ("queued", "running", "kv_usage", "preemptions", "cache_hit_rate")


@dataclass
class Distributions:
    """TTFT and E2E of the *measured completed* requests (the ones the summary's percentiles are of) and a
    reservoir sample of (input tokens, TTFT ms) for the scatter."""

    warmup_requests: int = 0
    warmup_ns: int = 0
    sched_end_ns: float = math.inf
    ttft: LogHistogram = field(default_factory=LogHistogram)
    e2e: LogHistogram = field(default_factory=LogHistogram)
    seen: int = 0
    sample_in: array = field(default_factory=lambda: array("d"))
    sample_ttft: array = field(default_factory=lambda: array("d"))
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def add(self, r: RequestRecord) -> None:
        sched = r.scheduled_ns
        if (r.status != STATUS_OK or r.issued_ns is None or r.index < self.warmup_requests
                or sched < self.warmup_ns or sched > self.sched_end_ns):
            return
        offsets, _ = token_chunks(r)
        e2e = offsets[-1] * 1000 if offsets else (None if r.end_ns is None else r.end_ns - r.issued_ns)
        if e2e is not None:
            self.e2e.record(max(e2e, 0))
        if not offsets:
            return
        ttft = offsets[0] * 1000
        self.ttft.record(ttft)
        inputs = r.server_input_tokens if r.server_input_tokens is not None else r.input_tokens
        self.seen += 1
        if len(self.sample_in) < SCATTER_POINTS:  # reservoir sampling (algorithm R): every request equally likely
            self.sample_in.append(inputs)
            self.sample_ttft.append(ttft / NS_PER_MS)
        else:
            j = self.rng.randrange(self.seen)
            if j < SCATTER_POINTS:
                self.sample_in[j], self.sample_ttft[j] = inputs, ttft / NS_PER_MS


@dataclass
class Series:
    """Samples on the run's time axis: ``t_s`` and one array per named value (NaN where not read)."""

    t_s: np.ndarray
    values: dict[str, np.ndarray]


@dataclass
class RunData:
    """One run as the page draws it."""

    label: str
    summary: dict[str, Any]
    run_dir: Path | None = None
    timeseries: dict[str, Any] | None = None
    dists: Distributions | None = None
    server: Series | None = None
    power: Series | None = None
    notes: list[str] = field(default_factory=list)


def _read_json(path: Path) -> Any:
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None


def _sched_end_ns(run_dir: Path, summary: dict[str, Any]) -> float:
    """The latest scheduled time of a measured request, as ``core/summary.py`` decides it: end of issuing minus
    the cool-down (from config.json's level context); else the open-loop window end; else no bound."""
    config = _read_json(run_dir / "config.json")
    ctx = config.get("level_context") if isinstance(config, dict) else None
    run_end = ctx.get("run_end_ns") if isinstance(ctx, dict) else None
    if run_end is not None:
        return int(run_end) - int(float(summary.get("cooldown_s") or 0) * 1e9)
    if summary.get("mode") == "open_loop" and summary.get("window_end_s") is not None:
        return round(summary["window_end_s"] * 1e9)
    return math.inf


def scan_records(run_dir: Path, summary: dict[str, Any],
                 series: bool = True) -> tuple[dict[str, Any] | None, Distributions]:
    """(the time series or None when not asked, the distributions) from one pass over the level's records."""
    dists = Distributions(int(summary.get("warmup_requests") or 0),
                          int(float(summary.get("warmup_s") or 0) * 1e9), _sched_end_ns(run_dir, summary))
    builder = TimeSeriesBuilder() if series else None
    for r in load_level_records(run_dir):
        dists.add(r)
        if builder is not None:
            builder.add(r)
    return (builder.result() if builder is not None else None), dists


def save_timeseries(run_dir: Path, ts: dict[str, Any]) -> dict[str, Any]:
    """Write ``timeseries.json`` (one key per line, each series on its line: a 600-window series stays a few
    dozen lines) atomically; returns ``summary["timeseries"]``, the pointer to it."""
    body = ",\n".join(f"{orjson.dumps(k).decode()}: {orjson.dumps(v).decode()}" for k, v in ts.items())
    path = Path(run_dir) / TIMESERIES_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text("{\n" + body + "\n}\n")
    os.replace(tmp, path)
    return {"file": TIMESERIES_FILE, "window_s": ts["window_s"], "windows": ts["windows"]}


def load_timeseries(run_dir: Path) -> dict[str, Any] | None:
    data = _read_json(Path(run_dir) / TIMESERIES_FILE)
    return data if isinstance(data, dict) and "t_s" in data else None


def _thin(t: np.ndarray, values: dict[str, np.ndarray]) -> Series:
    step = max(1, math.ceil(t.size / MAX_LINE_POINTS))
    return Series(t[::step], {k: v[::step] for k, v in values.items()})


def read_server_metrics(run_dir: Path, t0_ns: int | None) -> tuple[Series | None, str | None]:
    """(the server's common series on the run's time axis, or None with a note saying why)."""
    path = Path(run_dir) / SERVER_METRICS_FILE
    if not path.is_file():
        return None, f"server metrics: none ({SERVER_METRICS_FILE} is not in the run directory)"
    if t0_ns is None:
        return None, (f"server metrics omitted: the summary has no clock anchor (client.anchor; a Locust level "
                      f"records none), so the samples of {SERVER_METRICS_FILE} cannot be placed on the run's "
                      "time axis")
    t = array("d")
    cols = {k: array("d") for k in SERVER_KEYS}
    with open(path, "rb") as fh:  # streamed: a line can hold a thousand samples we do not need
        for raw in fh:
            try:
                line = orjson.loads(raw)
                stamp = (int(line["t_mono_ns"]) - t0_ns) / 1e9
                common = line.get("common") or {}
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue  # a cut last line
            t.append(stamp)
            for k in SERVER_KEYS:
                v = common.get(k)
                cols[k].append(math.nan if v is None else float(v))
    if not t:
        return None, f"server metrics: {SERVER_METRICS_FILE} holds no sample"
    return _thin(np.frombuffer(t), {k: np.frombuffer(v) for k, v in cols.items()}), None


def read_power(run_dir: Path, summary: dict[str, Any], t0_ns: int | None) -> tuple[Series | None, str | None]:
    """(power per GPU, key ``GPU <id>``, and ``all GPUs`` when several, on the run's time axis; or a note)."""
    path = Path(run_dir) / POWER_FILE
    if not path.is_file():
        return None, None  # no --power: nothing to say
    if t0_ns is None:
        return None, "power omitted: this run's summary has no clock anchor to place the samples on"
    try:
        data = load_power_file(path)
    except (LoadgenError, OSError, ValueError, KeyError, TypeError) as err:  # a damaged file: the rest stays
        return None, f"power omitted: {err}"
    gpus = {g: s for g, s in sorted(data.series.items()) if (~np.isnan(s.power_w)).any()}
    if not gpus:
        return None, f"power: {POWER_FILE} holds no power sample"
    t = np.unique(np.concatenate([s.t_ns[~np.isnan(s.power_w)] for s in gpus.values()]))
    values = {}
    for g, s in gpus.items():
        ok = ~np.isnan(s.power_w)
        values[f"GPU {g}"] = np.interp(t, s.t_ns[ok], s.power_w[ok])
    if len(gpus) > 1:
        values["all GPUs"] = np.sum(list(values.values()), axis=0)
    return _thin((t - t0_ns) / 1e9, values), None


def collect_run(run_dir: Path | None, summary: dict[str, Any], label: str | None = None,
                save_series: bool = False) -> RunData:
    """Everything the page needs about one run; one pass over its records. ``save_series`` (the end of a run):
    write ``timeseries.json`` and point ``summary["timeseries"]`` at it. ``loadgen report`` never writes."""
    run = RunData(label or str(summary.get("label") or summary.get("name") or "run"), summary, run_dir)
    if run_dir is None:
        run.notes.append("over time and distributions: no run directory with records for this level")
        return run
    run_dir = Path(run_dir)
    if summary.get("merged_from_histograms"):
        run.notes.append("over time and distributions omitted: the master could not read every worker's "
                         "records; copy the records.w*.jsonl here and run `loadgen report RUN_DIR --html FILE`")
    elif level_records_files(run_dir):
        stored = None if save_series else load_timeseries(run_dir)
        ts, run.dists = scan_records(run_dir, summary, series=stored is None)
        run.timeseries = stored or ts
    else:
        run.timeseries = None if save_series else load_timeseries(run_dir)
        run.notes.append("distributions omitted: the run directory has no records*.jsonl")
    if save_series:
        summary["timeseries"] = save_timeseries(run_dir, run.timeseries) if run.timeseries else None
    t0 = t0_abs_ns(summary)
    run.server, note = read_server_metrics(run_dir, t0)
    run.notes += [note] if note else []
    run.power, note = read_power(run_dir, summary, t0)
    run.notes += [note] if note else []
    return run
