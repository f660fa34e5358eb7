"""The in-process store of loaded models, shared by the local engines.

A model's weights are loaded once per process, whatever task or route asks for them. Every
use of a model holds a :class:`Lease`; **a model is closed only when no lease is held at
the moment of closing**. Eviction for room, idle unload, budget trimming, an unload asked
for by an admin and shutdown all go through that one rule (:meth:`ModelPool._evict`): the
check and the removal from the pool happen with no ``await`` between them, so a model
acquired after a victim was picked is simply not closed. Shutdown cancels the holders,
waits for the worker threads to leave (a lease is released only then), and only then
closes (Triton's model lifecycle works the same way: reference-counted handles).

Loads of different models run in parallel; the same model is loaded once (single-flight).
Each load reserves its estimated size in the budget before it starts, so parallel loads
cannot overcommit memory. Idle models are unloaded after a keep-alive time, as Ollama does.
A load that fails leaves nothing behind and raises a clear error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import anyio.to_thread

from aiml.errors import AimlError, Draining, ModelBusy, ModelLoadFailed, PoolExhausted

from .leases import Lease, Loaded, PoolEntry, PoolKey
from .memory import close_and_trim, rss_bytes, trim

__all__ = ["Checkpoint", "ModelPool"]

log = logging.getLogger("aiml.pool")

#: ``await checkpoint(point, key)`` at the pool's decision points; tests inject barriers.
Checkpoint = Callable[[str, PoolKey], Awaitable[None]]


async def _no_checkpoint(point: str, key: PoolKey) -> None:
    return None


class ModelPool:
    """Loaded models under a budget of count and bytes; LRU eviction of idle models."""

    def __init__(
        self,
        *,
        max_models: int,
        max_bytes: int,
        idle_ttl_s: float,
        wait_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        on_load: Callable[[PoolKey, float], None] = lambda key, seconds: None,
        checkpoint: Checkpoint = _no_checkpoint,
    ) -> None:
        self.max_models = max_models
        self.max_bytes = max_bytes
        self.idle_ttl_s = idle_ttl_s
        self.wait_s = wait_s
        self._clock = clock
        self._on_load = on_load
        self._checkpoint = checkpoint
        self._entries: dict[PoolKey, PoolEntry] = {}
        self._loading: dict[PoolKey, asyncio.Future[PoolEntry]] = {}
        self._waiters: dict[PoolKey, list[tuple[asyncio.Future[Lease], asyncio.Task[Any] | None]]]
        self._waiters = {}
        self._reserved: dict[PoolKey, int] = {}  # loads in progress and the bytes they hold
        self._load_starts = 0
        self._changed = asyncio.Condition()
        self._reaper: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._closing = False
        self.loads = 0
        self.load_failures = 0
        self.hits = 0
        self.misses = 0
        #: Unloads by reason: room, idle, budget, unload, shutdown.
        self.evictions: Counter[str] = Counter()

    @property
    def used_bytes(self) -> int:
        return sum(entry.size_bytes for entry in self._entries.values())

    def entries(self) -> list[PoolEntry]:
        return sorted(self._entries.values(), key=lambda e: e.last_used, reverse=True)

    def get(self, key: PoolKey) -> PoolEntry | None:
        return self._entries.get(key)

    def model_stats(self) -> dict[str, Any]:
        """Each loaded model's live counters, by ``engine:name/version``."""
        return {
            f"{e.key[0]}:{e.key[1]}/{e.key[2]}": e.loaded.stats()
            for e in self.entries()
            if e.loaded.stats is not None
        }

    async def acquire(
        self, key: PoolKey, loader: Callable[[], Loaded], *, estimate_bytes: int
    ) -> Lease:
        """A lease on the loaded model for ``key``, loading it if needed."""
        if self._closing:
            raise Draining("the service is shutting down; its models are being unloaded")
        holder = asyncio.current_task()
        entry = self._entries.get(key)
        if entry is not None:
            self.hits += 1
            return self._lease(entry, holder)
        self.misses += 1
        # The load hands each waiter its lease the moment the model is in the pool, so no
        # eviction can slip in between the load finishing and the waiters waking up.
        slot: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append((slot, holder))
        if key not in self._loading:
            load = asyncio.ensure_future(self._load(key, loader, estimate_bytes))
            self._loading[key] = load
            load.add_done_callback(lambda done: self._load_done(key, done))
        try:
            return await slot
        except asyncio.CancelledError:
            if slot.done() and not slot.cancelled() and slot.exception() is None:
                slot.result().release()  # handed over just as this waiter left
            raise

    async def unload(self, key: PoolKey) -> bool:
        """Unload ``key`` now if it is idle; ``False`` if it is not loaded."""
        entry = self._entries.get(key)
        if entry is None:
            return False
        if not await self._evict(entry, reason="unload"):
            raise ModelBusy(f"{_label(key)} is in use; unload it when idle")
        return True

    async def reap_idle(self) -> int:
        """Unload every model idle for longer than the keep-alive time."""
        unloaded = 0
        for entry in list(self._entries.values()):
            # Asked again for each entry at the moment of closing (inside _evict), not from
            # a list of victims made before the awaits: one may have been acquired since.
            if await self._evict(entry, reason="idle", unless=self._recently_used):
                unloaded += 1
        return unloaded

    def start(self) -> None:
        """Run the keep-alive reaper in the background."""
        if self._reaper is None and self.idle_ttl_s > 0:
            self._reaper = asyncio.ensure_future(self._reap_forever())

    async def aclose(self, *, wait_s: float = 30.0) -> None:
        """Shut down: refuse new leases, cancel the holders, wait for them, then close.

        A model still leased after ``wait_s`` (a worker thread that will not leave) is left
        loaded rather than closed under that thread: the process is exiting anyway, and
        freeing memory a thread is using is how a process dies with SIGSEGV.
        """
        self._closing = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        for entry in list(self._entries.values()):
            for lease in list(entry.leases):
                if lease.holder is not None and not lease.holder.done():
                    lease.holder.cancel()
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(
                        lambda: all(not e.leases for e in self._entries.values())
                    ),
                    wait_s,
                )
        for entry in list(self._entries.values()):
            if not await self._evict(entry, reason="shutdown"):
                log.warning("left %s loaded: still in use after %.0fs", _label(entry.key), wait_s)

    # -- internals ---------------------------------------------------------------------

    def _lease(self, entry: PoolEntry, holder: asyncio.Task[Any] | None) -> Lease:
        lease = Lease(self._released, entry, holder)
        entry.leases.add(lease)
        entry.last_used = self._clock()
        return lease

    def _released(self, lease: Lease) -> None:
        entry = lease.entry
        entry.leases.discard(lease)
        entry.last_used = self._clock()
        task = asyncio.ensure_future(self._after_release())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _load_done(self, key: PoolKey, done: asyncio.Future[PoolEntry]) -> None:
        if self._loading.get(key) is done:
            del self._loading[key]
        if not done.cancelled():
            done.exception()  # the waiters got it; retrieved so asyncio does not report it

    def _hand_over(self, key: PoolKey, outcome: PoolEntry | BaseException) -> None:
        """Give every waiter its lease on the loaded model, or the load's failure.

        Called synchronously where the load ends, before anything else can run on the
        loop: a model just loaded is never idle, so never evictable, before its waiters
        hold it. From here on a new caller finds the entry, or starts a new load.
        """
        self._loading.pop(key, None)
        for slot, holder in self._waiters.pop(key, []):
            if slot.done():
                continue  # the waiter left
            if isinstance(outcome, PoolEntry):
                slot.set_result(self._lease(outcome, holder))
            elif isinstance(outcome, asyncio.CancelledError):
                slot.cancel()
            else:
                slot.set_exception(outcome)

    def _recently_used(self, entry: PoolEntry) -> bool:
        return self._clock() - entry.last_used < self.idle_ttl_s

    async def _load(self, key: PoolKey, loader: Callable[[], Loaded], estimate: int) -> PoolEntry:
        try:
            if estimate > self.max_bytes:
                raise PoolExhausted(
                    f"{_label(key)} needs about {_mib(estimate)} but the model memory budget "
                    f"(AIML_MAX_MODEL_MEMORY_BYTES) is {_mib(self.max_bytes)}"
                )
            await self._make_room(estimate, key)  # reserves ``estimate`` for this load
            try:
                entry = await self._load_reserved(key, loader)
            finally:
                del self._reserved[key]
            await self._after_release()  # a measured size over the estimate: trim others
        except BaseException as exc:
            self._hand_over(key, exc)
            raise
        finally:
            async with self._changed:
                self._changed.notify_all()
        return entry

    async def _load_reserved(self, key: PoolKey, loader: Callable[[], Loaded]) -> PoolEntry:
        await self._checkpoint("load", key)
        solo = len(self._reserved) == 1
        self._load_starts += 1
        starts = self._load_starts
        started = time.perf_counter()
        before = rss_bytes()
        try:
            loaded = await anyio.to_thread.run_sync(loader)
        except Exception as exc:
            self.load_failures += 1
            await anyio.to_thread.run_sync(trim)  # what the loader allocated goes back
            if isinstance(exc, AimlError):
                raise
            log.warning("loading %s failed: %s", _label(key), exc)
            raise ModelLoadFailed(f"loading {_label(key)} failed: {exc}") from exc
        # RSS growth says what the load cost only if no other load ran meanwhile.
        measured = rss_bytes() - before if solo and starts == self._load_starts else 0
        size = max(loaded.size_bytes, measured)
        now = self._clock()
        if self._closing:  # shut down while loading: this model is not wanted any more
            await anyio.to_thread.run_sync(close_and_trim, loaded.close)
            raise Draining("the service is shutting down; its models are being unloaded")
        entry = PoolEntry(key, loaded, size, loaded_at=now, last_used=now)
        self._entries[key] = entry
        self._hand_over(key, entry)
        self.loads += 1
        took = time.perf_counter() - started
        self._on_load(key, took)
        log.info("loaded %s (%s) in %.2fs", _label(key), _mib(size), took)
        return entry

    def _fits(self, needed: int) -> bool:
        count = len(self._entries) + len(self._reserved) + 1
        taken = self.used_bytes + sum(self._reserved.values())
        return count <= self.max_models and taken + needed <= self.max_bytes

    async def _make_room(self, needed: int, key: PoolKey) -> None:
        """Reserve room for a load of ``key``: evict idle models, or wait for one to be."""
        deadline = time.monotonic() + self.wait_s
        while True:
            if self._fits(needed):
                self._reserved[key] = needed  # no await since the check: nobody took it
                return
            idle = [e for e in self._entries.values() if not e.leases]
            if idle:
                await self._evict(min(idle, key=lambda e: e.last_used), reason="room")
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PoolExhausted(
                    f"no room to load {_label(key)}: every loaded model is in use "
                    f"({len(self._entries)} models, {_mib(self.used_bytes)} of "
                    f"{_mib(self.max_bytes)})"
                )
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)

    async def _evict(
        self,
        entry: PoolEntry,
        *,
        reason: str,
        unless: Callable[[PoolEntry], bool] = lambda entry: False,
    ) -> bool:
        """Close ``entry`` if, right now, it is in the pool and nobody holds it."""
        await self._checkpoint(f"evict:{reason}", entry.key)
        if self._entries.get(entry.key) is not entry or entry.leases or unless(entry):
            return False
        # From here on nobody can take a lease: the entry is no longer in the pool.
        del self._entries[entry.key]
        self.evictions[reason] += 1
        try:
            for extra in entry.extras.values():
                closer = getattr(extra, "aclose", None)
                if closer is not None:
                    await closer()  # drains (a batch running in a thread finishes first)
            await self._checkpoint("close", entry.key)
            await anyio.to_thread.run_sync(close_and_trim, entry.loaded.close)
        finally:
            entry.loaded = Loaded(handle=None, size_bytes=0)
            log.info("unloaded %s: %s", _label(entry.key), reason)
            async with self._changed:
                self._changed.notify_all()
        return True

    async def _after_release(self) -> None:
        """Wake loads waiting for room; evict now if a measured size left us over budget."""
        while self.used_bytes > self.max_bytes and not self._closing:
            idle = [e for e in self._entries.values() if not e.leases]
            if not idle:
                break
            await self._evict(min(idle, key=lambda e: e.last_used), reason="budget")
        async with self._changed:
            self._changed.notify_all()

    async def _reap_forever(self) -> None:
        interval = max(0.05, min(self.idle_ttl_s / 4, 5.0))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reap_idle()
            except Exception:  # the reaper must outlive one bad unload
                log.exception("idle unload failed")


def _label(key: PoolKey) -> str:
    engine, name, version = key
    return f"{engine} model {name}/{version}"


def _mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"
