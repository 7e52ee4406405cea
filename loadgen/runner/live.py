"""Live statistics in bounded structures, and the Rich progress display that shows them while a run goes.

Everything here is O(1) in run length: counters, a mergeable log histogram for TTFT, and a short ring of
(time, count) samples for the achieved rate over the last few seconds. The display reads them at 4 Hz.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

from loadgen.core.histogram import LogHistogram
from loadgen.core.records import STATUS_DROPPED, STATUS_ERROR, STATUS_OK, RequestRecord


class LiveStats:
    def __init__(self) -> None:
        self.issued = 0
        self.completed = 0
        self.errors = 0
        self.dropped = 0
        self.late = 0
        self.tokens = 0
        self.ttft = LogHistogram()
        self.loop_lag = LogHistogram()
        self._rate_ring: collections.deque[tuple[float, int]] = collections.deque(maxlen=64)
        self._observers: list[Any] = []

    def add_observer(self, observer: Any) -> None:
        """``observer(rec)`` is called for every finished record after the figures are updated."""
        self._observers.append(observer)

    @property
    def in_flight(self) -> int:
        return self.issued - self.completed - self.errors

    def on_issue(self) -> None:
        self.issued += 1

    def on_done(self, rec: RequestRecord) -> None:
        if rec.status == STATUS_DROPPED:
            self.dropped += 1
            return
        if rec.status == STATUS_OK:
            self.completed += 1
        elif rec.status == STATUS_ERROR:
            self.errors += 1
        else:  # cancelled at the end of the run
            self.completed += 1
        self.tokens += rec.output_tokens
        ftn = rec.first_token_ns
        if ftn is not None and rec.issued_ns is not None and rec.status == STATUS_OK:
            self.ttft.record(max(1, ftn - rec.issued_ns))
        for observer in self._observers:
            observer(rec)

    def recent_rate(self) -> float:
        """Issued requests per second over the last ~5 s of samples."""
        now = time.monotonic()
        ring = self._rate_ring
        ring.append((now, self.issued))
        while len(ring) > 2 and now - ring[0][0] > 5.0:
            ring.popleft()
        t_first, n_first = ring[0]
        return (self.issued - n_first) / (now - t_first) if now > t_first else 0.0


async def monitor_loop_lag(stats: LiveStats, interval_s: float = 0.01) -> None:
    """Measure how late the event loop wakes a 10 ms sleeper: the client's own saturation signal."""
    while True:
        start = time.perf_counter_ns()
        await asyncio.sleep(interval_s)
        late = time.perf_counter_ns() - start - int(interval_s * 1e9)
        stats.loop_lag.record(max(1_000, late))


def _fmt_ms(hist: LogHistogram, q: float) -> str:
    return f"{hist.percentile(q) / 1e6:.1f}" if hist.count else "-"


class LiveDisplay:
    """A Rich progress bar with the live figures in its description (achieved rate, in flight, errors, TTFT)."""

    def __init__(self, stats: LiveStats, total: int | None, duration_s: float | None, target_rate: float | None,
                 console=None, enabled: bool = True) -> None:
        self.stats = stats
        self.total = total
        self.duration_s = duration_s
        self.target_rate = target_rate
        self.enabled = enabled
        self.console = console
        self._progress = None
        self._task_id = None
        self._start = 0.0

    def __enter__(self) -> LiveDisplay:
        if not self.enabled:
            return self
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(bar_width=24), TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[live]}"),
            console=self.console, refresh_per_second=4, transient=False,
        )
        self._progress.__enter__()
        total = self.duration_s if self.duration_s else (self.total or 1)
        self._task_id = self._progress.add_task("load", total=total, live="starting")
        self._start = time.monotonic()
        return self

    def update(self) -> None:
        if self._progress is None:
            return
        s = self.stats
        rate = s.recent_rate()
        target = f"/{self.target_rate:g}" if self.target_rate else ""
        live = (f"{rate:6.1f}{target} req/s  in flight {s.in_flight:4d}  done {s.completed}  "
                f"err {s.errors}  drop {s.dropped}  TTFT p50 {_fmt_ms(s.ttft, 50)} p99 {_fmt_ms(s.ttft, 99)} ms")
        done = (time.monotonic() - self._start) if self.duration_s else s.issued
        self._progress.update(self._task_id, completed=done, live=live)

    async def run(self, interval_s: float = 0.25) -> None:
        while True:
            self.update()
            await asyncio.sleep(interval_s)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self.update()
            self._progress.__exit__(None, None, None)
            self._progress = None
