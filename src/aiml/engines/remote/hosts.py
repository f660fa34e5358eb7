"""Several servers of one remote engine (``OLLAMA_HOST=http://a:11434,http://b:11434``).

Each call goes to the healthy host with the fewest calls in flight (ties taken in turn).
A host whose connection fails is marked down for ``cooldown_s`` and the call moves on to
the next host: a refused or timed-out connection means the request was never sent, so
this is safe for every call, streams included (a stream is moved only before its first
chunk). A host that fails mid-answer is not retried elsewhere: the engine's error stands.
The readiness probe (:meth:`HostSet.health`) asks every host and marks each up or down;
a down host is tried again once its cooldown has passed, or as a last resort when every
host is down.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from aiml.engines.base import Engine, standing_in_for
from aiml.errors import EngineUnavailable
from aiml.types import (
    ChatMessage,
    Embeddings,
    Generation,
    GenerationChunk,
    Label,
    RegistryVersion,
    ResolvedModel,
    SamplingParams,
)

__all__ = ["HostSet", "on_hosts"]

log = logging.getLogger("aiml")

T = TypeVar("T")


def on_hosts(engines: Sequence[Engine], *, cooldown_s: float = 5.0) -> Engine:
    """One engine over ``engines`` (the same engine at several hosts)."""
    kind = standing_in_for(HostSet, engines[0])
    hosts: HostSet = kind(engines, cooldown_s=cooldown_s)
    return hosts


class HostSet(Engine):
    in_process = False

    def __init__(
        self,
        engines: Sequence[Engine],
        *,
        cooldown_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hosts = list(engines)
        self.in_flight = [0] * len(engines)
        self.down_until = [0.0] * len(engines)
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._turn = itertools.count()

    @property
    def location(self) -> str:
        return " and ".join(host.location for host in self.hosts)

    # -- choosing a host ------------------------------------------------------------------

    def order(self) -> list[int]:
        """Hosts to try, best first: up ones by calls in flight (ties in turn), then down ones."""
        now = self._clock()
        start = next(self._turn) % len(self.hosts)
        turn = [(start + i) % len(self.hosts) for i in range(len(self.hosts))]
        up = [i for i in turn if self.down_until[i] <= now]
        down = sorted(
            (i for i in turn if self.down_until[i] > now), key=self.down_until.__getitem__
        )
        return sorted(up, key=self.in_flight.__getitem__) + down

    def _mark(self, index: int, *, up: bool) -> None:
        was_down = self.down_until[index] > self._clock()
        self.down_until[index] = 0.0 if up else self._clock() + self._cooldown_s
        if up == was_down:
            log.warning("%s is %s", self.hosts[index].location, "back" if up else "down")

    def _never_reached(self, index: int, exc: EngineUnavailable) -> bool:
        """True, with the host marked down, when ``exc`` shows the call never reached it
        (so another host may take it); false for anything the host may have seen."""
        if _never_sent(exc):
            self._mark(index, up=False)
            return True
        return False

    async def _on_host(self, call: Callable[[Engine], Awaitable[T]]) -> T:
        failure: EngineUnavailable | None = None
        for index in self.order():
            self.in_flight[index] += 1
            try:
                result = await call(self.hosts[index])
            except EngineUnavailable as exc:
                if not self._never_reached(index, exc):
                    raise
                failure = exc
                continue
            finally:
                self.in_flight[index] -= 1
            self._mark(index, up=True)
            return result
        assert failure is not None
        raise failure

    async def _stream(
        self, open_stream: Callable[[Engine], AsyncIterator[GenerationChunk]]
    ) -> AsyncIterator[GenerationChunk]:
        failure: EngineUnavailable | None = None
        for index in self.order():
            self.in_flight[index] += 1
            stream = open_stream(self.hosts[index])
            try:
                try:
                    first = await anext(stream)
                except StopAsyncIteration:
                    return
                except EngineUnavailable as exc:
                    if not self._never_reached(index, exc):
                        raise
                    failure = exc
                    continue
                self._mark(index, up=True)
                yield first
                async for chunk in stream:
                    yield chunk
                return
            finally:
                self.in_flight[index] -= 1
                await _aclose(stream)
        assert failure is not None
        raise failure

    # -- the engine interface ---------------------------------------------------------------

    async def find_model(self, name: str) -> str | None:
        return await self._on_host(lambda host: host.find_model(name))

    async def model_for_version(self, version: RegistryVersion) -> str:
        return await self._on_host(lambda host: host.model_for_version(version))

    async def generate(
        self,
        model: ResolvedModel,
        prompt: str,
        params: SamplingParams,
        *,
        images: Sequence[bytes] = (),
    ) -> Generation:
        return await self._on_host(lambda h: h.generate(model, prompt, params, images=images))

    def stream_generate(
        self,
        model: ResolvedModel,
        prompt: str,
        params: SamplingParams,
        *,
        images: Sequence[bytes] = (),
    ) -> AsyncIterator[GenerationChunk]:
        return self._stream(lambda h: h.stream_generate(model, prompt, params, images=images))

    async def chat(
        self, model: ResolvedModel, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> Generation:
        return await self._on_host(lambda host: host.chat(model, messages, params))

    def stream_chat(
        self, model: ResolvedModel, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncIterator[GenerationChunk]:
        return self._stream(lambda host: host.stream_chat(model, messages, params))

    async def embed(self, model: ResolvedModel, inputs: Sequence[str]) -> Embeddings:
        return await self._on_host(lambda host: host.embed(model, inputs))

    async def classify(self, model: ResolvedModel, inputs: Sequence[str]) -> list[list[Label]]:
        return await self._on_host(lambda host: host.classify(model, inputs))

    async def preload(self, model: ResolvedModel) -> None:
        await asyncio.gather(*(host.preload(model) for host in self.hosts))

    async def unload(self, model: ResolvedModel) -> bool:
        return any(await asyncio.gather(*(host.unload(model) for host in self.hosts)))

    async def health(self) -> None:
        """Ask every host; ready while any one answers."""
        results = await asyncio.gather(
            *(host.health() for host in self.hosts), return_exceptions=True
        )
        for index, result in enumerate(results):
            self._mark(index, up=not isinstance(result, BaseException))
        if all(isinstance(result, BaseException) for result in results):
            raise EngineUnavailable(f"no host answers: {self.location}")

    async def aclose(self) -> None:
        for host in self.hosts:
            await host.aclose()


def _never_sent(exc: BaseException) -> bool:
    """True when the error's causes show the connection was never made."""
    import httpx

    current: BaseException | None = exc
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, httpx.ConnectError | httpx.ConnectTimeout | ConnectionRefusedError):
            return True
        current = current.__cause__ or current.__context__
    return False


async def _aclose(stream: Any) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()
