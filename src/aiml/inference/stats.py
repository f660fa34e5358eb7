"""Counters the stats route reports; updated on the event loop only."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["Stats"]


@dataclass
class Stats:
    """What the inference path has done since start (or since the last reset)."""

    requests: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    resolutions: int = 0
    engine_checks: int = 0
    stale_served: int = 0
    errors: Counter[str] = field(default_factory=Counter)
