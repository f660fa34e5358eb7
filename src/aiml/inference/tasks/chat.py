"""``chat``: ``data: {messages: [{role, content}]}`` -> ``{message: {role, content}, metadata}``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from aiml.engines.base import Engine
from aiml.types import ChatMessage, Generation, GenerationChunk, ResolvedModel, SamplingParams, Task

from ..limits import Measure
from .base import (
    GenerationOptions,
    GenerativeHandler,
    StrictModel,
    TaskSpec,
    generation_metadata,
    parse_model,
)

__all__ = ["SYSTEM_PROMPT_TAG", "ChatInput", "ChatSpec"]

#: A registry version's own system prompt (a version tag): a chat with no system message of
#: its own gets it first, so a prompt change is a new version, canaried and evaluated as one.
SYSTEM_PROMPT_TAG = "aiml.system_prompt"


class _Message(StrictModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str


class _Data(StrictModel):
    messages: list[_Message] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class ChatInput:
    messages: tuple[ChatMessage, ...]
    params: SamplingParams

    def measure(self) -> Measure:
        return Measure(
            chars=sum(len(m.content) for m in self.messages),
            image_bytes=tuple(len(image) for m in self.messages for image in m.images),
            max_tokens=self.params.max_tokens,
        )


class _Chat(GenerativeHandler[ChatInput]):
    async def generate(
        self, engine: Engine, model: ResolvedModel, request: ChatInput
    ) -> Generation:
        return await engine.chat(model, _with_system_prompt(model, request), request.params)

    def stream(
        self, engine: Engine, model: ResolvedModel, request: ChatInput
    ) -> AsyncIterator[GenerationChunk]:
        messages = _with_system_prompt(model, request)
        return engine.stream_chat(model, messages, request.params)

    def shape(self, model: ResolvedModel, generation: Generation) -> dict[str, Any]:
        return {
            "message": {"role": "assistant", "content": generation.text},
            "metadata": generation_metadata(model, generation),
        }


class ChatSpec(TaskSpec[ChatInput]):
    task = Task.CHAT
    streams = True
    _chat = _Chat()

    def parse(self, data: Mapping[str, Any], options: Mapping[str, Any]) -> ChatInput:
        parsed = parse_model(_Data, data, "data")
        params = parse_model(GenerationOptions, options, "options").to_params()
        messages = tuple(ChatMessage(role=m.role, content=m.content) for m in parsed.messages)
        return ChatInput(messages=messages, params=params)

    def handler_for(self, model: ResolvedModel) -> GenerativeHandler[ChatInput]:
        self.require_generative(model)
        return self._chat


def _with_system_prompt(model: ResolvedModel, request: ChatInput) -> tuple[ChatMessage, ...]:
    prompt = model.tags.get(SYSTEM_PROMPT_TAG)
    if not prompt or any(m.role == "system" for m in request.messages):
        return request.messages
    return (ChatMessage("system", prompt), *request.messages)
