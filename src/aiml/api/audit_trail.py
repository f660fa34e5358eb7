"""The AuditTrail middleware: every admin action written to the audit log.

An admin action is a request to an admin route (``ROUTE_ACCESS``) other than a read:
keys and teams, aliases, canaries, registering, loading, unloading, pulling, the cache.
Written as its answer starts, before it is sent (refused ones too, a bad key's included:
who tried matters; this middleware runs outside Authentication), by the key's name,
with the client's address and what the route noted (:func:`note_audit`: the key made, the
alias moved). Reads and the serving routes are counted as usage, not audited.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aiml.teams.audit import AuditEntry
from aiml.teams.service import Teams

from .auth import Access, Caller, access_of, found_caller

__all__ = ["AuditTrail", "note_audit"]

log = logging.getLogger("aiml.audit")
_READS = frozenset({"GET", "HEAD", "OPTIONS"})
#: User routes that may do an admin action (Ollama's load-only and unload requests); the
#: route says so with note_audit, and only then is the request audited.
_ADMIN_ACTIONS_INSIDE = frozenset({"/api/generate", "/api/chat"})
_detail: ContextVar[dict[str, Any] | None] = ContextVar("aiml_audit_detail", default=None)


def note_audit(**detail: Any) -> None:
    """What an admin route did, for its audit entry (shared by reference, as headers are);
    on a user route that may do an admin action, that it does one."""
    noted = _detail.get()
    if noted is not None:
        noted.update(detail)


class AuditTrail:
    def __init__(self, app: ASGIApp, *, teams: Callable[[], Teams | None]) -> None:
        self.app = app
        self.teams = teams

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        teams = self.teams()
        if (
            teams is None  # no lifespan ran: no database to write to
            or scope["type"] != "http"
            or scope["method"] in _READS
        ):
            await self.app(scope, receive, send)
            return
        admin_route = access_of(scope["method"], scope["path"]) is Access.ADMIN
        if not admin_route and scope["path"] not in _ADMIN_ACTIONS_INSIDE:
            await self.app(scope, receive, send)
            return
        written = False
        detail: dict[str, Any] = {}

        async def write(status: int) -> None:
            nonlocal written
            written = True
            if not admin_route and not detail:  # a user route that did no admin action
                return
            caller = found_caller(scope)  # None: refused by Authentication (no or a bad key)
            client = scope.get("client")
            entry = AuditEntry(
                actor=_actor(caller),
                action=f"{scope['method']} {scope['path']}",
                target=str(detail.pop("target", scope["path"])),
                status=status,
                client=client[0] if client else "-",
                detail=detail,
            )
            try:
                await asyncio.shield(asyncio.to_thread(teams.audit.append, entry))
            except Exception:  # the action is done; its record failing must be loud
                log.exception("audit entry not written: %s", entry)

        async def send_noting(message: Message) -> None:
            # Written before the answer goes: an action its client saw answered is in the
            # log, in the order the answers went.
            if message["type"] == "http.response.start":
                await write(message["status"])
            await send(message)

        token = _detail.set(detail)
        try:
            await self.app(scope, receive, send_noting)
        finally:
            _detail.reset(token)
            if not written:  # no answer: a crash (500) or the client hung up (499)
                await write(500 if _crashed() else 499)


def _actor(caller: Caller | None) -> str:
    if caller is None:
        return "unauthenticated"
    return caller.name or "anonymous"  # anonymous: no keys are configured


def _crashed() -> bool:
    return sys.exc_info()[0] is not None and not isinstance(
        sys.exc_info()[1], asyncio.CancelledError
    )
