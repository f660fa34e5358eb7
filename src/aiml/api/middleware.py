"""Pure ASGI middleware (no per-request objects beyond what each needs; cheap on the hot path).

* :class:`RequestContext`: a request id (the client's ``X-Request-ID`` if sane, else a new
  one) returned in the response header and put on every log line; the client's
  ``X-Request-Timeout`` (seconds, only ever shortening the deadline); one access log line;
  the count of requests in flight that a graceful shutdown waits for.
* :class:`~aiml.api.authentication.Authentication` (its own module): bearer keys.
* :class:`BodyLimit`: request bodies are counted as they stream through to the app, never
  buffered here; past the route's limit, 413.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aiml.observability.context import (
    request_deadline,
    request_id,
    request_path,
    request_started,
    response_headers,
)

from .errors import render_error

__all__ = ["BodyLimit", "RequestContext", "Traffic", "close_if_body"]

log = logging.getLogger("aiml.access")
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._\-]{1,64}")
_QUIET = ("/health/", "/metrics")
_UPLOAD_PATH = "/admin/models/register"  # the one route with AIML_MAX_UPLOAD_BYTES


@dataclass
class Traffic:
    """Requests being served right now (a graceful shutdown waits for this to reach 0)."""

    in_flight: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """True when no request is in flight, False if that took longer than ``timeout_s``."""
        if self.in_flight == 0:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


class RequestContext:
    def __init__(self, app: ASGIApp, *, traffic: Traffic, replica: str = "") -> None:
        self.app = app
        self.traffic = traffic
        #: ``x-aiml-replica``: which front process answered (behind a load balancer).
        self._replica = replica.encode("latin-1", "replace")
        # A random prefix per process and a counter: unique, and cheaper than uuid4 per request.
        prefix = uuid.uuid4().hex[:16]
        self._ids = (f"{prefix}{n:016x}".encode() for n in itertools.count(1))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = b""
        timeout: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id" and _REQUEST_ID.fullmatch(value):
                rid = value
            elif name == b"x-request-timeout":
                timeout = value
        rid = rid or next(self._ids)
        status = 500
        answered = False
        started = time.perf_counter()

        noted: list[tuple[bytes, bytes]] = []

        async def send_with_id(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status = message["status"]
                answered = True
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-request-id", rid),
                    (b"x-aiml-replica", self._replica),
                    *noted,
                ]
            await send(message)

        id_token = request_id.set(rid.decode())
        path_token = request_path.set(scope["path"])
        headers_token = response_headers.set(noted)
        deadline_token = request_deadline.set(_seconds(timeout))
        started_token = request_started.set(asyncio.get_running_loop().time())
        self.traffic.enter()
        try:
            if timeout is not None and request_deadline.get() is None:
                response = render_error(
                    scope["path"],
                    422,
                    "invalid_request",
                    "X-Request-Timeout must be a positive number of seconds",
                    "X-Request-Timeout",
                )
                await response(scope, receive, send_with_id)
                return
            await self.app(scope, receive, send_with_id)
            if status == 500 and not answered:
                status = 499  # no answer and no error: the client hung up (nginx's code)
        finally:
            self.traffic.leave()
            if not scope["path"].startswith(_QUIET) and log.isEnabledFor(logging.INFO):
                log.info(
                    "%s %s %s",
                    scope["method"],
                    scope["path"],
                    status,
                    extra={
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                    },
                )
            request_started.reset(started_token)
            request_deadline.reset(deadline_token)
            response_headers.reset(headers_token)
            request_path.reset(path_token)
            request_id.reset(id_token)


class BodyLimit:
    """Counts a request body as it streams through to the app; past the limit, 413.

    A declared ``Content-Length`` over the route's limit is refused before a byte is read (the
    server itself stops reading at ``Content-Length``). A chunked body is counted chunk by
    chunk as the app reads it: at most one chunk is ever held here. Once the count passes
    the limit the app is told the client went away (``http.disconnect``) and whatever it
    answers is dropped for our 413. Why not raise from ``receive``: FastAPI turns any error
    raised while it reads a body into a 400 (and a route reading its own body may catch it),
    whereas a disconnect is the one thing every ASGI body reader already handles; the 413
    is then decided here, in one place, whoever read the body.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, upload_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.upload_bytes = upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        limit = self.upload_bytes if path == _UPLOAD_PATH else self.max_bytes
        declared, chunked = b"", False
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
            elif name == b"transfer-encoding":
                chunked = True
        if declared.isdigit() and int(declared) > limit:
            await _too_large(path, limit)(scope, receive, send)
            return
        if not chunked:  # the server stops at Content-Length (or there is no body)
            await self.app(scope, receive, send)
            return
        seen = 0
        overflow = started = False

        async def counted() -> Message:
            nonlocal seen, overflow
            if overflow:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    overflow = True
                    return {"type": "http.disconnect"}
            return message

        async def answer(message: Message) -> None:
            nonlocal started
            if overflow and not started:
                return  # the app's reply to a body cut short: the 413 below replaces it
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, answer)
        except Exception:
            if not overflow or started:
                raise
            # A reader that did not expect the disconnect: the body was too large, that's all.
        if overflow and not started:
            await _too_large(path, limit)(scope, receive, send)


def _too_large(path: str, limit: int) -> Any:
    setting = "AIML_MAX_UPLOAD_BYTES" if path == _UPLOAD_PATH else "AIML_MAX_BODY_BYTES"
    # The rest of the body is never read: close the connection rather than drain it.
    return render_error(
        path,
        413,
        "payload_too_large",
        f"the request body is over {limit} bytes ({setting})",
        headers={"connection": "close"},
    )


def close_if_body(scope: Scope) -> dict[str, str]:
    """``Connection: close`` for an answer given without reading the request's body.

    Otherwise the server would go on reading (and dropping) the whole body to reach the next
    request on the connection: a refused client could still make aiml read gigabytes.
    """
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return {"connection": "close"}
    return {}


def _seconds(value: bytes | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 < seconds < 1e7 else None
