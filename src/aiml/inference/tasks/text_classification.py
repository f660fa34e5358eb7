"""``text-classification``: ``data: {inputs: str | [str]}`` -> ``{labels: [[{label, score}]]}``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from aiml.engines.base import Engine
from aiml.types import ResolvedModel, Task

from ..limits import Measure
from .base import Handler, StrictModel, TaskSpec, parse_model

__all__ = ["TextClassificationSpec"]


class _Data(StrictModel):
    inputs: str | list[str] = Field(min_length=1)


class _Options(StrictModel):
    top_k: int | None = Field(default=None, ge=1, description="Labels per input, best first.")


@dataclass(frozen=True, slots=True)
class ClassificationInput:
    texts: tuple[str, ...]
    top_k: int | None

    def measure(self) -> Measure:
        return Measure(chars=sum(len(t) for t in self.texts), items=len(self.texts))


class _Classify(Handler[ClassificationInput]):
    async def run(
        self, engine: Engine, model: ResolvedModel, request: ClassificationInput
    ) -> dict[str, Any]:
        results = await engine.classify(model, request.texts)
        return {
            "labels": [
                [{"label": label.label, "score": label.score} for label in labels[: request.top_k]]
                for labels in results
            ],
            "metadata": {"model": model.engine_model},
        }


class TextClassificationSpec(TaskSpec[ClassificationInput]):
    task = Task.TEXT_CLASSIFICATION
    _classify = _Classify()

    def parse(self, data: Mapping[str, Any], options: Mapping[str, Any]) -> ClassificationInput:
        parsed = parse_model(_Data, data, "data")
        top_k = parse_model(_Options, options, "options").top_k
        texts = (parsed.inputs,) if isinstance(parsed.inputs, str) else tuple(parsed.inputs)
        return ClassificationInput(texts=texts, top_k=top_k)

    def handler_for(self, model: ResolvedModel) -> Handler[ClassificationInput]:
        return self._classify
