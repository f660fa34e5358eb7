"""``InferenceManager``: validate -> admit -> route -> execute. Orchestration only.

Every API surface (aiml's own, OpenAI's, Ollama's) turns its request into a
:class:`TaskCall` (task, engine, model reference, the task's typed input) and hands it here,
whole (:meth:`InferenceManager.run`) or streamed (:meth:`InferenceManager.open`). Here, for
every surface alike: the limits, the per-engine admission queue (429 past it), the deadline
(504, the engine's work cancelled), refusal while draining (503), and the counts behind
``/inference/stats`` and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from aiml.errors import AimlError, DeadlineExceeded, Draining, InvalidRequest
from aiml.observability.context import request_deadline, request_started
from aiml.observability.metrics import Metrics
from aiml.registry.mlflow import MlflowRegistry
from aiml.registry.references import parse_reference
from aiml.types import Generation, GenerationChunk, ModelRef, ResolvedModel

from .admission import Admission
from .executor import Execution, OpenStream
from .limits import Limits
from .router import TaskRouter
from .stats import Stats
from .tasks import TASK_SPECS

__all__ = [
    "HealthReport",
    "InferenceManager",
    "InferenceOutcome",
    "InferenceRequest",
    "StreamOutcome",
    "TaskCall",
]

T = TypeVar("T")
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


@dataclass(frozen=True, slots=True)
class HealthReport:
    """Reachability of the registry and of each engine; ``None`` means reachable."""

    registry: str | None
    engines: dict[str, str | None]
    draining: bool = False

    @property
    def ok(self) -> bool:
        healthy = self.registry is None and all(e is None for e in self.engines.values())
        return healthy and not self.draining


class _Accounting:
    """Where one call's outcome is counted (stats, metrics) and its slot given back."""

    def __init__(self, manager: InferenceManager, call: TaskCall, started: float) -> None:
        self.task = call.task if call.task in {t.value for t in TASK_SPECS} else "unknown"
        self.engine = call.engine if call.engine in manager.router.engines else "unknown"
        self.started = started
        self._manager = manager
        self._gate: Admission | None = None
        self._done = False

    def admitted(self, gate: Admission) -> None:
        self._gate = gate

    def finish(self, status: int, generation: Generation | None = None) -> None:
        if self._done:
            return
        self._done = True
        if self._gate is not None:
            self._gate.leave()
        stats = self._manager.stats_source
        stats.finished[(self.task, self.engine, status)] += 1
        if generation is not None and generation.completion_tokens:
            stats.tokens[(self.task, self.engine)] += generation.completion_tokens
        elapsed = time.perf_counter() - self.started
        self._manager.metrics.request_duration.labels(self.task, self.engine).observe(elapsed)

    def failed(self, exc: AimlError) -> None:
        if self._done:
            return
        stats = self._manager.stats_source
        stats.errors[exc.code] += 1
        if exc.code in ("overloaded", "draining"):
            stats.rejected[exc.code] += 1
        self.finish(exc.status_code)

    def cancelled(self) -> None:
        if self._done:
            return
        self._manager.stats_source.cancelled += 1
        self.finish(499)  # nginx's "client closed request"

    def crashed(self) -> None:
        """A bug, not an answer: still counted, and the slot still given back."""
        self._manager.stats_source.errors["internal_error"] += 1
        self.finish(500)

    def settle(self, exc: BaseException) -> None:
        """Count the call as ended by ``exc``."""
        if isinstance(exc, AimlError):
            self.failed(exc)
        elif isinstance(exc, (GeneratorExit, asyncio.CancelledError)):
            self.cancelled()  # the client hung up
        else:
            self.crashed()


class StreamOutcome:
    """A started generation; iterate :meth:`chunks`, then read :attr:`final`."""

    def __init__(
        self, opened: OpenStream, account: _Accounting, deadline_at: float, metrics: Metrics
    ) -> None:
        self.resolved = opened.resolved
        self.final: Generation | None = None
        self._opened = opened
        self._account = account
        self._deadline_at = deadline_at
        self._metrics = metrics

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._account.started

    def shape(self, generation: Generation) -> dict[str, Any]:
        """The non-streaming ``result`` object for the finished generation."""
        return self._opened.shape(generation)

    async def chunks(self) -> AsyncIterator[GenerationChunk]:
        """The text pieces; the final chunk (``done``) carries the whole generation."""
        pieces = cast(AsyncGenerator[GenerationChunk, None], self._opened.chunks())
        first = True
        try:
            while True:
                try:
                    async with asyncio.timeout_at(self._deadline_at):
                        chunk = await anext(pieces)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise _deadline() from None
                if first and chunk.text:
                    first = False
                    labels = (self._account.task, self._account.engine)
                    self._metrics.time_to_first_token.labels(*labels).observe(self.elapsed)
                if chunk.final is not None:
                    self.final = chunk.final
                yield chunk
        except BaseException as exc:
            self._account.settle(exc)
            raise
        else:
            self._account.finish(200, self.final)
        finally:
            await pieces.aclose()

    async def aclose(self) -> None:
        await self._opened.aclose()
        self._account.cancelled()


class InferenceManager:
    """The service's inference entry point."""

    def __init__(
        self,
        router: TaskRouter,
        registry: MlflowRegistry,
        stats: Stats,
        *,
        limits: Limits,
        admission: Mapping[str, Admission],
        metrics: Metrics,
        request_timeout_s: float,
    ) -> None:
        self.router = router
        self.registry = registry
        self.stats_source = stats
        self.limits = limits
        self.admission = admission
        self.metrics = metrics
        self.request_timeout_s = request_timeout_s
        self.draining = False
        self._started = time.monotonic()

    def prepare(self, request: InferenceRequest) -> TaskCall:
        """Route and validate an ``/inference/infer`` request (422s, before any I/O)."""
        executor = self.router.route(request.task, request.engine)
        ref = parse_reference(request.model_name)
        parsed = executor.spec.parse(request.data, request.options)
        return TaskCall(request.task, request.engine, ref, parsed)

    async def infer(self, request: InferenceRequest) -> InferenceOutcome:
        """The earlier system's call: validate, then :meth:`run`."""
        return await self.run(self._prepare_counted(request), counted=True)

    async def stream(self, request: InferenceRequest) -> StreamOutcome:
        """Like :meth:`infer`, streamed."""
        return await self.open(self._prepare_counted(request), counted=True)

    def _begin(self, call: TaskCall, counted: bool) -> tuple[_Accounting, float]:
        if not counted:
            self.stats_source.started += 1
        return _Accounting(self, call, time.perf_counter()), self.deadline_at()

    async def run(self, call: TaskCall, *, counted: bool = False) -> InferenceOutcome:
        """Admit the call, resolve its model and run the task, within the deadline."""
        account, deadline_at = self._begin(call, counted)
        try:
            executor = self._admissible(call)
            gate = self.admission[call.engine]
            await _within(gate.enter(), deadline_at)
            account.admitted(gate)
            execution: Execution = await _within(
                executor.execute(call.ref, call.input), deadline_at
            )
        except BaseException as exc:
            account.settle(exc)
            raise
        account.finish(200, execution.generation)
        return InferenceOutcome(
            resolved=execution.resolved,
            result=execution.result,
            generation=execution.generation,
            processing_time=time.perf_counter() - account.started,
        )

    async def open(self, call: TaskCall, *, counted: bool = False) -> StreamOutcome:
        """Admit the call, resolve its model and start the generation; chunks follow."""
        account, deadline_at = self._begin(call, counted)
        try:
            executor = self._admissible(call)
            if not executor.spec.streams:
                raise InvalidRequest(
                    f"task {call.task!r} does not stream; leave out 'stream'", param="stream"
                )
            gate = self.admission[call.engine]
            await _within(gate.enter(), deadline_at)
            account.admitted(gate)
            opened = await _within(executor.open_stream(call.ref, call.input), deadline_at)
        except BaseException as exc:
            account.settle(exc)
            raise
        return StreamOutcome(opened, account, deadline_at, self.metrics)

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
        s = self.stats_source
        by_status: dict[str, int] = {}
        for (_, _, status), count in s.finished.items():
            by_status[str(status)] = by_status.get(str(status), 0) + count
        return {
            "uptime_s": round(time.monotonic() - self._started, 3),
            "requests": s.started,
            "succeeded": s.succeeded,
            "failed": s.failed,
            "cancelled": s.cancelled,
            "by_status": by_status,
            "errors": dict(s.errors),
            "rejected": dict(s.rejected),
            "generated_tokens": sum(s.tokens.values()),
            "registry_lookups": self.registry.calls,
            "resolutions": s.resolutions,
            "engine_checks": s.engine_checks,
            "cache": {
                "hits": s.cache_hits,
                "misses": s.cache_misses,
                "stale_served": s.stale_served,
                "entries": self.router.cached_models(),
            },
            "in_flight": {name: gate.running for name, gate in self.admission.items()},
            "queued": {name: gate.waiting for name, gate in self.admission.items()},
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
            draining=self.draining,
        )

    def _admissible(self, call: TaskCall) -> Any:
        if self.draining:
            raise Draining("the service is shutting down; retry on another instance")
        executor = self.router.route(call.task, call.engine)
        measure: Callable[[], Any] | None = getattr(call.input, "measure", None)
        if measure is not None:
            self.limits.check(measure())
        return executor

    def deadline_at(self) -> float:
        """When the current request must be answered (the loop's clock): its arrival plus the
        service's timeout, or less if the client asked for less."""
        asked = request_deadline.get()
        timeout = min(asked, self.request_timeout_s) if asked else self.request_timeout_s
        started = request_started.get()
        return (started if started is not None else asyncio.get_running_loop().time()) + timeout

    async def within_deadline(self, work: Awaitable[T], *, task: str | None = None) -> T:
        """``work`` (finding a model's engine, say) bounded by the request's deadline.

        With ``task``, a failure is counted as that inference request's outcome (it ends
        there, before :meth:`run`), so the stats and metrics still see every request.
        """
        try:
            return await _within(work, self.deadline_at())
        except AimlError as exc:
            if task is not None:
                self.stats_source.started += 1
                call = TaskCall(task, "-", ModelRef("-"), None)
                _Accounting(self, call, time.perf_counter()).failed(exc)
            raise

    def _prepare_counted(self, request: InferenceRequest) -> TaskCall:
        self.stats_source.started += 1
        try:
            return self.prepare(request)
        except AimlError as exc:
            call = TaskCall(request.task, request.engine, ModelRef("-"), None)
            _Accounting(self, call, time.perf_counter()).failed(exc)
            raise


async def _within(work: Awaitable[T], deadline_at: float) -> T:
    """``work`` cancelled at the deadline (engines stop their work on cancellation)."""
    try:
        async with asyncio.timeout_at(deadline_at):
            return await work
    except TimeoutError:
        raise _deadline() from None


def _deadline() -> DeadlineExceeded:
    return DeadlineExceeded(
        "the request's deadline passed; its work was cancelled (AIML_REQUEST_TIMEOUT_S, "
        "or X-Request-Timeout)"
    )


async def _probe(check: Awaitable[None]) -> str | None:
    try:
        await asyncio.wait_for(check, _HEALTH_TIMEOUT_S)
    except AimlError as exc:
        return exc.message
    except TimeoutError:
        return f"no answer within {_HEALTH_TIMEOUT_S:g}s"
    return None
