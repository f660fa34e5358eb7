"""Process memory: resident size, and handing freed heap back to the OS."""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Callable

__all__ = ["close_and_trim", "rss_bytes", "trim"]


def rss_bytes() -> int:
    """This process's resident memory, from /proc (0 where there is no /proc)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def trim() -> None:
    """Hand freed heap back to the OS, so RSS follows the budget.

    No ``gc.collect()``: dropped models are freed by reference counting (measured: a full
    collection frees nothing more), and a full collection with torch and MLflow imported
    holds the GIL for about 250 ms, stalling every request.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def close_and_trim(close: Callable[[], None]) -> None:
    close()
    trim()
