"""``image-captioning``: ``data: {image: base64, prompt?}`` -> ``{caption, response, metadata}``.

A caption is a vision model's answer to a caption prompt: the ``vlm`` path on any engine
with vision (Ollama, OpenAI-compatible servers), the model chosen by the registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field

from aiml.errors import ModelNotServable
from aiml.types import Generation, ResolvedModel, Task

from .base import GenerationOptions, GenerativeHandler, StrictModel, parse_model
from .vlm import DescribeImage, VlmInput, VlmSpec, decode_image

__all__ = ["CAPTION_PROMPT", "ImageCaptioningSpec"]

CAPTION_PROMPT = "Write one short sentence that describes this image."


class _Data(StrictModel):
    image: str = Field(min_length=1)
    prompt: str | None = Field(default=None, min_length=1)


class _Caption(DescribeImage):
    def shape(self, model: ResolvedModel, generation: Generation) -> dict[str, Any]:
        shaped: dict[str, Any] = super().shape(model, generation)
        return {"caption": generation.text.strip(), **shaped}


class ImageCaptioningSpec(VlmSpec):
    task = Task.IMAGE_CAPTIONING
    _caption = _Caption()

    def parse(self, data: Mapping[str, Any], options: Mapping[str, Any]) -> VlmInput:
        parsed = parse_model(_Data, data, "data")
        params = parse_model(GenerationOptions, options, "options").to_params()
        prompt = parsed.prompt or CAPTION_PROMPT
        return VlmInput(image=decode_image(parsed.image), prompt=prompt, params=params)

    def handler_for(self, model: ResolvedModel) -> GenerativeHandler[VlmInput]:
        if model.declared_task not in (None, Task.VLM, Task.IMAGE_CAPTIONING):
            raise ModelNotServable(
                f"registered model {model.registry_name!r} version {model.registry_version} "
                f"is a {model.declared_task!r} model, not a vision model",
                param="task",
            )
        return self._caption
