"""How ``aiml serve`` configures uvicorn."""

from __future__ import annotations

import asyncio
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request

from aiml.edge import answers as edge_answers
from aiml.server import uvicorn_config
from aiml.settings import Settings
from tests.api.test_edge import closed, read_response, rss_mib
from tests.fakes.processes import Process, aiml_serve
from tests.fakes.servers import free_port

# httpx's (and Node's) default: a pooled connection idle this long is closed by the client.
CLIENT_KEEP_ALIVE_S = httpx.Limits().keepalive_expiry or 5.0


def test_the_server_outlasts_common_clients_idle_connections() -> None:
    """A server that closes idle connections as early as its clients races them: a client
    reusing a connection the server is closing gets no answer at all (seen in bench/soak as
    httpx ``ReadError``s). The server must keep them longer than clients do."""
    config = uvicorn_config(Settings(), FastAPI(), host="127.0.0.1")
    assert config.timeout_keep_alive > CLIENT_KEEP_ALIVE_S


def test_an_idle_keep_alive_connection_is_still_served_after_the_clients_expiry() -> None:
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    config = uvicorn_config(Settings(port=free_port()), app, host="127.0.0.1")
    config.log_config = None
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:  # polls the condition, not a guessed delay
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.01)
    request = f"GET /ping HTTP/1.1\r\nHost: 127.0.0.1:{config.port}\r\n\r\n".encode()
    try:
        with socket.create_connection(("127.0.0.1", config.port), timeout=10) as conn:
            conn.sendall(request)
            assert conn.recv(4096).startswith(b"HTTP/1.1 200")
            # The idle time is the condition under test: just past the client's own expiry.
            time.sleep(CLIENT_KEEP_ALIVE_S + 1)
            conn.sendall(request)
            assert conn.recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# --- request heads and bodies: limits held as the bytes arrive --------------------------------

MIB = 1 << 20
KEY = "Bearer user-key"
BODY_TIMEOUT_S = 1.0
RSS_SLACK_MIB = 40


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Process, int]]:
    """``aiml serve`` as a real process (its own memory to measure), default head limits."""
    port = free_port()
    env = {
        "AIML_API_KEYS": "user-key",
        "AIML_ENGINES": "ollama",
        "OLLAMA_HOST": "http://127.0.0.1:9",
        "AIML_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
    }
    process = aiml_serve(tmp_path_factory.mktemp("heads"), env, port)
    process.start()
    yield process, port
    process.stop()


def noop() -> None:
    return None


def send_heads(
    port: int, start: bytes, *, mib: int, connections: int = 1, check: Callable[[], None] = noop
) -> list[tuple[bytes, bool]]:
    """On ``connections`` connections at once, ``start`` and then a ``mib`` MiB header value
    (a MiB at a time, in turn), and the head's end, each until the server answers; returns
    each answer and whether the server then closed that connection."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(connections)]
    sending = set(socks)
    piece = b"a" * MIB
    try:
        for sock in socks:
            sock.sendall(start)
        for _ in range(mib):
            for sock in list(sending):
                if select.select([sock], [], [], 0)[0]:
                    sending.discard(sock)  # the answer (or the close) came: stop sending
                    continue
                try:
                    sock.sendall(piece)
                except (BrokenPipeError, ConnectionResetError):
                    sending.discard(sock)  # closed under our writes; its answer may be read
            check()
        for sock in sending:
            sock.sendall(b"\r\n\r\n")
        return [(read_response(sock), closed(sock)) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.slow
def test_a_huge_header_without_a_key_is_431_and_the_memory_stays_flat(
    edge: tuple[Process, int],
) -> None:
    """20 connections each sending a 32 MB header grew the server by ~640 MB, never given
    back: the bytes past the limit must not reach the parser at all."""
    process, port = edge
    idle = rss_mib(process)

    def bounded() -> None:
        assert rss_mib(process) < idle + RSS_SLACK_MIB, "the server is holding the headers"

    start = b"GET /v1/models HTTP/1.1\r\nHost: aiml\r\nX-Filler: "
    ends = send_heads(port, start, mib=32, connections=20, check=bounded)
    for answer, was_closed in ends:
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        assert b"request_header_fields_too_large" in answer
        assert was_closed
    bounded()


@pytest.mark.slow
def test_a_huge_header_with_a_valid_key_is_431_too(edge: tuple[Process, int]) -> None:
    _, port = edge
    start = f"GET /v1/models HTTP/1.1\r\nHost: aiml\r\nAuthorization: {KEY}\r\nX-Filler: "
    [(answer, was_closed)] = send_heads(port, start.encode(), mib=64)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert was_closed


def head(path: str, fields: int = 60, *, pad: int = 640, extra: str = "") -> bytes:
    """A request head of ``fields`` header fields; by default 60 of them and ~40 KB."""
    lines = [f"GET {path} HTTP/1.1", "Host: aiml", *extra.splitlines()]
    lines += [f"X-Field-{n}: {'v' * pad}" for n in range(fields - len(lines) + 1)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def responses(sock: socket.socket, count: int) -> list[bytes]:
    """``count`` responses read off one connection (each with a Content-Length)."""
    buffer, found = b"", list[bytes]()
    while len(found) < count:
        top, sep, rest = buffer.partition(b"\r\n\r\n")
        if sep:
            length = next(
                int(line.split(b":")[1]) for line in top.lower().split(b"\r\n")
                if line.startswith(b"content-length:")
            )  # fmt: skip
            if len(rest) >= length:
                found.append(top)
                buffer = rest[length:]
                continue
        more = sock.recv(65536)
        assert more, f"closed after {len(found)} responses: {found}"
        buffer += more
    return found


@pytest.mark.slow
def test_a_request_with_too_many_headers_is_431(edge: tuple[Process, int]) -> None:
    _, port = edge
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head("/health/live", 100, pad=0))  # the most allowed
        assert responses(sock, 1)[0].startswith(b"HTTP/1.1 200")
        sock.sendall(head("/health/live", 101, pad=0))
        answer = read_response(sock)
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        assert closed(sock)


@pytest.mark.slow
def test_each_request_on_a_connection_has_the_whole_allowance(edge: tuple[Process, int]) -> None:
    """Kept-alive and pipelined requests are measured one by one, bodies not counted: three
    heads of 60 fields and 40 KB each (together past both limits) and bodies full of line
    ends are all served."""
    _, port = edge
    noisy = b"\r\n\r\n\n\nx: y\r\n" * 10_000  # what a head reader must not count
    length = head("/health/live", extra=f"Content-Length: {len(noisy)}") + noisy
    chunked = (
        head("/health/live", extra="Transfer-Encoding: chunked")
        + b"%x\r\n%s\r\n" % (len(noisy), noisy)
        + b"0\r\nX-Trailer: 1\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for _ in range(2):  # pipelined, then once more on the kept-alive connection
            sock.sendall(length + chunked + head("/health/live"))
            assert [r[:12] for r in responses(sock, 3)] == [b"HTTP/1.1 200"] * 3
        sock.sendall(
            f"GET /v1/models HTTP/1.1\r\nHost: aiml\r\nAuthorization: {KEY}\r\n\r\n".encode()
        )
        assert responses(sock, 1)[0].startswith(b"HTTP/1.1 200")


@pytest.mark.slow
def test_a_body_dribbled_under_the_gap_limit_is_cut_off(edge: tuple[Process, int]) -> None:
    """A byte every half a body timeout never leaves a gap the size of the timeout; the
    minimum pace catches it (as a byte every 5 s against the default 10 s)."""
    _, port = edge
    start = (
        f"POST /v1/embeddings HTTP/1.1\r\nHost: aiml\r\nAuthorization: {KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(start)
        began = time.monotonic()
        answer = b""
        while time.monotonic() - began < BODY_TIMEOUT_S + 5:
            # The pace under test: waiting for the answer is what sets it.
            if select.select([sock], [], [], BODY_TIMEOUT_S / 2)[0]:
                answer = read_response(sock)
                break
            sock.sendall(b" ")
        elapsed = time.monotonic() - began
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert BODY_TIMEOUT_S * 0.8 < elapsed < BODY_TIMEOUT_S + 4
        assert closed(sock)


# --- what the guard refuses, through the real uvicorn configuration (a server in a thread) ---


@pytest.fixture
def threaded() -> Iterator[Callable[..., int]]:
    """Starts ``uvicorn_config``'s server for an app, in this process; gives its port."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(app: Any, **settings: Any) -> int:
        config = uvicorn_config(Settings(port=free_port(), **settings), app, host="127.0.0.1")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + 30
        while not server.started:  # polls the condition, not a guessed delay
            assert thread.is_alive() and time.monotonic() < deadline
            time.sleep(0.01)
        return config.port

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)


def header_bytes_seen() -> tuple[FastAPI, list[int]]:
    """An app that reads each request's body and notes how many header bytes it got."""
    app, seen = FastAPI(), list[int]()

    @app.api_route("/ping", methods=["GET", "POST"])
    async def ping(request: Request) -> dict[str, bool]:
        await request.body()
        seen.append(sum(len(name) + len(value) for name, value in request.headers.raw))
        return {"ok": True}

    return app, seen


HUGE_HEAD = b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * MIB + b"\r\n\r\n"
SMUGGLED = b"\r\nPOST /x HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"


@pytest.mark.parametrize(
    "first",
    [
        # A chunk size with leading zeros (0x40 to the parser) hides a head in its data.
        b"POST /ping HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"00000000000000000040\r\n" + SMUGGLED.ljust(64, b"a") + b"\r\n0\r\n\r\n",
        # An upgrade's Content-Length, a body to the framing, none to the parser.
        b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: foo\r\n"
        b"Content-Length: 99999999\r\n\r\n",
        b"CONNECT /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n",
    ],
    ids=["leading-zeros", "upgrade", "connect"],
)
def test_no_request_gets_a_head_past_the_cap_by_its_framing(
    threaded: Callable[..., int], first: bytes
) -> None:
    """The first request is answered (or refused); a huge head after it must be 431 (or
    never sent), never reach the app."""
    app, seen = header_bytes_seen()
    with socket.create_connection(("127.0.0.1", threaded(app)), timeout=10) as sock:
        sock.sendall(first)
        answer = read_response(sock)
        if answer.startswith(b"HTTP/1.1 400"):
            assert b"not served" in answer and closed(sock)
        else:
            assert answer.startswith(b"HTTP/1.1 200"), answer
            sock.sendall(HUGE_HEAD)
            answer = read_response(sock)
            assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert all(size <= Settings().max_header_bytes for size in seen), seen


def test_a_body_of_tiny_chunks_is_400_and_closed(threaded: Callable[..., int]) -> None:
    """Each chunk costs the framing: 1-byte chunks cost the event loop ~35x what the parser
    alone spends per MiB, so such a body is refused (bench/header_flood.py --chunk-cost)."""
    app, seen = header_bytes_seen()
    tiny = b"1\r\nx\r\n" * 5000
    head = b"GET /ping HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    with socket.create_connection(("127.0.0.1", threaded(app)), timeout=10) as sock:
        sock.sendall(head + tiny + b"0\r\n\r\n")
        answer = read_response(sock)
        assert answer.startswith(b"HTTP/1.1 400 Bad Request"), answer[:200]
        assert b"tiny chunks" in answer and closed(sock)
    assert seen == []  # the app never got the whole body


def test_after_a_408_nothing_more_is_written_nor_an_error_logged(
    threaded: Callable[..., int], caplog: pytest.LogCaptureFixture
) -> None:
    """An app that answers (and returns) after the guard's 408, not having read the body:
    its answer is dropped, and uvicorn must not add its own 500 behind the 408."""
    got_408 = threading.Event()

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        # The condition: the client has read the 408 (a thread's event, not the loop's).
        await asyncio.get_running_loop().run_in_executor(None, got_408.wait, 10)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"late"})

    port = threaded(slow, body_timeout_s=0.3, body_min_rate=0)
    with (
        caplog.at_level(logging.ERROR, logger="uvicorn.error"),
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
    ):
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
        out = b""
        while b"\r\n\r\n" not in out:
            more = sock.recv(65536)
            assert more, out
            out += more
        assert out.startswith(b"HTTP/1.1 408"), out
        got_408.set()
        while more := sock.recv(65536):
            out += more
    assert out == edge_answers.TIMEOUT
    ours = [r for r in caplog.records if r.name.startswith(("uvicorn", "aiml"))]
    assert not [r for r in ours if r.levelno >= logging.ERROR], ours
