"""The registry tests run twice: on sqlite (the embedded default) and on PostgreSQL (as a
team runs MLflow), each test on a fresh database."""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import Registry, fresh_sqlite_registry
from tests.fakes.postgres import PostgresCluster, postgres_bin

_databases = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[tuple[PostgresCluster, str]]:
    """A PostgreSQL cluster for the session, and a database with MLflow's tables to copy."""
    if postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed")
    # Not under pytest's temp folder: that is private to root, and the server runs as nobody.
    folder = Path(tempfile.mkdtemp(prefix="aiml-postgres-"))
    cluster = PostgresCluster(folder).start()
    yield cluster, cluster.mlflow_template()
    cluster.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgres"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Registry:
    if request.param == "sqlite":
        return fresh_sqlite_registry(tmp_path, request.getfixturevalue("sqlite_template"))
    else:
        cluster, template = request.getfixturevalue("postgres")
        uri = cluster.create_database(f"registry_{next(_databases)}", template=template)
    return Registry(
        uri=uri,
        client=MlflowClient(tracking_uri=uri, registry_uri=uri),
        artifacts=tmp_path / "artifacts",
    )
