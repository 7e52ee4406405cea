"""Incremental server-sent-events framing (sans-IO).

Bytes go in as they arrived from the network; the ``data`` payload of each completed event comes out. An event is
complete when its terminating blank line has arrived, so the event belongs to the network chunk that completed
it: that is the arrival time the driver stamped for the chunk. Handles ``\\n``, ``\\r\\n`` and ``\\r`` line ends,
multi-line ``data:`` fields, comments (``:``) and other fields (``event:``, ``id:``, ``retry:``), which are ignored.
"""

from __future__ import annotations


class SSEDecoder:
    __slots__ = ("_buf", "_data", "_has_data")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._has_data = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """Return the data payloads of the events completed by this chunk (possibly none, possibly several)."""
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            # Normalise CRLF and lone CR. A CR at the very end may be the first half of a CRLF: keep it back.
            tail = b""
            if buf.endswith(b"\r"):
                buf, tail = buf[:-1], b"\r"
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        else:
            tail = b""
        events: list[bytes] = []
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            line = buf[start:nl]
            start = nl + 1
            if not line:  # blank line: dispatch
                if self._has_data:
                    events.append(b"\n".join(self._data))
                self._data = []
                self._has_data = False
            elif line.startswith(b"data"):
                if line[4:5] == b":":
                    value = line[5:]
                    if value[:1] == b" ":
                        value = value[1:]
                elif len(line) == 4:
                    value = b""
                else:  # a field named e.g. "database": not data
                    continue
                self._data.append(value)
                self._has_data = True
            # comments (":...") and other fields are ignored
        self._buf = buf[start:] + tail
        return events

    def flush(self) -> list[bytes]:
        """End of stream: an event whose blank line never came is still dispatched (servers that just close)."""
        events = self.feed(b"\n") if self._buf else []
        if self._has_data:
            events.append(b"\n".join(self._data))
            self._data = []
            self._has_data = False
        return events

    @property
    def pending(self) -> bytes:
        return self._buf
