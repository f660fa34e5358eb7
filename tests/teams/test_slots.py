"""ConcurrencySlots and SlotStore: requests at once per subject, counted across fronts."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from aiml.teams.database import open_database
from aiml.teams.slots import ConcurrencySlots, SlotStore
from tests.teams.conftest import Clock, Postgres, until

SUBJECT = "key:ci-bot"


async def test_two_fronts_together_never_run_more_than_the_limit(
    engine: sa.Engine, clock: Clock
) -> None:
    store = SlotStore(engine)
    a, b = ConcurrencySlots(store, clock=clock), ConcurrencySlots(store, clock=clock)
    assert await a.acquire(SUBJECT, 2)
    assert await b.acquire(SUBJECT, 2)
    assert not await a.acquire(SUBJECT, 2)
    assert not await b.acquire(SUBJECT, 2)
    a.release(SUBJECT, 2)  # a small limit: given back at once (off the path)
    await until(lambda: not any(a._returns.values()))  # given back (another front)
    assert await b.acquire(SUBJECT, 2)
    assert not await a.acquire(SUBJECT, 2)


async def test_a_large_limit_keeps_freed_slots_for_the_next_requests_without_asking(
    engine: sa.Engine, clock: Clock
) -> None:
    calls: list[str] = []

    class Counting(SlotStore):
        def acquire(self, *args: object) -> bool:
            calls.append("acquire")
            return super().acquire(*args)  # type: ignore[arg-type]

    front = ConcurrencySlots(Counting(engine), clock=clock)
    for _ in range(100):  # one request at a time: one slot, taken once and kept
        assert await front.acquire(SUBJECT, 32)
        front.release(SUBJECT, 32)
    assert calls == ["acquire"]
    other = ConcurrencySlots(SlotStore(engine), clock=clock)
    taken = [await other.acquire(SUBJECT, 32) for _ in range(32)]
    assert taken.count(True) == 31  # the kept slot counts: at most limit // 16 sit unused


async def test_a_dead_fronts_slots_count_until_its_row_is_stale_a_live_ones_while_it_beats(
    engine: sa.Engine, clock: Clock
) -> None:
    store = SlotStore(engine, stale_s=30)
    dead, live = ConcurrencySlots(store, clock=clock), ConcurrencySlots(store, clock=clock)
    assert await dead.acquire(SUBJECT, 2)
    assert await live.acquire(SUBJECT, 2)  # a long request: its front beats
    other = ConcurrencySlots(store, clock=clock)
    assert not await other.acquire(SUBJECT, 2)
    clock.advance(31)
    store.heartbeat(live.front, clock())
    assert await other.acquire(SUBJECT, 2)  # the dead front's slot no longer counts
    assert not await other.acquire(SUBJECT, 2)  # the live one's still does


async def test_closing_gives_back_what_the_front_holds(engine: sa.Engine, clock: Clock) -> None:
    store = SlotStore(engine)
    front, other = ConcurrencySlots(store, clock=clock), ConcurrencySlots(store, clock=clock)
    for _ in range(3):
        assert await front.acquire(SUBJECT, 64)
    for _ in range(3):
        front.release(SUBJECT, 64)  # kept: 3 <= 64 // 16
    await front.aclose()
    assert all([await other.acquire(SUBJECT, 3) for _ in range(3)])


@pytest.mark.slow
def test_postgres_threads_on_two_engines_hold_at_most_the_limit(postgres: Postgres) -> None:
    url = postgres.database()
    engines = [open_database(url), open_database(url)]
    stores = [SlotStore(e) for e in engines]
    try:
        with ThreadPoolExecutor(16) as pool:
            granted = list(pool.map(
                lambda n: stores[n % 2].acquire(SUBJECT, f"front-{n % 4}", 10, 1000.0),
                range(64),
            ))  # fmt: skip
        assert granted.count(True) == 10
    finally:
        for e in engines:
            e.dispose()
