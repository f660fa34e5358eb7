"""The migrations build exactly ``tables.metadata``, once, even with fronts starting
together, and go down and up again."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

from aiml.teams import tables
from aiml.teams.database import MIGRATIONS, open_database, upgrade
from aiml.teams.key_store import KeyStore
from tests.teams.conftest import Postgres

VERSION_TABLE = "aiml_alembic_version"


def schema(engine: sa.Engine) -> dict[str, Any]:
    """What the database holds, as the inspector sees it (aiml's tables only)."""
    inspector = sa.inspect(engine)
    found: dict[str, Any] = {}
    for table in sorted(inspector.get_table_names()):
        if table == VERSION_TABLE:
            continue
        found[table] = {
            "columns": {c["name"]: c["nullable"] for c in inspector.get_columns(table)},
            "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]))
                for i in inspector.get_indexes(table)
                if not i.get("duplicates_constraint")  # PostgreSQL's index of a UNIQUE
            ),
            "unique": sorted(
                tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)
            ),
        }
    return found


def declared() -> dict[str, Any]:
    """What ``tables.metadata`` says the database holds."""
    found: dict[str, Any] = {}
    for table in sorted(tables.metadata.tables.values(), key=lambda t: t.name):
        found[table.name] = {
            "columns": {c.name: c.nullable for c in table.columns},
            "primary_key": [c.name for c in table.primary_key.columns],
            "indexes": sorted((i.name, tuple(c.name for c in i.columns)) for i in table.indexes),
            "unique": sorted((c.name,) for c in table.columns if c.unique),
        }
    return found


def differences(engine: sa.Engine) -> list[Any]:
    """Alembic's own comparison of the database with the metadata (types included)."""

    def ours(name: str | None, kind: str, _parent: Any) -> bool:
        return not (kind == "table" and name == VERSION_TABLE)

    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"include_name": ours, "compare_type": True}
        )
        return list(compare_metadata(context, tables.metadata))


def revision(engine: sa.Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(
            connection, opts={"version_table": VERSION_TABLE}
        ).get_current_revision()


#: The newest migration.
HEAD = "0002"


def downgrade(engine: sa.Engine, to: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, to)


def test_a_fresh_database_has_exactly_the_declared_tables(engine: sa.Engine) -> None:
    assert schema(engine) == declared()
    assert differences(engine) == []
    assert revision(engine) == HEAD
    with engine.connect() as db:  # the one revision row the fronts poll
        assert db.execute(sa.select(tables.revision)).all() == [(1, 0)]


def test_opening_again_changes_nothing(db_url: str) -> None:
    first = open_database(db_url)
    with first.begin() as db:
        db.execute(tables.revision.update().values(value=7))
    first.dispose()
    second = open_database(db_url)
    try:
        assert revision(second) == HEAD
        assert schema(second) == declared()
        with second.connect() as db:  # not migrated again: the row is as it was left
            assert db.execute(sa.select(tables.revision)).all() == [(1, 7)]
    finally:
        second.dispose()


def test_two_threads_opening_a_fresh_file_at_once_both_succeed(db_url: str) -> None:
    barrier = threading.Barrier(4)
    engines: list[sa.Engine] = []
    errors: list[BaseException] = []

    def front() -> None:
        barrier.wait()
        try:
            engines.append(open_database(db_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=front) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert len(engines) == 4
        assert schema(engines[0]) == declared()
        with engines[0].connect() as db:  # migrated once: one revision row, one version
            assert db.execute(sa.select(tables.revision)).all() == [(1, 0)]
            assert db.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).all() == [
                (HEAD,)
            ]
    finally:
        for engine in engines:
            engine.dispose()


@pytest.mark.slow
def test_two_processes_opening_a_fresh_file_at_once_both_succeed(
    db_url: str, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    script = (
        "import pathlib, sys\n"
        "from aiml.teams.database import open_database\n"
        "pathlib.Path(sys.argv[2]).touch()\n"  # ready
        "while not pathlib.Path(sys.argv[3]).exists(): pass\n"  # all start migrating together
        "open_database(sys.argv[1]).dispose()\n"
    )
    ready = [tmp_path / f"ready-{i}" for i in range(3)]
    processes = [
        subprocess.Popen([sys.executable, "-c", script, db_url, str(r), str(go)]) for r in ready
    ]
    try:
        for process, flag in zip(processes, ready, strict=True):
            while not flag.exists():  # each has imported aiml (a condition, not a delay)
                assert process.poll() is None, "a front died before migrating"
        go.touch()
        assert [p.wait(timeout=60) for p in processes] == [0, 0, 0]
    finally:
        for process in processes:
            process.kill()
    engine = open_database(db_url)
    try:
        assert schema(engine) == declared()
        with engine.connect() as db:
            assert db.execute(sa.select(tables.revision)).all() == [(1, 0)]
    finally:
        engine.dispose()


def test_downgrade_to_base_and_up_again(engine: sa.Engine) -> None:
    downgrade(engine, "base")
    assert sa.inspect(engine).get_table_names() == [VERSION_TABLE]
    assert revision(engine) is None
    upgrade(engine)
    assert revision(engine) == HEAD
    assert schema(engine) == declared()
    assert differences(engine) == []


@pytest.mark.slow
def test_postgres_fronts_starting_together_migrate_once(postgres: Postgres) -> None:
    url = postgres.database()
    barrier = threading.Barrier(4)
    engines: list[sa.Engine] = []
    errors: list[BaseException] = []

    def front() -> None:
        barrier.wait()
        try:
            engines.append(open_database(url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=front) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert schema(engines[0]) == declared()
        assert differences(engines[0]) == []
        with engines[0].connect() as db:
            assert db.execute(sa.select(tables.revision)).all() == [(1, 0)]
        downgrade(engines[0], "base")
        assert sa.inspect(engines[0]).get_table_names() == [VERSION_TABLE]
        upgrade(engines[0])
        assert schema(engines[0]) == declared()
    finally:
        for engine in engines:
            engine.dispose()


def test_a_database_of_the_first_schema_is_migrated_with_its_keys_kept(db_url: str) -> None:
    """An aiml from before the shared concurrency slots (revision 0001) left keys behind:
    the next start adds the slots' table and keeps them."""
    engine = sa.create_engine(db_url)
    upgrade(engine, "0001")
    KeyStore(engine).create_key("from-before")
    assert "aiml_slots" not in sa.inspect(engine).get_table_names()
    engine.dispose()
    migrated = open_database(db_url)
    try:
        assert revision(migrated) == HEAD
        assert schema(migrated) == declared()
        assert [k.name for k in KeyStore(migrated).all_keys()] == ["from-before"]
    finally:
        migrated.dispose()
