"""``ModelExecutor``: one per (task, engine); resolves a reference, picks the handler, runs it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from aiml.engines.base import Engine
from aiml.errors import InvalidRequest, ModelNotFound
from aiml.types import Generation, GenerationChunk, ModelRef, ResolvedModel, SamplingParams

from .capabilities import CapabilityBook
from .resolver import ModelResolver
from .tasks import Handler, TaskSpec
from .tasks.base import GenerativeHandler

__all__ = ["Execution", "ModelExecutor", "OpenStream"]


@dataclass(frozen=True, slots=True)
class Execution:
    resolved: ResolvedModel
    result: dict[str, Any]
    #: The generation itself, for generative tasks (OpenAI and Ollama shapes need its counts).
    generation: Generation | None = None


class OpenStream:
    """A generation that has started: its first chunk is already in hand.

    Reading the first chunk before anything is sent means the errors engines raise at once
    (model not found, engine down) still get their own HTTP status, not a 200 stream.
    """

    def __init__(
        self,
        resolved: ResolvedModel,
        handler: Handler[Any],
        first: GenerationChunk | None,
        rest: AsyncIterator[GenerationChunk],
        on_error: Callable[[BaseException], None],
    ) -> None:
        self.resolved = resolved
        self._handler = handler
        self._first = first
        self._rest = rest
        self._on_error = on_error

    def shape(self, generation: Generation) -> dict[str, Any]:
        """The non-streaming ``result`` object for the finished generation."""
        return self._handler.shape(self.resolved, generation)

    async def chunks(self) -> AsyncIterator[GenerationChunk]:
        try:
            if self._first is not None:
                yield self._first
            async for chunk in self._rest:
                yield chunk
        except BaseException as exc:
            self._on_error(exc)
            raise
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop the generation (the client left): the engine is told at once."""
        close = getattr(self._rest, "aclose", None)
        if close is not None:
            await close()


class ModelExecutor:
    """Runs one task on one engine for any model.

    The reference -> model mapping lives in the shared :class:`ModelResolver`; the
    handler is chosen per resolved model on every call (the earlier system froze the first
    model's handler into the executor).
    """

    def __init__(
        self,
        spec: TaskSpec[Any],
        engine: Engine,
        resolver: ModelResolver,
        capabilities: CapabilityBook,
    ) -> None:
        self.spec = spec
        self.engine = engine
        self.resolver = resolver
        self.capabilities = capabilities

    def _check_options(self, request: Any) -> None:
        """Refuse, by name, an option this engine cannot honour (never drop it silently)."""
        params = getattr(request, "params", None)
        if not isinstance(params, SamplingParams):
            return
        for option in sorted(params.options() - self.engine.extra_options):
            param = option
            if option == "output_format" and params.output_format is not None:
                param = params.output_format.param
            raise InvalidRequest(
                f"{param} is not supported by the {self.engine.name} engine", param=param
            )

    async def execute(self, ref: ModelRef, request: Any) -> Execution:
        self._check_options(request)
        resolved = await self.resolver.resolve(ref, self.engine.name)
        handler = self.spec.handler_for(resolved)
        await self.capabilities.require(self.engine, resolved, self.spec.task, request)
        generation = None
        try:
            if isinstance(handler, GenerativeHandler):
                generation = await handler.generate(self.engine, resolved, request)
                result = handler.shape(resolved, generation)
            else:
                result = await handler.run(self.engine, resolved, request)
        except ModelNotFound:
            # The engine lost the model since we checked: look again next time.
            self.resolver.invalidate(ref)
            raise
        return Execution(resolved=resolved, result=result, generation=generation)

    async def open_stream(self, ref: ModelRef, request: Any) -> OpenStream:
        """Resolve, start the generation and read its first chunk."""
        self._check_options(request)
        resolved = await self.resolver.resolve(ref, self.engine.name)
        handler = self.spec.handler_for(resolved)
        await self.capabilities.require(self.engine, resolved, self.spec.task, request)
        rest = handler.stream(self.engine, resolved, request)
        first: GenerationChunk | None
        try:
            first = await anext(rest)
        except StopAsyncIteration:
            first = None
        except ModelNotFound:
            self.resolver.invalidate(ref)
            raise

        def on_error(exc: BaseException) -> None:
            if isinstance(exc, ModelNotFound):
                self.resolver.invalidate(ref)

        return OpenStream(resolved, handler, first, rest, on_error)
