"""``POST /v1/audio/transcriptions``: OpenAI's speech-to-text, on any registered ASR model.

A multipart upload (``file``, ``model``, ``language``, ``prompt``, ``temperature``,
``response_format``: json, text, srt, vtt or verbose_json, ``timestamp_granularities[]``:
segment and/or word), as the official client sends it. The upload is read through the edge's
body limit (``AIML_MAX_BODY_BYTES``); its length in seconds is bounded by
``AIML_MAX_AUDIO_S`` (413). ``stream`` is refused by name: the whisper engine answers once
the audio is transcribed.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, UploadFile
from starlette.responses import PlainTextResponse, Response

from aiml.errors import InvalidRequest
from aiml.inference.manager import TaskCall
from aiml.inference.targets import openai_target
from aiml.inference.tasks.asr import AsrInput
from aiml.types import TranscribeOptions

from ..deps import ServicesDep
from ..responses import JSONResponse

__all__ = ["router"]

router = APIRouter(prefix="/v1/audio", tags=["openai"])

_Format = Literal["json", "text", "srt", "vtt", "verbose_json"]
_Granularity = Literal["segment", "word"]


@router.post("/transcriptions")
async def transcriptions(
    services: ServicesDep,
    file: Annotated[UploadFile, File()],
    model: Annotated[str, Form(min_length=1)],
    language: Annotated[str | None, Form(pattern=r"^[a-z]{2,3}$")] = None,
    prompt: Annotated[str | None, Form(max_length=2000)] = None,
    temperature: Annotated[float, Form(ge=0.0, le=1.0)] = 0.0,
    response_format: Annotated[_Format, Form()] = "json",
    granularities: Annotated[list[_Granularity], Form(alias="timestamp_granularities[]")] = [],  # noqa: B006 (FastAPI copies defaults)
    stream: Annotated[bool, Form()] = False,
) -> Response:
    if stream:
        raise InvalidRequest("stream is not supported for transcriptions here", param="stream")
    if granularities and response_format != "verbose_json":
        raise InvalidRequest(
            "timestamp_granularities needs response_format verbose_json",
            param="timestamp_granularities",
        )
    audio = await file.read()
    if not audio:
        raise InvalidRequest("file: the upload is empty", param="file")
    options = TranscribeOptions(
        language=language, prompt=prompt, temperature=temperature, words="word" in granularities
    )
    locate = lambda: openai_target(services.router, model)  # noqa: E731
    outcome = await services.manager.run(TaskCall("asr", locate, AsrInput(audio, options)))
    result: dict[str, Any] = outcome.result
    if response_format == "text":
        return PlainTextResponse(result["text"] + "\n")
    if response_format in ("srt", "vtt"):
        return PlainTextResponse(_subtitles(result["segments"], response_format))
    if response_format == "json":
        return JSONResponse({"text": result["text"]})
    verbose: dict[str, Any] = {
        "task": "transcribe",
        "language": _language_name(result["language"]),
        "duration": result["duration"],
        "text": result["text"],
        "segments": [
            {k: v for k, v in segment.items() if k != "words"} for segment in result["segments"]
        ],
    }
    if "word" in granularities:
        verbose["words"] = [w for segment in result["segments"] for w in segment["words"]]
    return JSONResponse(verbose)


def _subtitles(segments: list[dict[str, Any]], kind: str) -> str:
    lines = ["WEBVTT", ""] if kind == "vtt" else []
    sep = "." if kind == "vtt" else ","
    for number, segment in enumerate(segments, start=1):
        if kind == "srt":
            lines.append(str(number))
        lines.append(f"{_clock(segment['start'], sep)} --> {_clock(segment['end'], sep)}")
        lines += [segment["text"], ""]
    return "\n".join(lines)


def _clock(seconds: float, sep: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{sep}{millis:03d}"


def _language_name(code: str) -> str:
    """OpenAI's verbose_json names the language ("english"), not its code."""
    names = {"en": "english", "de": "german", "fr": "french", "es": "spanish", "it": "italian"}
    return names.get(code, code)
