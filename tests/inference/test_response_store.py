"""Stored responses: kept for the retention, gone after it (purged on the next write); each
row its key's own; a file from before owners is migrated in place."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from aiml.inference.response_store import EVERY_OWNER, ResponseStore, Viewer

RECORD = {"response": {"id": "resp_a"}, "conversation": []}


async def test_a_response_is_kept_for_the_retention_then_purged(tmp_path: Path) -> None:
    now = [1000.0]
    store = ResponseStore(tmp_path / "responses.db", retention_s=60, clock=lambda: now[0])
    await store.save("resp_a", RECORD, owner=None)
    now[0] += 59
    assert await store.get("resp_a", EVERY_OWNER) == RECORD
    now[0] += 2
    assert await store.get("resp_a", EVERY_OWNER) is None  # expired: not served
    await store.save("resp_b", {"response": {}, "conversation": []}, owner=None)  # a write purges
    assert not await store.delete("resp_a", EVERY_OWNER)
    assert await store.delete("resp_b", EVERY_OWNER)
    store.close()


async def test_a_response_is_seen_by_its_owner_and_every_owners_viewer_only(
    tmp_path: Path,
) -> None:
    store = ResponseStore(tmp_path / "responses.db", retention_s=60)
    await store.save("resp_a", RECORD, owner="digest-a")
    await store.save("resp_none", RECORD, owner=None)
    a, b = Viewer(owner="digest-a"), Viewer(owner="digest-b")
    assert await store.get("resp_a", a) == RECORD
    assert await store.get("resp_a", EVERY_OWNER) == RECORD
    assert await store.get("resp_a", b) is None
    assert not await store.delete("resp_a", b)  # not b's: nothing deleted
    assert await store.get("resp_a", a) == RECORD
    # Owned by no key: a viewer of one owner, or of none, never sees it.
    assert await store.get("resp_none", a) is None
    assert await store.get("resp_none", Viewer(owner=None)) is None
    assert await store.get("resp_none", EVERY_OWNER) == RECORD
    assert await store.delete("resp_a", a)
    assert await store.get("resp_a", EVERY_OWNER) is None
    store.close()


async def test_a_file_from_before_owners_gets_the_column_its_rows_owned_by_no_key(
    tmp_path: Path,
) -> None:
    path = tmp_path / "responses.db"
    old = sqlite3.connect(path)  # the schema aiml wrote before owners
    old.execute(
        "CREATE TABLE responses (id TEXT PRIMARY KEY, body TEXT NOT NULL, expires REAL NOT NULL)"
    )
    old.execute("INSERT INTO responses VALUES (?, ?, ?)", ("resp_old", json.dumps(RECORD), 1e12))
    old.commit()
    old.close()
    store = ResponseStore(path, retention_s=60)
    assert await store.get("resp_old", Viewer(owner="digest-a")) is None
    assert await store.get("resp_old", EVERY_OWNER) == RECORD
    await store.save("resp_new", RECORD, owner="digest-a")
    assert await store.get("resp_new", Viewer(owner="digest-a")) == RECORD
    store.close()
    reopened = ResponseStore(path, retention_s=60)  # migrated once: opens as it is
    assert await reopened.get("resp_new", Viewer(owner="digest-a")) == RECORD
    reopened.close()
