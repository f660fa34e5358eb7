"""A remote OpenAI-compatible server as an engine (vLLM, llama.cpp's server, TGI, another aiml).

Its base URL and key come from settings only: no request can point aiml at another host
(server-side request forgery). A registry version maps to the server's model through the
tag ``openai_model_name``. Calls go through the official ``openai`` client, over the same
HTTP layer as the Ollama engine (:mod:`aiml.engines.remote.httpclient`), with explicit timeouts
and no retries (a retry belongs to the caller, who knows its deadline). Its errors are
mapped by the contract in :mod:`aiml.engines.base`: the server's 4xx passed on, 429 with
its ``Retry-After``, 503 unavailable, unreachable 503, timeout 504.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any, cast

import httpx
import openai

from aiml.engines.base import Engine, UpstreamErrors, upstream_error
from aiml.engines.tool_shapes import openai_call, openai_tools
from aiml.errors import (
    AimlError,
    EngineError,
    EngineTimeout,
    EngineUnavailable,
    ModelNotFound,
    ModelNotServable,
)
from aiml.types import (
    LANGUAGE_SERVER_TASKS,
    ChatMessage,
    Embeddings,
    Generation,
    GenerationChunk,
    OutputFormat,
    RegistryVersion,
    ResolvedModel,
    SamplingParams,
    ToolCall,
)
from aiml.urls import redact

from .httpclient import lean_client

__all__ = ["MODEL_NAME_TAG", "OpenAIEngine"]

MODEL_NAME_TAG = "openai_model_name"
# Model ids as servers use them: org/name, name:tag, file names; nothing that is a URL.
_MODEL_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]*(?:/[A-Za-z0-9_][A-Za-z0-9_.:\-]*){0,3}")


class OpenAIEngine(Engine):
    """Models served by a remote OpenAI-compatible server."""

    name = "openai"
    tasks = LANGUAGE_SERVER_TASKS
    extra_options = frozenset({"output_format", "tools", "suffix"})  # passed through
    model_tag_keys = (MODEL_NAME_TAG,)

    def __init__(
        self, base_url: str, *, api_key: str | None, timeout_s: float, connect_timeout_s: float
    ) -> None:
        self._base_url = redact(base_url)
        timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key or "unused",
            timeout=openai.Timeout(timeout_s, connect=connect_timeout_s),
            max_retries=0,
            # openai's types name httpx2's client; it takes httpx's as well (and says so in
            # the TypeError it raises for anything else).
            http_client=cast(Any, lean_client(timeout=timeout)),
        )
        self._mapped = UpstreamErrors(self._translate)

    @property
    def location(self) -> str:
        return f"the OpenAI-compatible server at {self._base_url}"

    async def find_model(self, name: str) -> str | None:
        if not _MODEL_ID.fullmatch(name) or ".." in name:
            return None
        with self._mapped:
            page = await self._client.models.list()
        return name if any(model.id == name for model in page.data) else None

    async def model_for_version(self, version: RegistryVersion) -> str:
        label = f"registered model {version.name!r} version {version.version}"
        name = version.tag(MODEL_NAME_TAG)
        if not name or not _MODEL_ID.fullmatch(name) or ".." in name:
            raise ModelNotServable(
                f"{label} needs an {MODEL_NAME_TAG!r} tag naming the server's model",
                param="model_name",
            )
        if await self.find_model(name) is None:
            raise ModelNotFound(
                f"{label} maps to {name!r}, which {self.location} does not serve",
                param="model_name",
            )
        return name

    async def generate(
        self,
        model: ResolvedModel,
        prompt: str,
        params: SamplingParams,
        *,
        images: Sequence[bytes] = (),
    ) -> Generation:
        if images:
            messages = [ChatMessage("user", prompt, tuple(images))]
            return await self.chat(model, messages, params)
        with self._mapped:
            response = await self._client.completions.create(
                model=model.engine_model, prompt=prompt, **_sampling(params, chat=False)
            )
        choice = response.choices[0]
        return _generation(choice.text, choice.finish_reason, response.usage)

    async def stream_generate(
        self,
        model: ResolvedModel,
        prompt: str,
        params: SamplingParams,
        *,
        images: Sequence[bytes] = (),
    ) -> AsyncIterator[GenerationChunk]:
        if images:
            async for chunk in self.stream_chat(
                model, [ChatMessage("user", prompt, tuple(images))], params
            ):
                yield chunk
            return
        with self._mapped:
            stream = await self._client.completions.create(
                model=model.engine_model,
                prompt=prompt,
                stream=True,
                stream_options={"include_usage": True},
                **_sampling(params, chat=False),
            )
            async with stream:
                async for piece in _pieces(stream, lambda c: c.text):
                    yield piece

    async def chat(
        self, model: ResolvedModel, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> Generation:
        with self._mapped:
            response = await self._client.chat.completions.create(
                model=model.engine_model,
                messages=cast(Any, _messages(messages)),
                **_sampling(params),
                **_tools(params),
            )
        choice = response.choices[0]
        calls = tuple(
            ToolCall(c.id, c.function.name, c.function.arguments)
            for c in choice.message.tool_calls or ()
            if c.type == "function"
        )
        made = _generation(choice.message.content or "", choice.finish_reason, response.usage)
        return replace(made, tool_calls=calls)

    async def stream_chat(
        self, model: ResolvedModel, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncIterator[GenerationChunk]:
        with self._mapped:
            stream = await self._client.chat.completions.create(
                model=model.engine_model,
                messages=cast(Any, _messages(messages)),
                stream=True,
                stream_options={"include_usage": True},
                **_sampling(params),
                **_tools(params),
            )
            calls = _CallPieces()
            async with stream:  # leaving closes the HTTP response: the server stops
                async for piece in _pieces(stream, calls.content_of):
                    if piece.final is not None and calls.made():
                        piece = replace(piece, final=replace(piece.final, tool_calls=calls.made()))
                    yield piece

    async def embed(self, model: ResolvedModel, inputs: Sequence[str]) -> Embeddings:
        with self._mapped:
            response = await self._client.embeddings.create(
                model=model.engine_model, input=list(inputs), encoding_format="float"
            )
        ordered = sorted(response.data, key=lambda item: item.index)
        tokens = response.usage.prompt_tokens if response.usage else None
        return Embeddings(vectors=[list(item.embedding) for item in ordered], prompt_tokens=tokens)

    async def health(self) -> None:
        with self._mapped:
            await self._client.models.list()

    async def aclose(self) -> None:
        await self._client.close()

    def _translate(self, exc: Exception) -> AimlError | None:
        """What the server or the connection did, as :mod:`aiml.errors`; else ``None``.

        An exception that is not the openai client's is aiml's own bug: it propagates as
        it is (500), never as a 502.
        """
        if isinstance(exc, openai.APIStatusError):
            retry_after = exc.response.headers.get("retry-after")
            return upstream_error(
                self.location, exc.status_code, _message(exc), retry_after=retry_after
            )
        if isinstance(exc, openai.APITimeoutError):
            return EngineTimeout(f"{self.location} did not answer in time")
        if isinstance(exc, openai.APIConnectionError):
            return EngineUnavailable(f"{self.location} is unreachable")
        if isinstance(exc, openai.APIError):  # an error event mid-stream, an unreadable answer
            return EngineError(f"{self.location} answered: {exc.message}")
        return None


async def _pieces(stream: Any, text_of: Any) -> AsyncIterator[GenerationChunk]:
    """Text chunks, then a final chunk with the finish reason and the server's usage."""
    parts: list[str] = []
    finish: str | None = None
    usage = None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            text = text_of(choice)
            if text:
                parts.append(text)
                yield GenerationChunk(text=text)
    final = _generation("".join(parts), finish, usage)
    if usage is None:  # servers that ignore stream_options: one token per chunk is their norm
        final = Generation(final.text, final.finish_reason, None, len(parts))
    yield GenerationChunk(text="", done=True, final=final)


def _generation(text: str, finish: str | None, usage: Any) -> Generation:
    return Generation(
        text=text,
        finish_reason=finish,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
    )


def _tools(params: SamplingParams) -> dict[str, Any]:
    """``tools`` and ``tool_choice``, passed through as OpenAI defines them."""
    if not params.tools:
        return {}
    choice: Any = params.tool_choice
    if choice not in ("auto", "none", "required"):
        choice = {"type": "function", "function": {"name": choice}}
    return {"tools": openai_tools(params.tools), "tool_choice": choice}


class _CallPieces:
    """A stream's tool calls, arriving as pieces per index (id and name, then arguments)."""

    def __init__(self) -> None:
        self._calls: dict[int, list[str]] = {}

    def content_of(self, choice: Any) -> str | None:
        """A chunk's text; its pieces of tool calls are kept."""
        for piece in choice.delta.tool_calls or ():
            call = self._calls.setdefault(piece.index, ["", "", ""])
            call[0] = piece.id or call[0]
            if piece.function is not None:
                call[1] += piece.function.name or ""
                call[2] += piece.function.arguments or ""
        content: str | None = choice.delta.content
        return content

    def made(self) -> tuple[ToolCall, ...]:
        return tuple(ToolCall(*self._calls[index]) for index in sorted(self._calls))


def _sampling(params: SamplingParams, *, chat: bool = True) -> dict[str, Any]:
    values: dict[str, Any] = {
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "stop": list(params.stop) or None,
        "seed": params.seed,
    }
    out = {key: value for key, value in values.items() if value is not None}
    # Not OpenAI's, but vLLM, TGI and llama.cpp's server take them; sent only when asked for.
    extra: dict[str, Any] = {}
    if params.top_k is not None:
        extra["top_k"] = params.top_k
    if params.repeat_penalty is not None:
        extra["repetition_penalty"] = params.repeat_penalty  # vLLM, TGI
        extra["repeat_penalty"] = params.repeat_penalty  # llama.cpp
    if params.suffix is not None and not chat:
        out["suffix"] = params.suffix  # fill in the middle, on completions
    if params.output_format is not None:
        # Passed through: chat takes it as OpenAI defines it; completions only on servers
        # that extend it (vLLM, llama.cpp's), so it goes in the extra body there.
        (out if chat else extra)["response_format"] = _response_format(params.output_format)
    if extra:
        out["extra_body"] = extra
    return out


def _response_format(output: OutputFormat) -> dict[str, Any]:
    if output.schema is None:
        return {"type": "json_object"}
    schema = json.loads(output.schema)
    named = {"name": output.name or "answer", "schema": schema, "strict": True}
    return {"type": "json_schema", "json_schema": named}


def _messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.tool_calls or message.tool_call_id:
            out.append(_tool_turn(message))
            continue
        if not message.images:
            out.append({"role": message.role, "content": message.content})
            continue
        parts: list[dict[str, Any]] = [{"type": "text", "text": message.content}]
        for image in message.images:
            url = f"data:{_mime(image)};base64,{base64.b64encode(image).decode()}"
            parts.append({"type": "image_url", "image_url": {"url": url}})
        out.append({"role": message.role, "content": parts})
    return out


def _tool_turn(message: ChatMessage) -> dict[str, Any]:
    """An assistant turn that called tools, or a tool's answer to one."""
    item: dict[str, Any] = {"role": message.role, "content": message.content or None}
    if message.tool_calls:
        item["tool_calls"] = [openai_call(c) for c in message.tool_calls]
    if message.tool_call_id:
        item["tool_call_id"] = message.tool_call_id
    return item


def _mime(image: bytes) -> str:
    for magic, mime in (
        (b"\x89PNG", "image/png"),
        (b"\xff\xd8", "image/jpeg"),
        (b"GIF8", "image/gif"),
    ):
        if image.startswith(magic):
            return mime
    return "image/webp" if image[8:12] == b"WEBP" else "application/octet-stream"


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    return str(exc.message)
