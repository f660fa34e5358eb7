"""The model pool: budget, LRU eviction, in-use protection, single-flight, idle unload."""

from __future__ import annotations

import asyncio
import threading

import pytest

from aiml.engines.pool import Loaded, ModelPool
from aiml.errors import ModelBusy, ModelLoadFailed, PoolExhausted

MB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Loader:
    """Counts loads and unloads; each model 'weighs' what it is told to."""

    def __init__(self) -> None:
        self.loads: list[str] = []
        self.closed: list[str] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, name: str, size: int = 10 * MB, fail: bool = False):  # type: ignore[no-untyped-def]
        def load() -> Loaded:
            self.gate.wait(5)
            self.loads.append(name)
            if fail:
                raise RuntimeError("corrupt weights")
            return Loaded(handle=name, size_bytes=size, close=lambda: self.closed.append(name))

        return load


def pool(clock: Clock | None = None, **kwargs: float) -> ModelPool:
    settings = {
        "max_models": 2,
        "max_bytes": 1000 * MB,
        "idle_ttl_s": 60.0,
        "wait_s": 0.3,
        **kwargs,
    }
    return ModelPool(clock=clock or Clock(), **settings)  # type: ignore[arg-type]


def key(name: str) -> tuple[str, str, int]:
    return ("test", name, 1)


async def use(p: ModelPool, loader: Loader, name: str, size: int = 10 * MB) -> None:
    lease = await p.acquire(key(name), loader(name, size), estimate_bytes=size)
    lease.release()
    await asyncio.sleep(0)  # let the release bookkeeping run


async def test_least_recently_used_idle_model_is_evicted_by_count() -> None:
    clock, loader = Clock(), Loader()
    p = pool(clock)
    await use(p, loader, "a")
    clock.now = 1
    await use(p, loader, "b")
    clock.now = 2
    await use(p, loader, "a")  # a is now the most recent
    clock.now = 3
    await use(p, loader, "c")
    assert sorted(e.key[1] for e in p.entries()) == ["a", "c"]
    assert loader.closed == ["b"]
    assert loader.loads == ["a", "b", "c"]


async def test_memory_budget_evicts_until_the_new_model_fits() -> None:
    loader = Loader()
    p = pool(max_models=10, max_bytes=100 * MB)
    await use(p, loader, "a", 40 * MB)
    await use(p, loader, "b", 40 * MB)
    await use(p, loader, "c", 50 * MB)  # a must go (LRU), b stays: 90 MB
    assert sorted(e.key[1] for e in p.entries()) == ["b", "c"]
    assert p.used_bytes <= p.max_bytes
    with pytest.raises(PoolExhausted, match="budget"):
        await use(p, loader, "huge", 200 * MB)


async def test_a_model_in_use_is_never_evicted() -> None:
    loader = Loader()
    p = pool(max_models=1)
    busy = await p.acquire(key("a"), loader("a"), estimate_bytes=MB)
    with pytest.raises(PoolExhausted, match="in use"):
        await p.acquire(key("b"), loader("b"), estimate_bytes=MB)
    assert [e.key[1] for e in p.entries()] == ["a"]
    with pytest.raises(ModelBusy):
        await p.unload(key("a"))

    waiting = asyncio.ensure_future(p.acquire(key("b"), loader("b"), estimate_bytes=MB))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # waits for room...
    busy.release()  # ...which the release makes
    lease = await asyncio.wait_for(waiting, 10)
    assert lease.entry.key == key("b")
    assert loader.closed == ["a"]


async def test_concurrent_first_uses_load_once() -> None:
    loader = Loader()
    loader.gate.clear()
    p = pool()
    acquiring = [
        asyncio.ensure_future(p.acquire(key("a"), loader("a"), estimate_bytes=MB))
        for _ in range(50)
    ]
    await asyncio.sleep(0.05)
    loader.gate.set()
    leases = await asyncio.gather(*acquiring)
    assert loader.loads == ["a"]
    assert leases[0].entry.users == 50
    assert {id(lease.entry) for lease in leases} == {id(leases[0].entry)}


async def test_idle_models_are_unloaded_after_the_keep_alive() -> None:
    clock, loader = Clock(), Loader()
    p = pool(clock, idle_ttl_s=300)
    await use(p, loader, "a")
    busy = await p.acquire(key("b"), loader("b"), estimate_bytes=MB)
    clock.now = 299
    assert await p.reap_idle() == 0
    clock.now = 301
    assert await p.reap_idle() == 1  # a went; b is in use however long
    assert [e.key[1] for e in p.entries()] == ["b"]
    busy.release()
    clock.now = 700
    assert await p.reap_idle() == 1
    assert p.entries() == []


async def test_background_reaper_runs_on_its_own() -> None:
    loader = Loader()
    p = ModelPool(max_models=2, max_bytes=100 * MB, idle_ttl_s=0.2)
    p.start()
    try:
        await use(p, loader, "a")
        for _ in range(100):  # the reaper checks every ttl/4
            if not p.entries():
                break
            await asyncio.sleep(0.05)
        assert p.entries() == []
    finally:
        await p.aclose()


async def test_a_failed_load_leaves_nothing_behind() -> None:
    loader = Loader()
    p = pool()
    with pytest.raises(ModelLoadFailed, match="corrupt weights"):
        await p.acquire(key("bad"), loader("bad", fail=True), estimate_bytes=MB)
    assert p.entries() == []
    assert p.used_bytes == 0
    # and the next attempt really tries again (no cached failure)
    lease = await p.acquire(key("bad"), loader("bad"), estimate_bytes=MB)
    assert lease.handle == "bad"


async def test_explicit_unload_and_shutdown() -> None:
    loader = Loader()
    p = pool()
    await use(p, loader, "a")
    assert await p.unload(key("a")) is True
    assert await p.unload(key("a")) is False
    await use(p, loader, "b")
    await p.aclose()
    assert loader.closed == ["a", "b"]


async def test_a_fresh_load_is_not_handed_out_after_being_evicted() -> None:
    """Two models, room for one: each caller must get a live model, never an evicted one."""
    loader = Loader()
    p = pool(max_models=1, wait_s=5)
    results: list[object] = []

    async def use_once(name: str) -> None:
        lease = await p.acquire(key(name), loader(name), estimate_bytes=MB)
        closed_before = loader.closed.count(name)
        await asyncio.sleep(0.01)
        assert p.get(key(name)) is lease.entry, f"{name} was evicted while in use"
        assert loader.closed.count(name) == closed_before, f"{name} was closed while in use"
        results.append(lease.handle)
        lease.release()

    await asyncio.gather(*(use_once(name) for name in ("a", "b", "a", "b")))
    assert sorted(map(str, results)) == ["a", "a", "b", "b"]


async def test_a_caller_that_gives_up_while_waiting_holds_nothing() -> None:
    loader = Loader()
    loader.gate.clear()
    p = pool()
    stays = asyncio.ensure_future(p.acquire(key("a"), loader("a"), estimate_bytes=MB))
    leaves = asyncio.ensure_future(p.acquire(key("a"), loader("a"), estimate_bytes=MB))
    await asyncio.sleep(0.02)
    leaves.cancel()
    await asyncio.sleep(0)
    loader.gate.set()
    lease = await stays
    assert lease.entry.users == 1
    lease.release()
    await asyncio.sleep(0)
    assert await p.unload(key("a")) is True  # idle: nobody's use leaked
