"""The canary guard: a candidate that does worse than its alias's version is taken out at once.

Every ``check_every_s`` the guard compares, for each canary running with a weight above 0,
the candidate's health with the stable version's over the last ``window_s`` seconds
(:class:`~aiml.observability.version_health.VersionHealth`, the same numbers ``/metrics``
shows). Once the candidate has served ``min_requests`` in the window, it trips when its 5xx
ratio passes the stable version's by more than ``max_error_excess``, or its p99 latency is
more than ``max_p99_ratio`` times the stable version's (and at least ``min_p99_excess_s``
more: a few milliseconds' noise on a fast model is no reason). A trip sets the canary's
weight to 0 in the registry and writes the reason on the candidate version (both tags, so
MLflow's UI shows them, and every front reads the weight through its change feed or
webhook), and logs it; the guard never moves an alias.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiml.observability.version_health import VersionHealth

from .canary import RunningCanary

__all__ = ["GUARD_TAG_PREFIX", "CanaryGuard", "GuardLimits", "GuardTrip"]

#: The version tag where a trip's reason is written, on the candidate (``aiml.guard.<alias>``).
GUARD_TAG_PREFIX = "aiml.guard."

log = logging.getLogger("aiml.guard")


@dataclass(frozen=True, slots=True)
class GuardLimits:
    """When a candidate is worse enough to be taken out (defaults fit the bundled models:
    a candidate answering errors trips within its first ten requests in a minute)."""

    window_s: float = 60.0
    min_requests: int = 10
    max_error_excess: float = 0.10
    max_p99_ratio: float = 3.0
    min_p99_excess_s: float = 0.5


@dataclass(frozen=True, slots=True)
class GuardTrip:
    canary: RunningCanary
    reason: str


#: Sets the canary's weight to 0 and records why (the catalog's ``trip_canary``).
Trip = Callable[[GuardTrip], Awaitable[None]]


class CanaryGuard:
    """Watches the running canaries; trips the ones whose candidate does worse."""

    def __init__(
        self,
        health: VersionHealth,
        running: Callable[[], Iterable[RunningCanary]],
        trip: Trip,
        *,
        limits: GuardLimits | None = None,
        check_every_s: float = 1.0,
    ) -> None:
        self._health = health
        self._running = running
        self._trip = trip
        self.limits = limits or GuardLimits()
        self._every_s = check_every_s
        self._task: asyncio.Task[None] | None = None
        self._tripped: set[tuple[str, str, int]] = set()
        self.trips: list[GuardTrip] = []
        self._followers: list[Callable[[], Awaitable[Any]]] = []

    def verdict(self, canary: RunningCanary) -> str | None:
        """Why ``canary``'s candidate must be taken out now, or ``None``."""
        limits = self.limits
        candidate = self._health.summary(f"{canary.name}/{canary.candidate}", limits.window_s)
        if candidate is None or candidate["requests"] < limits.min_requests:
            return None
        stable = self._health.summary(f"{canary.name}/{canary.stable}", limits.window_s)
        stable_errors = stable["error_ratio"] if stable else 0.0
        excess = candidate["error_ratio"] - stable_errors
        if excess > limits.max_error_excess:
            return (
                f"5xx ratio {candidate['error_ratio']:.0%} against the stable version's "
                f"{stable_errors:.0%} over {candidate['requests']} requests in "
                f"{limits.window_s:g} s"
            )
        if stable is None or stable["requests"] < limits.min_requests:
            return None
        theirs, ours = stable["latency_s"]["p99"], candidate["latency_s"]["p99"]
        if (
            ours is not None
            and theirs is not None
            and ours > theirs * limits.max_p99_ratio
            and ours - theirs >= limits.min_p99_excess_s
        ):
            return (
                f"p99 latency {ours:.3f} s against the stable version's {theirs:.3f} s "
                f"over {limits.window_s:g} s"
            )
        return None

    async def check(self) -> list[GuardTrip]:
        """One round: trip every running canary whose candidate does worse."""
        tripped: list[GuardTrip] = []
        for canary in self._running():
            key = (canary.name, canary.alias, canary.candidate)
            if canary.weight <= 0 or key in self._tripped:
                continue
            reason = self.verdict(canary)
            if reason is None:
                continue
            trip = GuardTrip(canary, reason)
            log.warning(
                "canary guard: %s@%s's candidate version %d taken out (weight 0): %s",
                canary.name, canary.alias, canary.candidate, reason,
            )  # fmt: skip
            self._tripped.add(key)
            try:
                await self._trip(trip)
            except Exception:
                self._tripped.discard(key)  # the registry refused: try again next round
                log.exception("canary guard: could not take out %s@%s", canary.name, canary.alias)
                continue
            tripped.append(trip)
            self.trips.append(trip)
            del self.trips[:-100]  # the last hundred, for stats and the console
        return tripped

    def then(self, follow: Callable[[], Awaitable[Any]]) -> None:
        """Run ``follow`` after each round (the rollout planner: it steps only canaries the
        round has let stand)."""
        self._followers.append(follow)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def report(self) -> list[dict[str, Any]]:
        return [
            {"name": t.canary.name, "alias": t.canary.alias, "stable": t.canary.stable,
             "candidate": t.canary.candidate, "reason": t.reason}
            for t in self.trips
        ]  # fmt: skip

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._every_s)
            for work in (self.check, *self._followers):
                try:
                    await work()
                except Exception:  # the watch must outlive any one round
                    log.exception("canary guard: a round failed")
