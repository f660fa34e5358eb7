"""A registry alias's canary run from aiml: started, stepped, stopped, promoted and
tripped, each a write of the version tags canary.py and guard.py define, so MLflow shows it
and every front reads it through its webhook or change feed.

Beside the catalog (which moves aliases) rather than in it: a canary's promotion is a move
like any other and goes through :meth:`ModelCatalog.set_alias`, with its check.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from aiml.errors import InvalidRequest, ModelNotFound
from aiml.registry.mlflow import MlflowRegistry
from aiml.registry.references import validate_alias, validate_registry_name
from aiml.types import ModelRef

from .canary import Canary, RunningCanary, canary_of, canary_tag, make_plan
from .catalog import ModelCatalog
from .guard import GUARD_TAG_PREFIX, GuardTrip

__all__ = ["CanaryRollouts"]


class CanaryRollouts:
    """The canary operations of the admin API, the CLI, the guard and the planner."""

    def __init__(
        self,
        catalog: ModelCatalog,
        registry: MlflowRegistry,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``clock`` (Unix seconds) dates a staged canary's steps."""
        self._catalog = catalog
        self._registry = registry
        self._clock = clock

    async def start(
        self,
        name: str,
        alias: str,
        version: int,
        weight: float | None = None,
        *,
        plan: list[float] | None = None,
        dwell_s: float = 600.0,
        force: bool = False,
    ) -> Canary:
        """Send ``weight`` percent of ``name@alias``'s callers to ``version`` (or change the
        weight of the canary already running); with ``plan``, start at its first step and
        step up every ``dwell_s`` while the guard holds (rollout_plan.py). The candidate
        must serve what the alias serves, as for a move (409 otherwise, unless ``force``);
        the canary is the version tag of canary.py on the alias's version, so it shows in
        MLflow and ends when the alias moves."""
        validate_registry_name(name, param="name")
        validate_alias(alias)
        staged = make_plan(plan, dwell_s, self._clock()) if plan is not None else None
        if weight is None:
            if staged is None:
                raise InvalidRequest("a canary needs a weight or a plan", param="weight")
            weight = staged.steps[0]
        if not 0 <= weight <= 100:
            raise InvalidRequest("a canary's weight is a percent, 0 to 100", param="weight")
        canary = Canary(version, weight, staged)
        current, target = await self._catalog.alias_versions(name, alias, version)
        if current is None:
            raise ModelNotFound(f"registered model {name!r} has no alias {alias!r}", param="alias")
        if current.version == version:
            raise InvalidRequest(f"{name}@{alias} is version {version} already", param="version")
        if not force:
            await self._catalog.moves.check(alias, current, target)
        await self._registry.set_version_tag(
            name, current.version, canary_tag(alias), canary.tag_value()
        )
        self._catalog.changed(name)
        return canary

    async def current(self, name: str, alias: str) -> tuple[int, Canary | None]:
        """The version ``name@alias`` points to, and the canary it declares, if any."""
        validate_registry_name(name, param="name")
        validate_alias(alias)
        current = await self._registry.find_version(
            ModelRef(name, alias=alias), model_tag_keys=self._catalog.tag_keys
        )
        assert current is not None  # an alias lookup raises when absent
        return current.version, canary_of(current, alias)

    async def advance(self, running: RunningCanary) -> bool:
        """A staged canary's next step, as the planner decided it: the plan's next weight
        from now on, or past its last step, the alias promoted to the candidate. Only if
        the registry still holds the canary ``running`` was read from (another front may
        have stepped it already: then ``False``, and nothing is written)."""
        current, canary = await self.current(running.name, running.alias)
        seen = (running.stable, running.candidate, running.weight, running.plan)
        if (
            canary is None
            or canary.plan is None
            or seen != (current, canary.version, canary.weight, canary.plan)
        ):
            return False
        weight = canary.plan.after(canary.weight)
        if weight is None:
            await self.promote(running.name, running.alias)
            return True
        stepped = Canary(canary.version, weight, replace(canary.plan, since=self._clock()))
        await self._registry.set_version_tag(
            running.name, current, canary_tag(running.alias), stepped.tag_value()
        )
        self._catalog.changed(running.name)
        return True

    async def stop(self, name: str, alias: str) -> int | None:
        """End ``name@alias``'s canary (every caller on the alias's version again); the
        candidate's version it sent callers to, or ``None`` when none ran."""
        current, canary = await self.current(name, alias)
        if canary is None:
            return None
        await self._registry.delete_version_tag(name, current, canary_tag(alias))
        self._catalog.changed(name)
        return canary.version

    async def promote(self, name: str, alias: str, *, force: bool = False) -> int:
        """Move ``name@alias`` to its canary's candidate (checked as any move) and end the
        canary; the version the alias now points to."""
        current, canary = await self.current(name, alias)
        if canary is None:
            raise InvalidRequest(f"{name}@{alias} runs no canary to promote", param="alias")
        await self._catalog.set_alias(name, alias, canary.version, force=force)
        await self._registry.delete_version_tag(name, current, canary_tag(alias))
        self._catalog.changed(name)
        return canary.version

    async def trip(self, trip: GuardTrip) -> None:
        """The guard's verdict: the canary's weight to 0, and why on the candidate version
        (``aiml.guard.<alias>``), both in the registry, so every front and MLflow's UI see
        them; the alias stays where it is."""
        canary = trip.canary
        weight_zero = Canary(canary.candidate, 0).tag_value()
        await self._registry.set_version_tag(
            canary.name, canary.stable, canary_tag(canary.alias), weight_zero
        )
        await self._registry.set_version_tag(
            canary.name, canary.candidate, f"{GUARD_TAG_PREFIX}{canary.alias}", trip.reason[:5000]
        )
        self._catalog.changed(canary.name)
