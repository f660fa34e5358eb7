"""Model references resolved to an engine's model: once, shared, and never stale for long.

One :class:`ModelResolver` per engine holds the mapping for every executor of that engine,
so a model resolved for ``chat`` is warm for ``text-generation`` too.

* Single-flight: concurrent first requests for one reference share one registry lookup and
  one engine check.
* A pinned version (``name/3``) never expires; an alias or "latest" expires after the TTL,
  so a moved alias or a new version is seen within it.
* When the registry is unreachable, a reference resolved before keeps being served from
  the cache; a new one fails with 503. A registry error is never turned into a guess.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiml.engines.base import Engine
from aiml.errors import ModelNotFound, ModelNotServable, RegistryUnavailable
from aiml.registry.mlflow import MlflowRegistry
from aiml.types import ModelRef, RegistryVersion, ResolvedModel, Source

from .stats import Stats

__all__ = ["ModelResolver"]

# After a failed refresh, the stale mapping is re-checked this often rather than per request.
_OUTAGE_RETRY_S = 1.0


@dataclass(slots=True)
class _Entry:
    model: ResolvedModel
    expires_at: float


class ModelResolver:
    """Reference -> :class:`ResolvedModel` for one engine."""

    def __init__(
        self,
        engine: Engine,
        registry: MlflowRegistry,
        *,
        ttl_s: float,
        stats: Stats,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._registry = registry
        self._ttl_s = ttl_s
        self._stats = stats
        self._clock = clock
        self._entries: dict[ModelRef, _Entry] = {}
        self._inflight: dict[ModelRef, asyncio.Future[ResolvedModel]] = {}
        self._epoch = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def resolve(self, ref: ModelRef) -> ResolvedModel:
        entry = self._entries.get(ref)
        if entry is not None and entry.expires_at > self._clock():
            self._stats.cache_hits += 1
            return entry.model
        self._stats.cache_misses += 1
        future = self._inflight.get(ref)
        if future is None:
            future = asyncio.ensure_future(self._refresh(ref, entry, self._epoch))
            self._inflight[ref] = future
            future.add_done_callback(lambda done: self._forget(ref, done))
        # Shielded: one caller hanging up must not cancel the lookup the others wait on.
        return await asyncio.shield(future)

    def invalidate(self, ref: ModelRef) -> None:
        """Forget one reference (its model vanished from the engine, say)."""
        self._entries.pop(ref, None)

    def invalidate_name(self, name: str) -> None:
        """Forget every reference to a registered model (an alias moved, a version was added)."""
        for ref in [ref for ref in self._entries if ref.name == name]:
            del self._entries[ref]

    def clear(self) -> int:
        """Forget everything, including lookups in flight; returns how many entries went."""
        count = len(self._entries)
        self._entries.clear()
        self._inflight.clear()  # later requests start their own lookup
        self._epoch += 1
        return count

    def _forget(self, ref: ModelRef, done: asyncio.Future[ResolvedModel]) -> None:
        if self._inflight.get(ref) is done:
            del self._inflight[ref]
        if not done.cancelled():
            done.exception()  # retrieved here so a failure nobody awaited is not logged as lost

    async def _refresh(self, ref: ModelRef, stale: _Entry | None, epoch: int) -> ResolvedModel:
        """Look ``ref`` up; ``epoch`` is the cache generation when the lookup was asked for."""
        try:
            model = await self._lookup(ref)
        except RegistryUnavailable:
            if stale is None:
                raise
            self._stats.stale_served += 1
            stale.expires_at = self._clock() + min(self._ttl_s, _OUTAGE_RETRY_S)
            return stale.model
        if epoch == self._epoch:  # a clear() during the lookup wins
            ttl = math.inf if ref.pinned else self._ttl_s
            self._entries[ref] = _Entry(model, self._clock() + ttl)
        return model

    async def _lookup(self, ref: ModelRef) -> ResolvedModel:
        self._stats.resolutions += 1
        version = None
        if ref.registry_eligible:
            version = await self._registry.find_version(
                ref, model_tag_keys=self._engine.model_tag_keys
            )
        if version is None:
            return await self._direct(ref)
        return await self._from_registry(version)

    async def _direct(self, ref: ModelRef) -> ResolvedModel:
        """The note's "way 2": a name the registry does not know is the engine's own name."""
        found = await self._check(ref.name)
        if found is None:
            where = (
                f"no registered model {ref.name!r} in the MLflow registry at {self._registry.uri}"
                if ref.registry_eligible
                else "names with ':' or '/' are engine names, so the registry was not consulted"
            )
            raise ModelNotFound(
                f"model {ref.name!r} not found: {where}, and {self._engine.location} "
                "does not have it",
                param="model_name",
            )
        return ResolvedModel(engine=self._engine.name, engine_model=found, source=Source.DIRECT)

    async def _from_registry(self, version: RegistryVersion) -> ResolvedModel:
        declared_engine = version.tag("inference_engine")
        if declared_engine and declared_engine != self._engine.name:
            raise ModelNotServable(
                f"registered model {version.name!r} version {version.version} is registered "
                f"for engine {declared_engine!r}, not {self._engine.name!r}",
                param="engine",
            )
        self._stats.engine_checks += 1
        engine_model = await self._engine.model_for_version(version)
        return ResolvedModel(
            engine=self._engine.name,
            engine_model=engine_model,
            source=Source.REGISTRY,
            registry_name=version.name,
            registry_version=version.version,
            declared_task=version.tag("inference_task"),
            tags=version.merged_tags(),
        )

    async def _check(self, name: str) -> str | None:
        self._stats.engine_checks += 1
        return await self._engine.find_model(name)
