"""Usage per key, model, version and UTC day: counted in memory, flushed off the path.

Each answered request is added to the front's pending rows (a dict update, no I/O). Every
``flush_s`` the pending rows are added to ``aiml_usage`` in one transaction (an upsert
that adds, so fronts sharing the database never overwrite each other) and the budgets'
totals are read back. Shutdown flushes once more after the drain, so nothing answered is
lost on SIGTERM; a crash loses at most the last ``flush_s`` of counts.

Budgets are checked against the database's totals as of the last flush plus what this
front counted since: one front stops a key within one request of its budget; fronts
together overshoot by at most what the others counted in one flush interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from . import tables

__all__ = ["UsageLedger", "UsageRow", "UsageStore", "day_of", "next_day", "next_month"]

log = logging.getLogger("aiml.usage")


# Asked on every request with a key (3-4 us each through datetime): per UTC day number
# (epoch seconds count 86,400 a day, so a day starts at a multiple of it), computed once.
_DAY_S = 86_400


def day_of(at: float) -> str:
    return _day_name(int(at // _DAY_S))


def next_day(at: float) -> float:
    return float((int(at // _DAY_S) + 1) * _DAY_S)


def next_month(at: float) -> float:
    return _month_end(int(at // _DAY_S))


@functools.lru_cache(maxsize=8)
def _day_name(day: int) -> str:
    return dt.datetime.fromtimestamp(day * _DAY_S, dt.UTC).strftime("%Y-%m-%d")


@functools.lru_cache(maxsize=8)
def _month_end(day: int) -> float:
    date = dt.datetime.fromtimestamp(day * _DAY_S, dt.UTC).date()
    year, month = (date.year + 1, 1) if date.month == 12 else (date.year, date.month + 1)
    return dt.datetime(year, month, 1, tzinfo=dt.UTC).timestamp()


@dataclass
class UsageRow:
    day: str
    key: str
    team: str
    model: str
    version: str
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0

    def add(self, other: UsageRow) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cost += other.cost


_COUNTS = ("requests", "errors", "input_tokens", "output_tokens", "cost")


class UsageStore:
    """``aiml_usage`` (blocking; called on worker threads)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._insert = (postgresql if engine.dialect.name == "postgresql" else sqlite).insert

    def add(self, rows: Iterable[UsageRow]) -> None:
        rows = list(rows)
        if not rows:
            return
        u = tables.usage.c
        statement = self._insert(tables.usage)
        statement = statement.on_conflict_do_update(
            index_elements=["day", "key", "model", "version"],
            set_={name: u[name] + statement.excluded[name] for name in _COUNTS},
        )
        with self.engine.begin() as db:
            db.execute(statement, [asdict(row) for row in rows])

    def spent(self, column: str, name: str, since_day: str) -> tuple[int, float]:
        """Tokens and cost of a key (``column="key"``) or team since a day (inclusive)."""
        u = tables.usage.c
        query = sa.select(
            sa.func.coalesce(sa.func.sum(u.input_tokens + u.output_tokens), 0),
            sa.func.coalesce(sa.func.sum(u.cost), 0.0),
        ).where((u[column] == name) & (u.day >= since_day))
        with self.engine.connect() as db:
            tokens, cost = db.execute(query).one()
        return int(tokens), float(cost)

    def rows(
        self,
        *,
        key: str | None = None,
        team: str | None = None,
        model: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int = 10_000,
    ) -> list[UsageRow]:
        u = tables.usage.c
        query = sa.select(tables.usage).order_by(u.day, u.key, u.model, u.version).limit(limit)
        for column, value in (("key", key), ("team", team), ("model", model)):
            if value is not None:
                query = query.where(u[column] == value)
        if since is not None:
            query = query.where(u.day >= since)
        if until is not None:
            query = query.where(u.day <= until)
        with self.engine.connect() as db:
            return [UsageRow(**row) for row in db.execute(query).mappings()]


_Unwritten = dict[tuple[str, str], dict[str, list[float]]]


def _add_spent(unwritten: _Unwritten, row: UsageRow) -> None:
    for subject in (("key", row.key), ("team", row.team)):
        if subject[1]:
            day = unwritten.setdefault(subject, {}).setdefault(row.day, [0.0, 0.0])
            day[0] += row.input_tokens + row.output_tokens
            day[1] += row.cost


@dataclass(frozen=True, slots=True)
class Spent:
    tokens: int = 0
    cost: float = 0.0


class UsageLedger:
    def __init__(
        self,
        store: UsageStore,
        *,
        flush_s: float = 1.0,
        clock: Callable[[], float] = time.time,
        on_record: Callable[[UsageRow], None] | None = None,
    ) -> None:
        self.store = store
        self.flush_s = flush_s
        self._clock = clock
        self._on_record = on_record
        self._pending: dict[tuple[str, str, str, str], UsageRow] = {}
        self._flushing: list[UsageRow] = []
        #: Budget totals read at the last flush: (subject, period start day) -> spent.
        self._flushed: dict[tuple[str, str], Spent] = {}
        self._watched: set[tuple[str, str, str]] = set()  # (column, name, since day)
        #: What the last flush's totals lack: counted here, pending or being written, per
        #: (column, name) and day: [tokens, cost] (a budget check reads a few entries).
        self._pending_spent: _Unwritten = {}
        self._flushing_spent: _Unwritten = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def record(self, row: UsageRow) -> None:
        """Count one request's usage (no I/O)."""
        self._pend(row)
        if self._on_record is not None:
            self._on_record(row)

    async def spent(self, column: str, name: str, since_day: str) -> Spent:
        """What a key or team spent since a day: the database's total at the last flush
        (read now the first time it is asked) and what this front counted since."""
        watch = (column, name, since_day)
        if watch not in self._watched:
            tokens, cost = await asyncio.to_thread(self.store.spent, *watch)
            self._flushed[(f"{column}:{name}", since_day)] = Spent(tokens, cost)
            self._watched.add(watch)
        base = self._flushed.get((f"{column}:{name}", since_day), Spent())
        total, money = float(base.tokens), base.cost
        for unwritten in (self._flushing_spent, self._pending_spent):
            for day, (day_tokens, day_cost) in unwritten.get((column, name), {}).items():
                if day >= since_day:
                    total += day_tokens
                    money += day_cost
        return Spent(int(total), money)

    async def flush(self) -> None:
        """Write what is pending, then read the watched budgets' totals back."""
        async with self._lock:
            self._flushing, self._pending = list(self._pending.values()), {}
            self._flushing_spent, self._pending_spent = self._pending_spent, {}
            try:
                await asyncio.to_thread(self.store.add, self._flushing)
            except BaseException:  # kept for the next flush
                for row in self._flushing:
                    self._pend(row)
                self._flushing, self._flushing_spent = [], {}
                raise
            # Only today's and this month's totals are asked for (older watches go).
            today = day_of(self._clock())
            self._watched = {w for w in self._watched if w[2] in (today, today[:8] + "01")}
            totals = await asyncio.to_thread(self._totals, list(self._watched))
            self._flushed.update(totals)
            self._flushing, self._flushing_spent = [], {}

    def _pend(self, row: UsageRow) -> None:
        """Add ``row`` to what the next flush writes (a new count, or one a failed flush
        gives back)."""
        slot = (row.day, row.key, row.model, row.version)
        pending = self._pending.get(slot)
        if pending is None:
            self._pending[slot] = row
        else:
            pending.add(row)
        _add_spent(self._pending_spent, row)

    def _totals(self, watched: list[tuple[str, str, str]]) -> dict[tuple[str, str], Spent]:
        return {(f"{c}:{n}", d): Spent(*self.store.spent(c, n, d)) for c, n, d in watched}

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._follow())

    async def aclose(self) -> None:
        """Stop, and flush what was counted (after the drain: nothing answered is lost)."""
        if self._task is not None:
            # Not in the middle of the follower's flush: its write would go on in its thread
            # after the cancel, and the rows it put back be written twice below.
            async with self._lock:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            try:
                await self.flush()
            except Exception as exc:  # the database is away: the counts wait in memory
                log.warning("usage not flushed (kept for the next flush): %s", exc)
