"""Incremental server-sent-events framing (sans-IO).

Bytes go in as they arrived from the network; the ``data`` payload of each completed event comes out. An event is
complete when its terminating blank line has arrived, so the event belongs to the network chunk that completed
it: that is the arrival time the driver stamped for the chunk. Handles ``\\n``, ``\\r\\n`` and ``\\r`` line ends,
multi-line ``data:`` fields, comments (``:``) and other fields (``event:``, ``id:``, ``retry:``), which are ignored.

Nearly every chunk a streaming server sends is whole events of one ``data: ...`` line each with ``\\n`` line ends
(Triton, vLLM, TGI, trtllm-serve all write them so), and the parse runs on the event loop once per response: such
a chunk, arriving with nothing held back, is cut on the blank lines in one call instead of walked line by line.
Anything else (CR line ends, an event split across chunks, comments, other fields, multi-line data) takes the
general loop, which gives the same payloads for the common shape too.
"""

from __future__ import annotations

import abc


class SSEDecoder:
    """``idle`` is true when nothing is held back (no partial line, no data lines waiting for their blank line):
    only then can a chunk be read on its own."""

    __slots__ = ("_buf", "_data", "_has_data", "idle")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._has_data = False
        self.idle = True

    def feed(self, chunk: bytes) -> list[bytes]:
        """Return the data payloads of the events completed by this chunk (possibly none, possibly several)."""
        if self.idle and chunk[-2:] == b"\n\n" and chunk[:6] == b"data: ":
            # Fast path: the chunk starts an event and ends one. (``13 in bytes`` is a memchr; ``b"\r" in bytes``
            # costs several times more.)
            payload = chunk[6:-2]
            if 10 not in payload and 13 not in payload:  # exactly one event of one line
                return [payload]
            if 13 not in payload:
                # Several events: whole ones of one line each exactly when every newline is in a "\n\ndata: "
                # separator, so no event spans lines, is empty or starts otherwise.
                events = payload.split(b"\n\ndata: ")
                if payload.count(b"\n") == 2 * len(events) - 2:
                    return events
        return self._feed_lines(chunk)

    def _feed_lines(self, chunk: bytes) -> list[bytes]:
        """The general case: walk the buffered bytes line by line."""
        buf = self._buf + chunk if self._buf else chunk
        if 13 in buf:  # a CR
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
        self.idle = not (self._buf or self._has_data)
        return events

    def flush(self) -> list[bytes]:
        """End of stream: an event whose blank line never came is still dispatched (servers that just close)."""
        events = self.feed(b"\n") if self._buf else []
        if self._has_data:
            events.append(b"\n".join(self._data))
            self._data = []
            self._has_data = False
        self.idle = not self._buf
        return events

    @property
    def pending(self) -> bytes:
        return self._buf


class SSEStreamParser(abc.ABC):
    """Base of the stream parsers whose body is SSE: ``feed`` frames the chunk and hands each event's payload to
    ``_event`` (which returns the tokens it carried).

    The common chunk, one whole single-line ``data:`` event, is recognised here before ``SSEDecoder.feed`` (same
    test as its fast path), which saves a call and a list per event: about a tenth of the per-event cost that
    benchmarks/parse_cost.py measures, paid on the event loop.
    """

    __slots__ = ("_sse",)

    def __init__(self) -> None:
        self._sse = SSEDecoder()

    def feed(self, data: bytes) -> int:
        """Consume one network chunk; return the output tokens of the events it completed."""
        if self._sse.idle and data[-2:] == b"\n\n" and data[:6] == b"data: ":
            payload = data[6:-2]
            if 10 not in payload and 13 not in payload:
                return self._event(payload)
        tokens = 0
        for payload in self._sse.feed(data):
            tokens += self._event(payload)
        return tokens

    @abc.abstractmethod
    def _event(self, payload: bytes) -> int:
        """One event's payload: the output tokens it carried (and whatever else the subclass keeps)."""
