"""A model replica: aiml's local engines in one Ray Serve replica, multiplexed by model.

The front (aiml's own HTTP processes) resolves a registry reference to ``name/version`` and
calls this deployment through a handle with that as the multiplexed model id, so Ray routes
the request to a replica that already holds the model. Each replica keeps its own
:class:`~aiml.engines.pool.ModelPool` (budget, LRU, idle unload, leases), fetches the
version's files from the registry into its node's artifact cache (sha256-verified) and loads
them. Ray's multiplexing cache holds a ticket per model (it is what tells Ray's router which
replica holds what); when Ray drops a ticket, the replica unloads the model from its pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import ray
from ray import serve

from aiml.cluster.holdings import REPORT_EVERY_S, holdings_board
from aiml.engines.local import LocalEngine
from aiml.engines.pool import ModelPool, PoolKey
from aiml.engines.table import build_engines, local_engine_names
from aiml.errors import AimlError, InvalidRequest
from aiml.registry.artifacts import ArtifactCache
from aiml.registry.mlflow import MlflowRegistry
from aiml.settings import Settings
from aiml.types import ResolvedModel

__all__ = ["DEPLOYMENT", "ModelReplica", "model_app"]

log = logging.getLogger("aiml.cluster")

#: The deployment's name inside the aiml application.
DEPLOYMENT = "ModelReplica"

#: The engine calls a front may make (anything else is refused, never ``getattr``-ed blind).
CALLS = frozenset({
    "generate", "chat", "embed", "classify", "preload", "unload", "describe",
    "detect_speech", "read_text", "analyse_document",
})  # fmt: skip
STREAMS = frozenset({"stream_generate", "stream_chat", "stream_transcribe", "pull"})


class _Ticket:
    """Ray's multiplexing cache entry for one model: Ray dropping it unloads the model."""

    def __init__(self, replica: ModelReplica, model_id: str) -> None:
        self._replica = replica
        self._model_id = model_id
        self._loop = asyncio.get_running_loop()

    def __del__(self) -> None:
        # Ray calls this from a worker thread when its LRU drops the model.
        with contextlib.suppress(RuntimeError):  # the loop is gone: the replica is stopping
            self._loop.call_soon_threadsafe(self._replica.forget, self._model_id)


class ModelReplica:
    """The local engines of one replica, with their own pool and artifact cache."""

    def __init__(self, settings: Settings) -> None:
        local = settings.model_copy(
            update={"ray": False, "engines": ",".join(local_engine_names(settings))}
        )
        self._registry = MlflowRegistry.from_settings(local)
        self._pool = ModelPool(
            max_models=settings.ray_models_per_replica,
            max_bytes=local.max_model_memory_bytes,
            idle_ttl_s=local.model_idle_ttl_s,
            wait_s=local.model_load_wait_s,
            on_load=self._loaded,
        )
        self._artifacts = ArtifactCache(local.model_cache_dir, self._registry)
        engines, unavailable = build_engines(local, self._artifacts, self._pool)
        self._engines = {n: e for n, e in engines.items() if isinstance(e, LocalEngine)}
        for reason in unavailable.values():
            log.warning("model replica: %s", reason)
        self.name = serve.get_replica_context().replica_tag
        #: Loads per model id since the replica started (the stats route shows them).
        self.loads: Counter[str] = Counter()
        self._wanted: dict[str, tuple[LocalEngine, ResolvedModel]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False
        self._interval_s = settings.ray_stream_interval_ms / 1000
        self._board = holdings_board(settings.ray_app)

    # -- what the front calls ------------------------------------------------------------

    async def call(
        self, engine: str, method: str, model: ResolvedModel, *args: Any, **kw: Any
    ) -> tuple[str, Any]:
        """``engine.method(model, ...)`` on this replica; answers (replica, result)."""
        if method not in CALLS:
            raise InvalidRequest(f"model replicas do not run {method!r}")
        local = await self._hold(engine, model)
        result = await getattr(local, method)(model, *args, **kw)
        return self.name, result

    async def stream(
        self, engine: str, method: str, model: ResolvedModel, *args: Any, **kw: Any
    ) -> AsyncIterator[Any]:
        """(replica name, first chunk), then lists of the chunks that followed.

        The name rides with the first token rather than costing a Ray item of its own, and
        later chunks go in batches at most every ``ray_stream_interval_ms``: each Ray item
        costs CPU on both sides (docs/benchmarks.md). Closing it stops the generation."""
        if method not in STREAMS:
            raise InvalidRequest(f"model replicas do not stream {method!r}")
        local = await self._hold(engine, model)
        chunks = getattr(local, method)(model, *args, **kw)
        try:
            first = await anext(chunks, None)
            if first is None:
                return
            yield self.name, first
            async for batch in batched(chunks, self._interval_s):
                yield batch
        finally:
            await chunks.aclose()

    async def stats(self) -> dict[str, Any]:
        """Which replica this is, what it holds and how often it loaded each model."""
        runtime = ray.get_runtime_context()
        return {
            "replica": self.name,
            # The replica's Ray actor, for operators (and tests) that must reach it.
            "actor": runtime.get_actor_name(),
            "handle": runtime.current_actor,
            "node": runtime.get_node_id(),
            "loads": dict(self.loads),
            "loaded": sorted(f"{e.key[1]}/{e.key[2]}" for e in self._pool.entries()),
        }

    async def health(self) -> str:
        return self.name

    # -- multiplexing ---------------------------------------------------------------------

    async def _hold(self, engine: str, model: ResolvedModel) -> LocalEngine:
        local = self._engines.get(engine)
        if local is None:
            raise InvalidRequest(f"the model replicas do not run the {engine!r} engine")
        if not self._started:
            self._pool.start()
            self._started = True
            self._spawn(self._keep_reporting())
        model_id = serve.get_multiplexed_model_id()
        self._wanted[model_id] = (local, model)
        await self.ticket(model_id)  # routing info for Ray; the model itself is in the pool
        return local

    async def ticket(self, model_id: str) -> _Ticket:
        """Fetch and load the model (Ray's multiplexing calls this once per cached id)."""
        local, model = self._wanted[model_id]
        await local.fetch_files(model)
        await local.preload(model)
        return _Ticket(self, model_id)

    def forget(self, model_id: str) -> None:
        """Ray dropped the model from its cache: unload it when idle (the pool's LRU and
        idle reaper take care of one still in use)."""
        wanted = self._wanted.pop(model_id, None)
        if wanted is None:
            return
        local, model = wanted
        self._spawn(self._unload(local, model))

    async def _unload(self, local: LocalEngine, model: ResolvedModel) -> None:
        with contextlib.suppress(AimlError):
            await local.unload(model)

    def _loaded(self, key: PoolKey, seconds: float) -> None:
        self.loads[f"{key[1]}/{key[2]}"] += 1
        self._report()  # at once: operators see a load without waiting for the renewal
        log.info("model replica %s loaded %s/%s in %.2fs", self.name, key[1], key[2], seconds)

    def _report(self) -> None:
        """Tell the holdings board what this replica's pool holds (fire and forget)."""
        held = [f"{entry.key[1]}/{entry.key[2]}" for entry in self._pool.entries()]
        self._board.report.remote(self.name, held)

    async def _keep_reporting(self) -> None:
        while True:  # a renewal: the board drops a replica that stops reporting
            self._report()
            await asyncio.sleep(REPORT_EVERY_S)

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def __del__(self) -> None:
        # Ray Serve calls this when it stops the replica: unload what the pool holds.
        await self._pool.aclose(wait_s=10.0)
        self._report()  # holding nothing now (the board would drop it soon anyway)
        for engine in self._engines.values():
            await engine.aclose()


async def batched(chunks: AsyncIterator[Any], interval_s: float) -> AsyncIterator[list[Any]]:
    """``chunks`` in lists of whatever arrived, one list at most every ``interval_s`` from
    the call or the last list (a chunk after a longer quiet spell goes at once)."""
    pending: asyncio.Queue[Any] = asyncio.Queue()
    done = object()

    async def pump() -> None:
        try:
            async for chunk in chunks:
                pending.put_nowait(chunk)
        finally:
            pending.put_nowait(done)

    task = asyncio.create_task(pump())
    loop = asyncio.get_running_loop()
    try:
        sent_at = loop.time()
        while True:
            batch = [await pending.get()]
            wait = sent_at + interval_s - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            while not pending.empty():
                batch.append(pending.get_nowait())
            finished = batch[-1] is done
            if finished:
                batch.pop()
            if batch:
                yield batch
                sent_at = loop.time()
            if finished:
                await task  # raises what the engine raised
                return
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def model_app(settings: Settings) -> Any:
    """The Ray Serve application of model replicas, configured from ``settings``."""

    class Replica(ModelReplica):
        @serve.multiplexed(max_num_models_per_replica=settings.ray_models_per_replica)  # type: ignore[untyped-decorator]
        async def ticket(self, model_id: str) -> _Ticket:
            return await super().ticket(model_id)

    deployment = serve.deployment(
        name=DEPLOYMENT,
        ray_actor_options={"num_cpus": settings.ray_replica_cpus},
        max_ongoing_requests=max(8, int(settings.ray_target_ongoing_requests * 2)),
        autoscaling_config={
            "min_replicas": settings.ray_min_replicas,
            "max_replicas": settings.ray_max_replicas,
            "target_ongoing_requests": settings.ray_target_ongoing_requests,
            "upscale_delay_s": settings.ray_upscale_delay_s,
            "downscale_delay_s": settings.ray_downscale_delay_s,
            "look_back_period_s": settings.ray_look_back_s,
        },
    )(Replica)
    return deployment.bind(settings)
