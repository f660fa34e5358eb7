"""Concurrent requests per key or team, counted across every front.

Each front holds slots of a subject in one row of ``aiml_slots`` (its ``held``); a front
takes a slot in one transaction that sums every front's row seen in the last ``stale_s``,
so **the fronts together never run more than the limit**. A slot is given back as its
request ends, off the request's path. For limits of 16 or more a front keeps up to
``limit // 16`` slots it freed for its next requests (no database call for them): the
others may then be refused while up to that many slots sit unused on this front. A front
that dies holds its slots until its row is ``stale_s`` old; a live one's heartbeat keeps
its rows fresh, however long its requests run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from . import tables

__all__ = ["ConcurrencySlots", "SlotStore"]

log = logging.getLogger("aiml.keys")
#: A front keeps at most ``limit // _SPARE_DIVISOR`` freed slots (none below 16).
_SPARE_DIVISOR = 16


class SlotStore:
    """The shared rows (blocking; called on worker threads)."""

    def __init__(self, engine: sa.Engine, *, stale_s: float = 30.0) -> None:
        self.engine = engine
        self.stale_s = stale_s
        self._postgres = engine.dialect.name == "postgresql"
        self._insert = (postgresql if self._postgres else sqlite).insert

    def acquire(self, subject: str, front: str, limit: int, now: float) -> bool:
        """One more slot for ``front``, if every live front together holds fewer than
        ``limit``."""
        s = tables.slots.c
        with self.engine.begin() as db:
            if self._postgres:  # one subject's acquisitions one at a time
                db.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:s))"), {"s": subject})
            # sqlite: the insert takes the database's write lock for the transaction.
            db.execute(
                self._insert(tables.slots)
                .values(subject=subject, front=front, held=0, seen_at=now)
                .on_conflict_do_nothing()
            )
            held = db.execute(
                sa.select(sa.func.coalesce(sa.func.sum(s.held), 0)).where(
                    (s.subject == subject)
                    & ((s.front == front) | (s.seen_at >= now - self.stale_s))
                )
            ).scalar_one()
            if held >= limit:
                return False
            db.execute(
                tables.slots.update()
                .where((s.subject == subject) & (s.front == front))
                .values(held=s.held + 1, seen_at=now)
            )
        return True

    def release(self, subject: str, front: str, count: int, now: float) -> None:
        s = tables.slots.c
        with self.engine.begin() as db:
            db.execute(
                tables.slots.update()
                .where((s.subject == subject) & (s.front == front))
                .values(held=sa.func.max(s.held - count, 0) if not self._postgres
                        else sa.func.greatest(s.held - count, 0), seen_at=now)
            )  # fmt: skip

    def heartbeat(self, front: str, now: float) -> None:
        """This front is alive: its rows count (and old rows of dead fronts go)."""
        s = tables.slots.c
        with self.engine.begin() as db:
            db.execute(tables.slots.update().where(s.front == front).values(seen_at=now))
            db.execute(tables.slots.delete().where(s.seen_at < now - 10 * self.stale_s))


@dataclass
class _Subject:
    held: int = 0  # slots this front holds in the database
    busy: int = 0  # of which in use by a request
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ConcurrencySlots:
    """A front's side: take a slot before a request, give it back after."""

    def __init__(self, store: SlotStore, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.front = uuid.uuid4().hex
        self._clock = clock
        self._subjects: dict[str, _Subject] = {}
        #: Slots on their way back, per subject: a new acquisition waits for them.
        self._returns: dict[str, set[asyncio.Future[None]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def acquire(self, subject: str, limit: int) -> bool:
        state = self._subjects.setdefault(subject, _Subject())
        if state.busy < state.held and state.busy < limit:  # a slot kept from a request
            state.busy += 1
            return True
        async with state.lock:
            returning = self._returns.get(subject)
            if returning:  # this front's own freed slots must not count against it
                await asyncio.gather(*returning, return_exceptions=True)
            granted = await asyncio.to_thread(
                self.store.acquire, subject, self.front, limit, self._clock()
            )
            if granted:
                state.held += 1
                state.busy += 1
            return granted

    def release(self, subject: str, limit: int) -> None:
        """The request ended: its slot back to the database (off the path), or kept."""
        state = self._subjects[subject]
        state.busy -= 1
        spare = state.held - state.busy
        if spare <= limit // _SPARE_DIVISOR:
            return
        state.held -= spare
        back = asyncio.ensure_future(
            asyncio.to_thread(self.store.release, subject, self.front, spare, self._clock())
        )
        returning = self._returns.setdefault(subject, set())
        returning.add(back)
        back.add_done_callback(returning.discard)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._beat())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for subject, state in self._subjects.items():  # what this front still holds
            if state.held:
                await asyncio.to_thread(
                    self.store.release, subject, self.front, state.held, self._clock()
                )
                state.held = state.busy = 0
        returning = [back for pending in self._returns.values() for back in pending]
        if returning:
            await asyncio.gather(*returning, return_exceptions=True)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.store.stale_s / 3)
            if any(state.held for state in self._subjects.values()):
                try:
                    await asyncio.to_thread(self.store.heartbeat, self.front, self._clock())
                except Exception as exc:  # the database is away: the slots age meanwhile
                    log.warning("concurrency slots' heartbeat failed: %s", exc)
