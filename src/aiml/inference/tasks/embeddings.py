"""``embeddings``: ``data: {inputs: str | [str]}`` -> ``{embeddings: [[float]], metadata}``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from aiml.engines.base import Engine
from aiml.types import ResolvedModel, Task

from ..limits import Measure
from .base import Handler, NoOptions, StrictModel, TaskSpec, parse_model

__all__ = ["EmbeddingsSpec"]


class _Data(StrictModel):
    inputs: str | list[str] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class EmbeddingsInput:
    texts: tuple[str, ...]

    def measure(self) -> Measure:
        return Measure(chars=sum(len(t) for t in self.texts), items=len(self.texts))


class _Embed(Handler[EmbeddingsInput]):
    async def run(
        self, engine: Engine, model: ResolvedModel, request: EmbeddingsInput
    ) -> dict[str, Any]:
        embeddings = await engine.embed(model, request.texts)
        dimensions = len(embeddings.vectors[0]) if embeddings.vectors else 0
        return {
            "embeddings": embeddings.vectors,
            "metadata": {
                "model": model.engine_model,
                "prompt_tokens": embeddings.prompt_tokens,
                "dimensions": dimensions,
            },
        }


class EmbeddingsSpec(TaskSpec[EmbeddingsInput]):
    task = Task.EMBEDDINGS
    _embed = _Embed()

    def parse(self, data: Mapping[str, Any], options: Mapping[str, Any]) -> EmbeddingsInput:
        parsed = parse_model(_Data, data, "data")
        parse_model(NoOptions, options, "options")
        texts = (parsed.inputs,) if isinstance(parsed.inputs, str) else tuple(parsed.inputs)
        return EmbeddingsInput(texts=texts)

    def handler_for(self, model: ResolvedModel) -> Handler[EmbeddingsInput]:
        return self._embed
