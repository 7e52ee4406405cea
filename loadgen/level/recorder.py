"""Append-only record sink: records go to ``records.jsonl`` as they finish, flushed by a background task.

Completed records are buffered in memory for at most ``flush_interval_s`` (or ``max_buffer`` records) and then
written with one ``os.write`` to a file opened for appending, so a Ctrl-C, a crash of the generator or a killed
server loses nothing that had been received: at worst the last fraction of a second if the process itself is
killed with SIGKILL. Memory stays bounded however long the run is.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import orjson

from loadgen.core.records import RequestRecord


class Recorder:
    def __init__(self, path: Path, flush_interval_s: float = 0.25, max_buffer: int = 2_000) -> None:
        self.path = Path(path)
        self.flush_interval_s = flush_interval_s
        self.max_buffer = max_buffer
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._buf: list[bytes] = []
        self._task: asyncio.Task[None] | None = None
        self.written = 0

    def add(self, rec: RequestRecord) -> None:
        # Serialise now (a few µs, spread over the run) rather than all at once in flush, which would block the
        # event loop for milliseconds every flush at high rates and show up as schedule lag.
        self._buf.append(orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE))
        if len(self._buf) >= self.max_buffer:
            self.flush()

    def flush(self) -> None:
        if not self._buf or self._fd < 0:
            return
        buf, self._buf = self._buf, []
        data = b"".join(buf)
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self.written += len(buf)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            self.flush()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self.close()

    def close(self) -> None:
        self.flush()
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
