"""``POST /v1/audio/transcriptions``: OpenAI's speech-to-text, on any registered ASR model.

A multipart upload (``file``, ``model``, ``language``, ``prompt``, ``temperature``,
``response_format``: json, text, srt, vtt or verbose_json, ``timestamp_granularities[]``:
segment and/or word), as the official client sends it. The upload is read through the edge's
body limit (``AIML_MAX_BODY_BYTES``); its length in seconds is bounded by
``AIML_MAX_AUDIO_S`` (413). With ``stream``, OpenAI's server-sent events: a
``transcript.text.delta`` per segment as it is heard, then ``transcript.text.done``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, UploadFile
from starlette.responses import PlainTextResponse, Response

from aiml.errors import AimlError, EngineError, InvalidRequest
from aiml.inference.manager import StreamOutcome, TaskCall
from aiml.inference.targets import openai_target
from aiml.inference.tasks.asr import AsrInput
from aiml.types import TranscribeOptions

from ..deps import ServicesDep
from ..errors import openai_error_body
from ..responses import JSONResponse
from ..streaming import SSE, sse_event, streaming_response

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
    if stream and response_format not in ("json", "text"):
        raise InvalidRequest("stream needs response_format json or text", param="stream")
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
    call = TaskCall("asr", locate, AsrInput(audio, options))
    if stream:
        return streaming_response(_events(await services.manager.open(call)), SSE)
    outcome = await services.manager.run(call)
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


async def _events(outcome: StreamOutcome) -> AsyncIterator[bytes]:
    try:
        async for chunk in outcome.chunks():
            if chunk.text:
                yield sse_event({"type": "transcript.text.delta", "delta": chunk.text})
        if outcome.final is None:
            raise EngineError("the engine ended the transcription without a result")
        yield sse_event({"type": "transcript.text.done", "text": outcome.final.text})
    except AimlError as exc:  # the status line is long gone: say it in the stream
        yield sse_event(openai_error_body(exc.status_code, exc.code, exc.message, exc.param))


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
