"""A staged canary's plan carried out: its weight steps up (5% -> 25% -> 100%, say) once
each step has dwelt its time and the guard holds, and past the last step the alias is
promoted to the candidate.

A step is taken on evidence, never on time alone: the candidate must have served the
guard's ``min_requests`` within its window on this front, and the guard must have no
verdict against it; a canary nobody calls waits at its step. Every front runs a planner
over the canaries its own traffic resolves; the first to find a step due writes it (a
re-read of the registry first, so a front a step behind writes nothing: canary_rollouts.py),
and the rest read it through the webhook or the change feed. The guard's trip writes
weight 0, which ends the plan. Runs after each of the guard's rounds, on the same loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiml.observability.version_health import VersionHealth

from .canary import RunningCanary
from .guard import CanaryGuard

__all__ = ["PlanStep", "RolloutPlanner"]

log = logging.getLogger("aiml.rollout")

#: Writes the canary's next step (or promotes it); ``False`` when the registry no longer
#: holds the canary as read (canary_rollouts.py's ``advance``).
Advance = Callable[[RunningCanary], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class PlanStep:
    canary: RunningCanary
    weight: float | None  # the weight it stepped to; ``None``: promoted


class RolloutPlanner:
    """Takes each staged canary's next step once it is due."""

    def __init__(
        self,
        health: VersionHealth,
        guard: CanaryGuard,
        running: Callable[[], Iterable[RunningCanary]],
        advance: Advance,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``clock`` is Unix seconds, as a plan's ``since`` is (every front reads it)."""
        self._health = health
        self._guard = guard
        self._running = running
        self._advance = advance
        self._clock = clock
        self.steps: list[PlanStep] = []

    def waiting_for(self, canary: RunningCanary) -> str | None:
        """What ``canary``'s next step waits for, or ``None`` when it is due now."""
        plan = canary.plan
        if plan is None or canary.weight <= 0:
            return "no plan" if plan is None else "the guard took it out"
        left = plan.since + plan.dwell_s - self._clock()
        if left > 0:
            return f"its dwell: {left:.0f} s more"
        limits = self._guard.limits
        seen = self._health.summary(f"{canary.name}/{canary.candidate}", limits.window_s)
        served = seen["requests"] if seen else 0
        if served < limits.min_requests:
            return (
                f"traffic: the candidate served {served} of the {limits.min_requests} requests "
                f"in {limits.window_s:g} s the guard needs to judge it"
            )
        if self._guard.verdict(canary) is not None:
            return "the guard"
        return None

    async def check(self) -> list[PlanStep]:
        """One round: every due step taken."""
        taken: list[PlanStep] = []
        for canary in self._running():
            if self.waiting_for(canary) is not None:
                continue
            assert canary.plan is not None  # waiting_for says so
            step = PlanStep(canary, canary.plan.after(canary.weight))
            try:
                if not await self._advance(canary):
                    continue  # another front stepped it first
            except Exception:  # the registry refused (or the promotion's check did): next round
                log.exception("rollout: could not step %s@%s", canary.name, canary.alias)
                continue
            log.info(
                "rollout: %s@%s's candidate version %d %s",
                canary.name, canary.alias, canary.candidate,
                "promoted: the alias points to it" if step.weight is None
                else f"stepped to {step.weight:g}%",
            )  # fmt: skip
            taken.append(step)
            self.steps.append(step)
            del self.steps[:-100]  # the last hundred, for stats and the console
        return taken

    def report(self) -> list[dict[str, Any]]:
        return [
            {"name": s.canary.name, "alias": s.canary.alias, "stable": s.canary.stable,
             "candidate": s.canary.candidate, "from": s.canary.weight, "to": s.weight,
             "promoted": s.weight is None}
            for s in self.steps
        ]  # fmt: skip
