"""Shared fixtures of the teams tests: a real sqlite database per test, a clock the test
moves, and one throw-away PostgreSQL per module for the tests between connections."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from aiml.teams.database import open_database
from tests.fakes.postgres import PostgresCluster, postgres_bin

#: A UTC minute's start (2027-01-15 08:00:00), so windows and days are known in advance.
START = 1_800_000_000.0


class Clock:
    """A clock the test moves (``clock=`` of every class in aiml.teams)."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def until(condition: Callable[[], object], timeout_s: float = 10.0) -> None:
    """Wait for ``condition`` (what a background task does on its own time), at most so long."""
    async with asyncio.timeout(timeout_s):
        while True:
            if condition():
                return
            await asyncio.sleep(0.001)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'aiml.db'}"


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    engine = open_database(db_url)
    yield engine
    engine.dispose()


class Postgres:
    """One server for a module; a fresh database for each test that asks."""

    def __init__(self, cluster: PostgresCluster) -> None:
        self.cluster = cluster
        self._names = itertools.count()

    def database(self) -> str:
        return self.cluster.create_database(f"aiml_{next(self._names)}")


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    if postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed")
    # Not under pytest's tmp_path: when the tests run as root the server runs as nobody,
    # who may not enter pytest's folders.
    folder = Path(tempfile.mkdtemp(prefix="aiml-postgres-"))
    cluster = PostgresCluster(folder)
    try:
        cluster.start()
        yield Postgres(cluster)
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)
