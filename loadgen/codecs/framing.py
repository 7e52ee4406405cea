"""Sans-IO HTTP/1.1 response framing: where a response's body bytes are, and when the response is complete.

No sockets and no clock: a transport hands in each network read and gets the body bytes back (chunked-transfer
framing removed; Content-Length and close-delimited bodies too). The asyncio fast client and the gevent transport
both drive it, so a body ends at the same byte, and a record means the same thing, from either front end.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """The bytes are not an HTTP/1.x response (bad status line, chunk size, or oversized headers)."""


class ResponseFraming:
    """Tracks where an HTTP/1.1 response's body bytes are and when the response is complete.

    ``feed`` returns the body bytes contained in this read (framing removed); ``complete`` turns true at the end.
    """

    __slots__ = ("_head", "status", "headers_done", "chunked", "remaining", "complete", "keep_alive",
                 "_state", "_line")

    def __init__(self) -> None:
        self._head = b""
        self.status = 0
        self.headers_done = False
        self.chunked = False
        self.remaining = -1  # content-length left, or bytes left in the current chunk
        self.complete = False
        self.keep_alive = True
        self._state = 0  # chunked: 0 size line, 1 data, 2 CRLF after data, 3 trailers
        self._line = b""

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ProtocolError(f"not an HTTP/1.x response: {lines[0][:60]!r}")
        self.status = int(parts[1])
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip().lower()
            if name == b"transfer-encoding" and b"chunked" in value:
                self.chunked = True
            elif name == b"content-length":
                length = int(value)
            elif name == b"connection" and value == b"close":
                self.keep_alive = False
        if parts[0] == b"HTTP/1.0":
            self.keep_alive = False
        if not self.chunked:
            self.remaining = length if length is not None else -1
            if length is None:
                self.keep_alive = False  # body ends when the connection closes
            elif length == 0:
                self.complete = True

    def feed(self, data: bytes) -> bytes:
        if not self.headers_done:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > 65536:
                    raise ProtocolError("response headers larger than 64 KiB")
                return b""
            head, data = self._head[:end], self._head[end + 4:]
            self._head = b""
            self.headers_done = True
            self._parse_head(head)
            if self.complete:
                return b""
        if not self.chunked:
            if self.remaining < 0:
                return data
            take = data[: self.remaining]
            self.remaining -= len(take)
            if self.remaining == 0:
                self.complete = True
            return take
        return self._feed_chunked(data)

    def _feed_chunked(self, data: bytes) -> bytes:
        out = []
        pos, n = 0, len(data)
        while pos < n and not self.complete:
            st = self._state
            if st == 1:  # chunk payload
                take = min(self.remaining, n - pos)
                out.append(data[pos:pos + take])
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    self._state, self.remaining = 2, 2
            elif st == 2:  # the CRLF after a chunk's payload
                take = min(self.remaining, n - pos)
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    self._state = 0
            else:  # a size line (0) or a trailer line (3)
                nl = data.find(b"\n", pos)
                if nl < 0:
                    self._line += data[pos:]
                    break
                line = (self._line + data[pos:nl]).strip()
                self._line = b""
                pos = nl + 1
                if st == 3:
                    if not line:
                        self.complete = True
                    continue
                try:
                    size = int(line.split(b";", 1)[0], 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size line {line[:40]!r}") from None
                if size == 0:
                    self._state = 3
                else:
                    self._state, self.remaining = 1, size
        return out[0] if len(out) == 1 else b"".join(out)
