"""How many cores this process may really use, and how the local engines share them.

``os.cpu_count()`` counts the machine's cores, not the ones a container or ``taskset``
grants; a llama.cpp or torch thread pool sized from it oversubscribes the CPU, and llama.cpp's
spinning threads slow down sharply when they outnumber the cores they can run on.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["thread_budget", "usable_cores"]


def usable_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores allowed by CPU affinity, capped by a cgroup v2 (or v1) CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def thread_budget(engines: list[str], cores: int | None = None) -> dict[str, int]:
    """Default threads per local engine: llama.cpp takes the cores; torch takes half of them
    when llama.cpp runs too (so the two never each take every core), all of them alone."""
    cores = cores or usable_cores()
    llama = "llamacpp" in engines
    return {
        "llamacpp": cores,
        "transformers": max(1, cores // 2) if llama else cores,
        "whisper": cores,  # speech and OCR come in bursts: one request uses the machine
        "onnx": cores,
    }


def _cgroup_quota(cgroup: Path) -> float | None:
    """The CPU quota in cores, if a cgroup sets one."""
    v2 = cgroup / "cpu.max"
    try:
        if v2.exists():
            limit, period = v2.read_text().split()[:2]
            return None if limit == "max" else int(limit) / int(period)
        v1 = cgroup / "cpu" / "cpu.cfs_quota_us"
        if v1.exists():
            quota = int(v1.read_text())
            interval = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
            return None if quota <= 0 else quota / interval
    except (OSError, ValueError):
        return None
    return None
