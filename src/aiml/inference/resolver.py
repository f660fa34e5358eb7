"""Model references resolved to an engine's model: once, shared, and never stale for long.

One :class:`ModelResolver` serves every engine. An entry per reference holds what the
registry said (the version, or "not registered") and, per engine, what that engine made of
it, so a model resolved for ``chat`` is warm for ``text-generation`` and the version's
``inference_engine`` tag can pick the engine without another registry call.

* Single-flight: concurrent first requests for one reference share one registry lookup and,
  per engine, one engine check.
* A pinned version (``name/3``) never expires; an alias or "latest" expires after the TTL,
  and so do the engine results kept in its entry, so a moved alias is seen within the TTL.
* When the registry is unreachable, a reference resolved before keeps being served from
  the cache; a new one fails with 503. A registry error is never turned into a guess.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiml.engines.base import Engine
from aiml.errors import InvalidRequest, ModelNotFound, ModelNotServable, RegistryUnavailable
from aiml.registry.mlflow import MlflowRegistry
from aiml.types import ModelRef, RegistryVersion, ResolvedModel, Source

from .stats import Stats

__all__ = ["ModelResolver", "engine_of"]

T = TypeVar("T")
log = logging.getLogger("aiml.resolver")
# After a failed refresh, the stale mapping is re-checked this often rather than per request.
_OUTAGE_RETRY_S = 1.0
# Tags that name an engine's model, for versions registered without an inference_engine tag.
_ENGINE_NAME_TAGS = {
    "ollama_model_name": "ollama",
    "openai_model_name": "openai",
    "gguf_file": "llamacpp",
}


@dataclass(slots=True)
class _Entry:
    version: RegistryVersion | None  # None: the registry does not hold the name
    expires_at: float
    models: dict[str, ResolvedModel] = field(default_factory=dict)


def engine_of(version: RegistryVersion) -> str | None:
    """The engine a registry version is for: its ``inference_engine`` tag, else its name tags."""
    declared = version.tag("inference_engine")
    if declared:
        return declared
    for tag, engine in _ENGINE_NAME_TAGS.items():
        if version.tag(tag):
            return engine
    return None


class ModelResolver:
    """Reference -> registry version -> :class:`ResolvedModel` per engine."""

    def __init__(
        self,
        engines: Mapping[str, Engine],
        registry: MlflowRegistry,
        *,
        ttl_s: float,
        stats: Stats,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engines = engines
        self._registry = registry
        self._ttl_s = ttl_s
        self._stats = stats
        self._clock = clock
        self._entries: dict[ModelRef, _Entry] = {}
        self._inflight: dict[tuple[ModelRef, str | None], asyncio.Future[Any]] = {}
        self._epoch = 0
        # Entries still in use are looked up again this long before they expire, in the
        # background, so no request waits for the registry once a reference is warm.
        self._ahead_s = min(ttl_s / 5, 5.0)
        self._refreshing: set[ModelRef] = set()
        self._background: set[asyncio.Future[None]] = set()
        self._tag_keys = tuple(sorted({k for e in engines.values() for k in e.model_tag_keys}))

    def __len__(self) -> int:
        return sum(len(entry.models) for entry in self._entries.values())

    async def resolve(self, ref: ModelRef, engine: str) -> ResolvedModel:
        """The model ``ref`` names on ``engine``."""
        entry = self._fresh(ref)
        if entry is not None and engine in entry.models:
            self._stats.cache_hits += 1
            if entry.expires_at - self._clock() < self._ahead_s:
                self._refresh_soon(ref, entry)
            return entry.models[engine]
        self._stats.cache_misses += 1
        epoch = self._epoch  # what a clear() after this point must not see repopulated
        if entry is None:
            entry = await self._single((ref, None), lambda: self._lookup(ref, epoch))
        if engine in entry.models:  # a concurrent caller got here first
            return entry.models[engine]
        return await self._single((ref, engine), lambda: self._check(ref, entry, engine, epoch))

    async def version(self, ref: ModelRef) -> RegistryVersion | None:
        """The registry version ``ref`` names, or ``None`` when the name is not registered."""
        entry = self._fresh(ref)
        if entry is None:
            epoch = self._epoch
            entry = await self._single((ref, None), lambda: self._lookup(ref, epoch))
        return entry.version

    async def engine_for(self, ref: ModelRef) -> str:
        """The engine a registered model's version is for (OpenAI- and Ollama-style routes)."""
        version = await self.version(ref)
        if version is None:
            raise ModelNotFound(
                f"model {ref.name!r} is not registered in the MLflow registry at "
                f"{self._registry.uri}; name an engine's own model as '<engine>/<name>'",
                param="model",
            )
        engine = engine_of(version)
        if engine is None:
            raise ModelNotServable(
                f"registered model {version.name!r} version {version.version} has no "
                "inference_engine tag, so aiml cannot tell which engine serves it",
                param="model",
            )
        return engine

    def invalidate(self, ref: ModelRef) -> None:
        """Forget one reference (its model vanished from the engine, say)."""
        self._entries.pop(ref, None)

    def invalidate_name(self, name: str) -> None:
        """Forget every reference to a registered model (an alias moved, a version was added)."""
        for ref in [ref for ref in self._entries if ref.name == name]:
            del self._entries[ref]

    def clear(self) -> int:
        """Forget everything, including lookups in flight; returns how many mappings went."""
        count = len(self)
        self._entries.clear()
        self._inflight.clear()  # later requests start their own lookup
        self._epoch += 1
        return count

    # -- internals ---------------------------------------------------------------------

    def _fresh(self, ref: ModelRef) -> _Entry | None:
        entry = self._entries.get(ref)
        if entry is not None and entry.expires_at > self._clock():
            return entry
        return None

    async def _single(
        self, key: tuple[ModelRef, str | None], work: Callable[[], Awaitable[T]]
    ) -> T:
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(work())
            self._inflight[key] = future
            future.add_done_callback(lambda done: self._forget(key, done))
        # Shielded: one caller hanging up must not cancel the lookup the others wait on.
        result: T = await asyncio.shield(future)
        return result

    def _forget(self, key: tuple[ModelRef, str | None], done: asyncio.Future[Any]) -> None:
        if self._inflight.get(key) is done:
            del self._inflight[key]
        if not done.cancelled():
            done.exception()  # retrieved here so a failure nobody awaited is not logged as lost

    async def _lookup(self, ref: ModelRef, epoch: int) -> _Entry:
        """Ask the registry (once for all engines); keep serving a stale entry in an outage."""
        stale = self._entries.get(ref)
        self._stats.resolutions += 1
        try:
            version = None
            if ref.registry_eligible:
                version = await self._registry.find_version(ref, model_tag_keys=self._tag_keys)
        except RegistryUnavailable:
            if stale is None:
                raise
            self._stats.stale_served += 1
            stale.expires_at = self._clock() + min(self._ttl_s, _OUTAGE_RETRY_S)
            return stale
        ttl = math.inf if ref.pinned else self._ttl_s
        entry = _Entry(version, self._clock() + ttl)
        if epoch == self._epoch:  # a clear() during the lookup wins
            self._entries[ref] = entry
        return entry

    async def _check(
        self, ref: ModelRef, entry: _Entry, engine_name: str, epoch: int
    ) -> ResolvedModel:
        model = await self._engine_model(ref, entry.version, engine_name)
        if epoch == self._epoch:
            entry.models[engine_name] = model
        return model

    async def _engine_model(
        self, ref: ModelRef, version: RegistryVersion | None, engine_name: str
    ) -> ResolvedModel:
        engine = self._engines.get(engine_name)
        if engine is None:
            raise InvalidRequest(f"unknown engine {engine_name!r}", param="engine")
        self._stats.engine_checks += 1
        if version is None:
            return await self._direct(ref, engine)
        return await self._from_registry(version, engine)

    def _refresh_soon(self, ref: ModelRef, entry: _Entry) -> None:
        if ref in self._refreshing:
            return
        self._refreshing.add(ref)
        task = asyncio.ensure_future(self._refresh_ahead(ref, entry, self._epoch))
        self._background.add(task)

        def done(finished: asyncio.Future[None]) -> None:
            self._background.discard(finished)
            self._refreshing.discard(ref)

        task.add_done_callback(done)

    async def _refresh_ahead(self, ref: ModelRef, old: _Entry, epoch: int) -> None:
        """Replace an entry about to expire with a fresh one, engine results included.

        Any failure leaves the old entry to expire as usual: the request path then looks up
        (and reports) for itself.
        """
        self._stats.resolutions += 1
        try:
            version = await self._registry.find_version(ref, model_tag_keys=self._tag_keys)
            fresh = _Entry(version, self._clock() + self._ttl_s)
            if version == old.version:
                fresh.models = dict(old.models)
            else:
                for engine_name in list(old.models):
                    fresh.models[engine_name] = await self._engine_model(ref, version, engine_name)
        except Exception as exc:  # the background must never raise into the void
            log.debug("refreshing %s ahead of its expiry failed: %s", ref, exc)
            return
        if epoch == self._epoch and self._entries.get(ref) is old:
            self._entries[ref] = fresh

    async def _direct(self, ref: ModelRef, engine: Engine) -> ResolvedModel:
        """The note's "way 2": a name the registry does not know is the engine's own name."""
        found = await engine.find_model(ref.name)
        if found is None:
            where = (
                f"no registered model {ref.name!r} in the MLflow registry at {self._registry.uri}"
                if ref.registry_eligible
                else "names with ':' or '/' are engine names, so the registry was not consulted"
            )
            raise ModelNotFound(
                f"model {ref.name!r} not found: {where}, and {engine.location} does not have it",
                param="model_name",
            )
        return ResolvedModel(engine=engine.name, engine_model=found, source=Source.DIRECT)

    async def _from_registry(self, version: RegistryVersion, engine: Engine) -> ResolvedModel:
        declared = engine_of(version)
        if declared and declared != engine.name:
            raise ModelNotServable(
                f"registered model {version.name!r} version {version.version} is registered "
                f"for engine {declared!r}, not {engine.name!r}",
                param="engine",
            )
        engine_model = await engine.model_for_version(version)
        return ResolvedModel(
            engine=engine.name,
            engine_model=engine_model,
            source=Source.REGISTRY,
            registry_name=version.name,
            registry_version=version.version,
            declared_task=version.tag("inference_task"),
            tags=version.merged_tags(),
        )
