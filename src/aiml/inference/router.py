"""``TaskRouter``: the task -> engines table, engines built once, and the :class:`Route` of
each (task, engine) pair: that task's spec and that engine, built on first use and kept.

Routes are cached, handlers are not: the request gate chooses the handler per resolved model
on every call (the earlier system froze the first model's handler into its executor).
``/inference/stats`` lists the cached routes under their earlier name, ``executors``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiml.engines.base import Engine
from aiml.errors import InvalidRequest
from aiml.observability.stats import Stats
from aiml.registry.mlflow import MlflowRegistry
from aiml.types import Task

from .alias_holds import Vet
from .capabilities import CapabilityBook
from .resolver import ModelResolver
from .tasks import TASK_SPECS, TaskSpec

__all__ = ["Route", "TaskRouter"]

#: Task names of the system aiml replaces, still accepted.
_EARLIER_NAMES = {"audio-transcription": Task.ASR.value}
#: Tasks of that system aiml does not serve: refused by name, with what is served.
_NOT_SERVED = frozenset({"audio-classification", "video-analysis", "scene-detection",
                         "video-summary"})  # fmt: skip


@dataclass(frozen=True, slots=True)
class Route:
    """Where a task goes: the task's spec (its input, its handlers) and the engine that runs
    it, for any model."""

    spec: TaskSpec[Any]
    engine: Engine


class TaskRouter:
    """Chooses the route for a (task, engine) pair; the choice is a table, not a chain."""

    def __init__(
        self,
        engines: Mapping[str, Engine],
        registry: MlflowRegistry,
        *,
        ttl_s: float,
        stats: Stats,
        stale_s: float = 300.0,
        wait_s: float = 1.0,
        unavailable: Mapping[str, str] | None = None,
        vet: Vet | None = None,
    ) -> None:
        self._engines = dict(engines)
        self._unavailable = dict(unavailable or {})
        # ``vet``: the alias-move check, so a move made in the registry that cannot serve
        # is held off (alias_holds.py).
        self.resolver = ModelResolver(
            self._engines, registry, ttl_s=ttl_s, stale_s=stale_s, wait_s=wait_s, stats=stats,
            vet=vet,
        )  # fmt: skip
        self.capabilities = CapabilityBook()
        self._table: dict[Task, tuple[str, ...]] = {
            task: tuple(name for name, engine in self._engines.items() if task in engine.tasks)
            for task in TASK_SPECS
        }
        self._routes: dict[tuple[Task, str], Route] = {}

    @property
    def engines(self) -> Mapping[str, Engine]:
        return self._engines

    @property
    def unavailable(self) -> Mapping[str, str]:
        """Configured engines that cannot run here, and why."""
        return self._unavailable

    def supported_tasks(self) -> dict[str, list[str]]:
        """Task name -> the engines that serve it."""
        return {task.value: list(engines) for task, engines in self._table.items() if engines}

    def routes(self) -> list[str]:
        """The cached routes, as ``task/engine``."""
        return [f"{task.value}/{engine}" for task, engine in self._routes]

    def cached_models(self) -> int:
        return len(self.resolver)

    def spec(self, task: str) -> TaskSpec[Any]:
        return TASK_SPECS[self._task(task)]

    def route(self, task: str, engine: str) -> Route:
        """The route for (task, engine), built on first use and kept (422 for an unknown task
        or engine, or an engine that does not serve the task)."""
        key = (self._task(task), engine)
        route = self._routes.get(key)
        if route is not None:
            return route
        self.engine(engine)
        if engine not in self._table[key[0]]:
            raise InvalidRequest(f"engine {engine!r} does not serve task {task!r}", param="engine")
        route = Route(TASK_SPECS[key[0]], self._engines[engine])
        self._routes[key] = route
        return route

    def engine(self, engine: str) -> Engine:
        """An engine by name (422 naming ``engine`` when unknown or not installed)."""
        if engine in self._unavailable:
            raise InvalidRequest(self._unavailable[engine], param="engine")
        if engine not in self._engines:
            known = ", ".join(sorted(self._engines)) or "none"
            raise InvalidRequest(f"unknown engine {engine!r} (known: {known})", param="engine")
        return self._engines[engine]

    def invalidate_name(self, name: str) -> None:
        """Forget cached resolutions of a registered model, on every engine."""
        self.resolver.invalidate_name(name)

    def clear(self) -> dict[str, int]:
        """Drop every route and every cached mapping; the next request starts cold (the
        answer counts the routes under their earlier name, ``executors``)."""
        routes = len(self._routes)
        self._routes.clear()
        mappings = self.resolver.clear()
        self.capabilities.clear()
        return {"executors": routes, "mappings": mappings}

    def _task(self, task: str) -> Task:
        try:
            return Task(_EARLIER_NAMES.get(task, task))
        except ValueError:
            known = ", ".join(t.value for t in TASK_SPECS)
            if task in _NOT_SERVED:
                served = ", ".join(self.supported_tasks())
                raise InvalidRequest(
                    f"task {task!r} is not served by aiml; served here: {served}", param="task"
                ) from None
            raise InvalidRequest(f"unknown task {task!r} (known: {known})", param="task") from None
