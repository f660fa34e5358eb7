"""``text-generation``: ``data: {inputs: str}`` -> ``{response, metadata}``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from aiml.engines.base import Engine
from aiml.types import ChatMessage, Generation, GenerationChunk, ResolvedModel, SamplingParams, Task

from ..limits import Measure
from .base import GenerationOptions, GenerativeHandler, StrictModel, TaskSpec, parse_model

__all__ = ["TextGenerationInput", "TextGenerationSpec"]


class _Data(StrictModel):
    inputs: str = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class TextGenerationInput:
    prompt: str
    params: SamplingParams

    def measure(self) -> Measure:
        return Measure(chars=len(self.prompt), max_tokens=self.params.max_tokens)


class _Completion(GenerativeHandler[TextGenerationInput]):
    """A plain completion: the engine applies whatever template the model has for prompts."""

    async def generate(
        self, engine: Engine, model: ResolvedModel, request: TextGenerationInput
    ) -> Generation:
        return await engine.generate(model, request.prompt, request.params)

    def stream(
        self, engine: Engine, model: ResolvedModel, request: TextGenerationInput
    ) -> AsyncIterator[GenerationChunk]:
        return engine.stream_generate(model, request.prompt, request.params)


class _ChatPrompt(GenerativeHandler[TextGenerationInput]):
    """For models registered as chat models: the prompt is sent as one user turn, unless it
    fills in the middle (a ``suffix``), which is raw text around a gap by definition."""

    async def generate(
        self, engine: Engine, model: ResolvedModel, request: TextGenerationInput
    ) -> Generation:
        if request.params.suffix is not None:
            return await engine.generate(model, request.prompt, request.params)
        return await engine.chat(model, _turn(request), request.params)

    def stream(
        self, engine: Engine, model: ResolvedModel, request: TextGenerationInput
    ) -> AsyncIterator[GenerationChunk]:
        if request.params.suffix is not None:
            return engine.stream_generate(model, request.prompt, request.params)
        return engine.stream_chat(model, _turn(request), request.params)


def _turn(request: TextGenerationInput) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=request.prompt)]


class TextGenerationSpec(TaskSpec[TextGenerationInput]):
    task = Task.TEXT_GENERATION
    streams = True
    _completion = _Completion()
    _chat_prompt = _ChatPrompt()

    def parse(self, data: Mapping[str, Any], options: Mapping[str, Any]) -> TextGenerationInput:
        parsed = parse_model(_Data, data, "data")
        params = parse_model(GenerationOptions, options, "options").to_params()
        return TextGenerationInput(prompt=parsed.inputs, params=params)

    def handler_for(self, model: ResolvedModel) -> GenerativeHandler[TextGenerationInput]:
        self.require_generative(model)
        if model.declared_task == Task.CHAT:
            return self._chat_prompt
        return self._completion
