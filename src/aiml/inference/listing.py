"""``ModelListing``: every registered model, kept, so that a listing costs no registry call.

``GET /v1/models`` and ``/api/tags`` are polled by clients (editors, chat front ends) and
load balancers' checks; each once cost one MLflow search per page. The listing is kept
for the resolve TTL and then served at once while one fetch in the background replaces it
(stale-while-revalidate), so a warm listing never waits for the registry.

* Changes made through aiml (a registration, an alias set or deleted, on this front or,
  through the cluster's change feed, on another) invalidate it: the next listing waits for
  a fresh one, so it shows the change. A fetch in flight when the listing is invalidated
  still answers its callers, but is not kept.
* When the registry is unreachable, the last listing is served on (the registry is asked
  again at most once a second); only a front that never listed gets the 503.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable

from aiml.errors import RegistryUnavailable
from aiml.registry.calls import REGISTRY_RETRY_S
from aiml.registry.entities import RegisteredModelInfo

__all__ = ["ModelListing"]

log = logging.getLogger("aiml.listing")

Fetch = Callable[[], Awaitable[list[RegisteredModelInfo]]]


class ModelListing:
    """``await listing()``: the registered models, from the registry at most once a TTL."""

    def __init__(
        self, fetch: Fetch, *, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._fetch = fetch
        self._ttl_s = ttl_s
        self._clock = clock
        self._models: list[RegisteredModelInfo] | None = None
        self._fresh_until = -math.inf
        self._retry_at = -math.inf
        # Bumped by every invalidation: a fetch started under an older one is not kept.
        self._generation = 0
        self._current = False  # the kept listing is from the latest generation
        self._inflight: tuple[int, asyncio.Future[list[RegisteredModelInfo]]] | None = None
        self._background: set[asyncio.Future[list[RegisteredModelInfo]]] = set()

    async def __call__(self) -> list[RegisteredModelInfo]:
        now = self._clock()
        kept = self._models
        if kept is not None and (self._current or now < self._retry_at):
            if self._current and now >= self._fresh_until and now >= self._retry_at:
                self._background.add(self._fetch_once())  # stale: replaced in the background
            return kept
        try:  # never listed, or changed through aiml since: wait for the registry
            return await asyncio.shield(self._fetch_once())
        except RegistryUnavailable:
            if kept is None:
                raise
            return kept

    def invalidate(self) -> None:
        """The registry changed through aiml: the next listing is fetched, not kept."""
        self._generation += 1
        self._current = False
        self._retry_at = -math.inf

    @property
    def refreshing(self) -> asyncio.Future[list[RegisteredModelInfo]] | None:
        """The fetch in flight, if any (in the background or waited for)."""
        return None if self._inflight is None else self._inflight[1]

    @property
    def kept(self) -> bool:
        """Whether a listing is kept (to serve through an outage)."""
        return self._models is not None

    def _fetch_once(self) -> asyncio.Future[list[RegisteredModelInfo]]:
        """One fetch per generation for every caller, as a task of its own."""
        if self._inflight is not None and self._inflight[0] == self._generation:
            return self._inflight[1]
        generation = self._generation
        task = asyncio.ensure_future(self._load(generation))
        self._inflight = (generation, task)
        task.add_done_callback(self._done)
        return task

    async def _load(self, generation: int) -> list[RegisteredModelInfo]:
        try:
            models = await self._fetch()
        except Exception as exc:
            if generation == self._generation:  # an older fetch's failure holds nothing back
                self._retry_at = self._clock() + REGISTRY_RETRY_S
            log.debug("listing the registered models failed: %s", exc)
            raise
        if generation == self._generation:  # not invalidated meanwhile
            self._models, self._current = models, True
            self._fresh_until = self._clock() + self._ttl_s
        return models

    def _done(self, done: asyncio.Future[list[RegisteredModelInfo]]) -> None:
        self._background.discard(done)
        if self._inflight is not None and self._inflight[1] is done:
            self._inflight = None
        if not done.cancelled():
            done.exception()  # retrieved here so a background failure is not logged as lost
