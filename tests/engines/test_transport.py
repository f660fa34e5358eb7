"""The HTTP layer under both HTTP engines, against raw servers that misbehave on purpose.

tests/engines/test_transport_nginx.py checks the same layer against a real server that is
not Python; tests/engines/test_transport_routes.py its proxies and https.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx
import pytest

from aiml.engines.remote.httpclient import LeanAsyncClient
from aiml.engines.remote.ollama import OllamaEngine
from aiml.engines.remote.transport import FastTransport
from aiml.errors import EngineUnavailable
from aiml.types import ChatMessage, ResolvedModel, SamplingParams, Source
from tests.engines.conftest import NO_PROXY, Serve
from tests.fakes.raw_http import RawServer, keep_alive, ok


async def test_keep_alive_connections_are_reused(
    serve: Serve, client: Callable[..., httpx.AsyncClient]
) -> None:
    server = await serve(keep_alive())
    http = client(server.url)
    for _ in range(20):
        response = await http.post("/api/chat", json={"a": 1})
        assert response.json() == {"ok": True}
    assert server.connections == 1
    await asyncio.gather(*(http.get("/x") for _ in range(10)))
    assert server.connections <= 10


async def test_a_post_is_never_sent_twice(
    serve: Serve,
) -> None:
    """A reused connection that dies after the request was sent: the generation may be
    running upstream, so the engine reports the failure instead of sending it again."""

    async def first_only(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        reply = {"model": "m", "message": {"role": "assistant", "content": "hi"}, "done": True}
        writer.write(ok(json.dumps(reply).encode()))
        await writer.drain()
        await server.read_request(reader)  # the second request on this connection: read,
        # then the connection is cut without an answer

    server = await serve(first_only)
    engine = OllamaEngine(server.url, timeout_s=2.0, connect_timeout_s=1.0)
    model = ResolvedModel(engine="ollama", engine_model="m", source=Source.DIRECT)
    assert (await engine.chat(model, [ChatMessage("user", "a")], SamplingParams())).text == "hi"
    with pytest.raises(EngineUnavailable):
        await engine.chat(model, [ChatMessage("user", "b")], SamplingParams())
    assert len(server.requests) == 2  # never a third: "b" reached the server once
    assert server.connections == 1
    await engine.aclose()


async def test_an_idempotent_request_on_a_stale_connection_is_retried_once(
    serve: Serve,
    client: Callable[..., httpx.AsyncClient],
) -> None:
    async def once(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        await server.read_request(reader)  # keep-alive in the headers, then gone

    server = await serve(once)
    http = client(server.url)
    assert (await http.get("/1")).text == "ok"
    assert (await http.get("/2")).text == "ok"  # sent again on a new connection
    assert server.connections == 2


async def test_interim_1xx_responses_are_skipped(
    serve: Serve, client: Callable[..., httpx.AsyncClient]
) -> None:
    async def handler(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            await server.read_request(reader)
            writer.write(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n"
            )
            writer.write(ok(b'{"n": %d}' % len(server.requests)))
            await writer.drain()

    server = await serve(handler)
    http = client(server.url)
    first = await http.post("/api/chat", json={})
    assert (first.status_code, first.json()) == (200, {"n": 1})
    assert "link" not in first.headers
    second = await http.post("/api/chat", json={})  # the same connection, in step
    assert (second.status_code, second.json()) == (200, {"n": 2})
    assert server.connections == 1


async def test_head_responses_have_no_body(
    serve: Serve, client: Callable[..., httpx.AsyncClient]
) -> None:
    async def handler(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            request = await server.read_request(reader)
            if request.startswith(b"HEAD"):
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n")
            else:
                writer.write(ok())
            await writer.drain()

    server = await serve(handler)
    http = client(server.url)
    head = await http.head("/")
    assert (head.status_code, head.headers["content-length"], head.content) == (200, "12", b"")
    assert (await http.get("/")).json() == {"ok": True}
    assert server.connections == 1  # the HEAD left the connection usable


async def test_a_body_without_length_ends_at_the_close(
    serve: Serve,
    client: Callable[..., httpx.AsyncClient],
) -> None:
    async def handler(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n\r\n")
        for piece in (b'{"a": 1}\n', b'{"b": 2}\n'):
            writer.write(piece)
            await writer.drain()

    server = await serve(handler)
    http = client(server.url)
    async with http.stream("POST", "/api/chat", content=b"{}") as response:
        lines = [line async for line in response.aiter_lines()]
    assert lines == ['{"a": 1}', '{"b": 2}']
    assert (await http.post("/again", content=b"{}")).status_code == 200
    assert server.connections == 2  # that connection was done


async def test_chunked_bodies_and_connection_close(
    serve: Serve,
    client: Callable[..., httpx.AsyncClient],
) -> None:
    async def handler(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n")
        for piece in (b'{"a"', b": 1}\n", b'{"b": 2}\n'):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    server = await serve(handler)
    http = client(server.url)
    async with http.stream("POST", "/api/chat", content=b"{}") as response:
        lines = [line async for line in response.aiter_lines()]
    assert lines == ['{"a": 1}', '{"b": 2}']
    assert (await http.post("/again", content=b"{}")).status_code == 200
    assert server.connections == 2  # "connection: close" was honoured


async def test_idle_connections_expire(
    serve: Serve, client: Callable[..., httpx.AsyncClient]
) -> None:
    server = await serve(keep_alive())
    http = client(server.url, keepalive_expiry_s=0.05)
    await http.post("/a", json={})
    await http.post("/b", json={})
    assert server.connections == 1
    await asyncio.sleep(0.1)  # what is tested: the time a connection was left idle
    await http.post("/c", json={})
    assert server.connections == 2


async def test_failures_are_httpx_errors(
    serve: Serve, client: Callable[..., httpx.AsyncClient]
) -> None:
    async def garbage(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()

    async def silent(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        await reader.read()  # no answer; done when the client gives up

    async def cut(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
        await writer.drain()

    server = await serve(garbage)
    with pytest.raises(httpx.RemoteProtocolError):
        await client(server.url).get("/")
    server = await serve(silent)
    http = httpx.AsyncClient(
        base_url=server.url, transport=FastTransport(proxies=NO_PROXY), timeout=0.3
    )
    with pytest.raises(httpx.ReadTimeout):
        await http.get("/")
    await http.aclose()
    server = await serve(cut)
    with pytest.raises(httpx.RemoteProtocolError):
        await client(server.url).get("/")
    with pytest.raises(httpx.ConnectError):
        await client("http://127.0.0.1:9").get("/")


async def test_leaving_a_stream_early_closes_the_connection(
    serve: Serve,
    client: Callable[..., httpx.AsyncClient],
) -> None:
    ended = asyncio.Event()

    async def endless(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        try:
            while True:
                writer.write(b"6\r\ntoken\n\r\n")
                await writer.drain()
                await asyncio.sleep(0.01)
        except ConnectionError:
            ended.set()
            raise

    server = await serve(endless)
    http = client(server.url)
    async with http.stream("POST", "/api/generate", content=b"{}") as response:
        async for _ in response.aiter_lines():
            break
    await asyncio.wait_for(ended.wait(), 2)  # the server saw the hang-up


async def test_large_bodies_pass_through_flow_control(
    serve: Serve,
    client: Callable[..., httpx.AsyncClient],
) -> None:
    body = b"x" * (5 << 20)
    server = await serve(keep_alive(body))
    response = await client(server.url).get("/big")
    assert response.content == body


def test_the_lean_client_builds_what_httpx_builds() -> None:
    """The fast path for ``path + JSON`` requests sends the same request httpx would."""
    options = {
        "base_url": "http://127.0.0.1:11434/prefix",
        "headers": {"Accept": "application/json", "User-Agent": "ollama-python/0.6.3"},
        "timeout": httpx.Timeout(30, connect=2),
    }
    lean = LeanAsyncClient(transport=FastTransport(), **options)  # type: ignore[arg-type]
    plain = httpx.AsyncClient(**options)  # type: ignore[arg-type]
    body = {"model": "llama2:7b", "messages": [{"role": "user", "content": "héllo"}]}
    for method, path, kwargs in (
        ("POST", "/api/chat", {"json": body}),
        ("GET", "/api/tags", {}),
        ("POST", "/api/chat", {"json": body, "params": {"a": "1"}}),  # httpx's own path
    ):
        ours = lean.build_request(method, path, **kwargs)  # type: ignore[arg-type]
        theirs = plain.build_request(method, path, **kwargs)  # type: ignore[arg-type]
        assert (ours.method, ours.url) == (theirs.method, theirs.url)
        assert dict(ours.headers) == dict(theirs.headers)
        assert json.loads(ours.read() or b"null") == json.loads(theirs.read() or b"null")
        assert ours.extensions["timeout"] == theirs.extensions["timeout"]
