"""How much load can the generator itself produce, and how exactly does it time it?

The generator (``loadgen run``, one process pinned to one core) is aimed at ``stream_server.c``, a C server pinned to
another core whose timing is fixed and stamped on the same CLOCK_MONOTONIC clock as the generator's records. At
each load level (Poisson arrivals, 64-token streams) this measures, at the server:

- the achieved request rate (server arrivals inside the schedule's window / the window) and its ratio to the
  rate the seeded schedule placed in that window, and the inter-arrival CV of the arrivals;
- the TTFT measurement error, per request: the generator's TTFT (its first-token stamp - its issue stamp) minus
  the true TTFT (the server's first-token write - the generator's issue stamp; both are CLOCK_MONOTONIC on one
  machine). The true TTFT is the server's own TTFT (write - arrival) plus the request's forward transit, which
  holds the server's wake-up delay: that part is real latency, not an error of the generator. The error left is
  the time from the server's write to the generator's stamp: loopback delivery (tens of microseconds) plus any
  delay of the generator. The brief's stricter "client TTFT - server TTFT" is reported too;
and from the run directory: schedule lag p99 and client CPU seconds per 1,000 requests. A memory check samples the
RSS of a long run to show that it flattens; a noise probe says how often the machine itself stalls a busy core.

Joining server rows to records: the server hashes (FNV-1a 64) each request's raw text_input JSON string; the
benchmark rebuilds every record's prompt from the run's config (same seed, same request source) and hashes it the
same way. Prompts differ per (seed, index), so the join is exact; ambiguous or missing hashes are counted, never
guessed. Run ``python benchmarks/generator_capacity.py --help``; benchmarks/README.md says more.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import orjson

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SERVER_SRC = HERE / "stream_server.c"
LOADGEN = [sys.executable, "-m", "loadgen"]
TARGETS = {"min_achieved_ratio": 0.95, "cv_low": 0.95, "cv_high": 1.05, "max_ttft_error_p99_ms": 2.0}
LEVELS = ((10, 30.0), (50, 20.0), (200, 20.0), (800, 20.0), (2000, 10.0))  # (req/s, seconds)
COMPARE_RATES = (200, 800)  # --http-client aiohttp against the default fast client
MULTI_RATES = (800, 1500, 2000, 2500)  # loadgen run --workers N (one schedule), and the same rates with one worker
_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)


# -- the server -----------------------------------------------------------------------------------------------------
def pin(cpu: str | None, nice: int | None = None) -> list[str]:
    """The command prefix that pins a child to ``cpu`` (taskset) and sets its nice value (negative: root only)."""
    return (["taskset", "-c", cpu] if cpu is not None else []) + (["nice", "-n", str(nice)] if nice else [])


def build_server(build_dir: Path) -> Path:
    """Compile stream_server.c into ``build_dir`` (once; again when the source is newer than the binary)."""
    build_dir.mkdir(parents=True, exist_ok=True)
    binary = build_dir / "stream_server"
    if not binary.exists() or binary.stat().st_mtime < SERVER_SRC.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(SERVER_SRC)], check=True)
    return binary


@dataclass
class ServerTiming:
    """The server's timing file: one entry per generate_stream request, in arrival order (CLOCK_MONOTONIC ns)."""

    arrival: np.ndarray
    first_due: np.ndarray
    first_write: np.ndarray  # just before the first token's write(); 0: the stream never started
    first_sent: np.ndarray  # just after that write() returned
    last_write: np.ndarray
    tokens: np.ndarray
    text_hash: np.ndarray  # uint64 FNV-1a of the raw text_input JSON string
    params: dict[str, str] = field(default_factory=dict)
    end: dict[str, float] = field(default_factory=dict)


def _kv(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.lstrip("#").split() if "=" in part)


def read_timing(path: Path) -> ServerTiming:
    """Parse a timing file written by stream_server (see the format in its header comment)."""
    lines = Path(path).read_text().splitlines()
    if not lines or not lines[0].startswith("# slm-loadgen stream_server timing v1"):
        raise ValueError(f"{path}: not a stream_server timing file")
    params = _kv(lines[1])
    if lines[2].split() != ["seq", "conn", "arrival_ns", "first_due_ns", "first_write_ns", "first_sent_ns",
                            "last_write_ns", "tokens", "text_fnv1a64"]:
        raise ValueError(f"{path}: unexpected column line {lines[2]!r}")
    if not lines[-1].startswith("# end "):
        raise ValueError(f"{path}: no end line (was the server killed before it could write it?)")
    rows = [ln.split() for ln in lines[3:-1]]
    ints = np.array([[int(x) for x in r[2:8]] for r in rows], dtype=np.int64).reshape(-1, 6)
    hashes = np.array([int(r[8], 16) for r in rows], dtype=np.uint64)
    end = {k: float(v) for k, v in _kv(lines[-1][len("# end "):]).items()}
    if int(end["requests"]) != len(rows):
        raise ValueError(f"{path}: {len(rows)} rows but the end line says {int(end['requests'])}")
    return ServerTiming(*(ints[:, k] for k in range(6)), text_hash=hashes, params=params, end=end)


class StreamServer:
    """stream_server as a child process, optionally pinned to one CPU; ``stop()`` returns its timing."""

    def __init__(self, binary: Path, timing_path: Path, ttft_us: int = 5000, gap_us: int = 1000,
                 cpu: str | None = None, nice: int | None = None) -> None:
        self.timing_path = Path(timing_path)
        cmd = [str(binary), "--timing-file", str(self.timing_path), "--ttft-us", str(ttft_us),
               "--gap-us", str(gap_us)]
        self.cmd = pin(cpu, nice) + cmd
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> StreamServer:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            self.proc.kill()
            raise RuntimeError(f"stream_server did not start (said {line!r})")
        self.url = "http://" + line.split()[-1]
        return self

    def stop(self) -> ServerTiming:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        return read_timing(self.timing_path)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


# -- the join -------------------------------------------------------------------------------------------------------
def fnv1a64(items: list[bytes]) -> np.ndarray:
    """FNV-1a 64 of each byte string, vectorised over the strings (the server computes the same in C)."""
    n = len(items)
    lens = np.fromiter((len(b) for b in items), dtype=np.int64, count=n)
    width = int(lens.max()) if n else 0
    buf = np.zeros((n, width), dtype=np.uint8)
    for i, b in enumerate(items):
        buf[i, : len(b)] = np.frombuffer(b, dtype=np.uint8)
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    order = np.argsort(-lens, kind="stable")  # longest first: column j touches a prefix of this order
    live = n
    with np.errstate(over="ignore"):
        for j in range(width):
            while live and lens[order[live - 1]] <= j:
                live -= 1
            rows = order[:live]
            h[rows] = (h[rows] ^ buf[rows, j].astype(np.uint64)) * _FNV_PRIME
    return h


def prompt_hashes(config: dict, indices: np.ndarray) -> np.ndarray:
    """Rebuild the prompts the run sent (same seed and request source) and hash them as the server does."""
    from loadgen.core.prompts import PromptBuilder, RequestSource
    from loadgen.core.sizes import parse_size

    # the run's seed and sizes, from a run of this version ("scenario") or of one before it ("settings"), so
    # that --loadgen-src can measure an older tree for an A/B comparison
    sc = config.get("scenario")
    if sc is not None:
        seed, w, min_tokens = sc["load"]["seed"], sc["workload"], sc["target"]["min_tokens"]
    else:
        s = config["settings"]
        seed, w, min_tokens = s["seed"], s, s["min_tokens"]
    source = RequestSource(parse_size(w["input_tokens"], "input"), parse_size(w["output_tokens"], "output"),
                           PromptBuilder(tokenizer=w["tokenizer"], seed=seed), seed=seed, params={},
                           min_tokens_equal_max=min_tokens)
    return fnv1a64([orjson.dumps(source.spec(int(i)).prompt)[1:-1] for i in indices])


@dataclass
class ClientRun:
    """One ``loadgen run`` process: its run directory's contents and what the OS says about the process."""

    run_dir: Path
    config: dict
    summary: dict
    t0_abs: int  # the run's t0 on CLOCK_MONOTONIC
    sched_abs: np.ndarray  # every record's scheduled time, absolute
    issue_abs: np.ndarray  # issued records only (-1 when not issued)
    client_ttft_ns: np.ndarray  # -1 when the record has no token (error, cancelled)
    indices: np.ndarray
    process_cpu_s: float  # user + system, the whole process (start-up and summary included)
    process_sys_s: float
    rss_samples: list[tuple[int, int]] = field(default_factory=list)  # (CLOCK_MONOTONIC ns, RSS KiB)


def run_client(url: str, rate: float, duration_s: float, out_dir: Path, *, seed: int = 0, cpu: str | None = None,
               http_client: str = "fast", sample_rss_s: float | None = None, src: Path = ROOT,
               nice: int | None = None, workers: int = 1, output_tokens: int = 64) -> subprocess.Popen[bytes]:
    """Start one ``loadgen run`` (pinned with taskset when ``cpu`` is given); ``finish_client`` collects it.

    ``src`` is the directory holding the ``loadgen`` package to run (the repository; or a patched copy, to measure
    a change before making it)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [*LOADGEN, "run", "--url", url, "--model", "m", "--rate", f"{rate:g}", "--duration", f"{duration_s:g}",
           "--output-tokens", str(output_tokens), "--seed", str(seed), "--http-client", http_client, "--no-live",
           "--out-dir", str(out_dir), "--workers", str(workers)]
    cmd = pin(cpu, nice) + cmd
    log = open(out_dir / "client.log", "wb")  # noqa: SIM115 (closed by finish_client)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=src, env=env)
    proc.log, proc.out_dir, proc.sample_rss_s = log, out_dir, sample_rss_s  # type: ignore[attr-defined]
    return proc


def _rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def finish_client(proc: subprocess.Popen[bytes]) -> ClientRun:
    """Wait for a client (sampling its RSS when asked), then read its run directory."""
    samples: list[tuple[int, int]] = []
    every = proc.sample_rss_s  # type: ignore[attr-defined]
    # os.wait4 (not Popen.wait) so that the child's CPU time comes back with it; Linux adds the CPU time of the
    # children it reaped, i.e. of the --workers processes.
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG if every else 0)
        if pid:
            break
        rss = _rss_kib(proc.pid)
        if rss is not None:
            samples.append((time.perf_counter_ns(), rss))  # CLOCK_MONOTONIC, like the run's t0
        time.sleep(every)
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.log.close()  # type: ignore[attr-defined]
    out_dir: Path = proc.out_dir  # type: ignore[attr-defined]
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen run exited {proc.returncode}; see {out_dir / 'client.log'}")
    (run_dir,) = [p for p in out_dir.iterdir() if p.is_dir()]
    config = orjson.loads((run_dir / "config.json").read_bytes())
    summary = orjson.loads((run_dir / "summary.json").read_bytes())
    client = summary["client"]
    t0 = int(client["anchor"]["monotonic_ns"]) + int(client["t0_offset_ns"])
    from loadgen.core.summary import load_level_records

    idx, sched, issue, ttft = [], [], [], []
    for r in load_level_records(run_dir):  # records.jsonl, or records.w<K>.jsonl of each --workers process
        idx.append(r.index)
        sched.append(t0 + r.scheduled_ns)
        issue.append(-1 if r.issued_ns is None else t0 + r.issued_ns)
        ok = r.status == "ok" and r.chunk_offsets_us
        ttft.append(r.chunk_offsets_us[0] * 1000 if ok else -1)
    cpu, sys_s = usage.ru_utime + usage.ru_stime, usage.ru_stime
    arr = np.asarray
    return ClientRun(run_dir, config, summary, t0, arr(sched, np.int64), arr(issue, np.int64), arr(ttft, np.int64),
                     arr(idx, np.int64), cpu, sys_s, samples)


def pct(values: np.ndarray, q: float, scale: float = 1.0) -> float | None:
    return None if len(values) == 0 else round(float(np.percentile(values, q)) * scale, 4)


def join(runs: list[ClientRun], timing: ServerTiming) -> dict[str, Any]:
    """Pair every issued record with its server row by prompt hash: arrays ``row``, ``issue``, ``client_ttft``.

    A hash the server saw twice is ambiguous and never joined; both cases are counted rather than guessed.
    """
    row_of: dict[int, int] = {}
    for row, h in enumerate(timing.text_hash.tolist()):
        row_of[h] = -1 if h in row_of else row
    rows, issues, ttfts, unmatched, ambiguous = [], [], [], 0, 0
    for r in runs:
        issued = r.issue_abs >= 0
        found = np.array([row_of.get(h, -2) for h in prompt_hashes(r.config, r.indices[issued]).tolist()],
                         dtype=np.int64)
        unmatched += int((found == -2).sum())
        ambiguous += int((found == -1).sum())
        good = found >= 0
        rows.append(found[good])
        issues.append(r.issue_abs[issued][good])
        ttfts.append(r.client_ttft_ns[issued][good])
    cat = np.concatenate
    return {"row": cat(rows), "issue": cat(issues), "client_ttft": cat(ttfts), "unmatched": unmatched,
            "ambiguous": ambiguous}


def level_figures(runs: list[ClientRun], timing: ServerTiming, duration_s: float) -> dict[str, Any]:
    """Every figure of one level from the server's timing and the client runs that loaded it."""
    # Window: the span in which every process's schedule was active.
    w0 = max(r.t0_abs for r in runs)
    w1 = min(r.t0_abs for r in runs) + int(duration_s * 1e9)
    win_s = (w1 - w0) / 1e9
    sched = np.sort(np.concatenate([r.sched_abs for r in runs]))
    sched_in = sched[(sched >= w0) & (sched < w1)]
    arrivals = np.sort(timing.arrival)
    arr_in = arrivals[(arrivals >= w0) & (arrivals < w1)]
    j = join(runs, timing)
    ok = j["client_ttft"] >= 0
    row, issue, cttft = j["row"][ok], j["issue"][ok], j["client_ttft"][ok]
    started = timing.first_write[row] > 0
    row, issue, cttft = row[started], issue[started], cttft[started]
    # True TTFT = first write - issue: the server's TTFT plus the request's forward transit, which holds the
    # server's own wake-up delay (the server really answered that late). What is left, client stamp - server
    # write, is the generator's error plus the loopback delivery (tens of microseconds).
    err = (cttft - (timing.first_write[row] - issue)).astype(np.float64)
    err_sent = (cttft - (timing.first_sent[row] - issue)).astype(np.float64)  # from the end of the write()
    err_srv = (cttft - (timing.first_write[row] - timing.arrival[row])).astype(np.float64)
    tr = (timing.arrival[j["row"]] - j["issue"]).astype(np.float64)
    summaries = [r.summary for r in runs]
    issued = sum(s["client"]["issued"] for s in summaries)
    cpu = sum(s["client"]["cpu_seconds"] for s in summaries)
    sched_ratio = len(arr_in) / len(sched_in) if len(sched_in) else None
    cv_server = float(np.diff(arr_in).std(ddof=1) / np.diff(arr_in).mean()) if len(arr_in) > 2 else None
    cv_sched = float(np.diff(sched_in).std(ddof=1) / np.diff(sched_in).mean()) if len(sched_in) > 2 else None
    iss = np.sort(np.concatenate([r.issue_abs[r.issue_abs >= 0] for r in runs]))
    iss = iss[(iss >= w0) & (iss < w1)]
    cv_issue = float(np.diff(iss).std(ddof=1) / np.diff(iss).mean()) if len(iss) > 2 else None
    return {
        "window_s": round(win_s, 3),
        "scheduled_in_window": int(len(sched_in)),
        "server_arrivals_in_window": int(len(arr_in)),
        "achieved_rate_rps": round(len(arr_in) / win_s, 2),
        "scheduled_rate_rps": round(len(sched_in) / win_s, 2),
        "achieved_ratio": None if sched_ratio is None else round(sched_ratio, 4),
        "cv_server": None if cv_server is None else round(cv_server, 4),
        "cv_schedule": None if cv_sched is None else round(cv_sched, 4),
        "cv_issue": None if cv_issue is None else round(cv_issue, 4),
        "ttft_error_ms": {"count": int(len(err)), "p50": pct(err, 50, 1e-6), "p99": pct(err, 99, 1e-6),
                          "max": pct(err, 100, 1e-6), "min": pct(err, 0, 1e-6)},
        "ttft_error_from_write_end_ms": {"p50": pct(err_sent, 50, 1e-6), "p99": pct(err_sent, 99, 1e-6)},
        "ttft_error_vs_server_ttft_ms": {"p50": pct(err_srv, 50, 1e-6), "p99": pct(err_srv, 99, 1e-6),
                                         "max": pct(err_srv, 100, 1e-6)},
        "transit_ms": {"p50": pct(tr, 50, 1e-6), "p99": pct(tr, 99, 1e-6), "max": pct(tr, 100, 1e-6)},
        "joined": int(len(tr)), "unmatched": j["unmatched"], "ambiguous": j["ambiguous"],
        "schedule_lag_p99_ms": max(s["schedule_lag_ms"]["p99"] or 0.0 for s in summaries),
        "client_cpu_s_per_1000": round(1000 * cpu / issued, 3) if issued else None,
        "client_process_cpu_s_per_1000": round(1000 * sum(r.process_cpu_s for r in runs) / issued, 3)
        if issued else None,
        "client_process_sys_share": round(sum(r.process_sys_s for r in runs) / max(1e-9, sum(r.process_cpu_s
                                                                                           for r in runs)), 3),
        "client_cpu_utilisation": max(s["client"]["cpu_utilisation"] or 0.0 for s in summaries),
        "client_loop_lag_p99_ms": max(s["client"]["loop_lag_p99_ms"] for s in summaries),
        "client_saturated": any(s["client"]["saturated"] for s in summaries),
        "issued": issued, "completed": sum(s["completed_requests"] for s in summaries),
        "errors": sum(s["error_count"] for s in summaries),
        "event_loop": runs[0].config.get("event_loop"),
        "server": {"cpu_s": round(timing.end["cpu_user_s"] + timing.end["cpu_sys_s"], 3),
                   "events": int(timing.end["events"]), "timer_late_p99_us": timing.end["late_p99_us"]},
    }


def judge(fig: dict[str, Any]) -> dict[str, bool]:
    """The issue's targets (rate >= 95 % of the schedule, CV 0.95-1.05, TTFT error p99 < 2 ms)."""
    ratio, cv, err = fig["achieved_ratio"], fig["cv_server"], fig["ttft_error_ms"]["p99"]
    out = {"rate": ratio is not None and ratio >= TARGETS["min_achieved_ratio"],
           "cv": cv is not None and TARGETS["cv_low"] <= cv <= TARGETS["cv_high"],
           "ttft_error": err is not None and err < TARGETS["max_ttft_error_p99_ms"]}
    out["all"] = all(out.values())
    return out


# -- levels ---------------------------------------------------------------------------------------------------------
@dataclass
class Bench:
    binary: Path
    work: Path
    server_cpu: str | None = "1"
    client_cpus: tuple[str, ...] = ("0",)
    ttft_us: int = 5000
    gap_us: int = 1000
    loadgen_src: Path = ROOT
    nice: int | None = None  # for the client and server processes (-10: busy neighbours disturb them less)
    server_nice: int | None = None  # the server's own nice value, when it must win a core it shares with the client
    output_tokens: int = 64

    def level(self, rate: float, duration_s: float, *, procs: int = 1, http_client: str = "fast",
              seed: int = 0, sample_rss_s: float | None = None, label: str | None = None,
              workers: int = 1) -> dict[str, Any]:
        """One level: ``procs`` independent clients at rate/procs each (own schedules), or one client whose
        ``workers`` processes share one schedule (``loadgen run --workers``). A client with workers is pinned to
        all of ``client_cpus`` (the workers inherit the affinity)."""
        label = label or f"{http_client}-{rate:g}rps-{procs}p" + (f"-w{workers}" if workers > 1 else "")
        d = self.work / f"{time.strftime('%H%M%S')}-{label}"
        d.mkdir(parents=True)
        load_before, busy_before = os.getloadavg()[0], cpu_busy_s()
        with StreamServer(self.binary, d / "server_timing.txt", self.ttft_us, self.gap_us, self.server_cpu,
                          self.nice if self.server_nice is None else self.server_nice) as srv:
            def cpus(k: int) -> str | None:
                if not self.client_cpus:
                    return None
                return ",".join(self.client_cpus) if workers > 1 else self.client_cpus[k % len(self.client_cpus)]

            clients = [run_client(srv.url, rate / procs, duration_s, d / f"client{k}", seed=seed + k, cpu=cpus(k),
                                  http_client=http_client, sample_rss_s=sample_rss_s, src=self.loadgen_src,
                                  nice=self.nice, workers=workers, output_tokens=self.output_tokens)
                       for k in range(procs)]
            runs = [finish_client(p) for p in clients]
            timing = srv.stop()
        fig = level_figures(runs, timing, duration_s)
        own: dict[str, float] = {}
        if self.server_cpu:
            own[self.server_cpu] = fig["server"]["cpu_s"]
        for k, r in enumerate(runs):  # clients pinned to one CPU each (a --workers client spans several: not split)
            cpu = cpus(k)
            if cpu and "," not in cpu:
                own[cpu] = own.get(cpu, 0.0) + r.process_cpu_s
        fig["interference"] = foreign_cpu(busy_before, cpu_busy_s(), own)  # other processes on our cores
        fig.update({"label": label, "target_rate_rps": rate, "duration_s": duration_s, "processes": procs,
                    "workers": workers,
                    "nice": self.nice, "server_nice": self.server_nice, "output_tokens": self.output_tokens,
                    "http_client": http_client, "loadavg_1m_before": round(load_before, 2),
                    "loadavg_1m_after": round(os.getloadavg()[0], 2),
                    "client_cpus": list(self.client_cpus if workers > 1 else self.client_cpus[:procs]),
                    "dir": str(d)})
        fig["meets"] = judge(fig)
        if sample_rss_s:
            fig["memory"] = memory_figures(runs[0], duration_s)
        return fig


def memory_figures(run: ClientRun, duration_s: float) -> dict[str, Any]:
    """RSS over the run: does it flatten while issuing? Extrapolate the late slope to one hour, honestly labelled.

    The schedule is allocated up front (8 bytes a request), so a one-hour run holds more of it than a short one
    from its first second; ``schedule_1h_extra_MiB`` adds that difference to the extrapolation. After issuing, the
    summary is computed in the same process (``peak_after_issuing_MiB``): that phase grows with the record count
    up to the summary's caps and is not part of the live bound."""
    s = np.asarray(run.rss_samples, dtype=np.float64)
    if len(s) < 8:
        return {"error": "too few RSS samples"}
    t, rss = (s[:, 0] - run.t0_abs) / 1e9, s[:, 1] / 1024.0  # seconds after the run's t0, MiB
    issuing = (t >= 0) & (t <= duration_s)
    ti, ri = t[issuing], rss[issuing]
    late = ti >= duration_s / 2
    slope = float(np.polyfit(ti[late], ri[late], 1)[0]) if late.sum() > 3 else float("nan")
    rate = run.summary["client"]["issued"] / duration_s

    def at(x: float) -> float:  # the last sample taken at or before x s (never one from the summary phase)
        return float(ri[max(0, int(np.searchsorted(ti, x, side="right")) - 1)])

    marks = {f"rss_at_{int(f * 100)}pct_MiB": round(at(f * duration_s), 1) for f in (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)}
    schedule_extra = 8 * rate * (3600 - duration_s) / 2**20
    return {**marks, "peak_while_issuing_MiB": round(float(ri.max()), 1),
            "peak_after_issuing_MiB": round(float(rss[t > duration_s].max(initial=0)), 1),
            "late_half_slope_KiB_per_s": round(slope * 1024, 3),
            "late_half_slope_KiB_per_1000_requests": round(slope * 1024 * 1000 / rate, 3) if rate else None,
            "schedule_1h_extra_MiB": round(schedule_extra, 1),
            "extrapolated_1h_MiB": round(at(duration_s) + slope * (3600 - duration_s) + schedule_extra, 1),
            "samples_s_KiB": [[round(float(a), 2), int(b)] for a, b in zip(t, s[:, 1], strict=True)]}


def machine_info() -> dict[str, Any]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "unknown")
    try:
        import uvloop

        uv = uvloop.__version__
    except ImportError:
        uv = None
    return {"date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"), "nproc": os.cpu_count(),
            "cpu_model": cpu, "python": platform.python_version(), "uvloop": uv, "kernel": platform.release(),
            "loadavg_at_start": os.getloadavg(), "perf_counter": str(time.get_clock_info("perf_counter"))}


_PROBE = """
import sys, time
now, end, prev, stalls = time.perf_counter_ns, time.perf_counter_ns() + int(float(sys.argv[1]) * 1e9), 0, []
prev = now()
while prev < end:
    t = now()
    if t - prev > 100_000:
        stalls.append(t - prev)
    prev = t
print(len(stalls), sum(stalls), max(stalls, default=0))
"""


def noise_probe(cpus: tuple[str, ...], seconds: float = 3.0) -> dict[str, Any]:
    """How often does this machine take a busy core away? A spinning process per CPU in ``cpus`` counts the gaps
    over 100 us in its own clock readings (preemption by other processes, or by the hypervisor on a VM)."""
    procs = [subprocess.Popen(["taskset", "-c", c, sys.executable, "-c", _PROBE, str(seconds)],
                              stdout=subprocess.PIPE, text=True) for c in cpus]
    out = {}
    for c, p in zip(cpus, procs, strict=True):
        n, total, worst = (int(x) for x in p.communicate()[0].split())
        out[f"cpu{c}"] = {"stalls_over_100us": n, "stalled_ms_per_s": round(total / 1e6 / seconds, 3),
                          "worst_ms": round(worst / 1e6, 3)}
    return out


def cpu_busy_s() -> dict[str, float]:
    """Busy CPU seconds of each CPU since boot (/proc/stat: user, nice, system, irq, softirq, steal)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *vals = line.split()
        if name.startswith("cpu") and name != "cpu":
            v = [int(x) for x in vals]
            out[name[3:]] = (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / tick
    return out


def foreign_cpu(before: dict[str, float], after: dict[str, float], own: dict[str, float]) -> dict[str, Any]:
    """Per CPU of ours: how busy it was during the level, and how much of that was not our own processes
    (``own``: CPU id -> the CPU seconds our pinned processes used there)."""
    out = {}
    for cpu, own_s in own.items():
        busy = after.get(cpu, 0.0) - before.get(cpu, 0.0)
        out[cpu] = {"busy_s": round(busy, 2), "own_s": round(own_s, 2), "foreign_busy_s": round(max(0.0, busy - own_s), 2)}
    return out


def wait_quiet(max_load: float, patience_s: float) -> float:
    """Sleep until the 1-minute load average is below ``max_load`` (or patience runs out); returns it."""
    end = time.monotonic() + patience_s
    while os.getloadavg()[0] >= max_load and time.monotonic() < end:
        time.sleep(30)
    return os.getloadavg()[0]


def load_column(f: dict[str, Any]) -> str:
    return f"{f['loadavg_1m_before']:.2f}/{f['loadavg_1m_after']:.2f}"


def levels_table(levels: list[dict[str, Any]], title: str, last: tuple[str, Any] = ("load before/after",
                                                                                   load_column)) -> Any:
    """The levels as a Rich table; ``last`` is the one column that differs between benchmarks (name, f -> text)."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("level", "achieved rps", "ratio", "CV srv (sched)", "TTFT err p50/p99 ms", "lag p99 ms",
                "CPU s/1k req", "CPU util", last[0], "meets"):
        table.add_column(col, justify="right")
    for f in levels:
        e = f["ttft_error_ms"]
        bad = [k for k, ok in f["meets"].items() if k != "all" and not ok]
        table.add_row(f["label"], f"{f['achieved_rate_rps']:.1f}", f"{f['achieved_ratio']:.3f}",
                      f"{f['cv_server']:.3f} ({f['cv_schedule']:.3f})", f"{e['p50']:.3f}/{e['p99']:.3f}",
                      f"{f['schedule_lag_p99_ms']:.2f}", f"{f['client_cpu_s_per_1000']:.3f}",
                      f"{f['client_cpu_utilisation']:.2f}", last[1](f),
                      "yes" if f["meets"]["all"] else "no: " + ",".join(bad))
    return table


def render(results: dict[str, Any]) -> None:
    from rich.console import Console

    table = levels_table(results["levels"], "loadgen generator capacity (Poisson, 64-token streams)")
    console = Console(width=150)
    console.print(table)
    console.print(f"highest single-process rate meeting the targets: {results['highest_rate_meeting_targets']}")
    for f in results["levels"]:
        if "memory" in f:
            m = {k: v for k, v in f["memory"].items() if k != "samples_s_KiB"}
            console.print(f"memory ({f['label']}): {m}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="noise,levels,compare,multi,memory",
                   help="comma list of noise (machine stall probe), levels, compare (aiohttp vs fast), multi "
                   "(several processes), memory")
    p.add_argument("--rates", default=None, help="levels as RATE:SECONDS,... (default 10:30,50:20,200:20,800:20,"
                   "2000:10)")
    p.add_argument("--quick", action="store_true", help="2-second levels and a 20-second memory run (smoke test)")
    p.add_argument("--repeat", type=int, default=1, help="run the levels part this many times (spread)")
    p.add_argument("--memory-rate", type=float, default=200.0)
    p.add_argument("--memory-seconds", type=float, default=300.0)
    p.add_argument("--procs", type=int, default=2, help="--workers for the multi part (default 2)")
    p.add_argument("--client-cpus", default="0", help="CPU list for client processes (taskset), '' for none")
    p.add_argument("--multi-cpus", default="0,1", help="CPUs the multi part's client (all its workers) may use")
    p.add_argument("--server-cpu", default="1", help="CPU for the server (taskset), '' for none")
    p.add_argument("--ttft-us", type=int, default=5000)
    p.add_argument("--gap-us", type=int, default=1000)
    p.add_argument("--work-dir", default=str(HERE / ".build" / "runs"), help="run directories and server timing")
    p.add_argument("--json", default=str(HERE / ".build" / "generator_capacity.json"), help="results JSON path")
    p.add_argument("--nice", type=int, default=None,
                   help="nice value for client and server (e.g. -10, as root) when neighbours are busy")
    p.add_argument("--server-nice", type=int, default=None,
                   help="the multi part's server nice value (e.g. -15, as root): on a machine without a core to "
                   "spare, the server then preempts the client's workers on the core they share")
    p.add_argument("--multi-rates", default=None, help="the multi part's rates, e.g. 3000,4000 (default "
                   "800,1500,2000,2500; each runs for its --rates duration, else 10 s)")
    p.add_argument("--multi-output-tokens", type=int, default=64,
                   help="the multi part's stream length (shorter streams: less server CPU on a shared core)")
    p.add_argument("--loadgen-src", default=str(ROOT), help="directory holding the loadgen package to measure")
    p.add_argument("--max-load", type=float, default=None, help="first wait until the 1-minute load is below this")
    p.add_argument("--patience", type=float, default=2400.0, help="how long --max-load may wait (seconds)")
    a = p.parse_args(argv)
    parts = set(a.parts.split(","))
    levels = [(float(x.split(":")[0]), float(x.split(":")[1])) for x in a.rates.split(",")] if a.rates else LEVELS
    if a.quick:
        levels = [(r, 2.0) for r, _ in levels]
        a.memory_seconds = min(a.memory_seconds, 20.0)
    info = machine_info()
    if a.max_load is not None:
        info["loadavg_when_started"] = wait_quiet(a.max_load, a.patience)
    bench = Bench(build_server(HERE / ".build"), Path(a.work_dir), a.server_cpu or None,
                  tuple(c for c in a.client_cpus.split(",") if c), a.ttft_us, a.gap_us, Path(a.loadgen_src), a.nice)
    results: dict[str, Any] = {"machine": info, "targets": TARGETS, "levels": [],
                               "server": {"ttft_us": a.ttft_us, "gap_us": a.gap_us, "cpu": a.server_cpu}}
    if "noise" in parts:
        cpus = tuple(dict.fromkeys([*bench.client_cpus[:1], *([bench.server_cpu] if bench.server_cpu else [])]))
        info["noise_one_core_busy"] = noise_probe(cpus[:1])
        info["noise_all_cores_busy"] = noise_probe(cpus)
    durations = dict(levels)
    if "levels" in parts:
        for k in range(a.repeat):
            results["levels"] += [bench.level(r, d, label=f"fast-{r:g}rps-1p" + (f"-#{k + 1}" if k else ""))
                                  for r, d in levels]
    if "compare" in parts:
        for r in COMPARE_RATES:
            results["levels"].append(bench.level(r, durations.get(r, 20.0), http_client="aiohttp"))
    if "multi" in parts:
        multi = Bench(bench.binary, bench.work, bench.server_cpu, tuple(a.multi_cpus.split(",")), a.ttft_us,
                      a.gap_us, bench.loadgen_src, a.nice, a.server_nice, a.multi_output_tokens)
        for r in ([float(x) for x in a.multi_rates.split(",")] if a.multi_rates else MULTI_RATES):
            # the same rates with one worker and with --workers N, on the same CPUs
            for w in (1, a.procs):
                results["levels"].append(multi.level(r, durations.get(r, 10.0), workers=w, seed=100,
                                                     label=f"fast-{r:g}rps-" + (f"{a.multi_output_tokens}tok-" if a.multi_output_tokens != 64 else "") + f"w{w}"))
    if "memory" in parts:
        results["levels"].append(bench.level(a.memory_rate, a.memory_seconds, sample_rss_s=0.25,
                                             label=f"memory-{a.memory_rate:g}rps-{a.memory_seconds:g}s"))
    single: dict[float, bool] = {}  # rate -> every single-process fast-client run at that rate met the targets
    for f in results["levels"]:
        if (f["processes"] == 1 and f.get("workers", 1) == 1 and f["http_client"] == "fast"
                and not f["label"].startswith("memory") and "-w" not in f["label"]):
            single[f["target_rate_rps"]] = single.get(f["target_rate_rps"], True) and f["meets"]["all"]
    results["highest_rate_meeting_targets"] = max((r for r, ok in single.items() if ok), default=None)
    for w in sorted({f.get("workers", 1) for f in results["levels"] if f["label"].startswith("fast-")
                     and "-w" in f["label"]}):
        ok = [f["target_rate_rps"] for f in results["levels"] if f["label"].endswith(f"-w{w}") and f["meets"]["all"]]
        results[f"highest_rate_meeting_targets_workers_{w}"] = max(ok, default=None)
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    render(results)
    print(f"results: {a.json}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
