"""The Authentication middleware: bearer keys, by the one path table (``aiml.api.auth``'s
``ROUTE_ACCESS``: open, user or admin routes), the keys as :mod:`aiml.teams` knows them
(the environment's and the database's, :class:`~aiml.teams.directory.KeyDirectory`).

It leaves the caller (its key, admin or not) in the scope's state and the key in the
request's context (:data:`aiml.teams.context.request_key`: the gate checks its models).
It runs before anything reads the body, so a refused client's body is never read (and the
connection is closed rather than drained). A key's surfaces (``inference``, ``openai``,
``ollama``) are checked here, by path; its models where the model is known (the gate).
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from aiml.observability.context import request_affinity, request_caller
from aiml.teams.context import request_key
from aiml.teams.directory import KeyDirectory
from aiml.teams.keys import secret_digest

from .auth import ANONYMOUS, NO_KEYS, Access, Caller, access_of, set_caller, surface_of
from .errors import render_error
from .middleware import close_if_body

__all__ = ["Authentication"]

#: A longer x-aiml-session header is no session (it would only cost hashing).
_MAX_SESSION_BYTES = 256


class Authentication:
    """Refuses what a request's key does not grant; for the rest, leaves the
    :class:`~aiml.api.auth.Caller` in the scope's state for the routes.

    ``directory``: the front's keys, built in the app's lifespan (hence a callable).
    """

    def __init__(self, app: ASGIApp, *, directory: Callable[[], KeyDirectory]) -> None:
        self.app = app
        self.directory = directory

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        directory = self.directory()
        if not directory.enabled:
            await self._pass(scope, receive, send, NO_KEYS)
            return
        path = scope["path"]
        need = access_of(scope["method"], path)
        if need is Access.OPEN:
            await self._pass(scope, receive, send, ANONYMOUS)
            return
        token = _bearer(scope)
        refusal: tuple[int, str, str]
        key = None
        if token is None:
            refusal = (401, "unauthorized", "this route needs 'Authorization: Bearer <key>'")
        else:
            digest = secret_digest(token)
            found = directory.lookup(digest) or await directory.find(digest)
            key = found.key
            if key is None:
                refusal = (401, "unauthorized", found.refusal or "the key is not valid")
            elif need is Access.ADMIN and not key.admin:
                refusal = (403, "forbidden", f"this route needs an admin key ({key.name!r} is not)")
            elif (why := key.rules.surface_refusal(surface_of(path))) is not None:
                refusal = (403, "forbidden", f"key {key.name!r} may not: {why}")
            else:
                await self._pass(scope, receive, send, Caller(key=key, admin=key.admin))
                return
        status, code, message = refusal
        if status == 403:  # a valid key without the right: the audit names who tried
            set_caller(scope, Caller(key=key, admin=False))
        headers = {"www-authenticate": "Bearer"} if status == 401 else {}
        await render_error(path, status, code, message, headers=headers | close_if_body(scope))(
            scope, receive, send
        )

    async def _pass(self, scope: Scope, receive: Receive, send: Send, caller: Caller) -> None:
        """On to the app, with the caller in the scope, its key and its affinity (whose
        choices stick to it: a canary's version) in the request's context."""
        set_caller(scope, caller)
        affinity = request_affinity.set(_affinity(scope, caller))
        name = request_caller.set(caller.name)
        key = request_key.set(caller.key)
        try:
            await self.app(scope, receive, send)
        finally:
            request_key.reset(key)
            request_caller.reset(name)
            request_affinity.reset(affinity)


def _affinity(scope: Scope, caller: Caller) -> str | None:
    """The caller as sticky choices know it: its session header, else its key, else its
    address (a route may narrow it further: the OpenAI ``user`` field)."""
    name: bytes
    value: bytes
    for name, value in scope["headers"]:
        if name == b"x-aiml-session" and 0 < len(value) <= _MAX_SESSION_BYTES:
            return "session:" + value.decode("latin-1")
    if caller.owner is not None:
        return "key:" + caller.owner
    client = scope.get("client")
    return f"client:{client[0]}" if client else None


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None
