"""``TaskRouter``: the task -> engines table, engines built once, executors per (task, engine)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiml.engines.base import Engine
from aiml.errors import InvalidRequest
from aiml.observability.stats import Stats
from aiml.registry.mlflow import MlflowRegistry
from aiml.types import Task

from .capabilities import CapabilityBook
from .executor import ModelExecutor
from .resolver import ModelResolver
from .tasks import TASK_SPECS, TaskSpec

__all__ = ["TaskRouter"]

#: Task names of the system aiml replaces, still accepted.
_EARLIER_NAMES = {"audio-transcription": Task.ASR.value}
#: Tasks of that system aiml does not serve: refused by name, with what is served.
_NOT_SERVED = frozenset({"audio-classification", "video-analysis", "scene-detection",
                         "video-summary"})  # fmt: skip


class TaskRouter:
    """Chooses the executor for a (task, engine) pair; the choice is a table, not a chain."""

    def __init__(
        self,
        engines: Mapping[str, Engine],
        registry: MlflowRegistry,
        *,
        ttl_s: float,
        stats: Stats,
        stale_s: float = 300.0,
        unavailable: Mapping[str, str] | None = None,
    ) -> None:
        self._engines = dict(engines)
        self._unavailable = dict(unavailable or {})
        self.resolver = ModelResolver(
            self._engines, registry, ttl_s=ttl_s, stale_s=stale_s, stats=stats
        )
        self.capabilities = CapabilityBook()
        self._table: dict[Task, tuple[str, ...]] = {
            task: tuple(name for name, engine in self._engines.items() if task in engine.tasks)
            for task in TASK_SPECS
        }
        self._executors: dict[tuple[Task, str], ModelExecutor] = {}

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

    def executors(self) -> list[str]:
        return [f"{task.value}/{engine}" for task, engine in self._executors]

    def cached_models(self) -> int:
        return len(self.resolver)

    def spec(self, task: str) -> TaskSpec[Any]:
        return TASK_SPECS[self._task(task)]

    def route(self, task: str, engine: str) -> ModelExecutor:
        """The executor for (task, engine), built on first use and kept."""
        key = (self._task(task), engine)
        executor = self._executors.get(key)
        if executor is not None:
            return executor
        self.engine(engine)
        if engine not in self._table[key[0]]:
            raise InvalidRequest(f"engine {engine!r} does not serve task {task!r}", param="engine")
        executor = ModelExecutor(
            TASK_SPECS[key[0]], self._engines[engine], self.resolver, self.capabilities
        )
        self._executors[key] = executor
        return executor

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
        """Drop every executor and every cached mapping; the next request starts cold."""
        executors = len(self._executors)
        self._executors.clear()
        mappings = self.resolver.clear()
        self.capabilities.clear()
        return {"executors": executors, "mappings": mappings}

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
