"""A lean HTTP/1.1 transport for httpx, under the official Ollama client.

Measured here, httpx's default transport (httpcore on anyio, h11) costs about 0.7 ms of CPU
per small request, several times what the rest of a gateway request costs; this one keeps
a pool of keep-alive connections, each an ``asyncio.Protocol`` that parses responses with
``httptools`` (the C parser uvicorn uses). The official client above it is unchanged: it
still builds requests, sets headers and timeouts, and reads (or streams) responses through
httpx; only the bytes on the wire go this way. Plain ``http://`` only: anything else goes
to httpx's own transport.

Closing a response before its end (a client that hung up mid-stream) closes the
connection, so the engine sees the request end; a complete response returns its
connection to the pool.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import Any, cast

import httptools
import httpx
import orjson

__all__ = ["FastTransport", "LeanAsyncClient"]

_Key = tuple[str, int]
_SKIP = {b"content-length", b"transfer-encoding", b"connection"}
_HIGH_WATER = 1 << 20  # pause reading when this much body is buffered and unread


class _Connection(asyncio.Protocol):
    """One keep-alive connection and the response being read on it."""

    def __init__(self, key: _Key) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[bytes, bytes]] = []
        self._head: asyncio.Future[None] | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self.complete = False
        self._keep_alive = False
        self._status = 0
        self._error: BaseException | None = None

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport; they do its job.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete:
            self._fail(httpx.RemoteProtocolError("the server closed the connection"))

    # -- httptools callbacks --------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        # Read now: llhttp forgets it once the message is complete.
        self._keep_alive = bool(self._parser.should_keep_alive())
        self._status = int(self._parser.get_status_code())
        if self._head is not None and not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    # -- used by the transport ------------------------------------------------------------

    def send(self, data: bytes) -> asyncio.Future[None]:
        """Write a request; the future resolves when the response's headers are in."""
        assert self.transport is not None
        self._headers = []
        self._chunks.clear()
        self._buffered = 0
        self.complete = False
        self._error = None
        self._head = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self._head

    @property
    def status(self) -> int:
        return self._status

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return self._headers

    @property
    def reusable(self) -> bool:
        return self.complete and not self.closed and self._keep_alive

    async def read(self, read_timeout_s: float | None) -> bytes | None:
        """The next body piece, or ``None`` at the end of the response."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self.complete:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(read_timeout_s):
                    await self._waiter
            except TimeoutError:
                raise httpx.ReadTimeout("the server sent nothing in time") from None
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered < _HIGH_WATER // 2 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return chunk

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        if self._head is not None and not self._head.done():
            self._head.set_exception(exc)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class _Body(httpx.AsyncByteStream):
    def __init__(self, connection: _Connection, pool: FastTransport, timeout: float | None) -> None:
        self._connection = connection
        self._pool = pool
        self._timeout = timeout
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (chunk := await self._connection.read(self._timeout)) is not None:
            yield chunk

    async def aclose(self) -> None:
        if not self._released:
            self._released = True
            self._pool.release(self._connection)


class FastTransport(httpx.AsyncBaseTransport):
    """Keep-alive HTTP/1.1 on asyncio protocols; ``https`` falls back to httpx's transport."""

    def __init__(self, *, max_connections: int = 256) -> None:
        self._idle: dict[_Key, list[_Connection]] = {}
        self._slots: dict[_Key, asyncio.Semaphore] = {}
        self._max_connections = max_connections
        self._fallback: httpx.AsyncHTTPTransport | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            if self._fallback is None:
                self._fallback = httpx.AsyncHTTPTransport()
            return await self._fallback.handle_async_request(request)
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        key = (url.host, url.port or 80)
        payload = _serialize(request, await request.aread())
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = asyncio.Semaphore(self._max_connections)
        if slots.locked():  # only a wait for a free connection needs its timeout
            try:
                async with asyncio.timeout(timeouts.get("pool")):
                    await slots.acquire()
            except TimeoutError:
                raise httpx.PoolTimeout("no free connection in time", request=request) from None
        else:
            await slots.acquire()
        try:
            connection = await self._exchange(key, payload, timeouts, request)
        except BaseException:
            slots.release()
            raise
        return httpx.Response(
            connection.status,
            headers=connection.headers,
            stream=_Body(connection, self, timeouts.get("read")),
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def _exchange(
        self, key: _Key, payload: bytes, timeouts: dict[str, Any], request: httpx.Request
    ) -> _Connection:
        """Send the request and wait for the response's head; one retry on a stale connection."""
        for attempt in (1, 2):
            connection, reused = await self._connection(key, timeouts.get("connect"), request)
            try:
                async with asyncio.timeout(timeouts.get("read")):
                    await connection.send(payload)
            except TimeoutError:
                connection.close()
                raise httpx.ReadTimeout(
                    "the server did not answer in time", request=request
                ) from None
            except httpx.RemoteProtocolError:
                connection.close()
                if reused and attempt == 1:
                    continue  # the server closed an idle connection as we wrote to it
                raise
            except BaseException:
                connection.close()  # cancelled mid-exchange: the connection is in no known state
                raise
            return connection
        raise AssertionError("unreachable")  # pragma: no cover

    def release(self, connection: _Connection) -> None:
        """Back to the pool if the response was read to its end, else closed."""
        if connection.reusable:
            self._idle.setdefault(connection.key, []).append(connection)
        else:
            connection.close()
        self._slots[connection.key].release()

    async def aclose(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()
        if self._fallback is not None:
            await self._fallback.aclose()

    async def _connection(
        self, key: _Key, connect_timeout_s: float | None, request: httpx.Request
    ) -> tuple[_Connection, bool]:
        """An idle connection (reused: True) or a new one."""
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            if not connection.closed:  # the server may have closed it while idle
                return connection, True
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(key), key[0], key[1]),
                connect_timeout_s,
            )
        except TimeoutError:
            raise httpx.ConnectTimeout(
                f"no connection to {key[0]}:{key[1]} in time", request=request
            ) from None
        except OSError as exc:
            raise httpx.ConnectError(
                f"cannot connect to {key[0]}:{key[1]}: {exc}", request=request
            ) from None
        return connection, False


def _serialize(request: httpx.Request, body: bytes) -> bytes:
    lines = [b"%s %s HTTP/1.1\r\n" % (request.method.encode(), request.url.raw_path)]
    lines.extend(
        b"%s: %s\r\n" % (name, value)
        for name, value in request.headers.raw
        if name.lower() not in _SKIP
    )
    if body or request.method in ("POST", "PUT", "PATCH"):
        lines.append(b"content-length: %d\r\n" % len(body))
    lines.append(b"\r\n")
    lines.append(body)
    return b"".join(lines)


class LeanAsyncClient(httpx.AsyncClient):
    """httpx's client without what an engine API never uses on the hot path.

    ``send`` goes straight to the transport, skipping the auth-flow generator, the redirect
    loop, cookie extraction and event hooks (about 70 us per request, measured). Engine
    APIs do not redirect, and their clients send keys as plain headers.

    A request that only names a path and a JSON body (what the official clients send) is
    built from the base URL joined once per path, the client's headers and orjson: about
    40 us less than httpx's general merge of URL, headers, cookies and parameters. Anything
    else is built by httpx as usual.
    """

    def __init__(self, *args: Any, transport: httpx.AsyncBaseTransport, **kwargs: Any) -> None:
        super().__init__(*args, transport=transport, **kwargs)
        self._lean_transport = transport
        # send() never stores cookies, so a client built without any never has them.
        self._plain = not self.cookies and not self.params
        self._timeouts = self.timeout.as_dict()
        self._json_headers = httpx.Headers({**self.headers, "Content-Type": "application/json"})
        self._urls: dict[str, httpx.URL] = {}

    def build_request(
        self,
        method: str,
        url: httpx.URL | str,
        *,
        content: Any = None,
        data: Any = None,
        files: Any = None,
        json: Any = None,
        params: Any = None,
        headers: Any = None,
        cookies: Any = None,
        timeout: Any = httpx.USE_CLIENT_DEFAULT,
        extensions: Any = None,
    ) -> httpx.Request:
        plain = (
            self._plain
            and isinstance(url, str)
            and all(v is None for v in (content, data, files, params, headers, cookies, extensions))
            and timeout is httpx.USE_CLIENT_DEFAULT
        )
        if not plain:
            return super().build_request(
                method,
                url,
                content=content,
                data=data,
                files=files,
                json=json,
                params=params,
                headers=headers,
                cookies=cookies,
                timeout=timeout,
                extensions=extensions,
            )
        assert isinstance(url, str)
        target = self._urls.get(url)
        if target is None:
            target = self._merge_url(url)
            if len(self._urls) < 64:  # the engine API's few paths
                self._urls[url] = target
        if json is None:
            return httpx.Request(
                method, target, headers=self.headers, extensions={"timeout": self._timeouts}
            )
        return httpx.Request(
            method,
            target,
            content=orjson.dumps(json),
            headers=self._json_headers,
            extensions={"timeout": self._timeouts},
        )

    async def send(
        self,
        request: httpx.Request,
        *,
        stream: bool = False,
        auth: Any = None,
        follow_redirects: Any = None,
    ) -> httpx.Response:
        request.extensions.setdefault("timeout", self.timeout.as_dict())
        response = await self._lean_transport.handle_async_request(request)
        response.request = request
        if not stream:
            try:
                await response.aread()
            finally:
                await response.aclose()
        return response
