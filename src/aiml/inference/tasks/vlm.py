"""``vlm``: ``data: {image: base64, prompt}`` -> ``{response, metadata}``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from aiml.engines.base import Engine
from aiml.errors import ModelNotServable
from aiml.types import Generation, GenerationChunk, ResolvedModel, SamplingParams, Task

from ..limits import Measure
from .base import (
    GenerationOptions,
    GenerativeHandler,
    StrictModel,
    TaskSpec,
    decode_base64,
    parse_model,
)

__all__ = ["DescribeImage", "VlmInput", "VlmSpec", "decode_image"]


class _Data(StrictModel):
    image: str = Field(min_length=1)
    prompt: str = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class VlmInput:
    image: bytes
    prompt: str
    params: SamplingParams

    def measure(self) -> Measure:
        return Measure(
            chars=len(self.prompt),
            image_bytes=(len(self.image),),
            max_tokens=self.params.max_tokens,
        )


class DescribeImage(GenerativeHandler[VlmInput]):
    async def generate(self, engine: Engine, model: ResolvedModel, request: VlmInput) -> Generation:
        return await engine.generate(model, request.prompt, request.params, images=(request.image,))

    def stream(
        self, engine: Engine, model: ResolvedModel, request: VlmInput
    ) -> AsyncIterator[GenerationChunk]:
        return engine.stream_generate(
            model, request.prompt, request.params, images=(request.image,)
        )


class VlmSpec(TaskSpec[VlmInput]):
    task = Task.VLM
    streams = True
    _describe = DescribeImage()

    def parse(self, data: Mapping[str, Any], options: Mapping[str, Any]) -> VlmInput:
        parsed = parse_model(_Data, data, "data")
        params = parse_model(GenerationOptions, options, "options").to_params()
        return VlmInput(image=decode_image(parsed.image), prompt=parsed.prompt, params=params)

    def handler_for(self, model: ResolvedModel) -> GenerativeHandler[VlmInput]:
        if model.declared_task is not None and model.declared_task != Task.VLM:
            raise ModelNotServable(
                f"registered model {model.registry_name!r} version {model.registry_version} "
                f"is a {model.declared_task!r} model, not a vision model",
                param="task",
            )
        return self._describe


def decode_image(text: str) -> bytes:
    return decode_base64(text, "data.image")
