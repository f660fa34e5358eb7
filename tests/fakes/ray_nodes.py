"""Ray nodes on loopback for tests: lean (no dashboard, a small object store), no token
auth (``ray start`` enables it when ``~/.ray/auth_token`` exists), no usage stats."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["RAY_ENV", "start_ray_node", "stop_ray"]

RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
_RAY = str(Path(sys.executable).parent / "ray")


def start_ray_node(*args: str, cpus: int) -> None:
    """``ray start`` with ``args`` (``--head --port=N`` or ``--address=A``)."""
    subprocess.run(
        [_RAY, "start", *args, f"--num-cpus={cpus}", "--object-store-memory=150000000",
         "--node-ip-address=127.0.0.1", "--disable-usage-stats"],
        check=True, env={**os.environ, **RAY_ENV}, capture_output=True, timeout=180,
    )  # fmt: skip


def stop_ray() -> None:
    """Stop every Ray process on this machine (``ray stop --force``)."""
    subprocess.run([_RAY, "stop", "--force"], env={**os.environ, **RAY_ENV},
                   capture_output=True, timeout=120)  # fmt: skip
