"""``ModelExecutor``: one per (task, engine); resolves a reference, picks the handler, runs it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiml.engines.base import Engine
from aiml.errors import ModelNotFound
from aiml.types import ModelRef, ResolvedModel

from .resolver import ModelResolver
from .tasks import TaskSpec

__all__ = ["Execution", "ModelExecutor"]


@dataclass(frozen=True, slots=True)
class Execution:
    resolved: ResolvedModel
    result: dict[str, Any]


class ModelExecutor:
    """Runs one task on one engine for any model.

    The reference -> model mapping lives in the shared :class:`ModelResolver`; the
    handler is chosen per resolved model on every call (the earlier system froze the first
    model's handler into the executor).
    """

    def __init__(self, spec: TaskSpec[Any], engine: Engine, resolver: ModelResolver) -> None:
        self.spec = spec
        self.engine = engine
        self.resolver = resolver

    async def execute(self, ref: ModelRef, request: Any) -> Execution:
        resolved = await self.resolver.resolve(ref, self.engine.name)
        handler = self.spec.handler_for(resolved)
        try:
            result = await handler.run(self.engine, resolved, request)
        except ModelNotFound:
            # The engine lost the model since we checked: look again next time.
            self.resolver.invalidate(ref)
            raise
        return Execution(resolved=resolved, result=result)
