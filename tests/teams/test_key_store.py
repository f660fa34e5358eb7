"""KeyStore: keys and teams in the database, the secret never stored, the revision bumped
on every change."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from aiml.errors import Conflict, InvalidRequest, NotFound
from aiml.teams import tables
from aiml.teams.directory import KeyDirectory, Lookup
from aiml.teams.key_store import KeyStore
from aiml.teams.keys import SECRET_PREFIX, KeyLimits, ModelRules, Role, secret_digest
from tests.teams.conftest import Clock


@pytest.fixture
def store(engine: sa.Engine, clock: Clock) -> KeyStore:
    return KeyStore(engine, clock=clock)


def every_value(engine: sa.Engine) -> str:
    """Every row of every table, as one string."""
    with engine.connect() as db:
        return repr([db.execute(sa.select(t)).all() for t in tables.metadata.sorted_tables])


def test_create_shows_the_secret_once_and_keeps_only_its_digest(
    store: KeyStore, engine: sa.Engine, clock: Clock, tmp_path: Path
) -> None:
    store.put_team("ml")
    key, secret = store.create_key(
        "ci-bot", team="ml", owner="ana", rules=ModelRules(models=("chat-*@production",)),
        limits=KeyLimits(rpm=60), meta={"ticket": "OPS-1"}, expires_at=clock() + 3600,
    )  # fmt: skip
    assert secret.startswith(SECRET_PREFIX)
    assert len(secret) > 40
    assert key.digest == secret_digest(secret)
    assert key.prefix == secret[:9]
    assert key.created_at == clock()
    assert store.key("ci-bot") == key  # what the database gives back is what was made
    assert secret not in every_value(engine)
    assert key.digest in every_value(engine)
    engine.dispose()  # the file and its write-ahead log, byte by byte
    for path in tmp_path.glob("aiml.db*"):
        assert secret.encode() not in path.read_bytes(), path.name


def test_each_key_gets_its_own_secret(store: KeyStore) -> None:
    secrets = {store.create_key(f"k{i}")[1] for i in range(5)}
    assert len(secrets) == 5


def test_a_name_is_taken_once(store: KeyStore) -> None:
    store.create_key("ci-bot")
    with pytest.raises(Conflict):
        store.create_key("ci-bot")
    assert [k.name for k in store.all_keys()] == ["ci-bot"]


def test_a_key_of_an_unknown_team_is_refused(store: KeyStore) -> None:
    with pytest.raises(InvalidRequest) as refused:
        store.create_key("ci-bot", team="nobody")
    assert refused.value.param == "team"
    assert store.all_keys() == []
    with pytest.raises(NotFound):
        store.key("ci-bot")


def test_find_by_digest(store: KeyStore) -> None:
    key, secret = store.create_key("ci-bot")
    store.create_key("other")
    assert store.find(secret_digest(secret)) == key
    assert store.find(secret_digest("aiml-not-a-key")) is None


async def test_rotation_stops_the_old_secret_at_once(store: KeyStore, clock: Clock) -> None:
    old, old_secret = store.create_key("ci-bot")
    directory = KeyDirectory(store, clock=clock)
    await directory.refresh()
    assert directory.lookup(old.digest) == Lookup(old)
    new, new_secret = store.rotate_key("ci-bot")
    directory.changed()  # as the admin API does after a change through this front
    await directory.refresh()
    assert new_secret != old_secret
    assert new.digest == secret_digest(new_secret)
    assert new.previous_digest is None
    assert store.find(old.digest) is None
    assert store.find(new.digest) == new
    assert directory.lookup(new.digest) == Lookup(new)
    assert directory.lookup(old.digest) is None
    assert (await directory.find(old.digest)).refusal == "the key is not valid"


async def test_rotation_with_grace_keeps_the_old_secret_until_it_passes(
    store: KeyStore, clock: Clock
) -> None:
    old, _ = store.create_key("ci-bot")
    new, _ = store.rotate_key("ci-bot", grace_s=300)
    assert new.previous_digest == old.digest
    assert new.previous_until == clock() + 300
    assert store.find(old.digest) == new
    directory = KeyDirectory(store, clock=clock)
    await directory.refresh()
    assert directory.lookup(old.digest).key == new  # type: ignore[union-attr]
    assert directory.lookup(new.digest).key == new  # type: ignore[union-attr]
    clock.advance(299.9)
    assert directory.lookup(old.digest).key == new  # type: ignore[union-attr]
    clock.advance(0.1)
    assert directory.lookup(old.digest) == Lookup(None, "the key 'ci-bot' was rotated")
    assert directory.lookup(new.digest).key == new  # type: ignore[union-attr]
    # The same through a directory that never held the key (from the database).
    fresh = KeyDirectory(store, clock=clock)
    assert (await fresh.find(old.digest)).refusal == "the key 'ci-bot' was rotated"


def test_rotating_again_forgets_the_first_secret(store: KeyStore) -> None:
    first, _ = store.create_key("ci-bot")
    second, _ = store.rotate_key("ci-bot", grace_s=300)
    third, _ = store.rotate_key("ci-bot", grace_s=300)
    assert third.previous_digest == second.digest
    assert store.find(first.digest) is None
    assert store.find(second.digest) == third


def test_revoke(store: KeyStore, clock: Clock) -> None:
    store.create_key("ci-bot")
    store.rotate_key("ci-bot", grace_s=300)
    clock.advance(5)
    revoked = store.revoke_key("ci-bot")
    assert revoked.revoked_at == clock()
    assert revoked.previous_digest is None  # the grace ends with the key
    assert revoked.status(clock()) == "revoked"
    assert store.key("ci-bot") == revoked
    before = store.revision()
    clock.advance(5)
    assert store.revoke_key("ci-bot") == revoked  # again: nothing changes
    assert store.revision() == before
    with pytest.raises(Conflict):
        store.rotate_key("ci-bot")
    with pytest.raises(NotFound):
        store.revoke_key("nobody")


def test_update(store: KeyStore) -> None:
    store.put_team("ml")
    key, _ = store.create_key("ci-bot")
    changed = store.update_key(
        "ci-bot", team="ml", role=Role.ADMIN, limits=KeyLimits(rpm=5, daily_tokens=1000),
        rules=ModelRules(models=("embed@3",), tasks=("embeddings",)), meta={"a": [1, 2]},
        expires_at=123.0, owner="bo",
    )  # fmt: skip
    assert store.key("ci-bot") == changed
    assert changed.digest == key.digest
    assert changed.created_at == key.created_at
    assert changed.admin
    with pytest.raises(InvalidRequest):
        store.update_key("ci-bot", team="nobody")
    assert store.key("ci-bot") == changed
    with pytest.raises(NotFound):
        store.update_key("nobody", owner="x")


def test_teams_put_list_delete(store: KeyStore, clock: Clock) -> None:
    made = store.put_team("ml", limits=KeyLimits(tpm=100), meta={"cost-centre": 7})
    assert made.created_at == clock()
    clock.advance(10)
    changed = store.put_team("ml", limits=KeyLimits(rpm=5))
    assert changed.created_at == made.created_at  # a change keeps the creation time
    assert changed.limits == KeyLimits(rpm=5)
    assert changed.meta == {}
    store.put_team("data")
    assert store.teams() == [store.put_team("data"), changed]
    store.delete_team("data")
    assert [t.name for t in store.teams()] == ["ml"]
    with pytest.raises(InvalidRequest):
        store.delete_team("data")


def test_a_team_with_keys_not_revoked_is_not_deleted(store: KeyStore) -> None:
    store.put_team("ml")
    store.create_key("a", team="ml")
    store.create_key("b", team="ml")
    with pytest.raises(Conflict, match="2 key"):
        store.delete_team("ml")
    store.revoke_key("a")
    with pytest.raises(Conflict, match="1 key"):
        store.delete_team("ml")
    store.revoke_key("b")
    store.delete_team("ml")
    assert store.teams() == []
    # A revoked key of the deleted team can still be changed (its metadata, say); moving a
    # key to a team that does not exist is still refused.
    assert store.update_key("b", meta={"note": "left"}).meta == {"note": "left"}
    with pytest.raises(InvalidRequest):
        store.update_key("b", team="ml")


def test_every_change_bumps_the_revision(store: KeyStore) -> None:
    seen = [store.revision()]

    def bumped() -> bool:
        seen.append(store.revision())
        return seen[-1] == seen[-2] + 1

    store.put_team("ml")
    assert bumped()
    store.put_team("ml", meta={"x": 1})
    assert bumped()
    store.create_key("a", team="ml")
    assert bumped()
    store.update_key("a", owner="ana")
    assert bumped()
    store.rotate_key("a")
    assert bumped()
    store.revoke_key("a")
    assert bumped()
    store.put_team("data")
    assert bumped()
    store.delete_team("data")
    assert bumped()
    # What is refused changes nothing.
    for refused in (
        lambda: store.create_key("a"),
        lambda: store.create_key("b", team="nobody"),
        lambda: store.delete_team("nobody"),
    ):
        with pytest.raises((Conflict, InvalidRequest)):
            refused()
    assert store.revision() == seen[-1]


def test_snapshot_is_the_keys_and_teams_as_of_the_revision(store: KeyStore) -> None:
    store.put_team("ml")
    a, _ = store.create_key("a", team="ml")
    revision, keys, teams = store.snapshot()
    assert revision == store.revision() == 2
    assert keys == [a]
    assert [t.name for t in teams] == ["ml"]
