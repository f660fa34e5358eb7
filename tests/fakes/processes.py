"""Real processes on loopback: an ``mlflow server`` and ``aiml serve``."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.fakes.servers import free_port


class Process:
    """A child process in its own process group, stopped with the whole group."""

    def __init__(
        self,
        argv: list[str],
        *,
        env: dict[str, str],
        log: Path,
        health_url: str,
        stderr_log: Path | None = None,
    ) -> None:
        self.argv = argv
        self.env = env
        self.log = log
        self.stderr_log = stderr_log  # stderr apart from stdout, when given
        self.health_url = health_url
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> None:
        with self.log.open("ab") as log, (self.stderr_log or self.log).open("ab") as errors:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=log,
                stderr=errors if self.stderr_log else subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[:3]} exited: {self.tail()}")
            try:
                if httpx.get(self.health_url, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.argv[:3]} not healthy: {self.tail()}")
            time.sleep(0.2)

    def tail(self) -> str:
        """The end of what the process wrote (its stderr's too, when kept apart)."""
        logs = [self.log] + ([self.stderr_log] if self.stderr_log else [])
        return "\n".join(log.read_text(errors="replace")[-2000:] for log in logs)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait()
        with contextlib.suppress(ProcessLookupError):  # children may outlive the leader
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None
        return code


def mlflow_server(folder: Path, port: int | None = None, *, backend: str | None = None) -> Process:
    """``mlflow server`` with proxied artifacts, on sqlite in ``folder`` or on ``backend``."""
    port = port or free_port()
    folder.mkdir(parents=True, exist_ok=True)
    argv = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri", backend or f"sqlite:///{folder / 'mlflow.db'}",
        "--serve-artifacts",
        "--artifacts-destination", str(folder / "artifacts"),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return Process(
        argv, env=env, log=folder / "server.log", health_url=f"http://127.0.0.1:{port}/health"
    )


def aiml_serve(
    folder: Path,
    env: dict[str, str],
    port: int | None = None,
    *,
    log_level: str = "warning",
    extra_args: list[str] | None = None,
    separate_stderr: bool = False,
) -> Process:
    port = port or free_port()
    folder.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "aiml", "serve", "--port", str(port), "--log-level", log_level]
    argv += extra_args or []
    full_env = {**os.environ, "AIML_HOME": str(folder / "home"), **env}
    return Process(
        argv,
        env=full_env,
        log=folder / "aiml.log",
        health_url=f"http://127.0.0.1:{port}/health/live",
        stderr_log=folder / "aiml.err" if separate_stderr else None,
    )
