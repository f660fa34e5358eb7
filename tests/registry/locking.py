"""Lock a test registry's sqlite file the way a writer in another process would."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import Registry

__all__ = ["locked"]


@contextmanager
def locked(registry: Registry) -> Iterator[None]:
    """Hold an exclusive lock on the registry's database: every MLflow call on it blocks
    (for MLflow's own busy timeout, 20 s) until the block ends."""
    path = Path(registry.uri.removeprefix("sqlite:///"))
    assert path.is_file(), path
    connection = sqlite3.connect(path, isolation_level=None)  # no implicit transactions
    try:
        connection.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        connection.execute("ROLLBACK")
        connection.close()
