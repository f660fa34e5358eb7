"""The in-process store of loaded models, shared by the local engines.

A model's weights are loaded once per process, whatever task or route asks for them. The
pool keeps them within a budget of models and bytes, evicting the least recently used idle
model when a new one needs room; a model in use is never evicted. Loading is single-flight
per key and serialised across keys (so the memory a load adds can be measured, and two
large loads never race for the same RAM). Idle models are unloaded after a keep-alive
time, as Ollama does. A load that fails leaves nothing behind and raises a clear error.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread

from aiml.errors import AimlError, ModelBusy, ModelLoadFailed, PoolExhausted

__all__ = ["Loaded", "ModelPool", "PoolEntry", "PoolKey", "rss_bytes"]

log = logging.getLogger("aiml.pool")

PoolKey = tuple[str, str, int]  # (engine, registered name, version)


@dataclass
class Loaded:
    """What a loader returns: the model object, what it costs, and how to free it."""

    handle: Any
    size_bytes: int
    close: Callable[[], None] = lambda: None


@dataclass
class PoolEntry:
    key: PoolKey
    loaded: Loaded
    size_bytes: int
    loaded_at: float
    last_used: float
    users: int = 0
    #: Per-model state engines keep beside the weights (a lock, a batcher).
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def handle(self) -> Any:
        return self.loaded.handle


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
        on_load: Callable[[str, float], None] = lambda engine, seconds: None,
    ) -> None:
        self.max_models = max_models
        self.max_bytes = max_bytes
        self.idle_ttl_s = idle_ttl_s
        self._wait_s = wait_s
        self._clock = clock
        self._on_load = on_load
        self._entries: dict[PoolKey, PoolEntry] = {}
        self._loading: dict[PoolKey, asyncio.Future[PoolEntry]] = {}
        self._waiters: dict[PoolKey, int] = {}
        self._load_lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self._reaper: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.loads = 0
        self.evictions = 0
        self.hits = 0
        self.misses = 0

    @property
    def used_bytes(self) -> int:
        return sum(entry.size_bytes for entry in self._entries.values())

    def entries(self) -> list[PoolEntry]:
        return sorted(self._entries.values(), key=lambda e: e.last_used, reverse=True)

    def get(self, key: PoolKey) -> PoolEntry | None:
        return self._entries.get(key)

    async def acquire(
        self, key: PoolKey, loader: Callable[[], Loaded], *, estimate_bytes: int
    ) -> PoolEntry:
        """The loaded model for ``key``, loading it if needed; the caller must :meth:`release`."""
        entry = self._entries.get(key)
        if entry is not None:
            self.hits += 1
            entry.users += 1
            entry.last_used = self._clock()
            return entry
        self.misses += 1
        future = self._loading.get(key)
        if future is None:
            future = asyncio.ensure_future(self._load(key, loader, estimate_bytes))
            self._loading[key] = future
            future.add_done_callback(lambda done: self._loading.pop(key, None))
        # Counted before waiting: the load registers the entry already in use by every
        # waiter, so no other load can evict it before the waiters wake up.
        self._waiters[key] = self._waiters.get(key, 0) + 1
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                self.release(future.result())  # loaded with our use counted: give it back
            elif key in self._waiters:
                self._waiters[key] -= 1
            raise

    def release(self, entry: PoolEntry) -> None:
        """Mark one use of ``entry`` finished (safe to call from a done-callback on the loop)."""
        entry.users -= 1
        entry.last_used = self._clock()
        task = asyncio.ensure_future(self._after_release())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def unload(self, key: PoolKey) -> bool:
        """Unload ``key`` now if it is idle; ``False`` if it is not loaded."""
        entry = self._entries.get(key)
        if entry is None:
            return False
        if entry.users:
            raise ModelBusy(f"{_label(key)} is in use; unload it when idle")
        await self._evict(entry, reason="unload requested")
        return True

    async def reap_idle(self) -> int:
        """Unload every model idle for longer than the keep-alive time."""
        now = self._clock()
        idle = [
            e
            for e in self._entries.values()
            if e.users == 0 and now - e.last_used >= self.idle_ttl_s
        ]
        for entry in idle:
            await self._evict(entry, reason=f"idle for {now - entry.last_used:.0f}s")
        return len(idle)

    def start(self) -> None:
        """Run the keep-alive reaper in the background."""
        if self._reaper is None and self.idle_ttl_s > 0:
            self._reaper = asyncio.ensure_future(self._reap_forever())

    async def aclose(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        for entry in list(self._entries.values()):
            await self._evict(entry, reason="shutdown")

    # -- internals ---------------------------------------------------------------------

    async def _load(self, key: PoolKey, loader: Callable[[], Loaded], estimate: int) -> PoolEntry:
        try:
            return await self._load_once(key, loader, estimate)
        except BaseException:
            self._waiters.pop(key, None)  # nobody holds a model that never arrived
            raise

    async def _load_once(
        self, key: PoolKey, loader: Callable[[], Loaded], estimate: int
    ) -> PoolEntry:
        if estimate > self.max_bytes:
            raise PoolExhausted(
                f"{_label(key)} needs about {_mib(estimate)} but the model memory budget "
                f"(AIML_MAX_MODEL_MEMORY_BYTES) is {_mib(self.max_bytes)}"
            )
        async with self._load_lock:
            await self._make_room(estimate, key)
            started = time.perf_counter()
            before = rss_bytes()
            try:
                loaded = await anyio.to_thread.run_sync(loader)
            except AimlError:
                await anyio.to_thread.run_sync(_trim)
                raise
            except Exception as exc:
                # whatever the loader allocated before failing goes back
                await anyio.to_thread.run_sync(_trim)
                log.warning("loading %s failed: %s", _label(key), exc)
                raise ModelLoadFailed(f"loading {_label(key)} failed: {exc}") from exc
            measured = rss_bytes() - before
            size = max(loaded.size_bytes, measured)
            now = self._clock()
            entry = PoolEntry(key, loaded, size, loaded_at=now, last_used=now)
            entry.users = self._waiters.pop(key, 0)  # in use by every caller waiting for it
            self._entries[key] = entry
            self.loads += 1
            took = time.perf_counter() - started
            self._on_load(key[0], took)
            log.info("loaded %s (%s) in %.2fs", _label(key), _mib(size), took)
            # The measured size may exceed the estimate: give back room if now over budget.
            await self._make_room(0, key)
            return entry

    async def _make_room(self, needed: int, keep: PoolKey) -> None:
        deadline = time.monotonic() + self._wait_s
        while True:
            over_count = len(self._entries) + (1 if needed else 0) > self.max_models
            over_bytes = self.used_bytes + needed > self.max_bytes
            if not over_count and not over_bytes:
                return
            idle = [e for e in self._entries.values() if e.users == 0 and e.key != keep]
            if idle:
                victim = min(idle, key=lambda e: e.last_used)
                await self._evict(victim, reason="room for another model")
                continue
            if not needed:
                return  # over only by models in use: the next release evicts (_after_release)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PoolExhausted(
                    f"no room to load {_label(keep)}: every loaded model is in use "
                    f"({len(self._entries)} models, {_mib(self.used_bytes)} of "
                    f"{_mib(self.max_bytes)})"
                )
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)

    async def _evict(self, entry: PoolEntry, *, reason: str) -> None:
        if self._entries.get(entry.key) is not entry:
            return
        del self._entries[entry.key]
        self.evictions += 1
        for extra in entry.extras.values():
            closer = getattr(extra, "aclose", None)
            if closer is not None:
                await closer()
        await anyio.to_thread.run_sync(_close_and_trim, entry.loaded.close)
        entry.loaded = Loaded(handle=None, size_bytes=0)
        log.info("unloaded %s: %s", _label(entry.key), reason)

    async def _after_release(self) -> None:
        """Wake loads waiting for room; evict now if a measured size left us over budget."""
        if self.used_bytes > self.max_bytes and not self._load_lock.locked():
            idle = sorted(
                (e for e in self._entries.values() if e.users == 0), key=lambda e: e.last_used
            )
            for entry in idle:
                if self.used_bytes <= self.max_bytes:
                    break
                await self._evict(entry, reason="over the memory budget")
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


def rss_bytes() -> int:
    """This process's resident memory, from /proc (0 where there is no /proc)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _trim() -> None:
    """Hand freed heap back to the OS, so RSS follows the budget.

    No ``gc.collect()``: dropped models are freed by reference counting (measured: a full
    collection frees nothing more), and a full collection with torch and MLflow imported
    holds the GIL for about 250 ms, stalling every request.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _close_and_trim(close: Callable[[], None]) -> None:
    close()
    _trim()


def _label(key: PoolKey) -> str:
    engine, name, version = key
    return f"{engine} model {name}/{version}"


def _mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"
