"""What uvicorn does not limit: how long a request's headers may take, connections per client.

uvicorn has a keep-alive timeout (restarted by every byte received, so a client dribbling a
request line holds its connection forever), a global ``limit_concurrency`` and no header
deadline. Hand-written here, as small as could be, with public interfaces only:

* uvicorn takes its HTTP protocol as a class (``Config(http=...)``); :meth:`ConnectionGuard.
  protocol` gives it one that *wraps* uvicorn's own (composition over the plain
  ``asyncio.Protocol`` interface, the constructor's arguments passed on untouched; no
  subclass of uvicorn's private protocol classes). It counts connections per peer address,
  refusing past the cap with a 503, and closes a connection whose request headers are not
  complete ``header_timeout_s`` after its first byte (or after it opened).
* Only the app learns that a request's headers are complete: :meth:`ConnectionGuard.app`
  wraps it and tells the connection. uvicorn starts the request's task inside
  ``data_received``, so the task's context carries the connection that :data:`_current`
  was set to around that call; nothing is matched by address (a proxy header may rewrite
  the client address the app sees).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from contextvars import ContextVar
from typing import Any, cast

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["ConnectionGuard"]

log = logging.getLogger("aiml")

_BUSY_BODY = (
    b'{"success":false,"error":{"code":"too_many_connections",'
    b'"message":"too many open connections from this address"}}'
)
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"retry-after: 1\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s"
    % (len(_BUSY_BODY), _BUSY_BODY)
)
_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"

_current: ContextVar[_Guarded | None] = ContextVar("aiml_connection", default=None)


class ConnectionGuard:
    """Per-address connection counts and the header deadline, for one server."""

    def __init__(self, *, header_timeout_s: float, max_per_client: int) -> None:
        self.header_timeout_s = header_timeout_s
        self.max_per_client = max_per_client  # 0: no cap
        self.refused = 0
        self.timed_out = 0
        self._open: Counter[str] = Counter()

    def protocol(self, inner: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
        """A protocol class for uvicorn's ``Config(http=...)`` that wraps ``inner``."""
        guard = self

        class GuardedProtocol(_Guarded):
            def __init__(self, **kwargs: Any) -> None:
                super().__init__(guard, inner(**kwargs))

        return GuardedProtocol

    def app(self, app: ASGIApp) -> ASGIApp:
        """``app``, telling each request's connection when the app has it and is done."""

        async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
            connection = _current.get()
            if connection is None or scope["type"] != "http":
                await app(scope, receive, send)
                return
            connection.request_started()
            try:
                await app(scope, receive, send)
            finally:
                connection.request_finished()

        return guarded

    def admit(self, client: str) -> bool:
        if self.max_per_client and self._open[client] >= self.max_per_client:
            self.refused += 1
            if self.refused % 100 == 1:  # one line per hundred, not a flood under attack
                log.warning(
                    "refused a connection from %s: %d open (AIML_MAX_CONNECTIONS_PER_CLIENT); "
                    "%d refused so far",
                    client,
                    self._open[client],
                    self.refused,
                )
            return False
        self._open[client] += 1
        return True

    def release(self, client: str) -> None:
        self._open[client] -= 1
        if self._open[client] <= 0:
            del self._open[client]

    def expired(self, client: str) -> None:
        self.timed_out += 1
        if self.timed_out % 100 == 1:
            log.warning(
                "closed a connection from %s: no complete request headers within %.0fs "
                "(AIML_HEADER_TIMEOUT_S); %d so far",
                client,
                self.header_timeout_s,
                self.timed_out,
            )


class _Guarded(asyncio.Protocol):
    """Forwards every ``asyncio.Protocol`` call to uvicorn's protocol, minding the limits."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._client = ""
        self._admitted = False
        # Requests of this connection the app has now. A count, not a flag: the next request
        # can start before the previous one's app call has returned (uvicorn starts it once
        # the last body byte is sent), and a flag cleared by the old one would leave the new
        # one unguarded, so its body bytes armed a header deadline that cut its stream.
        self._active = 0
        self._heard = False  # bytes arrived since the deadline was set
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # a stream server's: a Transport
        peer = transport.get_extra_info("peername")
        self._client = str(peer[0]) if isinstance(peer, tuple) else ""
        if not self._guard.admit(self._client):
            self._transport.write(_BUSY)
            self._transport.close()
            return
        self._admitted = True
        self._arm()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        if not self._active and self._deadline is None:
            self._arm()  # the first byte of a next request on a kept-alive connection
        self._heard = True
        token = _current.set(self)  # the request task uvicorn may start here inherits it
        try:
            self._inner.data_received(data)
        finally:
            _current.reset(token)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._admitted else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._admitted:
            self._admitted = False
            self._guard.release(self._client)
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._admitted:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            self._inner.resume_writing()

    def request_started(self) -> None:
        self._active += 1
        self._disarm()

    def request_finished(self) -> None:
        self._active -= 1  # at 0, idle: uvicorn's keep-alive timeout applies until a byte comes

    def _arm(self) -> None:
        self._heard = False
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self._guard.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        transport = self._transport
        if self._active or transport is None or transport.is_closing():
            return
        self._guard.expired(self._client)
        if self._heard:
            transport.write(_TIMEOUT)  # part of a request came: say why it ends
        transport.close()
