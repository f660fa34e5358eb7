"""Everything of teams a front runs, built once (``open_teams``) and passed in."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import sqlalchemy as sa

from .audit import AuditLog
from .database import open_database
from .directory import KeyDirectory
from .key_store import KeyStore
from .keys import ApiKey, Team
from .rate_limits import RateLimiter, WindowStore
from .slots import ConcurrencySlots, SlotStore
from .usage import UsageLedger, UsageRow, UsageStore

__all__ = ["Teams", "open_teams"]


@dataclass
class Teams:
    engine: sa.Engine
    keys: KeyStore
    directory: KeyDirectory
    limiter: RateLimiter
    slots: ConcurrencySlots
    usage: UsageLedger
    usage_store: UsageStore
    audit: AuditLog
    #: Called after a change of keys made here (cluster mode: tells the other fronts).
    on_change: Callable[[], None] | None = None

    def changed(self, key: ApiKey | None = None, team: Team | None = None) -> None:
        """Keys or teams changed through this front (``key``, ``team``: as they are now):
        in force here at once, read again here and told to the other fronts."""
        if key is not None:
            self.directory.put(key)
        if team is not None:
            self.directory.put_team(team)
        self.directory.changed()
        if self.on_change is not None:
            self.on_change()

    async def open(self) -> None:
        """Read the keys before the first request (fail closed: a front that cannot read
        them does not start), then keep up with them and flush usage."""
        await self.directory.refresh()
        self.directory.start()
        self.usage.start()
        self.slots.start()

    async def aclose(self) -> None:
        await self.directory.aclose()
        await self.limiter.aclose()
        await self.slots.aclose()
        await self.usage.aclose()  # after the drain: every answered request is counted
        await asyncio.to_thread(self.engine.dispose)


def open_teams(
    url: str,
    *,
    environment: Iterable[ApiKey] = (),
    refresh_s: float = 1.0,
    flush_s: float = 1.0,
    on_record: Callable[[UsageRow], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> Teams:
    """Open (and migrate) the database and build the parts on it (blocking)."""
    engine = open_database(url)
    keys = KeyStore(engine, clock=clock)
    usage_store = UsageStore(engine)
    return Teams(
        engine=engine,
        keys=keys,
        directory=KeyDirectory(keys, environment, refresh_s=refresh_s, clock=clock),
        limiter=RateLimiter(WindowStore(engine), clock=clock),
        slots=ConcurrencySlots(SlotStore(engine), clock=clock),
        usage=UsageLedger(usage_store, flush_s=flush_s, clock=clock, on_record=on_record),
        usage_store=usage_store,
        audit=AuditLog(engine, clock=clock),
    )
