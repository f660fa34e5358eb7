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
reader misunderstands is capped, never let through uncounted. A chunk size is read digit by
digit as llhttp reads it (leading zeros skipped, never cut short), whatever the feeds' split.

Two kinds of request it refuses outright (``refusal`` set; the server answers 400 and
closes), as ones whose framing the parser and this reader would not agree on, or whose cost
is the event loop's: an ``Upgrade`` header or the ``CONNECT`` method (llhttp reads no body
after such a head whatever its ``Content-Length`` says, and uvicorn, with no WebSocket
routes, parses on; aiml upgrades nothing), and a chunked body of many tiny chunks (each
chunk costs this reader a pass of its loop: ``TINY_CHUNKS`` chunks averaging under
``TINY_CHUNK_BYTES`` bytes).
"""

from __future__ import annotations

import re

__all__ = ["RequestFraming"]

_HEAD_END = re.compile(rb"\n\r?\n")  # an empty line (a bare LF too: parsers accept it)
_HEX_DIGITS = re.compile(rb"[0-9A-Fa-f]*")
_SIZE_ENDS = frozenset(b"; \t\r")  # what may follow a chunk size; the rest is skipped to LF
_MAX_SIZE_DIGITS = 16  # significant hex digits llhttp takes (a 64-bit size)
_PLAIN_SIZE_LINE = re.compile(rb"0*([0-9A-Fa-f]{1,16})\r\n")  # no extension, all here
TINY_CHUNKS = 1024
TINY_CHUNK_BYTES = 64

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
        self.refusal = ""  # why the request is refused with a 400: "upgrade", "tiny chunks"
        self._state = _HEAD
        self._head = bytearray()  # the head (or trailer section) so far
        self._lines = 0  # line ends in it
        self._remaining = 0  # of a Content-Length body or of a chunk's data
        self._size_digits = b""  # the chunk size's significant hex digits so far
        self._size_started = False  # a digit of it came (zeros too)
        self._size_done = False  # its digits ended: the rest of its line is skipped
        self._chunks = 0  # of the current body, and their data bytes
        self._chunk_bytes = 0

    @property
    def in_body(self) -> bool:
        return self._state != _HEAD

    def feed(self, data: bytes) -> int:
        """How many of ``data``'s bytes may go on to the server: all, unless a head (or a
        trailer section) passes a limit; then ``too_large`` is set, and stays."""
        if self.too_large or self.refusal:
            return 0
        pos = 0
        while pos < len(data):
            start, in_body = pos, self._state != _HEAD
            if self._state in (_HEAD, _TRAILERS):
                pos = self._read_head(data, pos)
                if self.too_large or self.refusal:
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
            elif self._state == _CHUNK_SIZE:
                if not self._size_started:  # a size line starts here: whole chunks at once?
                    pos = self._whole_chunks(data, pos)
                if pos == start:
                    pos = self._read_size(data, pos)
                if self.refusal:
                    return start
            else:  # the line end after a chunk's data
                newline = data.find(b"\n", pos)
                if newline < 0:
                    pos = len(data)
                else:
                    pos, self._state = newline + 1, _CHUNK_SIZE
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
        length, codings = b"", b""
        request_line, *lines = head.lstrip(b"\r\n").split(b"\n")
        upgrade = request_line.startswith(b"CONNECT ")
        for line in lines:
            # The name as it stands: one with spaces is no field to the parser (an error, or
            # a folded line's continuation), so none of its body framing either.
            name, _, value = line.partition(b":")
            name = name.lower()
            if name == b"content-length":
                length = value.strip()
            elif name == b"transfer-encoding":
                codings += b"," + value
            elif name == b"upgrade":
                upgrade = True
        if upgrade:
            self.refusal = "upgrade"
            return
        self.heads += 1
        self.body_bytes = self._chunks = self._chunk_bytes = 0
        if codings:
            # Only a final "chunked" frames a request body; anything else is a 400.
            final = codings.rsplit(b",", 1)[-1].strip().lower()
            self._state = _CHUNK_SIZE if final == b"chunked" else _HEAD
        elif length:
            if not length.isdigit():
                return  # the server answers 400; what follows counts as a head
            self._remaining = int(length)
            self._state = _LENGTH if self._remaining else _HEAD

    def _whole_chunks(self, data: bytes, pos: int) -> int:
        """Past the chunks that lie whole in ``data`` from ``pos`` (a plain size line, the
        data, CRLF: read by llhttp just so), one match each, not a loop pass per part: the
        per-chunk cost is what small chunks multiply. Where one is not plain, not whole, the
        last, or would be refused, it stops, and the byte-wise path takes over."""
        while line := _PLAIN_SIZE_LINE.match(data, pos):
            chunk = int(line.group(1), 16)
            after = line.end() + chunk
            chunks = self._chunks + 1
            if (
                not chunk
                or data[after : after + 2] != b"\r\n"
                or (chunks >= TINY_CHUNKS and self._chunk_bytes + chunk < chunks * TINY_CHUNK_BYTES)
            ):
                break
            self._chunks, self._chunk_bytes = chunks, self._chunk_bytes + chunk
            pos = after + 2
        return pos

    def _read_size(self, data: bytes, pos: int) -> int:
        """A chunk-size line: its hex digits (read as llhttp does, leading zeros skipped and
        never cut short: a size read otherwise would put the next head elsewhere than the
        parser does), then anything to its LF (extensions, CR)."""
        if not self._size_done:
            digits = _HEX_DIGITS.match(data, pos)
            assert digits is not None  # "*" matches the empty string too
            if digits.end() > pos:
                self._size_started = True
                self._size_digits = (self._size_digits + digits.group()).lstrip(b"0")
            pos = digits.end()
            if len(self._size_digits) > _MAX_SIZE_DIGITS or (
                pos < len(data) and (not self._size_started or data[pos] not in _SIZE_ENDS)
            ):
                self._state = _HEAD  # the parser answers 400; what follows counts as head
                self._size_digits, self._size_started = b"", False
                return pos
            if pos == len(data):
                return pos
            self._size_done = True
        newline = data.find(b"\n", pos)
        if newline < 0:
            return len(data)
        chunk = int(self._size_digits or b"0", 16)
        self._size_digits, self._size_started, self._size_done = b"", False, False
        if chunk == 0:
            self._state = _TRAILERS
            self._head += b"\n"  # the size line's end: an empty trailer section ends at once
            self._lines = 1
            return newline + 1
        self._chunks += 1
        self._chunk_bytes += chunk
        if self._chunks >= TINY_CHUNKS and self._chunk_bytes < self._chunks * TINY_CHUNK_BYTES:
            self.refusal = "tiny chunks"
            return pos
        self._remaining = chunk
        self._state = _CHUNK_DATA
        return newline + 1
