"""Per-minute limits shared by every front: leases taken from one counter per minute.

Each subject (a key, a team) has one row per UTC minute in ``aiml_rate_windows``: how much
of its allowance the fronts have taken. A front takes a *lease* of a small share of it
(``limit // 50``, at least 1) in one transaction and spends it locally, so most requests
cost no database call; when its lease is spent it takes another. The counter never
passes the limit, so **requests per minute never overshoot**; the price is that up to
``limit // 50 - 1`` requests a front leased but did not use are lost to the others at the
end of a minute (2% per front). Tokens are known only after the answer: a request needs
one token left in the lease to start, and what it used is charged after; **tokens per
minute overshoot by at most the tokens of the requests in flight, and of other fronts'
charges not yet written, when the minute's allowance ran out**. Windows are fixed UTC
minutes (``x-ratelimit-reset-*``: the seconds left in the minute): a client may spend two
allowances in the two seconds around a minute's turn, as with any fixed window.

Chosen by measurement over a counter call per request (``bench/key_counters.py``): one
counter call costs, at p50, 0.49 ms on sqlite and 1.1 ms on PostgreSQL (through a worker
thread, as a front calls it) and 0.95 ms to a Ray actor: 5-10 times the 0.1 ms a request
may spend on its key, and 16 in flight get through 640-1,350 calls a second. A lease pays
that once per 2% of the limit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from . import tables

__all__ = ["REQUESTS", "TOKENS", "RateLimiter", "Standing", "WindowStore"]

REQUESTS = "requests"
TOKENS = "tokens"
_WINDOW_S = 60
#: A lease is this share of the limit (at least 1).
_LEASE_DIVISOR = 50


class WindowStore:
    """The shared counters (blocking; called on worker threads)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
        self._insert = dialect.insert

    def lease(self, subject: str, kind: str, window: int, want: int, limit: int) -> tuple[int, int]:
        """Take up to ``want`` of the window's allowance: (granted, used after)."""
        w = tables.windows.c
        where = (w.subject == subject) & (w.kind == kind) & (w.window == window)
        with self.engine.begin() as db:
            # The insert takes sqlite's write lock first; PostgreSQL locks the row below.
            db.execute(
                self._insert(tables.windows)
                .values(subject=subject, kind=kind, window=window, used=0)
                .on_conflict_do_nothing()
            )
            used = db.execute(sa.select(w.used).where(where).with_for_update()).scalar_one()
            granted = max(0, min(want, limit - used))
            if granted:
                db.execute(tables.windows.update().where(where).values(used=used + granted))
            if window % 10 == 0:  # now and then, forget minutes long gone
                db.execute(tables.windows.delete().where(w.window < window - 2))
        return granted, used + granted

    def charge(self, subject: str, kind: str, window: int, amount: int) -> None:
        """Add what was used beyond a lease (it may pass the limit)."""
        statement = self._insert(tables.windows).values(
            subject=subject, kind=kind, window=window, used=amount
        )
        statement = statement.on_conflict_do_update(
            index_elements=["subject", "kind", "window"],
            set_={"used": tables.windows.c.used + amount},
        )
        with self.engine.begin() as db:
            db.execute(statement)


@dataclass(frozen=True, slots=True)
class Standing:
    """Where a subject stands in the current minute (the ``x-ratelimit-*`` headers)."""

    limit: int
    remaining: int
    reset_s: float


@dataclass
class _Lease:
    window: int = -1
    left: int = 0
    #: The window's counter as last seen (every front's leases, ours included).
    used: int = 0
    lock: asyncio.Lock | None = None
    #: The limit at which the minute's allowance was found spent (a higher one asks again).
    spent_at: int | None = None


class RateLimiter:
    def __init__(self, store: WindowStore, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._clock = clock
        self._leases: dict[tuple[str, str], _Lease] = {}
        #: Charges on their way to the shared counter, per subject: a new lease waits for
        #: them, so the counter it reads includes them.
        self._charges: dict[str, set[asyncio.Future[None]]] = {}

    async def take(self, subject: str, kind: str, limit: int) -> Standing | None:
        """Take one request (or, for tokens, make sure one is left) of the minute's
        allowance; ``None``: none is left (refuse the request)."""
        now = self._clock()
        window = int(now // _WINDOW_S)
        lease = self._lease(subject, kind, window)
        if lease.left <= 0 and lease.spent_at is not None and limit <= lease.spent_at:
            return None  # the counter never goes down within its minute: no need to ask
        if lease.left <= 0:
            assert lease.lock is not None
            async with lease.lock:  # one lease at a time per subject
                lease = self._lease(subject, kind, window)
                if lease.left <= 0:
                    charges = self._charges.get(subject)
                    if charges:
                        await asyncio.gather(*charges, return_exceptions=True)
                    want = max(1, limit // _LEASE_DIVISOR)
                    granted, used = await asyncio.to_thread(
                        self.store.lease, subject, kind, window, want, limit
                    )
                    lease.left += granted
                    lease.used = used
                    if not granted:
                        lease.spent_at = limit
            if lease.left <= 0:
                return None
        if kind == REQUESTS:
            lease.left -= 1
        reset_s = (window + 1) * _WINDOW_S - now
        return Standing(limit, max(0, limit - lease.used + lease.left), reset_s)

    def charge(self, subject: str, amount: int) -> None:
        """Tokens a finished request used: out of the lease, and past it onto the shared
        counter (off the request's path)."""
        window = int(self._clock() // _WINDOW_S)
        lease = self._lease(subject, TOKENS, window)
        lease.left -= amount
        if lease.left < 0:
            debt, lease.left = -lease.left, 0
            lease.used += debt
            charge = asyncio.ensure_future(
                asyncio.to_thread(self.store.charge, subject, TOKENS, window, debt)
            )
            charges = self._charges.setdefault(subject, set())
            charges.add(charge)
            charge.add_done_callback(charges.discard)

    async def aclose(self) -> None:
        """Wait for the charges on their way (at shutdown)."""
        charges = [c for pending in self._charges.values() for c in pending]
        if charges:
            await asyncio.gather(*charges, return_exceptions=True)

    def reset_in(self) -> float:
        """Seconds left in the current minute."""
        now = self._clock()
        return (int(now // _WINDOW_S) + 1) * _WINDOW_S - now

    def _lease(self, subject: str, kind: str, window: int) -> _Lease:
        lease = self._leases.get((subject, kind))
        if lease is None or lease.window != window:  # a new minute: nothing leased yet
            lock = lease.lock if lease is not None else asyncio.Lock()
            lease = _Lease(window=window, lock=lock)
            self._leases[(subject, kind)] = lease
        return lease
