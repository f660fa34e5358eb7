"""Pure ASGI middleware (no per-request objects beyond what each needs; cheap on the hot path).

* :class:`RequestContext`: a request id (the client's ``X-Request-ID`` if sane, else a new
  one) returned in the response header and put on every log line; the client's
  ``X-Request-Timeout`` (seconds, only ever shortening the deadline); one access log line;
  the count of requests in flight that a graceful shutdown waits for.
* :class:`Authentication`: bearer keys; admin routes need an admin key.
* :class:`BodyLimit`: request bodies over the limit are refused with 413 before they are read.
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

from aiml.observability.context import request_deadline, request_id, request_started

from .auth import KeyRing
from .errors import render_error

__all__ = ["Access", "Authentication", "BodyLimit", "RequestContext", "Traffic", "access_of"]

log = logging.getLogger("aiml.access")
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._\-]{1,64}")
_QUIET = ("/health/", "/metrics")


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


class Access:
    OPEN = "open"
    USER = "user"
    ADMIN = "admin"


_OPEN_PATHS = {"/health/live", "/health/ready", "/metrics", "/openapi.json", "/docs", "/redoc"}
_ADMIN_ROUTES = {("POST", "/models/register_ollama"), ("POST", "/inference/clear-cache")}


def access_of(method: str, path: str) -> str:
    """Who may call a route: anyone, holders of an API (or admin) key, admin keys only."""
    if path in _OPEN_PATHS or path.startswith("/docs/"):
        return Access.OPEN
    if path.startswith("/admin/") or (method, path) in _ADMIN_ROUTES:
        return Access.ADMIN
    if method in ("PUT", "DELETE") and path.startswith("/models/registered_in_mlflow/"):
        return Access.ADMIN  # aliases
    return Access.USER


class RequestContext:
    def __init__(self, app: ASGIApp, *, traffic: Traffic) -> None:
        self.app = app
        self.traffic = traffic
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
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid)]
            await send(message)

        id_token = request_id.set(rid.decode())
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
            request_id.reset(id_token)


class Authentication:
    def __init__(self, app: ASGIApp, *, api_keys: KeyRing, admin_keys: KeyRing) -> None:
        self.app = app
        self.api_keys = api_keys
        self.admin_keys = admin_keys
        self.enabled = bool(api_keys) or bool(admin_keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.enabled:
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        need = access_of(scope["method"], path)
        if need == Access.OPEN:
            await self.app(scope, receive, send)
            return
        token = _bearer(scope)
        if token is None:
            refusal = (401, "unauthorized", "this route needs 'Authorization: Bearer <key>'")
        else:
            admin = self.admin_keys.accepts(token)
            if admin or (need == Access.USER and self.api_keys.accepts(token)):
                await self.app(scope, receive, send)
                return
            if need == Access.ADMIN and self.api_keys.accepts(token):
                refusal = (403, "forbidden", "this route needs an admin key (AIML_ADMIN_KEYS)")
            else:
                refusal = (401, "unauthorized", "the key is not valid")
        status, code, message = refusal
        headers = {"www-authenticate": "Bearer"} if status == 401 else None
        await render_error(path, status, code, message, headers=headers)(scope, receive, send)


class BodyLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int, upload_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.upload_bytes = upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        limit = self.upload_bytes if path == "/admin/models/register" else self.max_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > limit:
                    await _too_large(path, limit)(scope, receive, send)
                    return
                await self.app(scope, receive, send)  # the server stops at Content-Length
                return
        # No Content-Length (chunked): read up to the limit here, then hand the body on.
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                await _too_large(path, limit)(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


def _too_large(path: str, limit: int) -> Any:
    return render_error(
        path,
        413,
        "payload_too_large",
        f"the request body is over {limit} bytes (AIML_MAX_BODY_BYTES)",
    )


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None


def _seconds(value: bytes | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 < seconds < 1e7 else None
