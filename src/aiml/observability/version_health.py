"""How each registry version is doing: its requests over a sliding window, bounded.

A version (``name/3``) is what a canary compares and a guard watches, so its health is kept
apart from the model name's: per version, the outcomes of the last ``window_s`` seconds (at
most ``max_samples`` of them) give requests, statuses, the error ratio, latency p50/p99,
time to first token p50/p99 and tokens per second; lifetime counts by status feed
``/metrics``. At most ``max_versions`` versions are kept (the least recently served goes
first), so the label sets stay bounded however many versions a registry holds.
"""

from __future__ import annotations

import math
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["VersionHealth", "VersionWindow"]


@dataclass(frozen=True, slots=True)
class _Outcome:
    at: float
    status: int
    seconds: float
    first_token_s: float | None
    tokens_per_s: float | None


@dataclass(slots=True)
class VersionWindow:
    """One version's recent outcomes and its lifetime counts by status."""

    outcomes: deque[_Outcome]
    totals: Counter[int] = field(default_factory=Counter)

    def summary(self, now: float, window_s: float) -> dict[str, Any]:
        recent = [o for o in self.outcomes if o.at >= now - window_s]
        statuses = Counter(o.status for o in recent)
        errors = sum(n for status, n in statuses.items() if status >= 500)
        latency = sorted(o.seconds for o in recent)
        first = sorted(o.first_token_s for o in recent if o.first_token_s is not None)
        speed = sorted(o.tokens_per_s for o in recent if o.tokens_per_s is not None)
        return {
            "window_s": window_s,
            "requests": len(recent),
            "by_status": {str(status): n for status, n in sorted(statuses.items())},
            "error_ratio": round(errors / len(recent), 4) if recent else 0.0,
            "latency_s": {"p50": _quantile(latency, 0.5), "p99": _quantile(latency, 0.99)},
            "time_to_first_token_s": {"p50": _quantile(first, 0.5), "p99": _quantile(first, 0.99)},
            "tokens_per_s": {"p50": _quantile(speed, 0.5)},
            "total": {str(status): n for status, n in sorted(self.totals.items())},
        }


class VersionHealth:
    """Outcomes per registry version; updated on the event loop only."""

    def __init__(
        self,
        *,
        window_s: float = 300.0,
        max_samples: int = 2048,
        max_versions: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self._max_samples = max_samples
        self._max_versions = max_versions
        self._clock = clock
        self._versions: OrderedDict[str, VersionWindow] = OrderedDict()

    def record(
        self,
        version: str,
        status: int,
        seconds: float,
        *,
        first_token_s: float | None = None,
        tokens: int = 0,
    ) -> None:
        """One finished request served by ``version`` (``name/3``)."""
        window = self._versions.get(version)
        if window is None:
            window = VersionWindow(deque(maxlen=self._max_samples))
            self._versions[version] = window
            while len(self._versions) > self._max_versions:
                self._versions.popitem(last=False)
        else:
            self._versions.move_to_end(version)
        speed = tokens / seconds if tokens and seconds > 0 else None
        window.outcomes.append(_Outcome(self._clock(), status, seconds, first_token_s, speed))
        window.totals[status] += 1

    def versions(self) -> list[str]:
        return sorted(self._versions)

    def summary(self, version: str, window_s: float | None = None) -> dict[str, Any] | None:
        """``version``'s window (requests, statuses, error ratio, percentiles), if served;
        over the last ``window_s`` seconds if given (at most the kept window)."""
        window = self._versions.get(version)
        if window is None:
            return None
        span = self.window_s if window_s is None else min(window_s, self.window_s)
        return window.summary(self._clock(), span)

    def summaries(self) -> dict[str, dict[str, Any]]:
        now = self._clock()
        return {v: w.summary(now, self.window_s) for v, w in sorted(self._versions.items())}

    def totals(self) -> dict[str, Counter[int]]:
        """Lifetime requests by status, per version kept."""
        return {version: window.totals for version, window in self._versions.items()}


def _quantile(ordered: list[float], q: float) -> float | None:
    """The nearest-rank quantile of sorted values (``None`` for none)."""
    if not ordered:
        return None
    rank = max(1, math.ceil(q * len(ordered)))
    return round(ordered[rank - 1], 6)
