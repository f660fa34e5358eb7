"""Model references resolved to an engine's model: once, shared, and never stale for long.

One :class:`ModelResolver` serves every engine. An entry per reference holds what the
registry said (the version, or "not registered") and, per engine, what that engine made of
it, so a model resolved for ``chat`` is warm for ``text-generation`` and the version's
``inference_engine`` tag can pick the engine without another registry call.

* Single-flight: concurrent first requests for one reference share one registry lookup and,
  per engine, one engine check.
* A pinned version (``name/3``) never expires; an alias or "latest" is fresh for the TTL,
  and so are the engine results kept in its entry. Past the TTL a known entry is still
  served at once, for up to ``stale_s`` more, while one lookup in the background replaces
  it (stale-while-revalidate): a request waits for the registry only for a reference never
  resolved, or one unused for longer than TTL + ``stale_s``. So a moved alias is seen once
  that refresh has answered; the first request past the TTL still gets the old mapping.
* Invalidation wins: a lookup in flight when its name is invalidated (or the cache cleared)
  still answers the callers already waiting on it, but its result is not kept, and later
  callers start a lookup of their own.
* When the registry is unreachable, a reference resolved before keeps being served from
  the cache (asked again at most once a second); a new one fails with 503. A registry error
  is never turned into a guess.
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
from aiml.engines.table import engine_for_name_tags
from aiml.errors import InvalidRequest, ModelNotFound, ModelNotServable, RegistryUnavailable
from aiml.observability.stats import Stats
from aiml.registry.calls import REGISTRY_RETRY_S
from aiml.registry.mlflow import MlflowRegistry
from aiml.types import ModelRef, RegistryVersion, ResolvedModel, Source

__all__ = ["ModelResolver", "engine_of"]

T = TypeVar("T")
log = logging.getLogger("aiml.resolver")
# Tags that name an engine's model, for versions registered without an inference_engine tag.
_ENGINE_NAME_TAGS = engine_for_name_tags()


@dataclass(slots=True)
class _Entry:
    version: RegistryVersion | None  # None: the registry does not hold the name
    expires_at: float  # fresh until then
    stale_until: float  # past expiry, still served at once (while a refresh runs) until then
    models: dict[str, ResolvedModel] = field(default_factory=dict)
    retry_at: float = -math.inf  # no refresh before then: the last one failed


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
        stale_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engines = engines
        self._registry = registry
        self._ttl_s = ttl_s
        self._stale_s = stale_s
        self._stats = stats
        self._clock = clock
        self._entries: dict[ModelRef, _Entry] = {}
        self._inflight: dict[tuple[ModelRef, str | None], asyncio.Future[Any]] = {}
        # Entries still in use are looked up again this long before they expire, in the
        # background, so a steadily used reference is never even served stale.
        self._ahead_s = min(ttl_s / 5, 5.0)
        self._refreshing: dict[ModelRef, asyncio.Future[None]] = {}
        self._background: set[asyncio.Future[None]] = set()
        self._tag_keys = tuple(sorted({k for e in engines.values() for k in e.model_tag_keys}))

    def __len__(self) -> int:
        return sum(len(entry.models) for entry in self._entries.values())

    async def resolve(self, ref: ModelRef, engine: str) -> ResolvedModel:
        """The model ``ref`` names on ``engine``."""
        entry = self._usable(ref)
        if entry is not None and engine in entry.models:
            self._stats.cache_hits += 1
            return entry.models[engine]
        self._stats.cache_misses += 1
        found = entry if entry is not None else await self._lookup_once(ref)
        if engine in found.models:  # a concurrent caller got here first
            return found.models[engine]
        return await self._single((ref, engine), lambda: self._check(ref, found, engine))

    async def version(self, ref: ModelRef) -> RegistryVersion | None:
        """The registry version ``ref`` names, or ``None`` when the name is not registered."""
        entry = self._usable(ref)
        if entry is None:
            entry = await self._lookup_once(ref)
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
        self._forget(lambda cached: cached == ref)

    def invalidate_name(self, name: str) -> None:
        """Forget every reference to a registered model (an alias moved, a version was added)."""
        self._forget(lambda cached: cached.name == name)

    def clear(self) -> int:
        """Forget everything, including lookups in flight; returns how many mappings went."""
        count = len(self)
        self._forget(lambda cached: True)
        return count

    # -- internals ---------------------------------------------------------------------

    def _forget(self, matches: Callable[[ModelRef], bool]) -> None:
        """Drop the matching entries and the lookups in flight for them.

        A lookup dropped here still answers the callers already waiting on it (they asked
        before the change), but it is no longer current, so it does not store its result,
        and later callers start their own lookup instead of joining it. An entry dropped
        here is unreachable, so an engine check or refresh still holding it changes nothing.
        """
        for ref in [ref for ref in self._entries if matches(ref)]:
            del self._entries[ref]
        for key in [key for key in self._inflight if matches(key[0])]:
            del self._inflight[key]
        for ref in [ref for ref in self._refreshing if matches(ref)]:
            del self._refreshing[ref]

    def _usable(self, ref: ModelRef) -> _Entry | None:
        """The entry to answer from at once, fresh or not too stale; starts its refresh."""
        entry = self._entries.get(ref)
        if entry is None:
            return None
        now = self._clock()
        if now >= entry.stale_until:
            return None
        if now >= entry.expires_at - self._ahead_s and now >= entry.retry_at:
            self._refresh_soon(ref, entry)
        return entry

    async def _lookup_once(self, ref: ModelRef) -> _Entry:
        return await self._single((ref, None), lambda: self._lookup(ref))

    async def _single(
        self, key: tuple[ModelRef, str | None], work: Callable[[], Awaitable[T]]
    ) -> T:
        """``work`` once for all concurrent callers, as a task of its own kept under ``key``
        while it runs (so the work can tell whether it is still current)."""
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(work())
            self._inflight[key] = future
            future.add_done_callback(lambda done: self._done(key, done))
        # Shielded: one caller hanging up must not cancel the lookup the others wait on.
        result: T = await asyncio.shield(future)
        return result

    def _done(self, key: tuple[ModelRef, str | None], done: asyncio.Future[Any]) -> None:
        if self._inflight.get(key) is done:
            del self._inflight[key]
        if not done.cancelled():
            done.exception()  # retrieved here so a failure nobody awaited is not logged as lost

    def _new_entry(self, ref: ModelRef, version: RegistryVersion | None) -> _Entry:
        if ref.pinned:
            return _Entry(version, math.inf, math.inf)
        expires_at = self._clock() + self._ttl_s
        return _Entry(version, expires_at, expires_at + self._stale_s)

    async def _find(self, ref: ModelRef) -> RegistryVersion | None:
        if not ref.registry_eligible:  # an engine's own name: the registry cannot hold it
            return None
        return await self._registry.find_version(ref, model_tag_keys=self._tag_keys)

    async def _lookup(self, ref: ModelRef) -> _Entry:
        """Ask the registry (once for all engines); keep serving a stale entry in an outage."""
        stale = self._entries.get(ref)
        self._stats.resolutions += 1
        try:
            version = await self._find(ref)
        except RegistryUnavailable:
            if stale is None:
                raise
            self._outage(stale)
            return stale
        entry = self._new_entry(ref, version)
        if self._inflight.get((ref, None)) is asyncio.current_task():  # not invalidated since
            self._entries[ref] = entry
        return entry

    def _outage(self, entry: _Entry) -> None:
        """The registry is unreachable: serve ``entry`` on, and ask again in a second."""
        self._stats.stale_served += 1
        entry.retry_at = self._clock() + min(self._ttl_s, REGISTRY_RETRY_S)
        entry.stale_until = max(entry.stale_until, entry.retry_at + self._stale_s)

    async def _check(self, ref: ModelRef, entry: _Entry, engine_name: str) -> ResolvedModel:
        model = await self._engine_model(ref, entry.version, engine_name)
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
        if ref in self._refreshing:  # one refresh per reference, whoever asks
            return
        task = asyncio.ensure_future(self._refresh(ref, entry))
        self._refreshing[ref] = task
        self._background.add(task)

        def done(finished: asyncio.Future[None]) -> None:
            self._background.discard(finished)
            if self._refreshing.get(ref) is finished:
                del self._refreshing[ref]

        task.add_done_callback(done)

    async def _refresh(self, ref: ModelRef, old: _Entry) -> None:
        """Replace an entry expiring or expired with a fresh one, engine results included.

        In an outage the old entry is served on. Any other failure (the alias was deleted,
        the engine lacks the new version's model) ends the old entry's service at its
        expiry: the request path then looks up, and reports, for itself.
        """
        self._stats.resolutions += 1
        try:
            version = await self._find(ref)
            fresh = self._new_entry(ref, version)
            if version == old.version:
                fresh.models = dict(old.models)
            else:
                for engine_name in list(old.models):
                    fresh.models[engine_name] = await self._engine_model(ref, version, engine_name)
        except RegistryUnavailable:
            if self._entries.get(ref) is old:
                self._outage(old)
            return
        except Exception as exc:  # the background must never raise into the void
            log.debug("refreshing %s failed: %s", ref, exc)
            old.stale_until = min(old.stale_until, old.expires_at)
            old.retry_at = self._clock() + REGISTRY_RETRY_S
            return
        if self._entries.get(ref) is old:  # neither invalidated nor replaced meanwhile
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
