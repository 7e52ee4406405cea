"""Append-only record sink: records go to ``records.jsonl`` as they finish, flushed by a background task.

Completed records are buffered in memory for at most ``flush_interval_s`` (or ``max_buffer`` records) and then
written with one ``os.write`` to a file opened for appending, so a Ctrl-C, a crash of the generator or a killed
server loses nothing that had been received: at worst the last fraction of a second if the process itself is
killed with SIGKILL. Memory stays bounded however long the run is.

A write that fails (disk full, a file-size limit) is not retried: the recorder keeps the error, drops what it
cannot write (memory stays bounded), counts it in ``lost``, and calls ``on_error`` once, so the driver stops the
load instead of measuring what it can no longer record.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import orjson

from loadgen.core.records import RequestRecord


class Recorder:
    def __init__(self, path: Path, flush_interval_s: float = 0.25, max_buffer: int = 2_000,
                 on_error: Callable[[OSError], None] | None = None) -> None:
        self.path = Path(path)
        self.flush_interval_s = flush_interval_s
        self.max_buffer = max_buffer
        self.on_error = on_error
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._buf: list[bytes] = []
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.lost = 0  # records that could not be written after a write failed
        self.error: OSError | None = None

    def add(self, rec: RequestRecord) -> None:
        if self.error is not None:
            self.lost += 1
            return
        # Serialise now (a few µs, spread over the run) rather than all at once in flush, which would block the
        # event loop for milliseconds every flush at high rates and show up as schedule lag.
        self._buf.append(orjson.dumps(rec.to_dict(), option=orjson.OPT_APPEND_NEWLINE))  # None fields left out
        if len(self._buf) >= self.max_buffer:
            self.flush()

    def flush(self) -> None:
        if not self._buf or self._fd < 0 or self.error is not None:
            return
        buf, self._buf = self._buf, []
        view = memoryview(b"".join(buf))
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as err:
            self._failed(err, len(buf))
            return
        self.written += len(buf)

    def _failed(self, err: OSError, pending: int) -> None:
        self.error = err
        self.lost += pending  # a partly written last line is cut; the readers skip it and say so
        if self.on_error is not None:
            self.on_error(err)

    def describe_error(self) -> str | None:
        """One line for the user, or None when every write succeeded."""
        if self.error is None:
            return None
        why = self.error.strerror or type(self.error).__name__
        return (f"cannot write the records to {self.path} ({why}); the load was stopped, {self.written} records "
                f"are kept and {self.lost} were lost; free space and rerun (loadgen report reads what was kept)")

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
            try:
                os.fsync(self._fd)
            except OSError as err:
                if self.error is None:
                    self._failed(err, 0)
            os.close(self._fd)
            self._fd = -1
