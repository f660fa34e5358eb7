"""Counters of what the inference path has done; the stats route and /metrics read these."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .version_health import VersionHealth

__all__ = ["Stats"]


@dataclass
class Stats:
    """Updated on the event loop only; both ``GET /inference/stats`` and ``/metrics`` read it,
    so the two always agree."""

    started: int = 0
    cancelled: int = 0
    #: Finished requests by (task, engine, HTTP status).
    finished: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    #: Finished requests by (model name, HTTP status); "-" before a name is known, and for
    #: names nobody serves (404s), so the labels stay the registry's and engines' names.
    by_model: Counter[tuple[str, int]] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    #: Generated tokens by (task, engine).
    tokens: Counter[tuple[str, str]] = field(default_factory=Counter)
    cache_hits: int = 0
    cache_misses: int = 0
    resolutions: int = 0
    engine_checks: int = 0
    stale_served: int = 0
    #: Outcomes per registry version (``name/3``), over a sliding window.
    versions: VersionHealth = field(default_factory=VersionHealth)

    @property
    def succeeded(self) -> int:
        return sum(n for (_, _, status), n in self.finished.items() if status < 400)

    @property
    def failed(self) -> int:
        return sum(n for (_, _, status), n in self.finished.items() if status >= 400)
