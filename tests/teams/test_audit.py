"""AuditLog: every admin action appended, read back newest first, filtered."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from aiml.teams.audit import AuditEntry, AuditLog
from tests.teams.conftest import START, Clock


@pytest.fixture
def log(engine: sa.Engine, clock: Clock) -> AuditLog:
    return AuditLog(engine, clock=clock)


def test_entries_come_back_newest_first_as_written(log: AuditLog, clock: Clock) -> None:
    log.append(AuditEntry("admin", "keys.create", "ci-bot", 201, "10.0.0.1", {"team": "ml"}))
    clock.advance(1)
    log.append(AuditEntry("ops", "aliases.set", "chat@production", 200, "10.0.0.2"))
    clock.advance(1)
    log.append(AuditEntry("admin", "keys.revoke", "ci-bot", 404, "10.0.0.1", at=START - 100))
    entries = log.entries()
    assert [(e.id, e.action) for e in entries] == [
        (3, "keys.revoke"),
        (2, "aliases.set"),
        (1, "keys.create"),
    ]
    assert entries[2] == AuditEntry(
        "admin", "keys.create", "ci-bot", 201, "10.0.0.1", {"team": "ml"}, START, 1
    )
    assert entries[1].at == START + 1  # the log's clock when the entry has no time
    assert entries[1].detail == {}
    assert entries[0].at == START - 100  # the entry's own time, when it has one


def test_filters(log: AuditLog, clock: Clock) -> None:
    for actor, action in [
        ("admin", "keys.create"),
        ("ops", "keys.rotate"),
        ("admin", "aliases.set"),
        ("admin", "keys.revoke"),
        ("ops", "models.load"),
    ]:
        log.append(AuditEntry(actor, action, "t", 200, "c"))
        clock.advance(10)
    assert [e.action for e in log.entries(actor="admin")] == [
        "keys.revoke",
        "aliases.set",
        "keys.create",
    ]
    assert [e.action for e in log.entries(action="keys.")] == [
        "keys.revoke",
        "keys.rotate",
        "keys.create",
    ]
    assert [e.action for e in log.entries(action="keys.rotate")] == ["keys.rotate"]
    assert [e.action for e in log.entries(actor="ops", action="keys")] == ["keys.rotate"]
    assert [e.action for e in log.entries(since=START + 30)] == ["models.load", "keys.revoke"]
    assert [e.action for e in log.entries(limit=2)] == ["models.load", "keys.revoke"]
    assert log.entries(actor="nobody") == []


def test_the_log_is_kept_by_the_database(engine: sa.Engine, db_url: str, clock: Clock) -> None:
    AuditLog(engine, clock=clock).append(AuditEntry("admin", "keys.create", "a", 201, "c"))
    other = sa.create_engine(db_url)  # another front, reading what this one wrote
    try:
        assert [e.target for e in AuditLog(other).entries()] == ["a"]
    finally:
        other.dispose()


def test_the_action_filter_is_a_prefix_not_a_pattern(log: AuditLog) -> None:
    log.append(AuditEntry("admin", "keys.create", "a", 201, "c"))
    log.append(AuditEntry("admin", "keysXcreate", "a", 201, "c"))
    assert [e.action for e in log.entries(action="keys.")] == ["keys.create"]
    assert log.entries(action="%") == []
    assert log.entries(action="keys_") == []
