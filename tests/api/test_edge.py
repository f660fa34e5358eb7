"""The edge: keys before bodies, bodies counted as they stream, slow clients cut off, and text
that is not valid Unicode refused (4xx) on every surface."""

from __future__ import annotations

import itertools
import json
import select
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ModelFiles, Registry, RunningAiml
from tests.fakes.processes import Process, aiml_serve
from tests.fakes.servers import free_port

MIB = 1 << 20
USER = "Bearer user-key"
ADMIN = "Bearer admin-key"
HEADER_TIMEOUT_S = 1.0
MAX_PER_CLIENT = 6
RSS_SLACK_MIB = 50


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Process, int]]:
    """``aiml serve`` as a real process (its own memory to measure), embedded registry."""
    port = free_port()
    env = {
        "AIML_API_KEYS": "user-key",
        "AIML_ADMIN_KEYS": "admin-key",
        "AIML_ENGINES": "ollama",
        "OLLAMA_HOST": "http://127.0.0.1:9",
        "AIML_MAX_BODY_BYTES": str(MIB),
        "AIML_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "AIML_MAX_CONNECTIONS_PER_CLIENT": str(MAX_PER_CLIENT),
    }
    process = aiml_serve(tmp_path_factory.mktemp("edge"), env, port)
    process.start()
    yield process, port
    process.stop()


def rss_mib(process: Process) -> float:
    assert process.proc is not None
    status = Path(f"/proc/{process.proc.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def zeros(total: int, size: int = MIB) -> Iterator[bytes]:
    """``total`` bytes in ``size`` pieces, all one shared buffer: the test itself holds 1 MiB."""
    return itertools.repeat(bytes(size), total // size)


def send_chunked(
    port: int, path: str, headers: str, body: Iterator[bytes], check: Callable[[], None]
) -> tuple[bytes, int, bool]:
    """POST ``body`` chunked on a raw socket until the server answers.

    Returns the answer, how many body bytes were sent before it came, and whether the
    server then closed the connection (rather than reading on to the body's end). A server
    that answers without reading a body may reset the connection under the client's
    writes: expected here, not an error.
    """
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: aiml\r\nTransfer-Encoding: chunked\r\n"
            f"{headers}\r\n".encode()
        )
        try:
            for chunk in body:
                if select.select([sock], [], [], 0)[0]:
                    break  # the answer (or the close) came: stop sending
                sock.sendall(b"%x\r\n" % len(chunk))
                sock.sendall(chunk)
                sock.sendall(b"\r\n")
                sent += len(chunk)
                check()
            else:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed under our writes; its answer may still be read
        answer = read_response(sock)
        return answer, sent, closed(sock)


def read_response(sock: socket.socket) -> bytes:
    """One HTTP response (headers and a Content-Length body), or what came before a close."""
    answer = b""
    while True:
        head, _, content = answer.partition(b"\r\n\r\n")
        length = next(
            (int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
             if line.startswith(b"content-length:")),
            None,
        )  # fmt: skip
        if length is not None and len(content) >= length:
            return answer
        try:
            more = sock.recv(65536)
        except ConnectionResetError:
            return answer
        if not more:
            return answer
        answer += more


def closed(sock: socket.socket, within_s: float = 5.0) -> bool:
    """Whether the server closes the connection within ``within_s``."""
    sock.settimeout(within_s)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.slow
def test_an_unauthenticated_upload_is_refused_before_its_body_is_read(
    server: tuple[Process, int],
) -> None:
    process, port = server
    idle = rss_mib(process)

    def bounded() -> None:
        assert rss_mib(process) < idle + RSS_SLACK_MIB, "the server is holding the body"

    answer, sent, was_closed = send_chunked(
        port, "/admin/models/register", "Content-Type: multipart/form-data; boundary=x\r\n",
        zeros(1 << 30), bounded,
    )  # fmt: skip
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert sent < 64 * MIB  # answered from the headers alone
    assert was_closed  # and not left to drain the rest
    bounded()


@pytest.mark.slow
def test_a_chunked_body_over_the_limit_is_413_while_it_streams(
    server: tuple[Process, int],
) -> None:
    process, port = server
    idle = rss_mib(process)

    def bounded() -> None:
        assert rss_mib(process) < idle + RSS_SLACK_MIB

    answer, sent, was_closed = send_chunked(
        port, "/inference/infer",
        f"Authorization: {USER}\r\nContent-Type: application/json\r\n",
        zeros(1 << 30, 64 << 10), bounded,
    )  # fmt: skip
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"payload_too_large" in answer
    assert sent < 64 * MIB  # answered at the limit (1 MiB)
    assert was_closed  # the rest of the body is not read at all


@pytest.mark.slow
def test_an_upload_goes_to_disk_as_it_arrives(server: tuple[Process, int]) -> None:
    process, port = server
    idle = rss_mib(process)
    peak = idle
    boundary = "aiml-edge-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="registered_name"\r\n\r\n'
        f"big-upload\r\n--{boundary}\r\n"
        'Content-Disposition: form-data; name="files"; filename="big.gguf"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()

    def body() -> Iterator[bytes]:
        nonlocal peak
        yield head + b"GGUF" + (3).to_bytes(4, "little") + bytes(16)  # a GGUF header, then zeros
        for chunk in zeros(300 * MIB):
            peak = max(peak, rss_mib(process))
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
        created = client.post(
            "/admin/models/register",
            content=body(),  # a generator: sent chunked, no Content-Length
            headers={
                "authorization": ADMIN,
                "content-type": f"multipart/form-data; boundary={boundary}",
            },
        )
    assert created.status_code == 201, created.text
    assert created.json()["tags"]["inference_engine"] == "llamacpp"
    assert peak < idle + RSS_SLACK_MIB, f"RSS rose {peak - idle:.0f} MiB during the upload"


@pytest.mark.slow
def test_a_client_dribbling_its_headers_is_cut_off(server: tuple[Process, int]) -> None:
    _, port = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        started = time.monotonic()
        answer = b""
        for byte in itertools.cycle(b"GET /health/live HTTP/1.1\r\nX-Slow: "):
            if select.select([sock], [], [], 0.1)[0]:
                answer = sock.recv(4096)
                break
            assert time.monotonic() - started < HEADER_TIMEOUT_S + 4, "still open"
            sock.sendall(bytes([byte]))
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408")
    assert HEADER_TIMEOUT_S * 0.8 < elapsed < HEADER_TIMEOUT_S + 4

    with socket.create_connection(("127.0.0.1", port), timeout=HEADER_TIMEOUT_S + 4) as silent:
        assert silent.recv(4096) == b""  # a connection that never says anything is closed too


@pytest.mark.slow
def test_an_idle_kept_alive_connection_is_not_a_slow_header(server: tuple[Process, int]) -> None:
    _, port = server
    request = b"GET /health/live HTTP/1.1\r\nHost: aiml\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        # The idle time is the condition under test: longer than the header deadline.
        time.sleep(HEADER_TIMEOUT_S * 2)
        sock.sendall(request)
        assert read_response(sock).startswith(b"HTTP/1.1 200")


def served(port: int, count: int) -> list[socket.socket]:
    """``count`` connections, each served one request and then kept alive (idle: no deadline).

    Empty if any was refused: the server may still be closing an earlier test's connections.
    """
    request = b"GET /health/live HTTP/1.1\r\nHost: aiml\r\n\r\n"
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]
    for sock in held:
        sock.sendall(request)
    if all(read_response(sock).startswith(b"HTTP/1.1 200") for sock in held):
        return held
    for sock in held:
        sock.close()
    return []


@pytest.mark.slow
def test_one_client_holds_at_most_its_share_of_connections(server: tuple[Process, int]) -> None:
    _, port = server
    deadline = time.monotonic() + 10
    while not (held := served(port, MAX_PER_CLIENT)):
        assert time.monotonic() < deadline
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
            refused = read_response(extra)
        assert refused.startswith(b"HTTP/1.1 503"), refused
        assert b"too_many_connections" in refused
        held.pop().close()
        while not (again := served(port, 1)):  # the server sees the close on its next turn
            assert time.monotonic() < deadline
        again[0].close()
    finally:
        for sock in held:
            sock.close()


# --- text that is not valid Unicode ------------------------------------------------------

BAD = ["\ud800", "a\udfffb", "tail\ud83d", "nul\x00byte"]


def _chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


#: (path, body with the bad text in one field): every surface, every kind of field.
CASES: list[tuple[str, Callable[[str], dict[str, Any]]]] = [
    ("/inference/infer", lambda t: {"task": "chat", "engine": "llamacpp", "model_name": "lm",
                                    "data": {"messages": _chat(t)}}),
    ("/inference/infer", lambda t: {"task": "text-generation", "engine": "llamacpp",
                                    "model_name": "lm", "data": {"inputs": t}}),
    ("/inference/infer", lambda t: {"task": "embeddings", "engine": "llamacpp",
                                    "model_name": "lm", "data": {"inputs": ["ok", t]}}),
    ("/inference/infer", lambda t: {"task": "chat", "engine": "llamacpp", "model_name": "lm",
                                    "data": {"messages": _chat("hi")},
                                    "options": {"stop": [t]}}),
    ("/inference/infer", lambda t: {"task": "chat", "engine": "llamacpp", "model_name": f"lm{t}",
                                    "data": {"messages": _chat("hi")}}),
    ("/inference/infer", lambda t: {"task": "chat", "engine": "llamacpp", "model_name": "lm",
                                    "data": {"messages": _chat("hi")}, "options": {t: 1}}),
    ("/inference/infer", lambda t: {"task": "chat", "engine": "llamacpp", "model_name": "lm",
                                    "data": {"messages": _chat("hi")}, t: 1}),
    ("/v1/chat/completions", lambda t: {"model": "lm", "messages": _chat(t)}),
    ("/v1/chat/completions", lambda t: {"model": "lm", "messages": [
        {"role": "user", "content": [{"type": "text", "text": t}]}]}),
    ("/v1/chat/completions", lambda t: {"model": "lm", "messages": _chat("hi"), "stop": t}),
    ("/v1/chat/completions", lambda t: {"model": f"lm{t}", "messages": _chat("hi")}),
    ("/v1/completions", lambda t: {"model": "lm", "prompt": t}),
    ("/v1/embeddings", lambda t: {"model": "lm", "input": t}),
    ("/v1/embeddings", lambda t: {"model": "lm", "input": ["ok", t]}),
    ("/api/chat", lambda t: {"model": "lm", "messages": _chat(t), "stream": False}),
    ("/api/chat", lambda t: {"model": "lm", "messages": _chat("hi"), "stream": False,
                             "options": {"stop": [t]}}),
    ("/api/chat", lambda t: {"model": "lm", "messages": _chat("hi"), "stream": False,
                             "options": {"num_ctx": t}}),
    ("/api/generate", lambda t: {"model": "lm", "prompt": "hi", "system": t, "stream": False}),
    ("/api/generate", lambda t: {"model": "lm", "prompt": t, "stream": False}),
    ("/api/embed", lambda t: {"model": "lm", "input": [t]}),
    ("/api/embeddings", lambda t: {"model": "lm", "prompt": t}),
    ("/api/show", lambda t: {"model": t}),
    ("/admin/models/load", lambda t: {"engine": "llamacpp", "model_name": f"lm{t}"}),
    ("/models/register_ollama", lambda t: {"local_model_name": "llama2:7b",
                                           "registered_name": "x", "description": t}),
]  # fmt: skip


@pytest.fixture
def llamacpp_aiml(
    start_aiml: Callable[..., RunningAiml], registry: Registry, model_files: ModelFiles
) -> RunningAiml:
    """A real llama.cpp model behind every surface (the engine that raised on bad text)."""
    registry.register_files(model_files.smollm2, "lm")
    return start_aiml(engines="ollama,llamacpp")


def test_text_that_is_not_valid_unicode_is_a_4xx_on_every_surface(
    llamacpp_aiml: RunningAiml,
) -> None:
    with llamacpp_aiml.client() as client:
        for text, (number, (path, build)) in itertools.product(BAD, enumerate(CASES)):
            # json.dumps writes a lone surrogate as its "\ud800" escape, as any client's JSON
            # encoder would have to; httpx's own json= cannot encode it at all.
            raw = json.dumps(build(text)).encode()
            answer = client.post(path, content=raw, headers={"content-type": "application/json"})
            where = f"case {number}: {path} {raw[:120]!r} -> {answer.status_code} {answer.text}"
            body = answer.json()
            if path.startswith("/v1/"):
                assert answer.status_code == 400, where
                assert body["error"]["type"] == "invalid_request_error", where
            elif path.startswith("/api/"):
                assert answer.status_code == 400, where  # Ollama's status for bad input
                assert isinstance(body["error"], str), where
            else:
                assert answer.status_code == 422, where
                assert body["error"]["code"] == "invalid_request", where
        assert client.get("/inference/loaded").json()["models"] == [], "text reached an engine"


async def test_overlapping_requests_on_one_connection_keep_the_header_deadline_off() -> None:
    """The next request's app call can start before the previous one's returns; its body
    bytes arriving then must not arm a header deadline that cuts its (long) answer."""
    import asyncio

    from aiml.edge.connection_guard import ConnectionGuard

    class Inner(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            return None

    class Transport:
        closed = False

        def get_extra_info(self, name: str) -> object:
            return ("127.0.0.1", 5000)

        def write(self, data: bytes) -> None:
            return None

        def close(self) -> None:
            self.closed = True

        def is_closing(self) -> bool:
            return self.closed

    guard = ConnectionGuard(header_timeout_s=0.05, max_per_client=0)
    protocol = guard.protocol(Inner)()
    transport = Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(b"POST / HTTP/1.1\r\n")  # the first request
    protocol.request_started()  # type: ignore[attr-defined]
    protocol.request_started()  # type: ignore[attr-defined]  # the next one, already going
    protocol.request_finished()  # type: ignore[attr-defined]  # the first one's call returns
    protocol.data_received(b'{"body": "of the second"}')
    await asyncio.sleep(0.2)  # well past the header deadline, the answer still streaming
    assert not transport.closed
    assert guard.timed_out == 0
