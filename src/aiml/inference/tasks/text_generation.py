"""``text-generation``: ``data: {inputs: str}`` -> ``{response, metadata}``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from aiml.engines.base import Engine
from aiml.types import ChatMessage, ResolvedModel, SamplingParams, Task

from .base import (
    GenerationOptions,
    Handler,
    StrictModel,
    TaskSpec,
    generation_metadata,
    parse_model,
)

__all__ = ["TextGenerationSpec"]


class _Data(StrictModel):
    inputs: str = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class TextGenerationInput:
    prompt: str
    params: SamplingParams


class _Completion(Handler[TextGenerationInput]):
    """A plain completion: the engine applies whatever template the model has for prompts."""

    async def run(
        self, engine: Engine, model: ResolvedModel, request: TextGenerationInput
    ) -> dict[str, Any]:
        generation = await engine.generate(model, request.prompt, request.params)
        return {"response": generation.text, "metadata": generation_metadata(model, generation)}


class _ChatPrompt(Handler[TextGenerationInput]):
    """For models registered as chat models: the prompt is sent as one user turn."""

    async def run(
        self, engine: Engine, model: ResolvedModel, request: TextGenerationInput
    ) -> dict[str, Any]:
        messages = [ChatMessage(role="user", content=request.prompt)]
        generation = await engine.chat(model, messages, request.params)
        return {"response": generation.text, "metadata": generation_metadata(model, generation)}


class TextGenerationSpec(TaskSpec[TextGenerationInput]):
    task = Task.TEXT_GENERATION
    _completion = _Completion()
    _chat_prompt = _ChatPrompt()

    def parse(self, data: Mapping[str, Any], options: Mapping[str, Any]) -> TextGenerationInput:
        parsed = parse_model(_Data, data, "data")
        params = parse_model(GenerationOptions, options, "options").to_params()
        return TextGenerationInput(prompt=parsed.inputs, params=params)

    def handler_for(self, model: ResolvedModel) -> Handler[TextGenerationInput]:
        self.require_generative(model)
        if model.declared_task == Task.CHAT:
            return self._chat_prompt
        return self._completion
