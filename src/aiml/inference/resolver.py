"""Model references resolved to an engine's model: once, shared, and never served stale
while the registry answers.

One :class:`ModelResolver` serves every engine. An entry per reference holds what the
registry said (the version, or "not registered") and, per engine, what that engine made of
it, so a model resolved for ``chat`` is warm for ``text-generation`` and the version's
``inference_engine`` tag can pick the engine without another registry call.

* Single-flight: concurrent requests for a reference share one lookup, and one check per engine.
* A pinned version (``name/3``) never expires; an alias or "latest" is fresh for the TTL,
  and so are the engine results kept in its entry. An entry in use is looked up again in
  the background in the last fifth of its TTL (at most 5 s before expiry), so a steadily
  used reference never reaches expiry (refresh-after-write before expire-after-write).
* Past the TTL an entry is not served as it is: the request waits for the lookup and gets
  the registry's answer. So a moved alias is never served later than TTL plus the
  registry's answer time, even to the first request past the TTL.
* Stale only while the registry fails or is slow: when that lookup fails (unreachable) or
  has not answered within ``wait_s``, the expired entry is served (``stale_served``), and
  later requests get it at once while one lookup in the background (at most once a second)
  replaces it when the registry answers. Each failed re-check keeps it servable ``stale_s``
  longer, so a mapping in use outlives an outage of any length (stale beats down); one
  unused for ``stale_s`` of outage is no longer vouched for: the registry's answer, or 503.
  A reference never resolved gets 503 in an outage. A registry error is never a guess.
* Invalidation wins: a lookup in flight when its name is invalidated (or the cache cleared)
  still answers the callers already waiting on it, but its result is not kept (nor the entry
  before it served in its stead), and later callers start a lookup of their own.
* Given a ``vet``, an alias moved to a version that cannot serve what its last good version
  serves stays on that one, loudly, until it names one that can (:mod:`.alias_holds`);
  a canary's candidate takes its share only once it passed the same check
  (:mod:`.canary_candidates`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from aiml.engines.base import Engine
from aiml.errors import InvalidRequest, ModelNotFound, ModelNotServable, RegistryUnavailable
from aiml.observability.stats import Stats
from aiml.registry.calls import REGISTRY_RETRY_S
from aiml.registry.mlflow import MlflowRegistry
from aiml.types import ModelRef, RegistryVersion, ResolvedModel

from .alias_holds import AliasHolds, Vet
from .canary import Canary, RunningCanary, canary_of, chooses_candidate
from .canary_candidates import CanaryCandidates
from .engine_models import direct_model, engine_of, registry_model

__all__ = ["ModelResolver"]

T = TypeVar("T")
log = logging.getLogger("aiml.resolver")


@dataclass(slots=True)
class _Entry:
    version: RegistryVersion | None  # None: the registry does not hold the name
    expires_at: float  # fresh until then
    stale_until: float  # past expiry, served while the registry fails or is slow until then
    models: dict[str, ResolvedModel] = field(default_factory=dict)
    retry_at: float = -math.inf  # no background lookup before then: the last one failed
    failing: bool = False  # its last lookup failed or was slow: past expiry, served at once
    #: An alias's canary (canary.py): its weight, and the candidate version's own entry
    #: (pinned: its engine answers stand as long as this entry does).
    canary: Canary | None = None
    candidate: _Entry | None = None


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
        wait_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        vet: Vet | None = None,
    ) -> None:
        self._engines = engines
        self._registry = registry
        self._ttl_s = ttl_s
        self._stale_s = stale_s
        self._wait_s = wait_s
        self._stats = stats
        self._clock = clock
        self._entries: dict[ModelRef, _Entry] = {}
        self._inflight: dict[tuple[ModelRef, str | None], asyncio.Future[Any]] = {}
        # Entries still in use are looked up again this long before they expire, in the
        # background, so a steadily used reference never waits for the registry.
        self._ahead_s = min(ttl_s / 5, 5.0)
        self._refreshing: dict[ModelRef, asyncio.Future[None]] = {}
        self._background: set[asyncio.Future[None]] = set()
        self._tag_keys = tuple(sorted({k for e in engines.values() for k in e.model_tag_keys}))
        #: Aliases' last good versions and their holds; ``None``: every move is served.
        # A new version's check is waited for within half the lookup's own bound.
        self.holds = AliasHolds(vet, wait_s=wait_s / 2) if vet is not None else None
        #: A canary declared in the registry splits only once its candidate passed the same.
        self.candidates = CanaryCandidates(vet, wait_s=wait_s / 2)

    def __len__(self) -> int:
        return sum(len(entry.models) for entry in self._entries.values())

    async def resolve(
        self, ref: ModelRef, engine: str, *, affinity: str | None = None
    ) -> ResolvedModel:
        """The model ``ref`` names on ``engine``; under a canary, the version this caller's
        ``affinity`` falls to (sticky; no affinity: a fresh draw per request)."""
        found, cached = await self._current(ref)
        entry = _chosen(ref, found, affinity)
        model = entry.models.get(engine)
        if cached and model is not None:
            self._stats.cache_hits += 1
            return model
        self._stats.cache_misses += 1
        if model is not None:  # the same version as before, or a concurrent caller's check
            return model
        key = (ref, engine if entry is found else f"{engine} candidate")
        return await self._single(key, lambda: self._check(ref, entry, engine))

    async def version(self, ref: ModelRef) -> RegistryVersion | None:
        """The registry version ``ref`` names, or ``None`` when the name is not registered."""
        entry, _ = await self._current(ref)
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

    def canaries(self) -> list[RunningCanary]:
        """The canaries of the aliases resolved here, as the guard watches them."""
        found = [(ref, e.version, e.canary, e.candidate) for ref, e in self._entries.items()]
        return [
            RunningCanary(
                ref.name, ref.alias, v.version, c.version.version, canary.weight, canary.plan
            )
            for ref, v, canary, c in found
            if ref.alias and v and canary and c and c.version
        ]

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

    async def _current(self, ref: ModelRef) -> tuple[_Entry, bool]:
        """The entry to answer from, and whether the cache gave it without a lookup."""
        entry = self._entries.get(ref)
        if entry is None:
            return await self._lookup_once(ref), False
        now = self._clock()
        if now < entry.expires_at:
            if now >= entry.expires_at - self._ahead_s and now >= entry.retry_at:
                self._refresh_soon(ref, entry)
            return entry, True
        if now >= entry.stale_until:  # too old to stand in: the registry's answer, or 503
            return await self._lookup_once(ref), False
        if entry.failing:  # the registry failed or was slow just now: not waited on again
            if now >= entry.retry_at:
                self._refresh_soon(ref, entry)
            return self._stale(entry), True
        return await self._wait_for_lookup(ref, entry), False

    async def _wait_for_lookup(self, ref: ModelRef, expired: _Entry) -> _Entry:
        """The registry's answer for an expired entry; the entry itself only if the lookup
        fails (unreachable) or has not answered within ``wait_s`` (it goes on, and lands)."""
        lookup = self._start((ref, None), lambda: self._lookup(ref))
        done, _ = await asyncio.wait({lookup}, timeout=self._wait_s)
        if done:
            try:
                return lookup.result()
            except RegistryUnavailable:
                pass  # the lookup marked the entry failing
        else:
            expired.failing = True
            self._refresh_soon(ref, expired)  # joins the lookup; warms the engines once it lands
        if self._entries.get(ref) is not expired:  # invalidated meanwhile: it must not answer
            return await self._lookup_once(ref)
        return self._stale(expired)

    def _stale(self, entry: _Entry) -> _Entry:
        self._stats.stale_served += 1
        return entry

    async def _lookup_once(self, ref: ModelRef) -> _Entry:
        return await self._single((ref, None), lambda: self._lookup(ref))

    async def _single(
        self, key: tuple[ModelRef, str | None], work: Callable[[], Awaitable[T]]
    ) -> T:
        """``work`` once for all concurrent callers."""
        # Shielded: one caller hanging up must not cancel the lookup the others wait on.
        result: T = await asyncio.shield(self._start(key, work))
        return result

    def _start(
        self, key: tuple[ModelRef, str | None], work: Callable[[], Awaitable[T]]
    ) -> asyncio.Future[T]:
        """The run of ``work`` in flight under ``key``, started if none is: a task of its own,
        kept under ``key`` while it runs (so the work can tell whether it is still current)."""
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(work())
            self._inflight[key] = future
            future.add_done_callback(lambda done: self._done(key, done))
        return future

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
        """Ask the registry (once for all engines) and keep its answer, if still current."""
        old = self._entries.get(ref)
        self._stats.resolutions += 1
        try:
            version = await self._find(ref)
        except RegistryUnavailable:
            if old is not None and self._entries.get(ref) is old:
                self._outage(old)
            raise
        named = version
        if self.holds is not None and ref.alias is not None and version is not None:
            current = self._inflight.get((ref, None)) is asyncio.current_task()
            version = await self.holds.serve(ref, version, current=current, revisit=self._revisit)
        entry = self._new_entry(ref, version)
        if old is not None and version == old.version:
            entry.models = dict(old.models)  # the same version: the engines' answers stand
        if ref.alias is not None and version is not None and version is named:
            # Held on its last good version, the alias has no canary: the registry's canary
            # tag is on the version it names now (a move leaves the old one's tag behind).
            await self._add_canary(ref, entry, old)
        if self._inflight.get((ref, None)) is asyncio.current_task():  # not invalidated since
            self._entries[ref] = entry
        return entry

    def _revisit(self, ref: ModelRef) -> None:
        """A new version of alias ``ref`` passed its check: look it up again now, so it
        serves (a lookup in flight read the registry before the verdict: it is not kept)."""
        if ref in self._entries:
            self._inflight.pop((ref, None), None)
            self._start((ref, None), lambda: self._lookup(ref))

    async def _add_canary(self, ref: ModelRef, entry: _Entry, old: _Entry | None) -> None:
        """The canary the alias's version declares, with its candidate's entry (kept from
        ``old`` while it names the same candidate; else found and checked by
        :class:`CanaryCandidates`, which says why one is no canary)."""
        assert entry.version is not None
        assert ref.alias is not None
        canary = canary_of(entry.version, ref.alias)
        if canary is None:
            return
        kept = old.candidate if old is not None else None
        if kept is not None and kept.version is not None and kept.version.version == canary.version:
            entry.canary, entry.candidate = canary, kept  # a new weight, the same candidate
            return
        revisit = partial(self._revisit, ref)
        found = await self.candidates.find(ref.alias, entry.version, canary, self._find, revisit)
        if found is not None:
            entry.canary, entry.candidate = canary, _Entry(found, math.inf, math.inf)

    def _outage(self, entry: _Entry) -> None:
        """The registry is unreachable: past expiry ``entry`` is served at once while the
        registry is asked again, in the background, in a second; each failed ask keeps it
        servable ``stale_s`` longer, so a known mapping in use outlives the outage (stale
        beats down), while a registry that answers is never overruled."""
        now = self._clock()
        entry.failing = True
        entry.retry_at = now + min(self._ttl_s, REGISTRY_RETRY_S)
        if now < entry.stale_until:  # one past its bound stays there: no longer vouched for
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
            return await direct_model(ref, engine, self._registry.uri)
        return await registry_model(version, engine)

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
        """Look ``ref`` up again in the background (joining a lookup in flight), then check
        the engines ``old`` served on against what it names now, so they answer warm.

        Failures are left to the request path to meet and report: an outage has marked
        ``old`` failing; any other error (the alias was deleted) is asked again in a second.
        """
        try:
            fresh = await self._lookup_once(ref)
        except RegistryUnavailable:
            return
        except Exception as exc:  # the background must never raise into the void
            log.debug("refreshing %s failed: %s", ref, exc)
            old.retry_at = self._clock() + REGISTRY_RETRY_S
            return
        for name in [name for name in old.models if name not in fresh.models]:
            try:
                await self._single((ref, name), partial(self._check, ref, fresh, name))
            except Exception as exc:
                log.debug("checking %s on %s failed: %s", ref, name, exc)


def _chosen(ref: ModelRef, entry: _Entry, affinity: str | None) -> _Entry:
    """``entry``, or its canary's candidate for the callers in the candidate's share."""
    canary, candidate = entry.canary, entry.candidate
    if canary is None or candidate is None or ref.alias is None:
        return entry
    if affinity is None:
        picked = random.random() * 100 < canary.weight
    else:
        picked = chooses_candidate(ref.name, ref.alias, affinity, canary.weight)
    return candidate if picked else entry
