"""RateLimiter and WindowStore: per-minute limits shared by fronts through leases on one
counter; requests never overshoot, tokens by at most what was in flight."""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa

from aiml.teams import tables
from aiml.teams.database import open_database
from aiml.teams.rate_limits import REQUESTS, TOKENS, RateLimiter, Standing, WindowStore
from tests.teams.conftest import START, Clock, Postgres

SUBJECT = "key:ci-bot"
WINDOW = int(START // 60)


class CountingWindows(WindowStore):
    def __init__(self, engine: sa.Engine) -> None:
        super().__init__(engine)
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def lease(self, *args: Any) -> tuple[int, int]:
        with self._lock:
            self.calls["lease"] += 1
        return super().lease(*args)

    def charge(self, *args: Any) -> None:
        with self._lock:
            self.calls["charge"] += 1
        super().charge(*args)


@pytest.fixture
def windows(engine: sa.Engine) -> CountingWindows:
    return CountingWindows(engine)


def counter(engine: sa.Engine, kind: str = REQUESTS, window: int = WINDOW) -> int | None:
    w = tables.windows.c
    query = sa.select(w.used).where(
        (w.subject == SUBJECT) & (w.kind == kind) & (w.window == window)
    )
    with engine.connect() as db:
        return db.execute(query).scalar_one_or_none()


async def test_two_fronts_admit_exactly_the_limit_then_the_next_minute_starts_over(
    windows: CountingWindows, engine: sa.Engine, clock: Clock
) -> None:
    fronts = [RateLimiter(windows, clock=clock), RateLimiter(windows, clock=clock)]
    for minute in range(2):
        admitted = [0, 0]
        for i in range(200):
            clock.advance(0.25)  # 200 takes within the minute
            if await fronts[i % 2].take(SUBJECT, REQUESTS, 60) is not None:
                admitted[i % 2] += 1
        assert sum(admitted) == 60, minute
        assert admitted == [30, 30]  # one at a time each (a lease of 60 // 50 = 1)
        assert counter(engine, window=WINDOW + minute) == 60
        clock.now = START + 60 * (minute + 1)


async def test_concurrent_takes_on_two_fronts_never_pass_the_limit(
    windows: CountingWindows, clock: Clock
) -> None:
    fronts = [RateLimiter(windows, clock=clock), RateLimiter(windows, clock=clock)]
    for limit in (60, 500):
        subject = f"key:{limit}"
        taken = await asyncio.gather(
            *(fronts[i % 2].take(subject, REQUESTS, limit) for i in range(limit + 140))
        )
        assert sum(t is not None for t in taken) == limit


async def test_standing_counts_down_to_the_minutes_end(
    windows: CountingWindows, clock: Clock
) -> None:
    limiter = RateLimiter(windows, clock=clock)
    clock.advance(15)
    assert await limiter.take(SUBJECT, REQUESTS, 3) == Standing(3, 2, 45.0)
    assert await limiter.take(SUBJECT, REQUESTS, 3) == Standing(3, 1, 45.0)
    clock.advance(5)
    assert await limiter.take(SUBJECT, REQUESTS, 3) == Standing(3, 0, 40.0)
    assert await limiter.take(SUBJECT, REQUESTS, 3) is None
    assert limiter.reset_in() == 40.0


async def test_a_lease_is_a_fiftieth_of_the_limit(windows: CountingWindows, clock: Clock) -> None:
    fronts = [RateLimiter(windows, clock=clock), RateLimiter(windows, clock=clock)]
    for i in range(5000):
        assert await fronts[i % 2].take(SUBJECT, REQUESTS, 5000) is not None
    assert windows.calls["lease"] == 50  # 100 requests per database call
    assert await fronts[0].take(SUBJECT, REQUESTS, 5000) is None
    assert await fronts[1].take(SUBJECT, REQUESTS, 5000) is None


async def test_what_one_front_leased_is_not_the_others(
    windows: CountingWindows, clock: Clock
) -> None:
    a, b = RateLimiter(windows, clock=clock), RateLimiter(windows, clock=clock)
    assert await a.take(SUBJECT, REQUESTS, 5000) is not None  # leases 100, spends 1
    admitted_b = 0
    while await b.take(SUBJECT, REQUESTS, 5000) is not None:
        admitted_b += 1
    assert admitted_b == 4900
    admitted_a = 1
    while await a.take(SUBJECT, REQUESTS, 5000) is not None:
        admitted_a += 1
    assert admitted_a + admitted_b == 5000


async def test_tokens_a_take_needs_one_and_a_charge_passes_the_lease_to_the_counter(
    windows: CountingWindows, engine: sa.Engine, clock: Clock
) -> None:
    a, b = RateLimiter(windows, clock=clock), RateLimiter(windows, clock=clock)
    assert await a.take(SUBJECT, TOKENS, 100) == Standing(100, 100, 60.0)  # leases 2
    assert await a.take(SUBJECT, TOKENS, 100) is not None  # takes spend no token
    assert counter(engine, TOKENS) == 2
    a.charge(SUBJECT, 1)  # within the lease: no database call
    await a.aclose()
    assert windows.calls["charge"] == 0
    a.charge(SUBJECT, 150)  # 1 left in the lease, 149 past it
    await a.aclose()
    assert windows.calls["charge"] == 1
    assert counter(engine, TOKENS) == 151
    assert await b.take(SUBJECT, TOKENS, 100) is None  # the other front sees none left
    assert await a.take(SUBJECT, TOKENS, 100) is None
    clock.advance(60)
    assert await b.take(SUBJECT, TOKENS, 100) is not None  # a new minute


class PendingCharges(CountingWindows):
    """Notes, at each lease, how many charges the fronts made have not reached the counter."""

    def __init__(self, engine: sa.Engine) -> None:
        super().__init__(engine)
        self.issued = 0
        self.most_pending = 0

    def lease(self, *args: Any) -> tuple[int, int]:
        with self._lock:
            self.most_pending = max(self.most_pending, self.issued - self.calls["charge"])
        return super().lease(*args)


@pytest.mark.parametrize("landed", [True, False], ids=["charges-landed", "charges-on-the-way"])
async def test_tokens_overshoot_by_at_most_what_was_in_flight(
    engine: sa.Engine, clock: Clock, landed: bool
) -> None:
    """Two fronts, each with up to 3 requests of 70 tokens in flight, against 1000 tokens a
    minute (leases of 20): admitted until the counter passes the limit, and past it by at
    most the requests in flight, and the charges not yet in the counter when a front leased
    (none when each charge lands before the next step; the others, on their way, are like
    requests in flight: their tokens are not in the counter yet)."""
    limit, tokens, in_flight = 1000, 70, 3
    for seed in range(20):
        windows = PendingCharges(engine)
        subject = f"key:{seed}-{landed}"
        fronts = [RateLimiter(windows, clock=clock), RateLimiter(windows, clock=clock)]
        running = [0, 0]
        used = 0
        refused = [False, False]
        rng = random.Random(seed)
        while not all(refused) or any(running):
            front = rng.randrange(2)
            full = refused[front] or running[front] == in_flight
            if running[front] and (full or rng.random() < 0.5):
                running[front] -= 1
                fronts[front].charge(subject, tokens)
                windows.issued += 1
                used += tokens
                if landed:
                    await fronts[front].aclose()
            elif not full:
                if await fronts[front].take(subject, TOKENS, limit) is None:
                    refused[front] = True
                else:
                    running[front] += 1
        for limiter in fronts:
            await limiter.aclose()
        w = tables.windows.c
        with engine.connect() as db:
            shared = db.execute(
                sa.select(w.used).where((w.subject == subject) & (w.kind == TOKENS))
            ).scalar_one()
        assert used == shared, seed  # every token charged, nothing lost in leases
        if landed:
            assert windows.most_pending == 0
        bound = limit + (2 * in_flight + windows.most_pending) * tokens
        assert limit <= used <= bound, (seed, windows.most_pending)


async def test_charges_in_a_new_minute_go_to_it(
    windows: CountingWindows, engine: sa.Engine, clock: Clock
) -> None:
    limiter = RateLimiter(windows, clock=clock)
    assert await limiter.take(SUBJECT, TOKENS, 100) is not None
    clock.advance(60)  # the request ends in the next minute
    limiter.charge(SUBJECT, 30)
    await limiter.aclose()
    assert counter(engine, TOKENS) == 2
    assert counter(engine, TOKENS, WINDOW + 1) == 30


def test_minutes_long_gone_are_forgotten(windows: CountingWindows, engine: sa.Engine) -> None:
    for window in range(WINDOW - 5, WINDOW):
        windows.lease(SUBJECT, REQUESTS, window, 1, 10)
    windows.lease(SUBJECT, REQUESTS, WINDOW, 1, 10)  # a multiple of ten: cleans up
    with engine.connect() as db:
        kept = db.execute(sa.select(tables.windows.c.window).order_by("window")).scalars()
        assert list(kept) == [WINDOW - 2, WINDOW - 1, WINDOW]


def lease_from_threads(stores: list[WindowStore], limit: int, threads: int) -> list[int]:
    """Every thread leases (3 at a time) until refused; what each was granted."""
    barrier = threading.Barrier(threads)

    def leaser(i: int) -> int:
        store = stores[i % len(stores)]
        barrier.wait()
        got = 0
        while True:
            granted, used = store.lease(SUBJECT, REQUESTS, WINDOW, 3, limit)
            assert used <= limit
            if not granted:
                return got
            got += granted

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(leaser, range(threads)))


def charge_from_threads(stores: list[WindowStore], threads: int, each: int) -> None:
    barrier = threading.Barrier(threads)

    def charger(i: int) -> None:
        barrier.wait()
        for _ in range(each):
            stores[i % len(stores)].charge(SUBJECT, TOKENS, WINDOW, 1)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(charger, range(threads)))


@pytest.fixture
def two_sqlite_engines(db_url: str, engine: sa.Engine) -> Iterator[list[sa.Engine]]:
    other = open_database(db_url)
    yield [engine, other]
    other.dispose()


def test_sqlite_two_engines_many_threads_grant_exactly_the_limit(
    two_sqlite_engines: list[sa.Engine],
) -> None:
    stores = [WindowStore(e) for e in two_sqlite_engines]
    granted = lease_from_threads(stores, limit=300, threads=8)
    assert sum(granted) == 300
    assert counter(two_sqlite_engines[0]) == 300
    charge_from_threads(stores, threads=8, each=20)
    assert counter(two_sqlite_engines[1], TOKENS) == 160


@pytest.fixture(scope="module")
def pg_engines(postgres: Postgres) -> Iterator[list[sa.Engine]]:
    url = postgres.database()
    engines = [open_database(url), open_database(url)]
    yield engines
    for engine in engines:
        engine.dispose()


@pytest.mark.slow
def test_postgres_two_engines_many_threads_grant_exactly_the_limit(
    pg_engines: list[sa.Engine],
) -> None:
    stores = [WindowStore(e) for e in pg_engines]
    granted = lease_from_threads(stores, limit=600, threads=16)
    assert sum(granted) == 600
    assert counter(pg_engines[0]) == 600
    charge_from_threads(stores, threads=16, each=20)
    assert counter(pg_engines[1], TOKENS) == 320


@pytest.mark.slow
async def test_postgres_two_fronts_admit_exactly_the_limit(
    pg_engines: list[sa.Engine], clock: Clock
) -> None:
    clock.now = START + 600  # a window of its own
    fronts = [RateLimiter(WindowStore(e), clock=clock) for e in pg_engines]
    taken = await asyncio.gather(*(fronts[i % 2].take("key:pg", REQUESTS, 60) for i in range(200)))
    assert sum(t is not None for t in taken) == 60


async def test_once_a_minute_is_spent_refusals_ask_the_database_no_more(
    windows: CountingWindows, clock: Clock
) -> None:
    limiter = RateLimiter(windows, clock=clock)
    assert [await limiter.take(SUBJECT, REQUESTS, 2) is not None for _ in range(2)] == [True] * 2
    asked = windows.calls["lease"]
    for _ in range(50):
        assert await limiter.take(SUBJECT, REQUESTS, 2) is None
    assert windows.calls["lease"] == asked + 1  # the one that found the minute spent
    assert await limiter.take(SUBJECT, REQUESTS, 3) is not None  # a raised limit asks again
