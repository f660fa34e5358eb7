"""KeyDirectory: a front's keys in memory, the database asked once for what it does not
know, changes through other fronts seen at the next refresh."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from aiml.teams.database import open_database
from aiml.teams.directory import KeyDirectory, Lookup, environment_keys
from aiml.teams.key_store import KeyStore
from aiml.teams.keys import ApiKey, KeyLimits, Role, secret_digest
from tests.teams.conftest import Clock, until


class CountingStore(KeyStore):
    """A KeyStore that counts the reads a directory makes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: Counter[str] = Counter()

    def find(self, digest: str) -> ApiKey | None:
        self.calls["find"] += 1
        return super().find(digest)

    def revision(self) -> int:
        self.calls["revision"] += 1
        return super().revision()

    def snapshot(self) -> tuple[int, list[ApiKey], list[Any]]:
        self.calls["snapshot"] += 1
        return super().snapshot()


@pytest.fixture
def store(engine: sa.Engine, clock: Clock) -> CountingStore:
    return CountingStore(engine, clock=clock)


@pytest.fixture
def other_front(db_url: str, engine: sa.Engine, clock: Clock) -> Iterator[KeyStore]:
    """Another front's store: its own engine on the same database."""
    other = open_database(db_url)
    yield KeyStore(other, clock=clock)
    other.dispose()


async def test_a_known_key_is_looked_up_in_memory(store: CountingStore, clock: Clock) -> None:
    key, secret = store.create_key("ci-bot")
    directory = KeyDirectory(store, clock=clock)
    await directory.refresh()
    store.calls.clear()
    for _ in range(100):
        assert directory.lookup(secret_digest(secret)) == Lookup(key)
        assert await directory.find(secret_digest(secret)) == Lookup(key)
    assert store.calls == Counter()


async def test_a_key_made_after_the_refresh_works_at_once(
    store: CountingStore, other_front: KeyStore, clock: Clock
) -> None:
    directory = KeyDirectory(store, clock=clock)
    await directory.refresh()
    key, secret = other_front.create_key("ci-bot")
    digest = secret_digest(secret)
    assert directory.lookup(digest) is None  # not in memory: find() asks
    assert await directory.find(digest) == Lookup(key)
    assert store.calls["find"] == 1
    assert directory.lookup(digest) == Lookup(key)  # and holds it since
    assert await directory.find(digest) == Lookup(key)
    assert store.calls["find"] == 1


async def test_an_unknown_digest_is_asked_once_per_refresh_interval(
    store: CountingStore, clock: Clock
) -> None:
    directory = KeyDirectory(store, refresh_s=5.0, clock=clock)
    await directory.refresh()
    digest = secret_digest("aiml-guessed")
    for _ in range(20):
        assert await directory.find(digest) == Lookup(None, "the key is not valid")
    assert store.calls["find"] == 1
    clock.advance(4.9)
    assert await directory.find(digest) == Lookup(None, "the key is not valid")
    assert store.calls["find"] == 1
    clock.advance(0.1)  # remembered for refresh_s, then asked again
    assert directory.lookup(digest) is None
    assert await directory.find(digest) == Lookup(None, "the key is not valid")
    assert store.calls["find"] == 2


async def test_a_revoked_key_read_from_the_database_is_refused_with_the_reason(
    store: CountingStore, other_front: KeyStore, clock: Clock
) -> None:
    directory = KeyDirectory(store, clock=clock)
    _, secret = other_front.create_key("ci-bot")
    other_front.revoke_key("ci-bot")
    digest = secret_digest(secret)
    assert (await directory.find(digest)).refusal == "the key 'ci-bot' is revoked"
    assert directory.lookup(digest) == Lookup(None, "the key 'ci-bot' is revoked")


async def test_refresh_sees_a_revocation_made_through_another_front(
    store: CountingStore, other_front: KeyStore, clock: Clock
) -> None:
    key, secret = store.create_key("ci-bot")
    digest = secret_digest(secret)
    here = KeyDirectory(store, clock=clock)
    there = KeyDirectory(other_front, clock=clock)
    await here.refresh()
    await there.refresh()
    assert here.lookup(digest) == there.lookup(digest) == Lookup(key)
    other_front.revoke_key("ci-bot")
    there.changed()  # the front that revoked applies it at once
    await there.refresh()
    assert there.lookup(digest) == Lookup(None, "the key 'ci-bot' is revoked")
    assert here.lookup(digest) == Lookup(key)  # the other, until it polls
    await here.refresh()
    assert here.lookup(digest) == Lookup(None, "the key 'ci-bot' is revoked")
    assert (await here.find(digest)).key is None


async def test_refresh_reads_the_keys_only_when_the_revision_moved(
    store: CountingStore, clock: Clock
) -> None:
    store.create_key("ci-bot")
    directory = KeyDirectory(store, clock=clock)
    await directory.refresh()
    assert store.calls == Counter(snapshot=1)
    for _ in range(3):
        await directory.refresh()
    assert store.calls == Counter(snapshot=1, revision=3)
    store.update_key("ci-bot", owner="ana")
    await directory.refresh()
    assert store.calls == Counter(snapshot=2, revision=4)
    assert [k.owner for k in directory.known()] == ["ana"]


async def test_changed_forces_a_read(store: CountingStore, clock: Clock) -> None:
    directory = KeyDirectory(store, clock=clock)
    await directory.refresh()
    directory.changed()
    await directory.refresh()
    assert store.calls["snapshot"] == 2
    assert store.calls["revision"] == 0  # no poll: read at once


async def test_the_follower_wakes_when_told_of_a_change(
    store: CountingStore, other_front: KeyStore, clock: Clock
) -> None:
    directory = KeyDirectory(store, refresh_s=3600, clock=clock)  # never polls by itself
    directory.start()
    try:
        await until(lambda: store.calls["snapshot"] >= 1)  # the first read, at start
        key, secret = other_front.create_key("ci-bot")
        directory.changed()  # as the change feed does
        await until(lambda: directory.lookup(secret_digest(secret)) is not None)
        assert directory.lookup(secret_digest(secret)) == Lookup(key)
        assert store.calls["find"] == 0
    finally:
        await directory.aclose()


async def test_teams_and_keys_as_of_the_last_read(store: CountingStore, clock: Clock) -> None:
    team = store.put_team("ml", limits=KeyLimits(rpm=10))
    store.create_key("b", team="ml")
    store.create_key("a")
    store.rotate_key("a", grace_s=60)  # held under two digests, listed once
    directory = KeyDirectory(store, environment_keys("aiml-env", ""), clock=clock)
    await directory.refresh()
    assert directory.team("ml") == team
    assert directory.team(None) is None
    assert directory.team("nobody") is None
    assert [k.name for k in directory.known()] == [
        "a",
        "b",
        f"key-{secret_digest('aiml-env')[:12]}",
    ]


def test_environment_keys_are_named_by_their_digest_and_admin_wins() -> None:
    keys = environment_keys(" u1, both ,,", "both,a1 ")
    by_digest = {k.digest: k for k in keys}
    assert set(by_digest) == {secret_digest(s) for s in ("u1", "both", "a1")}
    for secret, role in (("u1", Role.USER), ("both", Role.ADMIN), ("a1", Role.ADMIN)):
        key = by_digest[secret_digest(secret)]
        assert key.name == f"key-{secret_digest(secret)[:12]}"
        assert key.role is role
        assert key.from_environment
        assert key.prefix == ""  # no part of an environment secret is shown
    assert environment_keys("", "") == []
    # The order of the lists does not matter: admin wins either way.
    assert environment_keys("both", "both")[0].role is Role.ADMIN


async def test_environment_keys_work_without_a_database(clock: Clock) -> None:
    directory = KeyDirectory(None, environment_keys("user-secret", "admin-secret"), clock=clock)
    assert directory.enabled
    user = await directory.find(secret_digest("user-secret"))
    assert user.key is not None and not user.key.admin
    admin = directory.lookup(secret_digest("admin-secret"))
    assert admin is not None and admin.key is not None and admin.key.admin
    assert await directory.find(secret_digest("guess")) == Lookup(None, "the key is not valid")
    await directory.refresh()  # nothing to read: keeps the environment's
    assert len(directory.known()) == 2


async def test_environment_keys_stay_beside_the_databases(
    store: CountingStore, clock: Clock
) -> None:
    directory = KeyDirectory(store, environment_keys("env-secret", ""), clock=clock)
    _, secret = store.create_key("ci-bot")
    await directory.refresh()
    assert directory.lookup(secret_digest("env-secret")) is not None
    assert directory.lookup(secret_digest(secret)) is not None


async def test_an_expired_key_is_refused_with_the_reason(
    store: CountingStore, clock: Clock
) -> None:
    key, secret = store.create_key("ci-bot", expires_at=clock() + 60)
    directory = KeyDirectory(store, clock=clock)
    await directory.refresh()
    assert directory.lookup(secret_digest(secret)) == Lookup(key)
    clock.advance(60)
    assert directory.lookup(secret_digest(secret)) == Lookup(None, "the key 'ci-bot' expired")
    assert key.status(clock()) == "expired"
    # A directory that reads it from the database judges it the same.
    fresh = KeyDirectory(store, clock=clock)
    assert (await fresh.find(secret_digest(secret))).refusal == "the key 'ci-bot' expired"


async def test_enabled_once_any_key_exists(store: CountingStore, clock: Clock) -> None:
    directory = KeyDirectory(store, clock=clock)
    await directory.refresh()
    assert not directory.enabled  # no keys anywhere: every route open, as before
    store.create_key("ci-bot")
    directory.changed()
    await directory.refresh()
    assert directory.enabled


async def test_closing_as_a_change_arrives_stops_the_follower(
    store: CountingStore, clock: Clock
) -> None:
    """A shutdown at the moment the change feed wakes the follower: the cancel must not be
    lost (Python 3.11's asyncio.wait_for swallowed it, and aclose waited for ever)."""
    store.create_key("ci-bot")
    directory = KeyDirectory(store, refresh_s=3600, clock=clock)
    directory.start()
    await until(lambda: directory.enabled)  # read once: the follower waits to be woken
    directory.changed()
    closing = asyncio.ensure_future(directory.aclose())
    done, _ = await asyncio.wait({closing}, timeout=5)
    if not done:  # the follower goes on: stop it, so the test ends
        closing.cancel()
    assert done, "aclose waited for a follower that was not stopped"
