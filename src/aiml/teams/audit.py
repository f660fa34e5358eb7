"""The audit log: every admin action (keys, teams, aliases, canaries, loads, registering),
appended to ``aiml_audit`` in aiml's database: who (the key's name), what, when, from
where, and how it ended. Nothing updates or deletes a row (append-only by code: no
statement here but INSERT and SELECT)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa

from . import tables

__all__ = ["AuditEntry", "AuditLog"]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    actor: str
    action: str
    target: str
    status: int
    client: str
    detail: Mapping[str, Any] = field(default_factory=dict)
    at: float = 0.0
    id: int | None = None


class AuditLog:
    """Blocking calls (the API runs them on worker threads)."""

    def __init__(self, engine: sa.Engine, *, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self._clock = clock

    def append(self, entry: AuditEntry) -> None:
        values = asdict(entry)
        values.pop("id")
        values["at"] = entry.at or self._clock()
        values["detail"] = dict(entry.detail)
        with self.engine.begin() as db:
            db.execute(tables.audit.insert().values(**values))

    def entries(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        since: float | None = None,
        limit: int = 500,
    ) -> list[AuditEntry]:
        """The newest entries first."""
        a = tables.audit.c
        query = sa.select(tables.audit).order_by(a.id.desc()).limit(limit)
        if actor is not None:
            query = query.where(a.actor == actor)
        if action is not None:
            query = query.where(a.action.startswith(action, autoescape=True))
        if since is not None:
            query = query.where(a.at >= since)
        with self.engine.connect() as db:
            return [AuditEntry(**row) for row in db.execute(query).mappings()]
