"""Where each request's head and body lie in a connection's bytes, and how big each head is.

httptools (uvicorn's HTTP parser) has no limit on a request's head: it gathers a header of
any size with ``+=`` and uvicorn keeps every header in a list, so one 32 MB header costs
the process tens of MB and the event loop the copies (20 at once: ~1.1 GB, health checks
answered after seconds). The limits have to hold
*before* those bytes reach it, and per request: a kept-alive or pipelined connection
carries many heads, each with its own allowance. So :class:`RequestFraming` follows the
stream as the server will read it (RFC 9112: a head ends at its first empty line; a body
is ``Content-Length`` bytes, or chunks when ``Transfer-Encoding`` ends with ``chunked``;
a chunked body's trailer section is header fields too, counted like a head) and says how
many of the bytes just received may go on. It never holds more than one head.

Where it cannot follow (a ``Content-Length`` or chunk size that is not a number) the
server answers 400 and closes; until then every byte counts as head, so a stream this
reader misunderstands is capped, never let through uncounted.
"""

from __future__ import annotations

import re

__all__ = ["RequestFraming"]

_HEAD_END = re.compile(rb"\n\r?\n")  # an empty line (a bare LF too: parsers accept it)
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_SIZE_LINE_KEPT = 32  # a chunk-size line's extensions are skipped, not kept

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS = range(6)


class RequestFraming:
    """Follows one connection's requests; :meth:`feed` says how many bytes are within limits.

    ``heads``: request heads complete so far. ``in_body``: the bytes now expected are a
    body's. ``body_bytes``: bytes of the current body received so far (chunk framing too).
    """

    def __init__(self, *, max_head_bytes: int, max_headers: int) -> None:
        self.max_head_bytes = max_head_bytes
        self.max_headers = max_headers
        self.heads = 0
        self.body_bytes = 0
        self.too_large = False
        self._state = _HEAD
        self._head = bytearray()  # the head (or trailer section) so far
        self._lines = 0  # line ends in it
        self._remaining = 0  # of a Content-Length body or of a chunk's data
        self._size_line = bytearray()

    @property
    def in_body(self) -> bool:
        return self._state != _HEAD

    def feed(self, data: bytes) -> int:
        """How many of ``data``'s bytes may go on to the server: all, unless a head (or a
        trailer section) passes a limit; then ``too_large`` is set, and stays."""
        if self.too_large:
            return 0
        pos = 0
        while pos < len(data):
            start, in_body = pos, self._state != _HEAD
            if self._state in (_HEAD, _TRAILERS):
                pos = self._read_head(data, pos)
                if self.too_large:
                    return start  # this head's bytes here stay out
            elif self._state == _LENGTH:
                taken = min(self._remaining, len(data) - pos)
                self._remaining -= taken
                pos += taken
                if not self._remaining:
                    self._state = _HEAD
            elif self._state == _CHUNK_DATA:
                taken = min(self._remaining, len(data) - pos)
                self._remaining -= taken
                pos += taken
                if not self._remaining:
                    self._state = _CHUNK_END
            else:  # a chunk-size line, or the line end after a chunk's data
                pos = self._read_line(data, pos)
            if in_body:
                self.body_bytes += pos - start
        return len(data)

    def _read_head(self, data: bytes, pos: int) -> int:
        before = len(self._head)
        room = self.max_head_bytes - before + 4  # enough to see an end just past the limit
        piece = data[pos : pos + room]
        self._head += piece
        found = _HEAD_END.search(self._head, max(0, before - 2))
        end = found.end() if found else len(self._head)
        self._lines += self._head.count(b"\n", before, end)
        # The request line and the closing empty line are not header fields.
        fields = self._lines - (2 if found else 1)
        if end > self.max_head_bytes or fields > self.max_headers:
            self.too_large = True
            return pos
        if not found:
            return pos + len(piece)
        self._end_of_head(bytes(self._head[:end]))
        return pos + end - before

    def _end_of_head(self, head: bytes) -> None:
        trailers = self._state == _TRAILERS
        self._head.clear()
        self._lines = 0
        if trailers:
            self._state = _HEAD  # the chunked body's end
            return
        if not head.strip():
            return  # empty lines between requests: ignored, as by the parser
        self.heads += 1
        self.body_bytes = 0
        length, codings = b"", b""
        for line in head.lstrip(b"\r\n").split(b"\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = value.strip()
            elif name == b"transfer-encoding":
                codings += b"," + value
        if codings:
            # Only a final "chunked" frames a request body; anything else is a 400.
            final = codings.rsplit(b",", 1)[-1].strip().lower()
            self._state = _CHUNK_SIZE if final == b"chunked" else _HEAD
        elif length:
            if not length.isdigit():
                return  # the server answers 400; what follows counts as a head
            self._remaining = int(length)
            self._state = _LENGTH if self._remaining else _HEAD

    def _read_line(self, data: bytes, pos: int) -> int:
        newline = data.find(b"\n", pos)
        end = len(data) if newline < 0 else newline
        if self._state == _CHUNK_SIZE:
            room = _SIZE_LINE_KEPT - len(self._size_line)
            self._size_line += data[pos : min(end, pos + max(room, 0))]
        if newline < 0:
            return len(data)
        if self._state == _CHUNK_END:
            self._state = _CHUNK_SIZE
            return newline + 1
        size = _HEX.match(bytes(self._size_line).strip())
        self._size_line.clear()
        if size is None:
            self._state = _HEAD  # the server answers 400; what follows counts as a head
        elif (chunk := int(size.group(), 16)) == 0:
            self._state = _TRAILERS
            self._head += b"\n"  # the size line's end: an empty trailer section ends at once
            self._lines = 1
        else:
            self._remaining = chunk
            self._state = _CHUNK_DATA
        return newline + 1
