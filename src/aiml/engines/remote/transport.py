"""A lean HTTP/1.1 transport for httpx, under the official ``ollama`` and ``openai`` clients.

Measured (docs/benchmarks.md): httpx's default transport (httpcore, h11) costs ~0.7 ms of
CPU per small request, and aiohttp under httpx (httpx-aiohttp) made the gateway ~30% slower
than this one: a pool of keep-alive connections, each an ``asyncio.Protocol`` parsing with
``httptools`` (uvicorn's C parser). The clients above are unchanged; only the wire is ours.

What HTTP/1.1 asks of a client, and how it is met (tests/engines/test_transport*.py):

* A request is sent once. A reused connection that fails before the response head is
  retried on a new one only for idempotent methods (RFC 9110 9.2.2): a POST, a generation,
  never runs twice upstream. To keep that failure rare, a connection idle for
  ``keepalive_expiry_s`` (3 s: under the 5 s of uvicorn, which serves vLLM, and of
  llama.cpp's server) is dropped, and one the server closed is never reused.
* Interim 1xx responses are skipped. A response to HEAD has no body whatever its
  Content-Length (each request gets a fresh parser, so the connection stays usable), nor
  do 204 and 304; a body with neither Content-Length nor chunked coding ends at the close.
* ``HTTP_PROXY``/``NO_PROXY`` (read at construction) send plain-http requests through the
  proxy in absolute form; ``https://`` targets, and proxies other than plain http, go
  through httpx's own transport with that proxy.

Closing a response before its end (a client that hung up mid-stream) closes the
connection, so the engine sees the request end.
"""

from __future__ import annotations

import asyncio
import base64
import collections
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote

import httptools
import httpx

from .proxies import ProxyEnvironment

__all__ = ["FastTransport"]

_Key = tuple[str, int]
_SKIP = {b"content-length", b"transfer-encoding", b"connection"}
_HIGH_WATER = 1 << 20  # pause reading when this much body is buffered and unread
_IDEMPOTENT = {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"}


class _Connection(asyncio.Protocol):
    """One keep-alive connection and the response being read on it."""

    def __init__(self, key: _Key) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self.headers: list[tuple[bytes, bytes]] = []
        self._head: asyncio.Future[None] | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._head_only = False
        self._interim = False
        self.complete = False
        self._keep_alive = False
        self.status = 0
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
        if self.complete:
            return
        if self.status and self.status not in (204, 304) and not self._framed():
            self.complete = True  # neither length nor chunks: the close is the body's end
            self._wake()
        else:
            self._fail(httpx.RemoteProtocolError("the server closed the connection"))

    # -- httptools callbacks --------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = int(self._parser.get_status_code())
        if 100 <= status < 200:
            if status == 101:  # aiml never asks to switch protocols
                self._fail(httpx.RemoteProtocolError("unexpected 101 Switching Protocols"))
                self.close()
            self._interim = True  # skipped: the final response follows
            self.headers = []
            return
        # Read now: llhttp forgets it once the message is complete. (It is false for a body
        # that ends at the close.)
        self._keep_alive = bool(self._parser.should_keep_alive())
        self.status = status
        if self._head is not None and not self._head.done():
            self._head.set_result(None)
        if self._head_only:  # a Content-Length here describes a body that is not sent
            self.complete = True

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self.complete = True
        self._wake()

    # -- used by the transport ------------------------------------------------------------

    def send(self, data: bytes, *, head_only: bool) -> asyncio.Future[None]:
        """Write a request; the future resolves when the final response's head is in."""
        assert self.transport is not None
        if self._head_only:  # the parser still waits for the body a HEAD answer announced
            self._parser = httptools.HttpResponseParser(self)
        self.headers = []
        self._chunks.clear()
        self._buffered = 0
        self.status = 0
        self._head_only = head_only
        self._interim = self.complete = False
        self._error = None
        self._head = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self._head

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

    def _framed(self) -> bool:
        return any(n.lower() in (b"content-length", b"transfer-encoding") for n, _ in self.headers)

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


@dataclass(frozen=True, slots=True)
class _Route:
    """Where a request for one origin goes: the origin itself or a plain-http proxy."""

    key: _Key
    absolute: bool = False  # the request target in absolute form (through a proxy)
    proxy_auth: bytes | None = None


class FastTransport(httpx.AsyncBaseTransport):
    """Keep-alive HTTP/1.1 on asyncio protocols; ``https`` goes to httpx's own transport."""

    def __init__(
        self,
        *,
        max_connections: int = 256,
        keepalive_expiry_s: float = 3.0,
        proxies: ProxyEnvironment | None = None,
    ) -> None:
        self._proxies = proxies or ProxyEnvironment.from_env()
        self._idle: dict[_Key, list[_Connection]] = {}
        self._slots: dict[_Key, asyncio.Semaphore] = {}
        self._routes: dict[_Key, _Route | str | None] = {}
        self._max_connections = max_connections
        self._expiry_s = keepalive_expiry_s
        self._others: dict[str | None, httpx.AsyncHTTPTransport] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        origin = (url.host, url.port or (443 if url.scheme == "https" else 80))
        if origin not in self._routes:
            self._routes[origin] = _route(self._proxies, url.scheme, *origin)
        route = self._routes[origin]
        if not isinstance(route, _Route):  # https, or a proxy only httpx's transport speaks
            return await self._other(route).handle_async_request(request)
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        payload = _serialize(request, await request.aread(), route)
        slots = self._slots.get(route.key)
        if slots is None:
            slots = self._slots[route.key] = asyncio.Semaphore(self._max_connections)
        if slots.locked():  # only a wait for a free connection needs its timeout
            try:
                async with asyncio.timeout(timeouts.get("pool")):
                    await slots.acquire()
            except TimeoutError:
                raise httpx.PoolTimeout("no free connection in time", request=request) from None
        else:
            await slots.acquire()
        try:
            connection = await self._exchange(route.key, payload, timeouts, request)
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
        """Send the request and wait for the response's head.

        A reused connection that fails before the head is retried once on a new one, and
        only for an idempotent method: the server may have run the request before failing.
        """
        retry = request.method in _IDEMPOTENT
        head_only = request.method == "HEAD"
        while True:
            connection, reused = await self._connection(key, timeouts.get("connect"), request)
            try:
                async with asyncio.timeout(timeouts.get("read")):
                    await connection.send(payload, head_only=head_only)
            except TimeoutError:
                connection.close()
                raise httpx.ReadTimeout(
                    "the server did not answer in time", request=request
                ) from None
            except httpx.RemoteProtocolError:
                connection.close()
                if reused and retry:
                    retry = False
                    continue  # the server closed an idle connection as we wrote to it
                raise
            except BaseException:
                connection.close()  # cancelled mid-exchange: the connection is in no known state
                raise
            return connection

    def release(self, connection: _Connection) -> None:
        """Back to the pool if the response was read to its end, else closed."""
        if connection.reusable:
            connection.idle_since = asyncio.get_running_loop().time()
            self._idle.setdefault(connection.key, []).append(connection)
        else:
            connection.close()
        self._slots[connection.key].release()

    async def aclose(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()
        for other in self._others.values():
            await other.aclose()

    def _other(self, proxy: str | None) -> httpx.AsyncHTTPTransport:
        other = self._others.get(proxy)
        if other is None:
            other = self._others[proxy] = httpx.AsyncHTTPTransport(proxy=proxy)
        return other

    async def _connection(
        self, key: _Key, connect_timeout_s: float | None, request: httpx.Request
    ) -> tuple[_Connection, bool]:
        """An idle connection (reused: True) or a new one."""
        idle = self._idle.get(key)
        if idle:
            now = asyncio.get_running_loop().time()
            while idle:
                connection = idle.pop()
                if connection.closed:  # the server closed it while idle
                    continue
                if now - connection.idle_since > self._expiry_s:
                    connection.close()  # the server may be closing it right now
                    continue
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


def _route(proxies: ProxyEnvironment, scheme: str, host: str, port: int) -> _Route | str | None:
    """This transport's route to an origin, or the proxy (``None``: none) for httpx's."""
    proxy = proxies.proxy_for(scheme, host, port)
    if scheme != "http":
        return proxy
    if proxy is None:
        return _Route((host, port))
    url = httpx.URL(proxy)
    if url.scheme != "http":
        return proxy
    auth = None
    if url.username:
        pair = f"{unquote(url.username)}:{unquote(url.password or '')}".encode()
        auth = b"Basic " + base64.b64encode(pair)
    return _Route((url.host, url.port or 80), absolute=True, proxy_auth=auth)


def _serialize(request: httpx.Request, body: bytes, route: _Route) -> bytes:
    target = str(request.url).encode() if route.absolute else request.url.raw_path
    lines = [b"%s %s HTTP/1.1\r\n" % (request.method.encode(), target)]
    lines.extend(
        b"%s: %s\r\n" % (name, value)
        for name, value in request.headers.raw
        if name.lower() not in _SKIP
    )
    if route.proxy_auth is not None:
        lines.append(b"proxy-authorization: %s\r\n" % route.proxy_auth)
    if body or request.method in ("POST", "PUT", "PATCH"):
        lines.append(b"content-length: %d\r\n" % len(body))
    lines.append(b"\r\n")
    lines.append(body)
    return b"".join(lines)
