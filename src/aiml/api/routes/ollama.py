"""``/api``: Ollama's API (``docs/api.md``) over every engine and registered model.

Tools written for Ollama work on registry names: ``name`` (or ``name:latest``) is the latest
version, ``name:3`` version 3, ``name:prod`` the alias ``prod``; a name the registry does
not hold goes to the Ollama engine as it is. Streaming is NDJSON by default, as Ollama's,
with its timing fields in nanoseconds. aiml does not push, create or delete models.

Loading a model without a request (an empty prompt), unloading it (``keep_alive`` 0) and
``pull`` (which fetches its files) need an admin key where keys are configured, as
``/admin/models/*`` do; a user's request loads the model it uses. ``keep_alive`` is
otherwise ignored: the pool's idle policy (``AIML_MODEL_IDLE_TTL_S``) is the operator's.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from aiml.engines.tool_shapes import ollama_call
from aiml.errors import AimlError, EngineError, Forbidden
from aiml.inference.manager import Locate, StreamOutcome, TaskCall
from aiml.inference.targets import ollama_target
from aiml.inference.tasks.chat import ChatInput
from aiml.inference.tasks.embeddings import EmbeddingsInput
from aiml.inference.tasks.text_generation import TextGenerationInput
from aiml.inference.tasks.vlm import VlmInput
from aiml.services import Services
from aiml.types import ChatMessage, Generation, ModelDetails

from ..audit_trail import note_audit
from ..auth import Caller
from ..deps import CallerDep, ServicesDep
from ..ollama_schemas import (
    ChatBody,
    EmbedBody,
    EmbeddingsBody,
    GenerateBody,
    PullBody,
    ShowBody,
    decode_image,
    sampling,
)
from ..responses import JSONResponse
from ..streaming import NDJSON, ndjson_line, streaming_response
from ..threaded_json import ThreadedJsonRoute

__all__ = ["OLLAMA_API_VERSION", "router"]

#: The Ollama API release whose documented behaviour /api follows.
OLLAMA_API_VERSION = "0.12.6"
_NOT_HERE = (
    "aiml serves the models of its MLflow registry; it does not push, create, copy or "
    "delete them (register models with `aiml register` instead)"
)

#: The capability names Ollama's own /api/show uses (aiml's "chat" is in model_info).
_OLLAMA_CAPABILITIES = frozenset({"completion", "tools", "insert", "embedding", "vision"})

router = APIRouter(prefix="/api", tags=["ollama"], route_class=ThreadedJsonRoute)


@router.get("/version")
async def version() -> JSONResponse:
    return JSONResponse({"version": OLLAMA_API_VERSION})


@router.get("/tags")
async def tags(services: ServicesDep, caller: CallerDep) -> JSONResponse:
    """Every registered model the key may use as ``name:latest``, and each alias as
    ``name:alias``."""
    models: list[dict[str, Any]] = []
    for info in await services.catalog.all_models():
        modified = _rfc3339(info.created_s)
        for tag in ("latest", *sorted(info.aliases)):
            if caller.may_list(info.name, None if tag == "latest" else tag):
                models.append(_listing(f"{info.name}:{tag}", modified))
    return JSONResponse({"models": models})


@router.post("/show")
async def show(body: ShowBody, services: ServicesDep) -> JSONResponse:
    resolved, details = await services.manager.describe(_target(services, body.model))
    info: dict[str, Any] = {
        "general.architecture": details.family,
        "aiml.capabilities": list(details.capabilities),
        "aiml.engine": resolved.engine,
        "aiml.engine_model": resolved.engine_model,
        "aiml.registry_name": resolved.registry_name,
        "aiml.registry_version": resolved.registry_version,
    }
    if details.context_length is not None:
        info[f"{details.family}.context_length"] = details.context_length
    return JSONResponse(
        {
            "modelfile": "",
            "parameters": "",
            "template": details.template,
            "details": _details(resolved.engine, details),
            "model_info": info,
            "capabilities": [c for c in details.capabilities if c in _OLLAMA_CAPABILITIES],
            "modified_at": _now(),
        }
    )


@router.post("/pull")
async def pull(body: PullBody, services: ServicesDep) -> Response:
    """A registry name's files fetched into the artifact cache and verified (local
    engines), or the Ollama server's own pull where settings allow it (admin keys only:
    ``aiml.api.auth.ROUTE_ACCESS``)."""
    resolved = await services.manager.resolve(_target(services, body.model))
    lines = services.engines[resolved.engine].pull(resolved)
    first = await anext(lines, {"status": "success"})  # errors before any line: a status
    if not body.stream:
        async for line in lines:
            first = line
        return JSONResponse(first)
    return streaming_response(_progress(first, lines), NDJSON)


async def _progress(
    first: dict[str, Any], lines: AsyncIterator[dict[str, Any]]
) -> AsyncIterator[bytes]:
    yield ndjson_line(first)
    try:
        async for line in lines:
            yield ndjson_line(line)
    except AimlError as exc:
        yield ndjson_line({"error": exc.message})


@router.get("/ps")
async def ps(services: ServicesDep) -> JSONResponse:
    """Models loaded in this process by the local engines."""
    now = time.monotonic()
    running = []
    for entry in services.pool.entries():
        engine, name, number = entry.key
        expires = datetime.now(UTC) + timedelta(
            seconds=services.pool.idle_ttl_s - (now - entry.last_used)
        )
        running.append(
            {
                **_listing(f"{name}:{number}", _rfc3339(time.time())),
                "size": entry.size_bytes,
                "details": _details(engine),
                "expires_at": expires.isoformat().replace("+00:00", "Z"),
                "size_vram": 0,
            }
        )
    return JSONResponse({"models": running})


@router.post("/generate")
async def generate(body: GenerateBody, services: ServicesDep, caller: CallerDep) -> Response:
    body.check()
    locate = _target(services, body.model)
    if not body.prompt and not body.images:  # Ollama: an empty prompt loads or unloads
        return await _load_or_unload(services, caller, locate, body, chat=False)
    params = sampling(body.options, body.format)
    if body.suffix:
        params = replace(params, suffix=body.suffix)
    if body.images:
        image = decode_image(body.images[0], "images.0")
        call = TaskCall("vlm", locate, VlmInput(image, body.prompt, params))
    elif body.system:
        turns = (ChatMessage("system", body.system), ChatMessage("user", body.prompt))
        call = TaskCall("chat", locate, ChatInput(turns, params))
    else:
        call = TaskCall("text-generation", locate, TextGenerationInput(body.prompt, params))
    return await _answer(services, call, body.model, body.stream, chat=False)


@router.post("/chat")
async def chat(body: ChatBody, services: ServicesDep, caller: CallerDep) -> Response:
    messages = body.to_messages()
    locate = _target(services, body.model)
    if not messages:  # Ollama: no messages loads or unloads
        return await _load_or_unload(services, caller, locate, body, chat=True)
    call = TaskCall("chat", locate, ChatInput(messages, body.params()))
    return await _answer(services, call, body.model, body.stream, chat=True)


@router.post("/embed")
async def embed(body: EmbedBody, services: ServicesDep) -> JSONResponse:
    started = time.perf_counter()
    locate = _target(services, body.model)
    outcome = await services.manager.run(
        TaskCall("embeddings", locate, EmbeddingsInput(body.texts()))
    )
    return JSONResponse(
        {
            "model": body.model,
            "embeddings": outcome.result["embeddings"],
            "total_duration": _ns(time.perf_counter() - started),
            "load_duration": 0,
            "prompt_eval_count": outcome.result["metadata"].get("prompt_tokens") or 0,
        }
    )


@router.post("/embeddings")
async def embeddings(body: EmbeddingsBody, services: ServicesDep) -> JSONResponse:
    """Ollama's superseded single-prompt embeddings route."""
    locate = _target(services, body.model)
    outcome = await services.manager.run(
        TaskCall("embeddings", locate, EmbeddingsInput((body.prompt,)))
    )
    return JSONResponse({"embedding": outcome.result["embeddings"][0]})


@router.api_route("/push", methods=["POST"], include_in_schema=False)
@router.api_route("/create", methods=["POST"], include_in_schema=False)
@router.api_route("/copy", methods=["POST"], include_in_schema=False)
@router.api_route("/delete", methods=["DELETE"], include_in_schema=False)
async def not_here() -> JSONResponse:
    return JSONResponse({"error": _NOT_HERE}, status_code=501)


def _target(services: Services, model: str) -> Locate:
    """Finding the engine may ask the registry: the manager runs it inside its gate."""
    return lambda: ollama_target(services.router, model)


async def _answer(
    services: Services, call: TaskCall, model: str, stream: bool, *, chat: bool
) -> Response:
    started = time.perf_counter()
    if stream:
        opened = await services.manager.open(call)
        return streaming_response(_frames(opened, model, started, chat=chat), NDJSON)
    outcome = await services.manager.run(call)
    assert outcome.generation is not None
    whole = _final(model, outcome.generation, outcome.generation.text, chat, started, None)
    if chat and outcome.generation.tool_calls:
        whole["message"]["tool_calls"] = _calls(outcome.generation)
    return JSONResponse(whole)


def _calls(generation: Generation) -> list[dict[str, Any]]:
    return [ollama_call(call) for call in generation.tool_calls]


async def _frames(
    stream: StreamOutcome, model: str, started: float, *, chat: bool
) -> AsyncIterator[bytes]:
    first_token: float | None = None
    try:
        async for chunk in stream.chunks():
            if chunk.text:
                first_token = first_token or time.perf_counter()
                yield ndjson_line({**_piece(model, chunk.text, chat), "done": False})
        if stream.final is None:
            raise EngineError("the engine ended the stream without a result")
        final = stream.final
        if chat and final.tool_calls:  # as Ollama sends them: a frame of their own
            frame = _piece(model, "", chat)
            frame["message"]["tool_calls"] = _calls(final)
            yield ndjson_line({**frame, "done": False})
        yield ndjson_line(_final(model, final, "", chat, started, first_token))
    except AimlError as exc:  # Ollama's way to report an error mid-stream
        yield ndjson_line({"error": exc.message})


def _piece(model: str, text: str, chat: bool) -> dict[str, Any]:
    frame: dict[str, Any] = {"model": model, "created_at": _now()}
    if chat:
        frame["message"] = {"role": "assistant", "content": text}
    else:
        frame["response"] = text
    return frame


def _final(
    model: str,
    generation: Generation,
    text: str,
    chat: bool,
    started: float,
    first_token: float | None,
) -> dict[str, Any]:
    """The last frame: Ollama's statistics, the engine's own where it reports them."""
    ended = time.perf_counter()
    first = first_token or ended
    measured = {
        "total_duration": _ns(ended - started),
        "load_duration": 0,
        "prompt_eval_duration": _ns(first - started),
        "eval_duration": _ns(ended - first),
    }
    timings = {key: generation.engine_metadata.get(key, value) for key, value in measured.items()}
    return {
        **_piece(model, text, chat),
        "done": True,
        "done_reason": generation.finish_reason or "stop",
        **timings,
        "prompt_eval_count": generation.prompt_tokens or 0,
        "eval_count": generation.completion_tokens or 0,
    }


async def _load_or_unload(
    services: Services,
    caller: Caller,
    locate: Locate,
    body: GenerateBody | ChatBody,
    *,
    chat: bool,
) -> JSONResponse:
    """What ``/admin/models/load`` and ``unload`` do, so only for what may call those."""
    unload = body.keep_alive == 0
    note_audit(target=body.model, operation="unload" if unload else "load")  # refused too
    if not caller.admin:  # refused, not ignored: the client would believe it was done
        what = "unloading a model (keep_alive 0)" if unload else "loading a model without a prompt"
        raise Forbidden(f"{what} needs an admin key (AIML_ADMIN_KEYS)")
    if unload:
        await services.manager.unload(locate)
    else:
        await services.manager.load(locate)
    frame = {
        **_piece(body.model, "", chat),
        "done_reason": "unload" if unload else "load",
        "done": True,
    }
    return JSONResponse(frame)


def _listing(name: str, modified: str) -> dict[str, Any]:
    return {
        "name": name,
        "model": name,
        "modified_at": modified,
        "size": 0,
        "digest": hashlib.sha256(name.encode()).hexdigest(),
        "details": _details(""),
    }


def _details(engine: str, details: ModelDetails | None = None) -> dict[str, Any]:
    family = details.family if details else engine
    return {
        "parent_model": "",
        "format": (details.format if details else "") or engine,
        "family": family,
        "families": [family] if family else None,
        "parameter_size": details.parameter_size if details else "",
        "quantization_level": details.quantization if details else "",
    }


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _rfc3339(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat().replace("+00:00", "Z")
