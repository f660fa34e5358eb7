"""``InferenceManager``: the service's inference facade, in front of the request gate.

Every API surface (aiml's own, OpenAI's, Ollama's) turns its request into a
:class:`TaskCall` (task, how to find its engine and model, the task's typed input) and hands
it here, whole (:meth:`InferenceManager.run`) or streamed (:meth:`InferenceManager.open`);
model lookups and admin loads come here too (:meth:`InferenceManager.gated` and the methods
built on it). Each goes through the gate (:mod:`.gate`, where a request's path reads top to
bottom): refused while draining (503), bounded by the deadline (504, the work cancelled),
counted exactly once in ``/inference/stats`` and ``/metrics``. Besides, the manager validates
the earlier system's requests (:meth:`InferenceManager.prepare`), and reports stats and
health.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiml.errors import AimlError
from aiml.observability.metrics import Metrics
from aiml.observability.stats import Stats
from aiml.observability.tracing import Tracer
from aiml.registry.mlflow import MlflowRegistry
from aiml.registry.references import parse_reference
from aiml.types import ModelDetails, ModelRef, ResolvedModel

from .admission import Admission
from .gate import InferenceOutcome, Locate, RequestGate, TaskCall
from .limits import Limits
from .readiness import RequiredEngines, engines_needed
from .router import TaskRouter
from .streams import StreamOutcome

__all__ = [
    "HealthReport",
    "InferenceManager",
    "InferenceOutcome",
    "InferenceRequest",
    "Locate",
    "StreamOutcome",
    "TaskCall",
    "fixed",
]

T = TypeVar("T")
_HEALTH_TIMEOUT_S = 5.0


def fixed(engine: str, ref: ModelRef) -> Locate:
    """A :data:`Locate` for a call whose engine and reference are already known."""

    async def locate() -> tuple[str, ModelRef]:
        return engine, ref

    return locate


@dataclass(frozen=True, slots=True)
class InferenceRequest:
    """One inference as the earlier system's clients send it (untyped data and options)."""

    task: str
    engine: str
    model_name: str
    data: Mapping[str, Any]
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HealthReport:
    """Reachability of the registry and of each engine; ``None`` means reachable.

    ``required`` names the engines the service cannot serve without; any other engine
    that is down makes the service degraded, not unready. ``cached_models`` counts the
    models this front has resolved: its cache serves those on while the registry is down.
    """

    registry: str | None
    engines: dict[str, str | None]
    required: frozenset[str] = frozenset()
    draining: bool = False
    cached_models: int = 0

    @property
    def ok(self) -> bool:
        """Everything it needs answers: the registry and every required engine."""
        return self.registry is None and self.ready

    @property
    def ready(self) -> bool:
        """It can serve what it served: every required engine is up, and the registry too,
        or its cache holds models it resolved before (served stale while it is down)."""
        needed = all(self.engines.get(name) is None for name in self.required)
        can_serve = self.registry is None or self.cached_models > 0
        return can_serve and needed and not self.draining

    @property
    def degraded(self) -> list[str]:
        """What is down without making it unready: optional engines, and the registry."""
        down = sorted(name for name, error in self.engines.items() if error is not None)
        return down + (["registry"] if self.registry is not None else [])


class InferenceManager:
    """The service's inference entry point; the gated paths are the :class:`RequestGate`'s."""

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
        required_engines: RequiredEngines | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.router = router
        self.registry = registry
        self.stats_source = stats
        self.admission = admission
        self.gate = RequestGate(
            router,
            stats,
            limits=limits,
            admission=admission,
            metrics=metrics,
            request_timeout_s=request_timeout_s,
            tracer=tracer,
        )
        self._required_engines = required_engines
        self._started = time.monotonic()

    @property
    def draining(self) -> bool:
        """Set on shutdown: the gate refuses new calls (503)."""
        return self.gate.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.gate.draining = value

    def prepare(self, request: InferenceRequest) -> TaskCall:
        """Route and validate an ``/inference/infer`` request (422s, before any I/O)."""
        route = self.router.route(request.task, request.engine)
        ref = parse_reference(request.model_name)
        parsed = route.spec.parse(request.data, request.options)
        return TaskCall(request.task, fixed(request.engine, ref), parsed)

    async def infer(self, request: InferenceRequest) -> InferenceOutcome:
        """The earlier system's call: validate, then :meth:`run`."""
        return await self.run(self._validated(request), counted=True)

    async def stream(self, request: InferenceRequest) -> StreamOutcome:
        """Like :meth:`infer`, streamed."""
        return await self.open(self._validated(request), counted=True)

    async def run(self, call: TaskCall, *, counted: bool = False) -> InferenceOutcome:
        """Locate, admit and run the call, within the deadline (:meth:`RequestGate.run`)."""
        return await self.gate.run(call, counted=counted)

    async def open(self, call: TaskCall, *, counted: bool = False) -> StreamOutcome:
        """Locate and admit the call and start the generation; chunks follow
        (:meth:`RequestGate.open`)."""
        return await self.gate.open(call, counted=counted)

    async def gated(
        self,
        operation: str,
        locate: Locate,
        work: Callable[[str, ModelRef], Awaitable[T]],
        *,
        admit: bool = False,
    ) -> T:
        """``work(engine, ref)`` (a lookup, a load) through the gate
        (:meth:`RequestGate.gated`)."""
        return await self.gate.gated(operation, locate, work, admit=admit)

    async def resolve(self, locate: Locate) -> ResolvedModel:
        """The model a name means (``/v1/models/{model}``, ``/api/show``), through the gate."""
        resolver = self.router.resolver
        return await self.gated("lookup", locate, lambda engine, ref: resolver.resolve(ref, engine))

    async def describe(self, locate: Locate) -> tuple[ResolvedModel, ModelDetails]:
        """The model a name means and what it can do, through the gate (reading a model's
        details may fetch its files or ask its engine, once per version)."""

        async def describe(engine: str, ref: ModelRef) -> tuple[ResolvedModel, ModelDetails]:
            resolved = await self.router.resolver.resolve(ref, engine)
            details = await self.router.capabilities.details(self.router.engine(engine), resolved)
            return resolved, details

        return await self.gated("lookup", locate, describe)

    async def load(self, locate: Locate) -> ResolvedModel:
        """Resolve and load a model into memory ahead of its first request (and read what
        it can do, so listings show it)."""

        async def load(engine: str, ref: ModelRef) -> ResolvedModel:
            target = self.router.engine(engine)
            resolved = await self.router.resolver.resolve(ref, engine)
            await target.preload(resolved)
            await self.router.capabilities.details(target, resolved)
            return resolved

        return await self.gated("load", locate, load, admit=True)

    async def unload(self, locate: Locate) -> tuple[ResolvedModel, bool]:
        """Unload a model now; the flag says whether it was loaded."""

        async def unload(engine: str, ref: ModelRef) -> tuple[ResolvedModel, bool]:
            target = self.router.engine(engine)
            resolved = await self.router.resolver.resolve(ref, engine)
            return resolved, await target.unload(resolved)

        return await self.gated("unload", locate, unload)

    def clear_cache(self) -> dict[str, int]:
        """Drop the cached routes and every cached reference mapping."""
        return self.router.clear()

    def stats(self) -> dict[str, Any]:
        s = self.stats_source
        by_status: dict[str, int] = {}
        for (_, _, status), count in s.finished.items():
            by_status[str(status)] = by_status.get(str(status), 0) + count
        by_model: dict[str, dict[str, int]] = {}
        for (model, status), count in s.by_model.items():
            by_model.setdefault(model, {})[str(status)] = count
        return {
            "uptime_s": round(time.monotonic() - self._started, 3),
            "requests": s.started,
            "succeeded": s.succeeded,
            "failed": s.failed,
            "cancelled": s.cancelled,
            "by_status": by_status,
            "by_model": by_model,
            "by_version": s.versions.summaries(),
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
            "executors": self.router.routes(),  # the routes' earlier name
            # Aliases served at their last good version: the registry names one that cannot.
            "held_aliases": holds.held.snapshot() if (holds := self.router.resolver.holds) else {},
        }

    async def health(self) -> HealthReport:
        checks: dict[str, Awaitable[None]] = {"registry": self.registry.ping()}
        for name, engine in self.router.engines.items():
            checks[f"engine:{name}"] = engine.health()
        needed = engines_needed(self._required_engines, self.router.engines, _HEALTH_TIMEOUT_S)
        results, (required, unlisted) = await asyncio.gather(
            asyncio.gather(*(_probe(check) for check in checks.values())), needed
        )
        outcome = dict(zip(checks, results, strict=True))
        return HealthReport(
            registry=outcome.pop("registry") or unlisted,
            engines={key.removeprefix("engine:"): error for key, error in outcome.items()},
            required=required,
            draining=self.draining,
            cached_models=self.router.cached_models(),
        )

    def _validated(self, request: InferenceRequest) -> TaskCall:
        return self.gate.validated(request.task, request.engine, lambda: self.prepare(request))


async def _probe(check: Awaitable[None]) -> str | None:
    try:
        await asyncio.wait_for(check, _HEALTH_TIMEOUT_S)
    except AimlError as exc:
        return exc.message
    except TimeoutError:
        return f"no answer within {_HEALTH_TIMEOUT_S:g}s"
    return None
