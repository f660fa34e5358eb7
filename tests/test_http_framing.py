"""RequestFraming: where each request's head ends, however the bytes are split."""

from __future__ import annotations

import pytest

from aiml.http_framing import RequestFraming

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
