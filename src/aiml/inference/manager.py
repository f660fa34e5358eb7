"""``InferenceManager``: validate -> route -> execute. Orchestration only; no engine work."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiml.errors import AimlError
from aiml.registry.mlflow import MlflowRegistry
from aiml.registry.references import parse_reference
from aiml.types import ResolvedModel

from .router import TaskRouter
from .stats import Stats

__all__ = ["HealthReport", "InferenceManager", "InferenceOutcome", "InferenceRequest"]

_HEALTH_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class InferenceRequest:
    """One inference as the earlier system's clients send it."""

    task: str
    engine: str
    model_name: str
    data: Mapping[str, Any]
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InferenceOutcome:
    request: InferenceRequest
    resolved: ResolvedModel
    result: dict[str, Any]
    processing_time: float


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

    async def infer(self, request: InferenceRequest) -> InferenceOutcome:
        started = time.perf_counter()
        self._stats.requests += 1
        try:
            executor = self.router.route(request.task, request.engine)
            ref = parse_reference(request.model_name)
            parsed = executor.spec.parse(request.data, request.options)
            execution = await executor.execute(ref, parsed)
        except AimlError as exc:
            self._stats.failed += 1
            self._stats.errors[exc.code] += 1
            raise
        self._stats.succeeded += 1
        return InferenceOutcome(
            request=request,
            resolved=execution.resolved,
            result=execution.result,
            processing_time=time.perf_counter() - started,
        )

    async def load(self, engine: str, model_name: str) -> ResolvedModel:
        """Resolve and load a model into memory ahead of its first request."""
        target = self.router.engine(engine)
        resolved = await self.router.resolver.resolve(parse_reference(model_name), engine)
        await target.preload(resolved)
        return resolved

    async def unload(self, engine: str, model_name: str) -> tuple[ResolvedModel, bool]:
        """Unload a model now; the flag says whether it was loaded."""
        target = self.router.engine(engine)
        resolved = await self.router.resolver.resolve(parse_reference(model_name), engine)
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
        results = await asyncio.gather(
            *(_probe(check) for check in checks.values()), return_exceptions=False
        )
        outcome = dict(zip(checks, results, strict=True))
        return HealthReport(
            registry=outcome.pop("registry"),
            engines={key.removeprefix("engine:"): error for key, error in outcome.items()},
        )


async def _probe(check: Awaitable[None]) -> str | None:
    try:
        await asyncio.wait_for(check, _HEALTH_TIMEOUT_S)
    except AimlError as exc:
        return exc.message
    except TimeoutError:
        return f"no answer within {_HEALTH_TIMEOUT_S:g}s"
    return None
