"""Stored Responses-API responses: ``GET /v1/responses/{id}`` and ``previous_response_id``.

One sqlite file in aiml's home (the standard library's ``sqlite3``: a few rows a request,
no server to run), each row the response object and the conversation it ended, kept for
``AIML_RESPONSES_RETENTION_S`` and purged on write. Calls run in a worker thread: sqlite
blocks. Each front keeps its own file, so with several fronts a client must come back to
the one that answered (or share the home on one machine).

Each row has an owner: the digest of the key that stored it (``None`` without keys). A
read or delete names the owner it may see, or every owner (admin keys, and everyone when
no keys are configured); any other row is as if it did not exist. A file from before
owners gets the column on first open, its rows owned by no key: seen by admin keys only
(and by everyone while no keys are configured).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["EVERY_OWNER", "ResponseStore", "StoredResponse", "Viewer"]

StoredResponse = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Viewer:
    """Whose rows a read or delete may see: one owner's (``owner``; ``None``: none), or
    every owner's."""

    owner: str | None
    every_owner: bool = False

    def terms(self) -> tuple[bool, str | None]:
        return self.every_owner, self.owner


#: Admin keys, and everyone when no keys are configured.
EVERY_OWNER = Viewer(owner=None, every_owner=True)
# ``=`` is never true of NULL: a row owned by no key is seen by viewers of every owner only.
_VISIBLE = "(? OR owner = ?)"


class ResponseStore:
    def __init__(
        self, path: Path, *, retention_s: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._path = path
        self._retention_s = retention_s
        self._clock = clock
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            # One transaction that holds the write lock: two fronts sharing the home cannot
            # both add the owner column.
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY,"
                    " body TEXT NOT NULL, expires REAL NOT NULL, owner TEXT)"
                )
                columns = {row[1] for row in db.execute("PRAGMA table_info(responses)")}
                if "owner" not in columns:  # a file from before owners
                    db.execute("ALTER TABLE responses ADD COLUMN owner TEXT")
                db.execute("COMMIT")
            except BaseException:
                db.close()  # which rolls the transaction back
                raise
            self._db = db
        return self._db

    async def save(self, response_id: str, record: StoredResponse, *, owner: str | None) -> None:
        await asyncio.to_thread(self._save, response_id, json.dumps(record), owner)

    async def get(self, response_id: str, seen_by: Viewer) -> StoredResponse | None:
        body = await asyncio.to_thread(self._get, response_id, seen_by)
        return None if body is None else dict(json.loads(body))

    async def delete(self, response_id: str, seen_by: Viewer) -> bool:
        return await asyncio.to_thread(self._delete, response_id, seen_by)

    def _save(self, response_id: str, body: str, owner: str | None) -> None:
        now = self._clock()
        with self._lock:
            db = self._connect()
            db.execute("DELETE FROM responses WHERE expires < ?", (now,))
            db.execute(
                "INSERT OR REPLACE INTO responses (id, body, expires, owner) VALUES (?, ?, ?, ?)",
                (response_id, body, now + self._retention_s, owner),
            )

    def _get(self, response_id: str, seen_by: Viewer) -> str | None:
        with self._lock:
            row = (
                self._connect()
                .execute(
                    f"SELECT body FROM responses WHERE id = ? AND expires >= ? AND {_VISIBLE}",
                    (response_id, self._clock(), *seen_by.terms()),
                )
                .fetchone()
            )
        return None if row is None else str(row[0])

    def _delete(self, response_id: str, seen_by: Viewer) -> bool:
        with self._lock:
            cursor = self._connect().execute(
                f"DELETE FROM responses WHERE id = ? AND {_VISIBLE}",
                (response_id, *seen_by.terms()),
            )
        return cursor.rowcount > 0

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
