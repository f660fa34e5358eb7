"""What uvicorn does not limit: a request's head (its size, its time), a body's pace, and
connections per client.

uvicorn has a keep-alive timeout (restarted by every byte received, so a client dribbling a
request line holds its connection forever), a global ``limit_concurrency`` and no header
deadline. Hand-written here, as small as could be, with public interfaces only:

* uvicorn takes its HTTP protocol as a class (``Config(http=...)``); :meth:`ConnectionGuard.
  protocol` gives it one that *wraps* uvicorn's own (composition over the plain
  ``asyncio.Protocol`` interface, the constructor's arguments passed on untouched; no
  subclass of uvicorn's private protocol classes). It counts connections per peer address,
  refusing past the cap with a 503, and closes a connection whose request headers are not
  complete ``header_timeout_s`` after its first byte (or after it opened).
* httptools gathers a head of any size (20 connections sending 32 MB headers took the
  process from ~250 MB to ~1.1 GB and the event loop for seconds), so
  each request's head is measured as its bytes arrive (:class:`~aiml.edge.http_framing.
  RequestFraming`, per request: kept-alive and pipelined requests each have the whole
  allowance) and the bytes past ``max_head_bytes`` or ``max_headers`` never reach the
  parser: 431 and the connection is closed.
* A body must keep coming: no gap longer than ``body_timeout_s``, and on average at least
  ``body_min_rate`` bytes a second after a grace of ``body_timeout_s`` (a gap limit alone
  lets a byte every few seconds hold a request for ever). Past either, 408 and the
  connection is closed. uvicorn pauses reading itself while the app has not taken what came
  (on the transport: unseen here), so a deadline that finds reading paused starts the clock
  again from then; a pause that is over by the deadline still counts against the client.
* Requests the framing refuses (an ``Upgrade``, ``CONNECT``, a body of tiny chunks): 400
  and the connection is closed.
* Our own 431, 408 or 400 is written only between responses; mid-response the connection
  is just closed, and what the app answers after that is dropped. Either way uvicorn's
  protocol is told at once that the connection is lost (``connection_lost``, the
  ``asyncio.Protocol`` call), so it writes nothing of its own behind ours.
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

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import answers
from .http_framing import RequestFraming

__all__ = ["ConnectionGuard"]

log = logging.getLogger("aiml")

# After our own answer, what the client still sends is read and dropped for a moment before
# the close: closing with unread bytes resets the connection, and a reset can destroy the
# answer before the client reads it.
_LINGER_S = 1.0
_LINGER_BYTES = 4 << 20

_current: ContextVar[_Guarded | None] = ContextVar("aiml_connection", default=None)


class ConnectionGuard:
    """Per-address connection counts and the header deadline, for one server."""

    def __init__(
        self,
        *,
        header_timeout_s: float,
        max_per_client: int,
        max_head_bytes: int = 65536,
        max_headers: int = 100,
        body_timeout_s: float = 10.0,
        body_min_rate: float = 500.0,
    ) -> None:
        self.header_timeout_s = header_timeout_s
        self.max_per_client = max_per_client  # 0: no cap
        self.max_head_bytes = max_head_bytes
        self.max_headers = max_headers
        self.body_timeout_s = body_timeout_s
        self.body_min_rate = body_min_rate  # bytes a second; 0: only the gap counts
        self.refused = 0
        self.timed_out = 0
        self.too_large = 0
        self.body_timed_out = 0
        self.refused_requests = 0
        self._open: Counter[str] = Counter()
        self.too_large_answer = answers.too_large(max_head_bytes, max_headers)

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

            async def answer(message: Message) -> None:
                if connection.ended:
                    return  # the connection was ended with our own answer, or none
                await send(message)
                connection.sent(message)

            connection.request_started()
            try:
                await app(scope, receive, answer)
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
        _log_some(
            self.timed_out,
            "closed a connection from %s: no complete request headers within %.0fs "
            "(AIML_HEADER_TIMEOUT_S); %d so far",
            client,
            self.header_timeout_s,
        )

    def head_too_large(self, client: str) -> None:
        self.too_large += 1
        _log_some(
            self.too_large,
            "closed a connection from %s: request headers over %d bytes or %d fields "
            "(AIML_MAX_HEADER_BYTES, AIML_MAX_HEADERS); %d so far",
            client,
            self.max_head_bytes,
            self.max_headers,
        )

    def refused_request(self, client: str, refusal: str) -> None:
        self.refused_requests += 1
        _log_some(
            self.refused_requests,
            "closed a connection from %s with a 400: %s; %d so far",
            client,
            answers.REFUSALS[refusal],
        )

    def body_expired(self, client: str) -> None:
        self.body_timed_out += 1
        _log_some(
            self.body_timed_out,
            "closed a connection from %s: its request body stalled (AIML_BODY_TIMEOUT_S "
            "%.0fs, AIML_BODY_MIN_RATE %.0f B/s); %d so far",
            client,
            self.body_timeout_s,
            self.body_min_rate,
        )


def _log_some(count: int, message: str, *args: object) -> None:
    if count % 100 == 1:  # one line per hundred, not a flood under attack
        log.warning(message, *args, count)


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
        self._framing = RequestFraming(
            max_head_bytes=guard.max_head_bytes, max_headers=guard.max_headers
        )
        # Responses the app began and finished, to know whether one is under way (the
        # framing counts the heads): our own answer may only come between two.
        self._responses_begun = 0
        self._responses_done = 0
        self.ended = False  # by our 431 or 408 (or a close): nothing more goes either way
        self._dropped = 0  # bytes read and dropped since
        self._inner_lost = False  # uvicorn's protocol was told the connection is gone
        self._linger: asyncio.TimerHandle | None = None
        # The clock of the body now arriving: which request's, since when, from which byte.
        self._body_of = 0
        self._body_since = self._body_last = 0.0
        self._body_from = 0
        self._body_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # a stream server's: a Transport
        peer = transport.get_extra_info("peername")
        self._client = str(peer[0]) if isinstance(peer, tuple) else ""
        if not self._guard.admit(self._client):
            self._transport.write(answers.BUSY)
            self._transport.close()
            return
        self._admitted = True
        self._arm()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        if self.ended:
            self._dropped += len(data)
            if self._dropped > _LINGER_BYTES and self._transport is not None:
                self._transport.close()
            return
        if not self._active and self._deadline is None:
            self._arm()  # the first byte of a next request on a kept-alive connection
        self._heard = True
        allowed = self._framing.feed(data)
        if allowed:
            token = _current.set(self)  # the request task uvicorn may start here inherits it
            try:
                self._inner.data_received(data if allowed == len(data) else data[:allowed])
            finally:
                _current.reset(token)
        # The request the framing stopped at is under way (its app may be running) when its
        # body was being read; else all before it are the ones to answer first.
        answered = self._framing.heads - self._framing.in_body
        if self._framing.too_large:
            self._guard.head_too_large(self._client)
            self._end(self._guard.too_large_answer, answered=answered)
        elif self._framing.refusal:
            self._guard.refused_request(self._client, self._framing.refusal)
            self._end(answers.refused(self._framing.refusal), answered=answered)
        else:
            self._clock_body()

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._admitted and not self.ended else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._stop_body_clock()
        if self._linger is not None:
            self._linger.cancel()
        if self._admitted:
            self._admitted = False
            self._guard.release(self._client)
            if not self._inner_lost:
                self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._admitted and not self._inner_lost:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted and not self._inner_lost:
            self._inner.resume_writing()

    def request_started(self) -> None:
        self._active += 1
        self._disarm()

    def request_finished(self) -> None:
        self._active -= 1  # at 0, idle: uvicorn's keep-alive timeout applies until a byte comes

    def sent(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self._responses_begun += 1
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            self._responses_done += 1

    def _end(self, answer: bytes, *, answered: int) -> None:
        """Closes the connection, with ``answer`` if the ``answered`` requests before this one
        are answered and no response is under way (else it would land inside one)."""
        self.ended = True
        self._disarm()
        self._stop_body_clock()
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._responses_begun == self._responses_done == answered:
            transport.write(answer)
            self._linger = asyncio.get_running_loop().call_later(_LINGER_S, transport.close)
        else:
            transport.close()
        # To uvicorn the connection is gone now, not at the close (a loop turn away, or the
        # linger's second): the request under way reads a disconnect, and an app returning
        # without an answer (any answer now is dropped) gets no 500 of uvicorn's behind ours
        # and no error logged. With an exception, as a lost connection's, so that uvicorn
        # leaves the transport open for the linger.
        self._inner_lost = True
        self._inner.connection_lost(ConnectionAbortedError("answered by the guard"))

    def _clock_body(self) -> None:
        if not self._framing.in_body:
            self._stop_body_clock()
            return
        now = asyncio.get_running_loop().time()
        if self._body_of != self._framing.heads:  # the first bytes of a new body
            self._body_of = self._framing.heads
            self._body_since, self._body_from = now, 0
        self._body_last = now
        if self._body_deadline is None:
            self._body_deadline = asyncio.get_running_loop().call_at(
                self._body_due(), self._check_body
            )

    def _body_due(self) -> float:
        timeout_s, rate = self._guard.body_timeout_s, self._guard.body_min_rate
        due = self._body_last + timeout_s
        if rate > 0:
            received = self._framing.body_bytes - self._body_from
            due = min(due, self._body_since + timeout_s + received / rate)
        return due

    def _check_body(self) -> None:
        self._body_deadline = None
        transport = self._transport
        if self.ended or not self._framing.in_body or transport is None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if not transport.is_reading():  # uvicorn holds the body back: the app has not taken
            # what came; the wait is the server's, so the client's clock starts again.
            self._body_since = self._body_last = now
            self._body_from = self._framing.body_bytes
        due = self._body_due()
        if now < due:
            self._body_deadline = loop.call_at(due, self._check_body)
            return
        self._guard.body_expired(self._client)
        self._end(answers.TIMEOUT, answered=self._framing.heads - 1)

    def _stop_body_clock(self) -> None:
        if self._body_deadline is not None:
            self._body_deadline.cancel()
            self._body_deadline = None

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
            transport.write(answers.TIMEOUT)  # part of a request came: say why it ends
        transport.close()
