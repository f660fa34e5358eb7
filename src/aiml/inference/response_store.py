"""Stored Responses-API responses: ``GET /v1/responses/{id}`` and ``previous_response_id``.

One sqlite file in aiml's home (the standard library's ``sqlite3``: a few rows a request,
no server to run), each row the response object and the conversation it ended, kept for
``AIML_RESPONSES_RETENTION_S`` and purged on write. Calls run in a worker thread: sqlite
blocks. Each front keeps its own file, so with several fronts a client must come back to
the one that answered (or share the home on one machine).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["ResponseStore", "StoredResponse"]

StoredResponse = dict[str, Any]


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
            db.execute(
                "CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, body TEXT NOT NULL,"
                " expires REAL NOT NULL)"
            )
            self._db = db
        return self._db

    async def save(self, response_id: str, record: StoredResponse) -> None:
        await asyncio.to_thread(self._save, response_id, json.dumps(record))

    async def get(self, response_id: str) -> StoredResponse | None:
        body = await asyncio.to_thread(self._get, response_id)
        return None if body is None else dict(json.loads(body))

    async def delete(self, response_id: str) -> bool:
        return await asyncio.to_thread(self._delete, response_id)

    def _save(self, response_id: str, body: str) -> None:
        now = self._clock()
        with self._lock:
            db = self._connect()
            db.execute("DELETE FROM responses WHERE expires < ?", (now,))
            db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?)",
                (response_id, body, now + self._retention_s),
            )

    def _get(self, response_id: str) -> str | None:
        with self._lock:
            row = (
                self._connect()
                .execute(
                    "SELECT body FROM responses WHERE id = ? AND expires >= ?",
                    (response_id, self._clock()),
                )
                .fetchone()
            )
        return None if row is None else str(row[0])

    def _delete(self, response_id: str) -> bool:
        with self._lock:
            cursor = self._connect().execute("DELETE FROM responses WHERE id = ?", (response_id,))
        return cursor.rowcount > 0

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
