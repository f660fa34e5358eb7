"""The lean HTTP/1.1 transport, against raw servers that misbehave on purpose."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from aiml.engines.transport import FastTransport, LeanAsyncClient

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.closed_by_client = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> RawServer:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


def keep_alive(body: bytes = b'{"ok": true}') -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            await writer.drain()

    return handler


@pytest.fixture
async def client() -> AsyncIterator[Callable[[str], httpx.AsyncClient]]:
    made: list[httpx.AsyncClient] = []

    def make(url: str) -> httpx.AsyncClient:
        made.append(httpx.AsyncClient(base_url=url, transport=FastTransport(), timeout=2))
        return made[-1]

    yield make
    for c in made:
        await c.aclose()


async def test_keep_alive_connections_are_reused(
    client: Callable[[str], httpx.AsyncClient],
) -> None:
    async with RawServer(keep_alive()) as server:
        http = client(server.url)
        for _ in range(20):
            response = await http.post("/api/chat", json={"a": 1})
            assert response.json() == {"ok": True}
        assert server.connections == 1
        await asyncio.gather(*(http.get("/x") for _ in range(10)))
        assert server.connections <= 10


async def test_chunked_bodies_and_connection_close(
    client: Callable[[str], httpx.AsyncClient],
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n")
        for piece in (b'{"a"', b": 1}\n", b'{"b": 2}\n'):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with RawServer(handler) as server:
        http = client(server.url)
        async with http.stream("POST", "/api/chat", content=b"{}") as response:
            lines = [line async for line in response.aiter_lines()]
        assert lines == ['{"a": 1}', '{"b": 2}']
        assert (await http.post("/again", content=b"{}")).status_code == 200
        assert server.connections == 2  # "connection: close" was honoured


async def test_a_stale_idle_connection_is_retried_once(
    client: Callable[[str], httpx.AsyncClient],
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        # keep-alive in the headers, then gone: the next request on it finds it closed

    async with RawServer(handler) as server:
        http = client(server.url)
        assert (await http.get("/1")).text == "ok"
        await asyncio.sleep(0.05)  # let the close reach us... or not: either way it must work
        assert (await http.get("/2")).text == "ok"
        assert server.connections == 2


async def test_failures_are_httpx_errors(client: Callable[[str], httpx.AsyncClient]) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(10)

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
        await writer.drain()

    async with RawServer(garbage) as server:
        with pytest.raises(httpx.RemoteProtocolError):
            await client(server.url).get("/")
    async with RawServer(silent) as server:
        http = httpx.AsyncClient(base_url=server.url, transport=FastTransport(), timeout=0.3)
        with pytest.raises(httpx.ReadTimeout):
            await http.get("/")
        await http.aclose()
    async with RawServer(cut) as server:
        with pytest.raises(httpx.RemoteProtocolError):
            await client(server.url).get("/")
    with pytest.raises(httpx.ConnectError):
        await client("http://127.0.0.1:9").get("/")


async def test_leaving_a_stream_early_closes_the_connection(
    client: Callable[[str], httpx.AsyncClient],
) -> None:
    ended = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        try:
            while True:
                writer.write(b"6\r\ntoken\n\r\n")
                await writer.drain()
                await asyncio.sleep(0.01)
        except ConnectionError:
            ended.set()
            raise

    async with RawServer(endless) as server:
        http = client(server.url)
        async with http.stream("POST", "/api/generate", content=b"{}") as response:
            async for _ in response.aiter_lines():
                break
        await asyncio.wait_for(ended.wait(), 2)  # the server saw the hang-up


async def test_large_bodies_pass_through_flow_control(
    client: Callable[[str], httpx.AsyncClient],
) -> None:
    body = b"x" * (5 << 20)
    async with RawServer(keep_alive(body)) as server:
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
