"""``asr`` (the earlier system's ``audio-transcription``): speech to text.

``data: {audio: base64 (WAV, MP3, FLAC, OGG, ...), language?: "en"}``,
``options: {timestamps?: "segment" | "word", temperature?: float, prompt?: str}`` ->
``{text, language, duration, segments: [{start, end, text, words?}]}``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from aiml.engines.base import Engine
from aiml.engines.local import collect
from aiml.types import (
    Generation,
    GenerationChunk,
    ResolvedModel,
    Task,
    TranscribeOptions,
    Transcript,
)

from ..limits import Measure
from .base import GenerativeHandler, StrictModel, TaskSpec, decode_base64, parse_model

__all__ = ["AsrInput", "AsrSpec", "transcript_json"]


class _Data(StrictModel):
    audio: str = Field(min_length=1)
    language: str | None = Field(default=None, pattern=r"^[a-z]{2,3}$")


class _Options(StrictModel):
    timestamps: Literal["segment", "word"] = "segment"
    temperature: float = Field(default=0.0, ge=0.0, le=1.0)
    prompt: str | None = Field(default=None, max_length=2000)


@dataclass(frozen=True, slots=True)
class AsrInput:
    audio: bytes
    options: TranscribeOptions

    def measure(self) -> Measure:
        return Measure(chars=len(self.options.prompt or ""))


class _Transcribe(GenerativeHandler[AsrInput]):
    """A transcription streams as text, a segment at a time; its result is the transcript."""

    async def generate(self, engine: Engine, model: ResolvedModel, request: AsrInput) -> Generation:
        return await collect(self.stream(engine, model, request))

    def stream(
        self, engine: Engine, model: ResolvedModel, request: AsrInput
    ) -> AsyncIterator[GenerationChunk]:
        return engine.stream_transcribe(model, request.audio, request.options)

    def shape(self, model: ResolvedModel, generation: Generation) -> dict[str, Any]:
        return transcript_json(generation.engine_metadata["transcript"])


class AsrSpec(TaskSpec[AsrInput]):
    task = Task.ASR
    streams = True
    _transcribe = _Transcribe()

    def parse(self, data: Mapping[str, Any], options: Mapping[str, Any]) -> AsrInput:
        parsed = parse_model(_Data, data, "data")
        opts = parse_model(_Options, options, "options")
        return AsrInput(
            audio=decode_base64(parsed.audio, "data.audio"),
            options=TranscribeOptions(
                language=parsed.language,
                prompt=opts.prompt,
                temperature=opts.temperature,
                words=opts.timestamps == "word",
            ),
        )

    def handler_for(self, model: ResolvedModel) -> GenerativeHandler[AsrInput]:
        return self._transcribe


def transcript_json(transcript: Transcript) -> dict[str, Any]:
    segments = []
    for number, segment in enumerate(transcript.segments):
        item: dict[str, Any] = {
            "id": number,
            "start": segment.start,
            "end": segment.end,
            "text": segment.text,
            "avg_logprob": segment.avg_logprob,
            "no_speech_prob": segment.no_speech_prob,
        }
        if segment.words:  # asked for with timestamps: word
            item["words"] = [
                {"start": w.start, "end": w.end, "word": w.word, "probability": w.probability}
                for w in segment.words
            ]
        segments.append(item)
    return {
        "text": transcript.text,
        "language": transcript.language,
        "duration": round(transcript.duration_s, 3),
        "segments": segments,
    }
