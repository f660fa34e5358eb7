"""``vad``: ``data: {audio: base64}`` -> ``{segments: [{start, end, probability}], duration}``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from aiml.engines.base import Engine
from aiml.types import ResolvedModel, Task

from ..limits import Measure
from .base import Handler, NoOptions, StrictModel, TaskSpec, decode_base64, parse_model

__all__ = ["VadSpec"]


class _Data(StrictModel):
    audio: str = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class VadInput:
    audio: bytes

    def measure(self) -> Measure:
        return Measure()


class _Detect(Handler[VadInput]):
    async def run(self, engine: Engine, model: ResolvedModel, request: VadInput) -> dict[str, Any]:
        segments = await engine.detect_speech(model, request.audio)
        return {
            "segments": [
                {"start": s.start, "end": s.end, "probability": s.probability} for s in segments
            ],
            "speech_s": round(sum(s.end - s.start for s in segments), 3),
        }


class VadSpec(TaskSpec[VadInput]):
    task = Task.VAD
    _detect = _Detect()

    def parse(self, data: Mapping[str, Any], options: Mapping[str, Any]) -> VadInput:
        parsed = parse_model(_Data, data, "data")
        parse_model(NoOptions, options, "options")
        return VadInput(audio=decode_base64(parsed.audio, "data.audio"))

    def handler_for(self, model: ResolvedModel) -> Handler[VadInput]:
        return self._detect
