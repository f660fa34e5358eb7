"""``/v1``: the OpenAI API, over every engine and registered model.

``model`` is any registry reference (the version's ``inference_engine`` tag picks the
engine) or ``<engine>/<name>`` for an engine's own model. Streams are server-sent events
ending in ``data: [DONE]``; an error in the middle of one is sent as an error event first.
"""

from __future__ import annotations

import base64
import struct
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from aiml.engines.tool_shapes import openai_call
from aiml.errors import AimlError, EngineError
from aiml.inference.manager import Locate, StreamOutcome, TaskCall
from aiml.inference.targets import openai_target
from aiml.inference.tasks.chat import ChatInput
from aiml.inference.tasks.embeddings import EmbeddingsInput
from aiml.inference.tasks.text_generation import TextGenerationInput
from aiml.observability.context import stick_to_user
from aiml.services import Services
from aiml.types import Generation

from ..deps import CallerDep, ServicesDep
from ..errors import openai_error_body
from ..openai_schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from ..responses import JSONResponse
from ..streaming import SSE, sse_event, streaming_response
from ..threaded_json import ThreadedJsonRoute

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["openai"], route_class=ThreadedJsonRoute)


@router.get("/models")
async def list_models(services: ServicesDep, caller: CallerDep) -> JSONResponse:
    """Every registered model the key may use, and each of its aliases as ``name@alias``.

    Not OpenAI's field: ``capabilities`` of the version an entry names, once aiml has read
    them (the version was used, loaded or shown); ``GET /v1/models/{model}`` reads them."""
    book = services.router.capabilities
    data: list[dict[str, Any]] = []
    for info in await services.catalog.all_models():
        versions: dict[tuple[str, str | None], int | None] = {
            (info.name, None): info.latest_version
        }
        versions.update({(info.name, a): v for a, v in sorted(info.aliases.items())})
        for (name, alias), version in versions.items():
            if not caller.may_list(name, alias):
                continue
            name = f"{name}@{alias}" if alias else name
            entry = _model(name, info.created_s)
            details = book.of_version(info.name, version)
            if details is not None:
                entry["capabilities"] = list(details.capabilities)
            data.append(entry)
    return JSONResponse({"object": "list", "data": data})


@router.get("/models/{model:path}")
async def get_model(model: str, services: ServicesDep) -> JSONResponse:
    resolved, details = await services.manager.describe(_target(services, model))  # or 404
    # Not OpenAI's fields: what the model is and can do (the version's details).
    answer = {
        **_model(model, 0, owned_by=resolved.engine),
        "capabilities": list(details.capabilities),
        "details": details.as_dict(),
    }
    return JSONResponse(answer)


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, services: ServicesDep) -> Response:
    stick_to_user(body.user)
    locate = _target(services, body.model)
    call = TaskCall("chat", locate, ChatInput(body.to_messages(), body.params()))
    reply = _Reply("chat.completion", body.model, body.include_usage)
    return await _answer(services, call, reply, stream=body.stream)


@router.post("/completions")
async def completions(body: CompletionRequest, services: ServicesDep) -> Response:
    stick_to_user(body.user)
    locate = _target(services, body.model)
    call = TaskCall("text-generation", locate, TextGenerationInput(body.text(), body.params()))
    reply = _Reply("text_completion", body.model, body.include_usage)
    return await _answer(services, call, reply, stream=body.stream)


def _target(services: Services, model: str) -> Locate:
    """Finding the engine may ask the registry: the manager runs it inside its gate."""
    return lambda: openai_target(services.router, model)


async def _answer(services: Services, call: TaskCall, reply: _Reply, *, stream: bool) -> Response:
    if stream:
        return streaming_response(reply.stream(await services.manager.open(call)), SSE)
    outcome = await services.manager.run(call)
    assert outcome.generation is not None
    return JSONResponse(reply.whole(outcome.generation))


@router.post("/embeddings")
async def embeddings(body: EmbeddingRequest, services: ServicesDep) -> JSONResponse:
    stick_to_user(body.user)
    locate = _target(services, body.model)
    outcome = await services.manager.run(
        TaskCall("embeddings", locate, EmbeddingsInput(body.texts()))
    )
    vectors: list[list[float]] = outcome.result["embeddings"]
    tokens = outcome.result["metadata"].get("prompt_tokens") or 0
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(vector, body.encoding_format)}
        for i, vector in enumerate(vectors)
    ]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return JSONResponse({"object": "list", "data": data, "model": body.model, "usage": usage})


class _Reply:
    """OpenAI's response objects for one chat or text completion, whole or streamed."""

    def __init__(self, kind: str, model: str, include_usage: bool) -> None:
        self.kind = kind
        self.model = model
        self.include_usage = include_usage
        prefix = "chatcmpl" if kind == "chat.completion" else "cmpl"
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    @property
    def chat(self) -> bool:
        return self.kind == "chat.completion"

    def whole(self, generation: Generation) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "logprobs": None}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": generation.text}
            if generation.tool_calls:
                choice["message"]["content"] = generation.text or None
                choice["message"]["tool_calls"] = _calls(generation)
        else:
            choice["text"] = generation.text
        choice["finish_reason"] = _finish(generation)
        return {**self._head(self.kind), "choices": [choice], "usage": _usage(generation)}

    async def stream(self, outcome: StreamOutcome) -> AsyncIterator[bytes]:
        kind = f"{self.kind}.chunk" if self.chat else self.kind
        extra = {"usage": None} if self.include_usage else {}
        if self.chat:
            yield sse_event(
                {
                    **self._head(kind),
                    "choices": [self._delta({"role": "assistant", "content": ""}, None)],
                    **extra,
                }
            )
        try:
            async for chunk in outcome.chunks():
                if chunk.text:
                    yield sse_event(
                        {**self._head(kind), "choices": [self._piece(chunk.text)], **extra}
                    )
            if outcome.final is None:
                raise EngineError("the engine ended the stream without a result")
            final = outcome.final
            if self.chat and final.tool_calls:  # whole, once the JSON of the call is
                calls = [{"index": i, **call} for i, call in enumerate(_calls(final))]
                delta = self._delta({"tool_calls": calls}, None)
                yield sse_event({**self._head(kind), "choices": [delta], **extra})
            last = self._delta({}, _finish(final)) if self.chat else self._text("", _finish(final))
            yield sse_event({**self._head(kind), "choices": [last], **extra})
            if self.include_usage:
                yield sse_event({**self._head(kind), "choices": [], "usage": _usage(final)})
        except AimlError as exc:  # the status line is long gone: say it in the stream
            yield sse_event(openai_error_body(exc.status_code, exc.code, exc.message, exc.param))
        yield b"data: [DONE]\n\n"

    def _head(self, kind: str) -> dict[str, Any]:
        head: dict[str, Any] = {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
        }
        head["system_fingerprint"] = None
        return head

    def _piece(self, text: str) -> dict[str, Any]:
        return self._delta({"content": text}, None) if self.chat else self._text(text, None)

    @staticmethod
    def _delta(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    @staticmethod
    def _text(text: str, finish: str | None) -> dict[str, Any]:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}


def _finish(generation: Generation) -> str:
    if generation.tool_calls:
        return "tool_calls"
    return "length" if generation.finish_reason == "length" else "stop"


def _calls(generation: Generation) -> list[dict[str, Any]]:
    return [openai_call(call) for call in generation.tool_calls]


def _usage(generation: Generation) -> dict[str, int]:
    prompt = generation.prompt_tokens or 0
    completion = generation.completion_tokens or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":  # little-endian float32, as the openai client decodes it
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def _model(model_id: str, created: int, *, owned_by: str = "aiml") -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}
