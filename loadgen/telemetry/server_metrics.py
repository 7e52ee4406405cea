"""The server's own metrics during every run: a side task that scrapes its Prometheus page into
``server_metrics.jsonl``.

Why: latency figures say *that* a level went wrong, the server's queue, batch and KV cache say *why*. The sampler
scrapes the page every ``--server-metrics-interval`` (default 0.5 s: 2 Hz; 0.1..10 s) from its own OS thread
(``loadgen.telemetry.thread``: neither the asyncio loop nor the gevent hub pays for HTTP or parsing), and never
fails a run: an unreachable page is ONE warning line, then it keeps trying quietly.

One JSON object per successful scrape, one line, flushed as it is written (at least once a second at 2 Hz)::

    {"t_mono_ns": <time.perf_counter_ns(), absolute: the records' clock>,
     "common": {"queued", "running", "kv_usage", "preemptions", "cache_hit_rate"},   # floats or null
     "samples": [[name, {labels}, value], ...]}

``t_mono_ns`` is the midpoint of the request and its response. ``common`` is ``loadgen.telemetry.vocabulary``'s
view; ``samples`` holds only the families that matter for a recognised server (at most ``MAX_SAMPLES``), or the
page's first ``MAX_SAMPLES_UNKNOWN`` samples for a server it does not know. NaN and infinite values are written
as null. A failed scrape writes nothing.

Bounds: one line per scrape (the embedded server with one replica: about 3 kB, so 2 Hz is about 0.4 MB a minute;
a line is at most ``MAX_SAMPLES`` samples), a page read is capped at ``MAX_PAGE_BYTES``, and memory holds only
the lines scraped before the run directory exists (at most ``PENDING_MAX``: the probe and the idle-power
measurement) and the latest values (for Locust's live charts). The summary block is computed by reading the
file back, so a long run costs no memory either.
"""

from __future__ import annotations

import http.client
import math
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from loadgen.errors import UsageError
from loadgen.telemetry.prometheus import Sample, parse_samples
from loadgen.telemetry.thread import NativeThread, native_sleep
from loadgen.telemetry.vocabulary import COMMON_KEYS, KNOWN, CommonReader

SERVER_METRICS_FILE = "server_metrics.jsonl"
DEFAULT_INTERVAL_S = 0.5
MIN_INTERVAL_S, MAX_INTERVAL_S = 0.1, 10.0
SCRAPE_TIMEOUT_S = 2.0
MAX_PAGE_BYTES = 8 << 20
MAX_SAMPLES = 1000  # per line, for a recognised server (the embedded server with 8 replicas keeps about 150)
MAX_SAMPLES_UNKNOWN = 200  # per line, for a page none of the vocabulary's servers publish
PENDING_MAX = 1200  # lines kept in memory until the run directory exists (10 minutes at 2 Hz)
OFF, AUTO = "off", "auto"


def check_server_metrics(setting: str, interval_s: float) -> None:
    """``--server-metrics URL|auto|off`` and ``--server-metrics-interval``, checked before anything starts."""
    s = setting.strip()
    if s not in (OFF, AUTO):
        parts = urlsplit(s)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"--server-metrics {setting!r}: give auto, off, or the http(s):// URL of a Prometheus "
                             "metrics page (e.g. http://127.0.0.1:8002/metrics)")
        if parts.username or parts.password:
            raise UsageError(f"--server-metrics: credentials in the URL would be written to config.json; give a "
                             f"URL without them ({parts.scheme}://{parts.hostname}...)")
    if not (math.isfinite(interval_s) and MIN_INTERVAL_S <= interval_s <= MAX_INTERVAL_S):
        raise UsageError(f"--server-metrics-interval {interval_s:g} s: use {MIN_INTERVAL_S:g} to {MAX_INTERVAL_S:g} s "
                         f"(default {DEFAULT_INTERVAL_S:g} s)")


def resolve_metrics_url(setting: str, backend: str, url: str | None, known: str | None = None) -> str | None:
    """The page to scrape: the URL given; for ``auto`` the one the front end knows (the embedded or the sweep's
    server), else Triton's ``http://HOST:8002/metrics`` for Triton backends and ``<url>/metrics`` for
    OpenAI-compatible servers (vLLM, SGLang and TGI serve it there); None for ``off``."""
    s = setting.strip()
    if s == OFF:
        return None
    if s != AUTO:
        return s
    if known:
        return known
    if not url:
        return None
    if backend.startswith("openai"):
        return (url if "://" in url else f"http://{url}").rstrip("/") + "/metrics"
    from loadgen.power.monitor import default_metrics_url

    return default_metrics_url(url)


def fetch_page(url: str, timeout_s: float = SCRAPE_TIMEOUT_S) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - the user's own endpoint
        return resp.read(MAX_PAGE_BYTES).decode("utf-8", "replace")


def _finite(v: float | None) -> float | None:
    return v if v is None or math.isfinite(v) else None


class ServerMetricsSampler:
    """The side task (``start``, ``stop``, ``contribute``); ``open(run_dir)`` once the run directory exists.

    ``say``: where the one warning line goes. ``add_listener(fn)``: ``fn(t_mono_ns, samples)`` gets every
    successful scrape's parsed samples (a sweep point's ``ServerWatch`` aggregates them), from the sampler's
    thread. ``latest``: the last scrape's common values, for live displays.
    """

    name = "server_metrics"

    def __init__(self, url: str, interval_s: float = DEFAULT_INTERVAL_S,
                 say: Callable[[str], Any] | None = None) -> None:
        self.url = url
        self.interval_s = interval_s
        self.say = say
        self.settle_s = 0.0  # wait before the last scrape (counters published at the very end)
        self.kind: str | None = None
        self.latest: dict[str, Any] | None = None
        self.written = 0
        self.scrapes = 0
        self.errors = 0
        self.error: str | None = None  # the last failure, scrape or file
        self.path: Path | None = None
        self._reader = CommonReader()
        self._pending: deque[bytes] = deque(maxlen=PENDING_MAX)
        self._fh: Any = None
        self._listeners: list[Callable[[int, list[Sample]], Any]] = []
        self._thread: NativeThread | None = None
        self._stopping = False
        self._failing = False
        self._warn_token = [True]
        self._sleep = native_sleep()

    # -- the side task --------------------------------------------------------------------------------------
    def add_listener(self, fn: Callable[[int, list[Sample]], Any], settle_s: float = 0.0,
                     interval_s: float | None = None) -> None:
        """Before ``start``. ``settle_s``: wait this long before the last scrape; ``interval_s``: scrape at least
        this often (a sweep point's ``ServerWatch`` keeps its 5 Hz; the summary block says the rate used)."""
        self._listeners.append(fn)
        self.settle_s = max(self.settle_s, settle_s)
        if interval_s is not None:
            self.interval_s = min(self.interval_s, interval_s)

    def start(self) -> ServerMetricsSampler:
        """Start scraping. With listeners, the first scrape is taken here, before the load, so that their
        counters start from the server's state before the first request."""
        if self._thread is None:
            if self._listeners:
                self._tick()
            self._thread = NativeThread("server-metrics")
            self._thread.start(self._run)
        return self

    def open(self, run_dir: Path) -> None:
        """Write into ``run_dir/server_metrics.jsonl`` from now on (what was scraped before goes first). A page
        that has been failing is reported now, once."""
        self.path = run_dir / SERVER_METRICS_FILE
        if self._failing:
            self._say_unreadable()

    def stop(self) -> None:
        """One last scrape (after ``settle_s``; none when the page is not answering), then the thread ends and
        the file is closed; idempotent."""
        if self._thread is None or self._stopping:
            return
        self._stopping = True
        self._thread.join(SCRAPE_TIMEOUT_S + self.settle_s + 3.0)

    def contribute(self, run_dir: Path, summary: dict[str, Any]) -> None:
        summary.setdefault("extra", {})["server_metrics"] = self.summary_block(run_dir / SERVER_METRICS_FILE,
                                                                               summary)

    # -- the thread -----------------------------------------------------------------------------------------
    def _run(self) -> None:
        clock = time.monotonic
        try:
            due = clock()
            while not self._stopping:
                self._tick()
                due += self.interval_s
                if due < clock():  # a slow scrape: skip the missed ticks, the rate stays bounded
                    due = clock() + self.interval_s
                while not self._stopping and due - clock() > 0:
                    self._sleep(min(0.05, due - clock()))
            if not self._failing:  # a page that stopped answering would only delay the end of the run
                if self.settle_s:
                    self._sleep(self.settle_s)
                self._tick()
        finally:
            self._close()

    def _tick(self) -> None:
        """One scrape; nothing here may raise (telemetry never fails a run, nor ends its own thread)."""
        try:
            self._scrape()
        except Exception as err:
            self._failed(f"{type(err).__name__}: {err}")

    def _scrape(self) -> None:
        t_a = time.perf_counter_ns()
        try:
            text = fetch_page(self.url)
        except (OSError, ValueError, http.client.HTTPException) as err:
            self._failed(f"{type(err).__name__}: {err}")
            return
        t_ns = (t_a + time.perf_counter_ns()) // 2
        self._failing = False
        samples = parse_samples(text, KNOWN)
        kind, common, kept = self._reader.read(samples)
        if kind is None:  # a server the vocabulary does not know: the page's first samples
            samples = parse_samples(text)
            kept = samples[:MAX_SAMPLES_UNKNOWN]
        self.kind = kind or self.kind
        common = {k: _finite(common.get(k)) for k in COMMON_KEYS}
        self.scrapes += 1
        self.latest = {"t_mono_ns": t_ns, **common}
        rows = [[n, lab, _finite(v)] for n, lab, v in kept[:MAX_SAMPLES]]
        self._write(orjson.dumps({"t_mono_ns": t_ns, "common": common, "samples": rows}) + b"\n")
        for fn in self._listeners:
            try:
                fn(t_ns, samples)
            except Exception as err:  # a listener's bug must not stop the sampling
                self.error = f"listener {getattr(fn, '__qualname__', fn)}: {type(err).__name__}: {err}"

    def _write(self, line: bytes) -> None:
        if self.path is None:
            self._pending.append(line)
            return
        try:
            if self._fh is None:
                self._fh = open(self.path, "ab")  # noqa: SIM115 - open for the run, closed by _close
                self._fh.write(b"".join(self._pending))
                self.written += len(self._pending)
                self._pending.clear()
            self._fh.write(line)
            self._fh.flush()
            self.written += 1
        except OSError as err:
            self.error = f"cannot write {self.path.name} ({err.strerror or err})"
            self._warn(f"server metrics: {self.error}; the run goes on without them")
            self.path = None  # stop writing; the records matter more than the telemetry
            self._pending.clear()

    def _failed(self, why: str) -> None:
        self.errors += 1
        self.error = why
        self._failing = True
        if self.path is not None:  # said only once the run is under way (a wrong --url is the probe's to say)
            self._say_unreadable()

    def _say_unreadable(self) -> None:
        self._warn(f"server metrics: cannot read {self.url} ({self.error}); the run goes on without them, "
                   "retrying quietly (--server-metrics URL points elsewhere, off stops it)")

    def _warn(self, text: str) -> None:
        """The one warning line of a sampler (``open`` and the thread may both try: list.pop is atomic)."""
        try:
            self._warn_token.pop()
        except IndexError:
            return
        if self.say is not None:
            self.say(text)

    def _close(self) -> None:
        if self.path is not None and self._fh is None and self._pending:
            self._write(self._pending.pop())  # a run shorter than one tick: its lines still reach the file
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass
            self._fh = None

    # -- the summary ----------------------------------------------------------------------------------------
    def summary_block(self, path: Path, summary: dict[str, Any]) -> dict[str, Any]:
        """``summary["extra"]["server_metrics"]``: where the samples are, and the common series' mean and max
        over the measurement window (every sample when none falls inside it)."""
        block: dict[str, Any] = {
            "file": SERVER_METRICS_FILE if self.written else None, "url": self.url, "server": self.kind,
            "interval_s": self.interval_s, "samples": self.written, "scrape_errors": self.errors,
            "error": self.error if not self.written else None}
        block.update(window_stats(path, window_ns(summary)))
        return block


def window_ns(summary: dict[str, Any]) -> tuple[int, int] | None:
    """The summary's measurement window as absolute ``perf_counter_ns`` (the file's clock), or None."""
    from loadgen.power.energy import t0_abs_ns

    t0 = t0_abs_ns(summary)
    if t0 is None or summary.get("window_start_s") is None or summary.get("window_end_s") is None:
        return None
    return t0 + int(summary["window_start_s"] * 1e9), t0 + int(summary["window_end_s"] * 1e9)


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The scrapes of a ``server_metrics.jsonl`` (a truncated last line is skipped)."""
    out = []
    try:
        with open(path, "rb") as fh:
            for line in fh:
                try:
                    out.append(orjson.loads(line))
                except orjson.JSONDecodeError:
                    continue
    except OSError:
        return []
    return out


def window_stats(path: Path, window: tuple[int, int] | None) -> dict[str, Any]:
    """Mean and max of each common series over the window; the preemptions counted inside it."""
    scrapes = [(int(d["t_mono_ns"]), d.get("common") or {}) for d in read_lines(path) if "t_mono_ns" in d]
    inside = [s for s in scrapes if window is not None and window[0] <= s[0] <= window[1]]
    out: dict[str, Any] = {"window_samples": len(inside)}
    inside = inside or scrapes
    for key in COMMON_KEYS:
        vals = [float(c[key]) for _, c in inside if c.get(key) is not None]
        out[key] = {"mean": round(sum(vals) / len(vals), 4) if vals else None,
                    "max": round(max(vals), 4) if vals else None}
    pre = [float(c["preemptions"]) for _, c in inside if c.get("preemptions") is not None]
    out["preemptions_in_window"] = int(pre[-1] - pre[0]) if len(pre) >= 2 and pre[-1] >= pre[0] else None
    return out


def sampler_for(setting: str, interval_s: float, backend: str, url: str | None, known: str | None = None,
                say: Callable[[str], Any] | None = None) -> ServerMetricsSampler | None:
    """The sampler a level gets by default (None for ``--server-metrics off`` or nothing to scrape)."""
    target = resolve_metrics_url(setting, backend, url, known)
    return ServerMetricsSampler(target, interval_s, say) if target else None
