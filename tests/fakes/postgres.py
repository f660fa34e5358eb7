"""A throw-away PostgreSQL cluster in a temp folder (Debian's ``postgresql`` package).

The server refuses to run as root, so when the tests run as root (CI) the cluster belongs
to ``nobody`` and its programs run under ``setpriv``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.fakes.servers import free_port

__all__ = ["PostgresCluster", "postgres_bin"]


def postgres_bin() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``, newest version first; ``None`` if absent."""
    root = Path("/usr/lib/postgresql")
    versions = sorted(root.glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    return versions[-1].parent if versions else None


class PostgresCluster:
    def __init__(self, folder: Path) -> None:
        binaries = postgres_bin()
        if binaries is None:
            raise RuntimeError("PostgreSQL is not installed (/usr/lib/postgresql/*/bin)")
        self.bin = binaries
        self.folder = folder
        self.data = folder / "data"
        self.port = free_port()
        self.user = "aiml"
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]

    def start(self) -> PostgresCluster:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._as:
            shutil.chown(self.folder, "nobody", "nogroup")
        self._run("initdb", "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8")
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.folder / "postgres.log")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start")
        return self

    def create_database(self, name: str, *, template: str | None = None) -> str:
        """A new database (empty, or a copy of ``template``); its SQLAlchemy URI."""
        copy = ["-T", template] if template else []
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, *copy, name)
        return self.uri(name)

    def mlflow_template(self, name: str = "mlflow_template") -> str:
        """A database with MLflow's tables made once (``mlflow db upgrade``): copying it is
        ~0.1 s where each new database would run MLflow's migrations again (~1.5 s)."""
        uri = self.create_database(name)
        mlflow = str(Path(sys.executable).parent / "mlflow")
        subprocess.run([mlflow, "db", "upgrade", uri], check=True, capture_output=True)
        return name

    def uri(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def restart(self) -> None:
        self.stop()
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.folder / "postgres.log")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(
            [*self._as, str(self.bin / program), *args],
            check=True,
            capture_output=True,
            cwd=self.folder,
        )
