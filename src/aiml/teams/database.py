"""aiml's own database: opened once, migrated to the newest schema before use.

sqlite under ``AIML_HOME`` by default (WAL, so several fronts on one machine share it);
the team's PostgreSQL in cluster mode (``AIML_DATABASE_URL``). Alembic runs the
migrations, as MLflow does for its own tables, with its version table named apart from
MLflow's so both can share one database.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from .tables import keys

__all__ = ["MIGRATIONS", "has_keys", "open_database"]

MIGRATIONS = Path(__file__).parent / "migrations"
#: PostgreSQL's advisory lock for migrating (any constant both fronts agree on).
_LOCK_ID = 0x61696D6C  # "aiml"


def open_database(url: str) -> sa.Engine:
    """An engine on ``url``, its schema migrated to the newest revision (blocking)."""
    options: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        path = sa.make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Several fronts (processes) write one file: wait for a writer rather than fail.
        options["connect_args"] = {"timeout": 30, "check_same_thread": False}
    engine = sa.create_engine(url, **options)
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    upgrade(engine)
    return engine


def has_keys(url: str) -> bool:
    """Whether the database holds any key (then keys protect the service; blocking)."""
    engine = open_database(url)
    try:
        with engine.connect() as db:
            return db.execute(sa.select(keys.c.name).limit(1)).first() is not None
    finally:
        engine.dispose()


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """Migrate, one process at a time: fronts starting together would otherwise both
    create the tables (PostgreSQL: an advisory lock; sqlite: a lock file beside it)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with _one_at_a_time(engine), engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


@contextlib.contextmanager
def _one_at_a_time(engine: sa.Engine) -> Iterator[None]:
    path = engine.url.database if engine.dialect.name == "sqlite" else None
    if not path or path == ":memory:":
        yield
        return
    with open(f"{path}.migrate-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
