"""Ray nodes on loopback for tests: lean (no dashboard, a small object store), no token
auth (``ray start`` enables it when ``~/.ray/auth_token`` exists), no usage stats.

Every process of these nodes carries a mark in its environment (or descends from one that
does), so that ``stop_ray`` stops this test run's Ray and nobody else's: ``ray stop``
stops every Ray process on the machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["RAY_ENV", "marked_processes", "start_ray_node", "stop_ray"]

_MARK = f"AIML_TEST_RAY={os.getpid()}"
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
_RAY = str(Path(sys.executable).parent / "ray")


def start_ray_node(*args: str, cpus: int) -> None:
    """``ray start`` with ``args`` (``--head --port=N`` or ``--address=A``)."""
    name, value = _MARK.split("=")
    subprocess.run(
        [_RAY, "start", *args, f"--num-cpus={cpus}", "--object-store-memory=150000000",
         "--node-ip-address=127.0.0.1", "--disable-usage-stats"],
        check=True, env={**os.environ, **RAY_ENV, name: value}, capture_output=True,
        timeout=180,
    )  # fmt: skip


def stop_ray(timeout_s: float = 30.0) -> None:
    """SIGKILL the Ray nodes this test run started (as ``ray stop --force`` would), and
    wait until they are gone."""
    doomed = marked_processes(_MARK)
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while (doomed := {pid for pid in doomed if _alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.05)  # the next look; the loop ends as soon as they are gone


def marked_processes(mark: str) -> set[int]:
    """Processes with ``mark`` (``NAME=value``) in their environment, and their descendants
    (Ray's agents and workers overwrite their environment with a process title)."""
    parents: dict[int, int] = {}
    found: set[int] = set()
    wanted = mark.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(entry.name)
            parents[pid] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                found.add(pid)
    while grown := {pid for pid, parent in parents.items() if parent in found} - found:
        found |= grown
    return found


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its parent."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
