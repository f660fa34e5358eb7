"""RequestFraming: where each request's head ends, however the bytes are split."""

from __future__ import annotations

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiml.edge.http_framing import TINY_CHUNK_BYTES, TINY_CHUNKS, RequestFraming

LENGTH = b"POST /a HTTP/1.1\r\nContent-Length: 9\r\n\r\n\r\n\r\nx: \r\n"
CHUNKED = (
    b"POST /b HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    b"5;ext=1\r\n\r\n\r\nx\r\n3\r\n\n\n\n\r\n0\r\nX-Trailer: 1\r\n\r\n"
)
PLAIN = b"GET /c HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n"


def framing(max_head_bytes: int = 200, max_headers: int = 5) -> RequestFraming:
    return RequestFraming(max_head_bytes=max_head_bytes, max_headers=max_headers)


def feed(reader: RequestFraming, stream: bytes, step: int) -> int:
    """Feeds ``stream`` ``step`` bytes at a time; how many were let through."""
    allowed = 0
    for at in range(0, len(stream), step):
        piece = stream[at : at + step]
        allowed += reader.feed(piece)
        if reader.too_large:
            break
    return allowed


def test_heads_are_found_between_bodies_however_the_bytes_are_split() -> None:
    stream = LENGTH + CHUNKED + b"\r\n" + PLAIN  # a stray empty line between requests too
    for step in range(1, len(stream) + 1):
        reader = framing()
        assert feed(reader, stream, step) == len(stream), step
        assert (reader.heads, reader.in_body, reader.too_large) == (3, False, False), step


@pytest.mark.parametrize("step", [1, 7, 1000])
def test_each_head_has_its_own_allowance(step: int) -> None:
    fields = b"GET / HTTP/1.1\r\n" + b"".join(b"H%d: x\r\n" % n for n in range(5)) + b"\r\n"
    reader = framing()
    assert feed(reader, fields * 3, step) == len(fields) * 3
    assert reader.heads == 3 and not reader.too_large
    request = b"GET / HTTP/1.1\r\nX: "
    exact = request + b"a" * (200 - len(request) - 4) + b"\r\n\r\n"
    reader = framing()
    assert feed(reader, exact * 2, step) == len(exact) * 2
    assert reader.heads == 2 and not reader.too_large


@pytest.mark.parametrize("step", [1, 7, 1000])
def test_a_head_past_a_limit_is_held_back(step: int) -> None:
    too_many = b"GET / HTTP/1.1\r\n" + b"".join(b"H%d: x\r\n" % n for n in range(6)) + b"\r\n"
    too_long = b"GET / HTTP/1.1\r\nX: " + b"a" * 200 + b"\r\n\r\n"
    for bad in (too_many, too_long):
        reader = framing()
        allowed = feed(reader, PLAIN + bad, step)
        assert reader.too_large and reader.heads == 1
        assert allowed <= len(PLAIN) + 200  # never more than the limit of the bad head
        assert reader.feed(PLAIN) == 0  # and nothing after it


def test_trailers_count_like_a_head() -> None:
    reader = framing()
    body = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n"
    trailers = b"".join(b"T%d: x\r\n" % n for n in range(6)) + b"\r\n"
    reader.feed(body)
    assert reader.in_body
    reader.feed(trailers)
    assert reader.too_large


def test_body_bytes_are_counted_per_body() -> None:
    reader = framing()
    reader.feed(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
    assert reader.in_body and reader.body_bytes == 3
    reader.feed(b"de")
    assert reader.body_bytes == 5
    reader.feed(b"fghij" + b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab")
    assert reader.in_body and reader.heads == 2 and reader.body_bytes == 2


def test_a_stream_it_cannot_follow_is_counted_as_head() -> None:
    reader = framing()
    reader.feed(b"POST / HTTP/1.1\r\nContent-Length: 1_0\r\n\r\n")
    assert not reader.in_body
    assert reader.feed(b"a" * 300) < 300 and reader.too_large


# --- the framing against the parser: the heads must start where httptools finds them --------

MAX_HEAD = 4096


class _Heads:
    """httptools' callbacks: the offsets of each request's first byte and its head's last."""

    def __init__(self) -> None:
        self.begins: list[int] = []
        self.ends: list[int] = []
        self.at = 0

    def on_message_begin(self) -> None:
        self.begins.append(self.at)

    def on_headers_complete(self) -> None:
        self.ends.append(self.at)


def head_ends(stream: bytes) -> tuple[list[int], list[int]]:
    """``stream`` a byte at a time through the framing, and what it lets through into
    httptools: where each head ended to the parser and to the framing, up to the parser's
    error, where the parser reads no further (uvicorn answers 400 and closes). Each request
    the parser begins must begin where the framing expects a head, not a body."""
    reader = framing(MAX_HEAD, 100)
    heads = _Heads()
    parser = httptools.HttpRequestParser(heads)
    framing_ends: list[int] = []
    in_body: set[int] = set()
    for at in range(len(stream)):
        before = reader.heads
        if reader.in_body:
            in_body.add(at)
        if not reader.feed(stream[at : at + 1]):
            break  # refused, or over a limit: the parser sees no more
        if reader.heads > before:
            framing_ends.append(at)
        heads.at = at
        try:
            parser.feed_data(stream[at : at + 1])
        except httptools.HttpParserUpgrade:
            pass  # uvicorn, with no WebSocket to upgrade to, feeds the parser on
        except httptools.HttpParserError:
            framing_ends = framing_ends[: len(heads.ends)]
            break
    assert not in_body.intersection(heads.begins), "a request began inside a body"
    return heads.ends, framing_ends


def outcome(stream: bytes, step: int) -> tuple[object, ...]:
    """What the framing made of ``stream`` fed ``step`` bytes at a time (how many bytes it
    let through only where it stopped at none: a refusal's point depends on the split)."""
    reader = framing(MAX_HEAD, 100)
    allowed = feed(reader, stream, step)
    if reader.too_large or reader.refusal:
        return reader.heads, reader.too_large, reader.refusal
    return reader.heads, reader.in_body, reader.body_bytes, allowed


def same_however_split(stream: bytes) -> None:
    """The byte-wise differential check, and every split giving what bytes one by one do
    (whole feeds take the per-chunk shortcut that bytes one by one never do)."""
    parser_ends, framing_ends = head_ends(stream)
    assert parser_ends == framing_ends
    bytewise = outcome(stream, 1)
    for step in (2, 3, 5, 8, 64, len(stream)):
        assert outcome(stream, step) == bytewise, step


def start(*fields: bytes, method: bytes = b"POST") -> bytes:
    return method + b" /x HTTP/1.1\r\nHost: a\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"


SMUGGLED = b"\r\nPOST /x HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"
NEXT = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"


@pytest.mark.parametrize(
    "stream",
    [
        # A chunk size with leading zeros past 16 digits: 0x40 to llhttp, not 0.
        start(b"Transfer-Encoding: chunked")
        + b"00000000000000000040\r\n"
        + SMUGGLED.ljust(64, b"a")
        + b"\r\n0\r\n\r\n"
        + NEXT,
        start(b"Transfer-Encoding: chunked") + b"0" * 40 + b"5;x=y\r\nabcde\r\n0\r\n\r\n" + NEXT,
        # Upgrade and CONNECT: llhttp reads no body whatever the Content-Length says.
        start(b"Connection: upgrade", b"Upgrade: foo", b"Content-Length: 99999999") + NEXT,
        start(b"Content-Length: 99999999", method=b"CONNECT") + NEXT,
        # A folded line is no field to the parser.
        start(b"X: 1", b" Content-Length: 99999999") + NEXT,
        LENGTH + CHUNKED + PLAIN,
    ],
)
def test_the_framing_finds_each_head_where_the_parser_does(stream: bytes) -> None:
    same_however_split(stream)


_FIELDS = st.sampled_from(
    [
        b"Content-Length: 5",
        b"Content-Length: 0005",
        b"Content-Length: 70",
        b"Content-Length: x",
        b"Transfer-Encoding: chunked",
        b"Transfer-Encoding: gzip",
        b"Connection: upgrade",
        b"Upgrade: h2c",
        b"Connection: upgrade\r\nUpgrade: h2c",
        b" Content-Length: 40",
        b"X-A: 1",
    ]
)
_NOISE = st.binary(max_size=12).map(lambda b: b.translate(bytes(range(256))[:128] * 2))
_CHUNK_SIZES = st.builds(
    lambda zeros, size, ext: b"0" * zeros + b"%x" % size + ext + b"\r\n",
    st.integers(0, 20),
    st.integers(0, 80),
    st.sampled_from([b"", b";a=b", b';a="x"', b" ", b"x"]),
)
_WHOLE_CHUNKS = st.lists(st.integers(0, 20)).map(
    lambda sizes: b"".join(b"%x\r\n%s\r\n" % (size, b"y" * size) for size in sizes)
)
_PIECES = st.one_of(
    st.builds(lambda fields: start(*fields), st.lists(_FIELDS, max_size=4)),
    _CHUNK_SIZES,
    _WHOLE_CHUNKS,
    st.sampled_from([b"\r\n", b"\n", b"0\r\n\r\n", SMUGGLED, NEXT, b"a" * 40]),
    _NOISE,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, min_size=1, max_size=8))
def test_generated_streams_put_heads_where_the_parser_does(pieces: list[bytes]) -> None:
    same_however_split(b"".join(pieces) + NEXT)


# --- a body of tiny chunks: refused, as the event loop's cost ---------------------------------


def chunked_body(sizes: list[int]) -> bytes:
    return (
        start(b"Transfer-Encoding: chunked")
        + b"".join(b"%x\r\n%s\r\n" % (size, b"x" * size) for size in sizes)
        + b"0\r\n\r\n"
    )


def test_a_body_of_many_tiny_chunks_is_refused() -> None:
    stream = chunked_body([1] * (TINY_CHUNKS + 10))
    reader = framing()
    assert reader.feed(stream) < len(stream)
    assert reader.refusal == "tiny chunks" and not reader.too_large
    assert reader.feed(PLAIN) == 0


def test_small_chunks_or_a_few_tiny_ones_are_followed() -> None:
    for sizes in ([TINY_CHUNK_BYTES] * (TINY_CHUNKS * 2), [1] * (TINY_CHUNKS - 1)):
        stream = chunked_body(sizes) + PLAIN
        reader = framing()
        assert reader.feed(stream) == len(stream)
        assert (reader.heads, reader.refusal, reader.in_body) == (2, "", False)
