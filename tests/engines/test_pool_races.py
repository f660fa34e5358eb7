"""Races between acquire, evict, reap and shutdown, driven on the real pool and a real
llama.cpp model: barriers inside the pool (its checkpoint hook) and inside the model's own
close, and a controllable clock. A model closed under a running generation is how the
process died with SIGSEGV; here every close records whether anybody still held the model.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from aiml.engines.llamacpp.engine import LlamaCppEngine
from aiml.engines.pool import ModelPool, PoolEntry, PoolKey
from aiml.errors import Draining, PoolExhausted
from aiml.inference.resolver import ModelResolver
from aiml.observability.stats import Stats
from aiml.registry.artifacts import ArtifactCache
from aiml.types import ChatMessage, ResolvedModel, SamplingParams
from tests.conftest import ModelFiles, Registry
from tests.engines.test_pool import Clock

pytestmark = pytest.mark.slow

CATS = [ChatMessage("user", "Write one sentence about cats.")]
LONG = SamplingParams(max_tokens=400, temperature=0.7)


class Barriers:
    """The pool's checkpoint hook: pauses at chosen (point, model name) pairs."""

    def __init__(self) -> None:
        self._gates: dict[tuple[str, str], tuple[asyncio.Event, asyncio.Event]] = {}

    def add(self, point: str, name: str) -> tuple[asyncio.Event, asyncio.Event]:
        """``(reached, go)``: set when the pool gets there; set ``go`` to let it pass."""
        gate = (asyncio.Event(), asyncio.Event())
        self._gates[(point, name)] = gate
        return gate

    async def __call__(self, point: str, key: PoolKey) -> None:
        gate = self._gates.pop((point, key[1]), None)
        if gate is not None:
            gate[0].set()
            await gate[1].wait()


@dataclass
class Harness:
    engine: LlamaCppEngine
    pool: ModelPool
    clock: Clock
    barriers: Barriers
    resolver: ModelResolver
    #: For each close: (model name, leases held at that moment).
    closes: list[tuple[str, int]] = field(default_factory=list)
    closing: asyncio.Event = field(default_factory=asyncio.Event)  # set as a close starts

    async def model(self, name: str) -> ResolvedModel:
        from aiml.registry.references import parse_reference

        return await self.resolver.resolve(parse_reference(name), "llamacpp")

    async def watch_closes(self, entry: PoolEntry, hold: threading.Event | None = None) -> None:
        """Record how many leases the model has when it is closed; optionally block there."""
        close = entry.loaded.close
        name = entry.key[1]
        loop = asyncio.get_running_loop()

        def recording_close() -> None:  # runs in a worker thread
            self.closes.append((name, entry.users))
            loop.call_soon_threadsafe(self.closing.set)
            if hold is not None:
                hold.wait(60)
            close()

        entry.loaded.close = recording_close


@pytest.fixture
async def harness(
    registry: Registry, model_files: ModelFiles, tmp_path: Path
) -> AsyncIterator[Harness]:
    registry.register_files(model_files.smollm2, "smol", task="chat")
    registry.register_files(model_files.smollm2, "smol2", task="chat")
    clock, barriers = Clock(), Barriers()
    pool = ModelPool(
        max_models=2,
        max_bytes=4 << 30,
        idle_ttl_s=60,
        wait_s=2,
        clock=clock,
        checkpoint=barriers,
    )
    adapter = registry.adapter()
    engine = LlamaCppEngine(ArtifactCache(tmp_path / "models", adapter), pool, n_ctx=512)
    resolver = ModelResolver({"llamacpp": engine}, adapter, ttl_s=60, stats=Stats())
    yield Harness(engine, pool, clock, barriers, resolver)
    await pool.aclose(wait_s=10)


async def first_chunk(harness: Harness, name: str) -> tuple[asyncio.Task[None], asyncio.Event]:
    """A generation running in the background; returns once it produced text."""
    model = await harness.model(name)
    started = asyncio.Event()

    async def generate() -> None:
        async for chunk in harness.engine.stream_chat(model, CATS, LONG):
            if chunk.text:
                started.set()

    task = asyncio.ensure_future(generate())
    await asyncio.wait_for(started.wait(), 30)
    return task, started


def entry_of(harness: Harness, name: str) -> PoolEntry:
    (entry,) = [e for e in harness.pool.entries() if e.key[1] == name]
    return entry


async def test_reap_never_closes_a_model_acquired_after_the_victims_were_picked(
    harness: Harness,
) -> None:
    for name in ("smol", "smol2"):
        (await harness.engine.acquire(await harness.model(name))).release()
    await asyncio.sleep(0)
    hold = threading.Event()
    await harness.watch_closes(entry_of(harness, "smol"), hold)  # the first close blocks...
    await harness.watch_closes(entry_of(harness, "smol2"))
    harness.clock.now = 1000  # both idle past the keep-alive
    reaping = asyncio.ensure_future(harness.pool.reap_idle())
    await harness.closing.wait()
    # ...and while it does, smol2 (idle when the reaper started) gets a request.
    task, _ = await first_chunk(harness, "smol2")
    hold.set()
    assert await reaping == 1
    assert harness.closes == [("smol", 0)]
    assert not task.done()  # still generating on a model that is still loaded
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_eviction_for_room_skips_a_victim_leased_after_it_was_picked(
    harness: Harness,
) -> None:
    harness.pool.max_models = 1
    (await harness.engine.acquire(await harness.model("smol"))).release()
    await asyncio.sleep(0)
    await harness.watch_closes(entry_of(harness, "smol"))
    reached, go = harness.barriers.add("evict:room", "smol")
    smol2 = await harness.model("smol2")
    loading = asyncio.ensure_future(harness.engine.acquire(smol2))
    await reached.wait()  # the load picked smol as its victim...
    lease = await harness.engine.acquire(await harness.model("smol"))  # ...smol is taken
    go.set()
    await asyncio.sleep(0.1)
    assert harness.closes == []  # not closed under its holder
    assert not loading.done()  # the load waits for room instead
    lease.release()
    (await asyncio.wait_for(loading, 10)).release()
    assert harness.closes == [("smol", 0)]


async def test_shutdown_cancels_holders_and_closes_only_after_their_threads_left(
    harness: Harness,
) -> None:
    for _ in range(3):  # crash-prone: run it several times
        task, _ = await first_chunk(harness, "smol")
        await harness.watch_closes(entry_of(harness, "smol"))
        await harness.pool.aclose(wait_s=10)
        assert task.cancelled() or task.done()
        assert harness.closes[-1] == ("smol", 0)
        assert harness.pool.entries() == []
        with pytest.raises(Draining):
            await harness.engine.acquire(await harness.model("smol"))
        harness.pool._closing = False  # the same pool, reopened for the next round
    assert len(harness.closes) == 3


async def test_a_load_finishing_during_shutdown_is_closed_not_kept(harness: Harness) -> None:
    reached, go = harness.barriers.add("load", "smol")
    loading = asyncio.ensure_future(harness.engine.acquire(await harness.model("smol")))
    await reached.wait()
    closing = asyncio.ensure_future(harness.pool.aclose(wait_s=5))
    await asyncio.sleep(0.05)
    go.set()
    with pytest.raises(Draining):
        await loading
    await closing
    assert harness.pool.entries() == []


async def test_loads_of_different_models_run_in_parallel(harness: Harness) -> None:
    reached, go = harness.barriers.add("load", "smol")
    slow = asyncio.ensure_future(harness.engine.acquire(await harness.model("smol")))
    await reached.wait()  # smol's load is held up...
    fast = await asyncio.wait_for(harness.engine.acquire(await harness.model("smol2")), 30)
    fast.release()  # ...and smol2 loaded meanwhile
    go.set()
    (await slow).release()
    assert harness.pool.loads == 2


async def test_parallel_loads_never_overcommit_the_count(harness: Harness) -> None:
    harness.pool.max_models = 1
    harness.pool.wait_s = 0.2
    reached, go = harness.barriers.add("load", "smol")
    first = asyncio.ensure_future(harness.engine.acquire(await harness.model("smol")))
    await reached.wait()
    with pytest.raises(PoolExhausted):  # the room smol reserved is not given twice
        await harness.engine.acquire(await harness.model("smol2"))
    go.set()
    (await first).release()
