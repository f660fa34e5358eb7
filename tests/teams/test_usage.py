"""UsageLedger and UsageStore: counted in memory, flushed by adding, never lost or counted
twice; budgets read as the database's total plus this front's unflushed counts."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections import Counter
from collections.abc import Iterable, Iterator

import pytest
import sqlalchemy as sa

from aiml.teams.database import open_database
from aiml.teams.usage import UsageLedger, UsageRow, UsageStore, day_of, next_day, next_month
from tests.teams.conftest import Clock, until

DAY = "2027-01-15"


class CountingUsage(UsageStore):
    """A UsageStore that counts its calls, and fails the next ``fail`` writes."""

    def __init__(self, engine: sa.Engine) -> None:
        super().__init__(engine)
        self.calls: Counter[str] = Counter()
        self.fail = 0
        #: Set: the next write waits for ``release`` (a flush caught in the middle).
        self.hold: threading.Event | None = None
        self.release = threading.Event()

    def add(self, rows: Iterable[UsageRow]) -> None:
        self.calls["add"] += 1
        if self.fail:
            self.fail -= 1
            raise sa.exc.OperationalError("INSERT", {}, Exception("the database is away"))
        if self.hold is not None:
            self.hold.set()
            self.hold = None
            assert self.release.wait(10)
        super().add(rows)

    def spent(self, column: str, name: str, since_day: str) -> tuple[int, float]:
        self.calls["spent"] += 1
        return super().spent(column, name, since_day)


def row(key: str = "ci-bot", *, day: str = DAY, model: str = "chat", tokens: int = 10) -> UsageRow:
    return UsageRow(
        day=day, key=key, team="ml", model=model, version="3", requests=1,
        errors=0, input_tokens=tokens, output_tokens=2 * tokens, cost=tokens / 100,
    )  # fmt: skip


@pytest.fixture
def store(engine: sa.Engine) -> CountingUsage:
    return CountingUsage(engine)


@pytest.fixture
def other_store(db_url: str, engine: sa.Engine) -> Iterator[CountingUsage]:
    """Another front's store: its own engine on the same database."""
    other = open_database(db_url)
    yield CountingUsage(other)
    other.dispose()


def totals(store: UsageStore) -> dict[tuple[str, str], tuple[int, int, int, int]]:
    return {
        (r.key, r.model): (r.requests, r.errors, r.input_tokens, r.output_tokens)
        for r in store.rows()
    }


async def test_recording_does_no_io(store: CountingUsage, clock: Clock) -> None:
    seen: list[UsageRow] = []
    ledger = UsageLedger(store, clock=clock, on_record=seen.append)
    for _ in range(100):
        ledger.record(row())
    assert store.calls == Counter()
    assert store.rows() == []
    assert len(seen) == 100
    await ledger.flush()
    assert store.calls["add"] == 1
    assert totals(store) == {("ci-bot", "chat"): (100, 0, 1000, 2000)}


async def test_fronts_flushing_one_database_add_up(
    store: CountingUsage, other_store: CountingUsage, clock: Clock
) -> None:
    fronts = [UsageLedger(store, clock=clock), UsageLedger(other_store, clock=clock)]
    for _ in range(3):
        for i in range(50):
            fronts[i % 2].record(row(tokens=i))
            fronts[i % 3 % 2].record(row("other", model=f"m{i % 2}"))
        for front in fronts:
            await front.flush()
    assert totals(store) == {
        ("ci-bot", "chat"): (150, 0, 3 * sum(range(50)), 6 * sum(range(50))),
        ("other", "m0"): (75, 0, 750, 1500),
        ("other", "m1"): (75, 0, 750, 1500),
    }
    [chat] = store.rows(model="chat")
    assert chat.cost == pytest.approx(3 * sum(range(50)) / 100)


async def test_an_empty_flush_writes_nothing(store: CountingUsage, clock: Clock) -> None:
    await UsageLedger(store, clock=clock).flush()
    assert store.rows() == []


async def test_spent_is_the_last_flush_and_this_fronts_counts_since(
    store: CountingUsage, other_store: CountingUsage, clock: Clock
) -> None:
    here, there = UsageLedger(store, clock=clock), UsageLedger(other_store, clock=clock)
    there.record(row(tokens=10))  # 30 tokens, flushed by the other front
    await there.flush()
    here.record(row(tokens=5))  # 15, not flushed
    spent = await here.spent("key", "ci-bot", DAY)  # the first ask reads the database
    assert spent.tokens == 45
    assert spent.cost == pytest.approx(0.15)
    assert store.calls["spent"] == 1
    there.record(row(tokens=100))
    await there.flush()
    for _ in range(5):  # as of this front's last flush: no read per request
        assert (await here.spent("key", "ci-bot", DAY)).tokens == 45
    assert store.calls["spent"] == 1
    here.record(row(tokens=1))
    assert (await here.spent("key", "ci-bot", DAY)).tokens == 48
    await here.flush()  # writes its own and reads the watched totals back
    assert (await here.spent("key", "ci-bot", DAY)).tokens == 30 + 15 + 300 + 3
    assert (await here.spent("team", "ml", DAY)).tokens == 348
    assert (await here.spent("key", "other", DAY)).tokens == 0
    assert (await here.spent("key", "ci-bot", "2027-01-16")).tokens == 0


async def test_spent_counts_from_the_day_it_is_asked_since(
    store: CountingUsage, clock: Clock
) -> None:
    ledger = UsageLedger(store, clock=clock)
    ledger.record(row(day="2027-01-14", tokens=1))
    ledger.record(row(day="2027-01-15", tokens=10))
    await ledger.flush()
    ledger.record(row(day="2026-12-31", tokens=100))
    ledger.record(row(day="2027-01-16", tokens=1000))
    assert (await ledger.spent("key", "ci-bot", "2027-01-15")).tokens == 30 + 3000
    assert (await ledger.spent("key", "ci-bot", "2027-01-01")).tokens == 3 + 30 + 3000


async def test_a_failed_flush_keeps_its_rows_for_the_next(
    store: CountingUsage, clock: Clock
) -> None:
    ledger = UsageLedger(store, clock=clock)
    ledger.record(row(tokens=1))
    ledger.record(row("other"))
    store.fail = 1
    with pytest.raises(sa.exc.OperationalError):
        await ledger.flush()
    assert store.rows() == []
    # Counted still, for the budgets, while they wait.
    assert (await ledger.spent("key", "ci-bot", DAY)).tokens == 3
    ledger.record(row(tokens=2))
    await ledger.flush()
    assert totals(store) == {("ci-bot", "chat"): (2, 0, 3, 6), ("other", "chat"): (1, 0, 10, 20)}
    await ledger.flush()  # nothing twice
    assert totals(store) == {("ci-bot", "chat"): (2, 0, 3, 6), ("other", "chat"): (1, 0, 10, 20)}


async def test_counts_made_during_a_flush_wait_for_the_next(
    store: CountingUsage, clock: Clock
) -> None:
    ledger = UsageLedger(store, clock=clock)
    ledger.record(row(tokens=1))
    store.hold = held = threading.Event()
    flush = asyncio.ensure_future(ledger.flush())
    await asyncio.to_thread(held.wait, 10)
    ledger.record(row(tokens=2))  # while the first is written
    assert (await ledger.spent("key", "ci-bot", DAY)).tokens == 9
    store.release.set()
    await flush
    assert totals(store) == {("ci-bot", "chat"): (1, 0, 1, 2)}
    await ledger.flush()
    assert totals(store) == {("ci-bot", "chat"): (2, 0, 3, 6)}


async def test_aclose_flushes(store: CountingUsage, clock: Clock) -> None:
    ledger = UsageLedger(store, flush_s=3600, clock=clock)
    ledger.start()
    ledger.record(row())
    await ledger.aclose()
    assert totals(store) == {("ci-bot", "chat"): (1, 0, 10, 20)}


async def test_closing_during_a_flush_counts_nothing_twice(
    store: CountingUsage, clock: Clock
) -> None:
    """SIGTERM while the follower's flush is writing: the write goes on in its thread, so
    the rows it holds must not be written again by the last flush."""
    ledger = UsageLedger(store, flush_s=0, clock=clock)
    ledger.record(row())
    store.hold = held = threading.Event()
    ledger.start()
    await asyncio.to_thread(held.wait, 10)  # the follower's flush is writing
    closing = asyncio.ensure_future(ledger.aclose())
    await asyncio.sleep(0)  # let aclose cancel the follower (not a wait for a condition)
    store.release.set()
    await closing
    assert totals(store) == {("ci-bot", "chat"): (1, 0, 10, 20)}


async def test_the_follower_keeps_counts_through_a_failed_flush(
    store: CountingUsage, clock: Clock
) -> None:
    ledger = UsageLedger(store, flush_s=0, clock=clock)
    store.fail = 1
    ledger.record(row())
    ledger.start()
    try:
        await until(store.rows)
    finally:
        await ledger.aclose()
    assert store.calls["add"] >= 2
    assert totals(store) == {("ci-bot", "chat"): (1, 0, 10, 20)}


def test_rows_filters(store: CountingUsage) -> None:
    store.add([row(day="2027-01-14"), row(day="2027-01-15", model="embed"), row("other")])
    assert [(r.day, r.key, r.model) for r in store.rows()] == [
        ("2027-01-14", "ci-bot", "chat"),
        ("2027-01-15", "ci-bot", "embed"),
        ("2027-01-15", "other", "chat"),
    ]
    assert len(store.rows(key="ci-bot")) == 2
    assert len(store.rows(team="ml")) == 3
    assert len(store.rows(team="nobody")) == 0
    assert [r.model for r in store.rows(model="embed")] == ["embed"]
    assert len(store.rows(since="2027-01-15")) == 2
    assert len(store.rows(until="2027-01-14")) == 1
    assert len(store.rows(limit=1)) == 1


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.UTC).timestamp()


@pytest.mark.parametrize(
    ("at", "day", "tomorrow", "month"),
    [
        (utc(2027, 1, 15, 8), "2027-01-15", utc(2027, 1, 16), utc(2027, 2, 1)),
        (utc(2027, 1, 31, 23, 59, 59), "2027-01-31", utc(2027, 2, 1), utc(2027, 2, 1)),
        (utc(2027, 2, 1), "2027-02-01", utc(2027, 2, 2), utc(2027, 3, 1)),
        (utc(2028, 2, 28, 12), "2028-02-28", utc(2028, 2, 29), utc(2028, 3, 1)),
        (utc(2027, 2, 28, 12), "2027-02-28", utc(2027, 3, 1), utc(2027, 3, 1)),
        (utc(2026, 12, 31, 23, 59, 59) + 0.5, "2026-12-31", utc(2027, 1, 1), utc(2027, 1, 1)),
        (utc(2026, 12, 1), "2026-12-01", utc(2026, 12, 2), utc(2027, 1, 1)),
    ],
)
def test_days_and_months_are_utc(at: float, day: str, tomorrow: float, month: float) -> None:
    assert day_of(at) == day
    assert next_day(at) == tomorrow
    assert next_month(at) == month
    assert day_of(next_day(at) - 0.001) == day
