"""``asr`` (the earlier system's ``audio-transcription``): speech to text.

``data: {audio: base64 (WAV, MP3, FLAC, OGG, ...), language?: "en"}``,
``options: {timestamps?: "segment" | "word", temperature?: float, prompt?: str}`` ->
``{text, language, duration, segments: [{start, end, text, words?}]}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from aiml.engines.base import Engine
from aiml.types import ResolvedModel, Task, TranscribeOptions, Transcript

from ..limits import Measure
from .base import Handler, StrictModel, TaskSpec, decode_base64, parse_model

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


class _Transcribe(Handler[AsrInput]):
    async def run(self, engine: Engine, model: ResolvedModel, request: AsrInput) -> dict[str, Any]:
        transcript = await engine.transcribe(model, request.audio, request.options)
        return transcript_json(transcript, words=request.options.words)


class AsrSpec(TaskSpec[AsrInput]):
    task = Task.ASR
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

    def handler_for(self, model: ResolvedModel) -> Handler[AsrInput]:
        return self._transcribe


def transcript_json(transcript: Transcript, *, words: bool) -> dict[str, Any]:
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
        if words:
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
