"""What the in-process engines share: registry artifacts in, loaded models from the pool."""

from __future__ import annotations

import asyncio
import time
from abc import abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread

from aiml.errors import EngineError, ModelNotFound, ModelNotServable
from aiml.registry.artifacts import CONTENT_TAG, ArtifactCache
from aiml.types import (
    ChatMessage,
    Embeddings,
    Generation,
    GenerationChunk,
    RegistryVersion,
    ResolvedModel,
    SamplingParams,
)

from .base import Engine
from .pool import Lease, Loaded, ModelPool, PoolKey
from .threads import iterate_in_thread

__all__ = ["LocalEngine", "MediaEngine", "collect"]

T = TypeVar("T")


class LocalEngine(Engine):
    """An engine that runs models in this process from files registered in the registry.

    Its models come only from the registry (a request never names a file); resolving a
    version downloads and verifies its files once, and the first inference loads them into
    the shared :class:`ModelPool`.
    """

    in_process = True

    def __init__(self, artifacts: ArtifactCache, pool: ModelPool) -> None:
        self._artifacts = artifacts
        self._pool = pool

    @property
    def location(self) -> str:
        return f"the {self.name} engine in this process"

    async def find_model(self, name: str) -> str | None:
        return None  # only registered models: a bare name is never a file to open

    async def model_for_version(self, version: RegistryVersion) -> str:
        self.check_version(version)
        await self._artifacts.fetch(
            version.name, version.version, content_sha256=version.tag(CONTENT_TAG)
        )
        return f"{version.name}/{version.version}"

    async def fetch_files(self, model: ResolvedModel) -> None:
        """Download and verify a resolved model's files (a model replica, before loading)."""
        _, name, version = self.key(model)
        await self._artifacts.fetch(name, version, content_sha256=model.tags.get(CONTENT_TAG))

    async def pull(self, model: ResolvedModel) -> AsyncIterator[dict[str, Any]]:
        """Download the version's files into the artifact cache and verify them (its
        sha256), as Ollama's progress lines: what "pull" honestly means for a local model."""
        _, name, version = self.key(model)
        digest = model.tags.get(CONTENT_TAG) or ""
        yield {"status": "pulling manifest"}
        folder = await self._artifacts.fetch(name, version, content_sha256=digest or None)
        size = await anyio.to_thread.run_sync(_size, folder)
        yield {"status": f"pulling {name}:{version}", "digest": f"sha256:{digest}",
               "total": size, "completed": size}  # fmt: skip
        yield {"status": "verifying sha256 digest"}
        yield {"status": "writing manifest"}
        yield {"status": "success"}

    def check_version(self, version: RegistryVersion) -> None:
        """Refuse versions whose tags this engine cannot use (before any download)."""

    def key(self, model: ResolvedModel) -> PoolKey:
        if model.registry_name is None or model.registry_version is None:
            raise ModelNotFound(f"{self.location} serves registered models only")
        return (self.name, model.registry_name, model.registry_version)

    def folder(self, model: ResolvedModel) -> Path:
        _, name, version = self.key(model)
        return self._artifacts.folder(name, version)

    async def acquire(self, model: ResolvedModel) -> Lease:
        """A lease on the loaded model (loading it if needed); release it when done."""
        key = self.key(model)
        loaded = self._pool.get(key)
        if loaded is not None:  # warm: no file I/O on the request path
            estimate = loaded.size_bytes
        else:  # reading a model's files (a GGUF's metadata) blocks: off the event loop
            estimate = await anyio.to_thread.run_sync(self.estimate_bytes, model)
        return await self._pool.acquire(key, lambda: self.load(model), estimate_bytes=estimate)

    async def preload(self, model: ResolvedModel) -> None:
        (await self.acquire(model)).release()

    async def unload(self, model: ResolvedModel) -> bool:
        return await self._pool.unload(self.key(model))

    # One code path per task: the non-streaming calls are the streams, collected.
    async def generate(
        self,
        model: ResolvedModel,
        prompt: str,
        params: SamplingParams,
        *,
        images: Sequence[bytes] = (),
    ) -> Generation:
        return await collect(self.stream_generate(model, prompt, params, images=images))

    async def chat(
        self, model: ResolvedModel, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> Generation:
        return await collect(self.stream_chat(model, messages, params))

    @abstractmethod
    def load(self, model: ResolvedModel) -> Loaded:
        """Load the model's files (blocking; runs in a worker thread)."""

    @abstractmethod
    def estimate_bytes(self, model: ResolvedModel) -> int:
        """Memory the model will take once loaded, before loading it."""

    def tagged_file(self, model: ResolvedModel, tag: str) -> Path:
        value = model.tags.get(tag)
        if not value:
            raise ModelNotServable(f"{self.name} needs the {tag!r} tag", param="model_name")
        _, name, version = self.key(model)
        return self._artifacts.file(name, version, value)

    async def exclusive(
        self, lease: Lease, run: Callable[[Any], Iterator[T]]
    ) -> AsyncGenerator[T, None]:
        """Run ``run(model)`` alone on a leased model, in a worker thread, item by item.

        Calls queue on a FIFO lock per model (first come, first served). The lock and the
        lease are released when the worker thread has left the model, not when the caller
        stops listening, so a cancelled request can never overlap the next one, and the
        model is never closed under a running thread.
        """
        entry = lease.entry
        lock: asyncio.Lock = entry.extras.setdefault("lock", asyncio.Lock())
        try:
            await lock.acquire()
        except BaseException:
            lease.release()
            raise

        def finished() -> None:
            lock.release()
            lease.release()

        inner = iterate_in_thread(lambda: run(entry.handle), on_finished=finished)
        try:
            async for item in inner:
                yield item
        finally:
            await inner.aclose()


class MediaEngine(LocalEngine):
    """A local engine for speech or images: its models neither generate nor embed text (the
    task table never routes text to it; these refuse if called anyway)."""

    async def health(self) -> None:
        return None  # in-process: alive while the process is

    def check_version(self, version: RegistryVersion) -> None:
        task = version.tag("inference_task")
        if task is not None and task not in {t.value for t in self.tasks}:
            served = ", ".join(sorted(t.value for t in self.tasks))
            raise ModelNotServable(
                f"registered model {version.name!r} version {version.version} has task "
                f"{task!r}; {self.name} serves {served}",
                param="model_name",
            )

    def stream_generate(self, *args: Any, **kwargs: Any) -> AsyncIterator[GenerationChunk]:
        raise ModelNotServable(f"{self.name} models do not generate text", param="task")

    def stream_chat(self, *args: Any, **kwargs: Any) -> AsyncIterator[GenerationChunk]:
        raise ModelNotServable(f"{self.name} models do not chat", param="task")

    async def embed(self, model: ResolvedModel, inputs: Sequence[str]) -> Embeddings:
        raise ModelNotServable(f"{self.name} models do not embed text", param="task")


async def collect(stream: AsyncIterator[GenerationChunk]) -> Generation:
    """The final :class:`Generation` of a chunk stream; when its first text came out (Unix
    seconds: the wall clock, as it crosses to a cluster's front) is in its
    ``engine_metadata["first_token_unix"]``, where a trace reads where prefill ended."""
    final: Generation | None = None
    first_at: float | None = None
    # Closed on the way out, cancellation included: an abandoned generator would keep its
    # worker thread generating (and the model leased) until the garbage collector ran.
    try:
        async for chunk in stream:
            if first_at is None and chunk.text:
                first_at = time.time()
            if chunk.final is not None:
                final = chunk.final
    finally:
        close = getattr(stream, "aclose", None)
        if close is not None:
            await close()
    if final is None:
        raise EngineError("the generation ended without a result")
    if first_at is None:
        return final
    return replace(final, engine_metadata={**final.engine_metadata, "first_token_unix": first_at})


def _size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
