"""``InferenceManager``: validate -> route -> execute. Orchestration only; no engine work.

Every API surface (aiml's own, OpenAI's, Ollama's) turns its request into a
:class:`TaskCall` (task, engine, model reference, the task's typed input) and hands it here,
whole (:meth:`InferenceManager.run`) or streamed (:meth:`InferenceManager.open`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiml.errors import AimlError, InvalidRequest
from aiml.registry.mlflow import MlflowRegistry
from aiml.registry.references import parse_reference
from aiml.types import Generation, GenerationChunk, ModelRef, ResolvedModel

from .executor import Execution, OpenStream
from .router import TaskRouter
from .stats import Stats

__all__ = [
    "HealthReport",
    "InferenceManager",
    "InferenceOutcome",
    "InferenceRequest",
    "StreamOutcome",
    "TaskCall",
]

_HEALTH_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class InferenceRequest:
    """One inference as the earlier system's clients send it (untyped data and options)."""

    task: str
    engine: str
    model_name: str
    data: Mapping[str, Any]
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TaskCall:
    """A validated call: the task's typed input for a model reference on an engine."""

    task: str
    engine: str
    ref: ModelRef
    input: Any


@dataclass(frozen=True, slots=True)
class InferenceOutcome:
    resolved: ResolvedModel
    result: dict[str, Any]
    generation: Generation | None
    processing_time: float


class StreamOutcome:
    """A started generation; iterate :meth:`chunks`, then read :attr:`final`."""

    def __init__(self, opened: OpenStream, started: float, stats: Stats) -> None:
        self.resolved = opened.resolved
        self.final: Generation | None = None
        self._opened = opened
        self._started = started
        self._stats = stats

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._started

    def shape(self, generation: Generation) -> dict[str, Any]:
        """The non-streaming ``result`` object for the finished generation."""
        return self._opened.shape(generation)

    async def chunks(self) -> AsyncIterator[GenerationChunk]:
        """The text pieces; the final chunk (``done``) carries the whole generation."""
        try:
            async for chunk in self._opened.chunks():
                if chunk.final is not None:
                    self.final = chunk.final
                yield chunk
        except AimlError as exc:
            self._stats.failed += 1
            self._stats.errors[exc.code] += 1
            raise
        except (GeneratorExit, asyncio.CancelledError):
            self._stats.cancelled += 1  # the client hung up
            raise
        else:
            self._stats.succeeded += 1

    async def aclose(self) -> None:
        await self._opened.aclose()


@dataclass(frozen=True, slots=True)
class HealthReport:
    """Reachability of the registry and of each engine; ``None`` means reachable."""

    registry: str | None
    engines: dict[str, str | None]

    @property
    def ok(self) -> bool:
        return self.registry is None and all(error is None for error in self.engines.values())


class InferenceManager:
    """The service's inference entry point."""

    def __init__(self, router: TaskRouter, registry: MlflowRegistry, stats: Stats) -> None:
        self.router = router
        self.registry = registry
        self._stats = stats
        self._started = time.monotonic()

    def prepare(self, request: InferenceRequest) -> TaskCall:
        """Route and validate an ``/inference/infer`` request (422s, before any I/O)."""
        executor = self.router.route(request.task, request.engine)
        ref = parse_reference(request.model_name)
        parsed = executor.spec.parse(request.data, request.options)
        return TaskCall(request.task, request.engine, ref, parsed)

    async def infer(self, request: InferenceRequest) -> InferenceOutcome:
        """The earlier system's call: validate, then :meth:`run`."""
        return await self.run(self._counted_prepare(request), counted=True)

    async def stream(self, request: InferenceRequest) -> StreamOutcome:
        """Like :meth:`infer`, streamed."""
        return await self.open(self._counted_prepare(request), counted=True)

    async def run(self, call: TaskCall, *, counted: bool = False) -> InferenceOutcome:
        """Resolve the model and run the task on it."""
        started = time.perf_counter()
        if not counted:
            self._stats.requests += 1
        try:
            execution: Execution = await self.router.route(call.task, call.engine).execute(
                call.ref, call.input
            )
        except AimlError as exc:
            self._count_failure(exc)
            raise
        self._stats.succeeded += 1
        return InferenceOutcome(
            resolved=execution.resolved,
            result=execution.result,
            generation=execution.generation,
            processing_time=time.perf_counter() - started,
        )

    async def open(self, call: TaskCall, *, counted: bool = False) -> StreamOutcome:
        """Resolve the model and start the generation; chunks follow as they come."""
        started = time.perf_counter()
        if not counted:
            self._stats.requests += 1
        try:
            executor = self.router.route(call.task, call.engine)
            if not executor.spec.streams:
                raise InvalidRequest(
                    f"task {call.task!r} does not stream; leave out 'stream'", param="stream"
                )
            opened = await executor.open_stream(call.ref, call.input)
        except AimlError as exc:
            self._count_failure(exc)
            raise
        return StreamOutcome(opened, started, self._stats)

    async def load(self, engine: str, ref: ModelRef) -> ResolvedModel:
        """Resolve and load a model into memory ahead of its first request."""
        target = self.router.engine(engine)
        resolved = await self.router.resolver.resolve(ref, engine)
        await target.preload(resolved)
        return resolved

    async def unload(self, engine: str, ref: ModelRef) -> tuple[ResolvedModel, bool]:
        """Unload a model now; the flag says whether it was loaded."""
        target = self.router.engine(engine)
        resolved = await self.router.resolver.resolve(ref, engine)
        return resolved, await target.unload(resolved)

    def clear_cache(self) -> dict[str, int]:
        """Drop executors and every cached reference mapping."""
        return self.router.clear()

    def stats(self) -> dict[str, Any]:
        s = self._stats
        return {
            "uptime_s": round(time.monotonic() - self._started, 3),
            "requests": s.requests,
            "succeeded": s.succeeded,
            "failed": s.failed,
            "cancelled": s.cancelled,
            "errors": dict(s.errors),
            "registry_lookups": self.registry.calls,
            "resolutions": s.resolutions,
            "engine_checks": s.engine_checks,
            "cache": {
                "hits": s.cache_hits,
                "misses": s.cache_misses,
                "stale_served": s.stale_served,
                "entries": self.router.cached_models(),
            },
            "executors": self.router.executors(),
        }

    async def health(self) -> HealthReport:
        checks: dict[str, Awaitable[None]] = {"registry": self.registry.ping()}
        for name, engine in self.router.engines.items():
            checks[f"engine:{name}"] = engine.health()
        results = await asyncio.gather(*(_probe(check) for check in checks.values()))
        outcome = dict(zip(checks, results, strict=True))
        return HealthReport(
            registry=outcome.pop("registry"),
            engines={key.removeprefix("engine:"): error for key, error in outcome.items()},
        )

    def _counted_prepare(self, request: InferenceRequest) -> TaskCall:
        self._stats.requests += 1
        try:
            return self.prepare(request)
        except AimlError as exc:
            self._count_failure(exc)
            raise

    def _count_failure(self, exc: AimlError) -> None:
        self._stats.failed += 1
        self._stats.errors[exc.code] += 1


async def _probe(check: Awaitable[None]) -> str | None:
    try:
        await asyncio.wait_for(check, _HEALTH_TIMEOUT_S)
    except AimlError as exc:
        return exc.message
    except TimeoutError:
        return f"no answer within {_HEALTH_TIMEOUT_S:g}s"
    return None
