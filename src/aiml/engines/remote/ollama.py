"""The Ollama engine, on the official ``ollama`` AsyncClient over aiml's HTTP layer.

Ollama's client has no timeout by default, keeps no headers of an error answer and leaks
httpx's exceptions on some paths (streams, timeouts). So an error status is mapped as the
response arrives (a response hook, with the ``Retry-After`` the client would drop), and
every call runs inside :class:`~aiml.engines.base.UpstreamErrors`, which turns what the
server or the connection did into :mod:`aiml.errors` by the contract in
:mod:`aiml.engines.base`.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any, Literal, cast

import httpx
import ollama

from aiml.engines.base import Engine, UpstreamErrors, upstream_error
from aiml.engines.details import ollama_details
from aiml.engines.tool_shapes import ollama_call, openai_tools
from aiml.errors import (
    AimlError,
    EngineError,
    EngineRejected,
    EngineTimeout,
    EngineUnavailable,
    Forbidden,
    InvalidRequest,
    ModelNotFound,
    ModelNotServable,
)
from aiml.types import (
    LANGUAGE_SERVER_TASKS,
    ChatMessage,
    Embeddings,
    Generation,
    GenerationChunk,
    ModelDetails,
    RegistryVersion,
    ResolvedModel,
    SamplingParams,
    ToolCall,
)

from .httpclient import LeanAsyncClient
from .transport import FastTransport

__all__ = ["MODEL_NAME_TAG", "OllamaEngine", "is_valid_ollama_name", "normalize_ollama_name"]

#: The version tag (or registered-model tag) holding the Ollama model's name.
MODEL_NAME_TAG = "ollama_model_name"

_PART = r"[A-Za-z0-9_][A-Za-z0-9_.\-]*"
_OLLAMA_NAME = re.compile(rf"{_PART}(?:/{_PART}){{0,2}}(?::[A-Za-z0-9_][A-Za-z0-9_.\-]{{0,127}})?")


def normalize_ollama_name(name: str) -> str:
    """Ollama's rule: a name without a tag means the tag ``latest``.

    ``llama2`` is ``llama2:latest`` and never ``llama2:13b``; matching is exact after this.
    """
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def is_valid_ollama_name(name: str) -> bool:
    """Ollama's ``[namespace/]model[:tag]`` (with an optional host part), nothing else."""
    return bool(_OLLAMA_NAME.fullmatch(name)) and ".." not in name and len(name) <= 256


class OllamaEngine(Engine):
    """Models served by an Ollama server."""

    name = "ollama"
    tasks = LANGUAGE_SERVER_TASKS
    extra_options = frozenset({"output_format", "tools", "suffix"})  # passed through
    model_tag_keys = (MODEL_NAME_TAG,)

    def __init__(
        self,
        host: str,
        *,
        timeout_s: float,
        connect_timeout_s: float,
        allow_pull: bool = False,
    ) -> None:
        self._host = host
        self._allow_pull = allow_pull
        # Ollama's default timeout is None: a stuck server would hold a request forever.
        self._client = _LeanOllamaClient(
            host,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            transport=FastTransport(),
            event_hooks={"response": [self._raise_for_status]},
        )
        self._mapped = UpstreamErrors(self._translate)

    @property
    def location(self) -> str:
        return f"the Ollama server at {self._host}"

    async def model_for_version(self, version: RegistryVersion) -> str:
        label = f"registered model {version.name!r} version {version.version}"
        name = version.tag(MODEL_NAME_TAG)
        if name is None:
            raise ModelNotServable(
                f"{label} has no {MODEL_NAME_TAG!r} tag on the version or the registered "
                "model, so the ollama engine cannot serve it",
                param="model_name",
            )
        if not is_valid_ollama_name(name):
            # Tag values come from users: never forward one that is not an Ollama name.
            raise ModelNotServable(
                f"{label} has an invalid {MODEL_NAME_TAG} tag {name!r}", param="model_name"
            )
        found = await self.find_model(name) or await self._pull(name)
        if found is None:
            raise ModelNotFound(
                f"{label} maps to ollama model {name!r}, which {self.location} does not have",
                param="model_name",
            )
        return found

    async def find_model(self, name: str) -> str | None:
        wanted = normalize_ollama_name(name)
        with self._mapped:
            listing = await self._client.list()
        for model in listing.models:
            if model.model and normalize_ollama_name(model.model) == wanted:
                return model.model
        return None

    async def _pull(self, name: str) -> str | None:
        """Pull ``name`` when configured to; ``None`` when pulling is off."""
        if not self._allow_pull:
            return None
        with self._mapped:
            await self._client.pull(name, stream=False)
        return await self.find_model(name)

    async def pull(self, model: ResolvedModel) -> AsyncIterator[dict[str, Any]]:
        """Ollama's own pull, its progress passed on; only where settings allow it."""
        if not self._allow_pull:
            raise Forbidden(
                f"pulling {model.engine_model} on the Ollama server is off here "
                "(AIML_OLLAMA_ALLOW_PULL)",
                param="model",
            )
        with self._mapped:
            progress = await self._client.pull(model.engine_model, stream=True)
            async for line in progress:
                yield line.model_dump(exclude_none=True)

    async def generate(
        self,
        model: ResolvedModel,
        prompt: str,
        params: SamplingParams,
        *,
        images: Sequence[bytes] = (),
    ) -> Generation:
        with self._mapped:
            response = await self._client.generate(
                model=model.engine_model,
                prompt=prompt,
                suffix=params.suffix or "",
                # Bytes, never str: the client reads a str that names a file from disk.
                images=list(images) or None,
                options=_options(params),
                format=_format(params),
                stream=False,
            )
        return _generation(response, response.response or "")

    async def stream_generate(
        self,
        model: ResolvedModel,
        prompt: str,
        params: SamplingParams,
        *,
        images: Sequence[bytes] = (),
    ) -> AsyncIterator[GenerationChunk]:
        with self._mapped:
            stream = cast(
                AsyncGenerator[ollama.GenerateResponse, None],
                await self._client.generate(
                    model=model.engine_model,
                    prompt=prompt,
                    suffix=params.suffix or "",
                    images=list(images) or None,
                    options=_options(params),
                    format=_format(params),
                    stream=True,
                ),
            )
            text: list[str] = []
            try:
                async for part in stream:
                    piece = part.response or ""
                    text.append(piece)
                    final = _generation(part, "".join(text)) if part.done else None
                    yield GenerationChunk(text=piece, done=bool(part.done), final=final)
            finally:
                await stream.aclose()  # closes the HTTP response: Ollama stops generating

    async def chat(
        self, model: ResolvedModel, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> Generation:
        with self._mapped:
            response = await self._client.chat(
                model=model.engine_model,
                messages=_messages(messages),
                tools=_tools(params),
                options=_options(params),
                format=_format(params),
                stream=False,
            )
        return _generation(response, response.message.content or "", _calls(response))

    async def stream_chat(
        self, model: ResolvedModel, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncIterator[GenerationChunk]:
        with self._mapped:
            stream = cast(
                AsyncGenerator[ollama.ChatResponse, None],
                await self._client.chat(
                    model=model.engine_model,
                    messages=_messages(messages),
                    tools=_tools(params),
                    options=_options(params),
                    format=_format(params),
                    stream=True,
                ),
            )
            text: list[str] = []
            calls: list[ToolCall] = []
            try:
                async for part in stream:
                    piece = part.message.content or ""
                    text.append(piece)
                    calls.extend(_calls(part))  # Ollama sends them in a part of their own
                    final = _generation(part, "".join(text), tuple(calls)) if part.done else None
                    yield GenerationChunk(text=piece, done=bool(part.done), final=final)
            finally:
                await stream.aclose()

    async def embed(self, model: ResolvedModel, inputs: Sequence[str]) -> Embeddings:
        with self._mapped:
            response = await self._client.embed(model=model.engine_model, input=list(inputs))
        vectors = [list(map(float, vector)) for vector in response.embeddings]
        return Embeddings(vectors=vectors, prompt_tokens=response.prompt_eval_count)

    async def describe(self, model: ResolvedModel) -> ModelDetails:
        """What the server's ``/api/show`` says; if show fails, what the registered task says."""
        generic = await super().describe(model)
        try:
            with self._mapped:
                shown = await self._client.show(model.engine_model)
        except (EngineError, EngineRejected):
            return generic
        return ollama_details(shown.model_dump(), generic)

    async def preload(self, model: ResolvedModel) -> None:
        """Ollama loads a model when asked to generate from an empty prompt."""
        with self._mapped:
            await self._client.generate(model=model.engine_model, prompt="")

    async def unload(self, model: ResolvedModel) -> bool:
        """... and unloads it for an empty prompt with ``keep_alive`` 0."""
        with self._mapped:
            await self._client.generate(model=model.engine_model, prompt="", keep_alive=0)
        return True

    async def health(self) -> None:
        with self._mapped:
            await self._client.ps()

    async def aclose(self) -> None:
        await self._client.close()  # type: ignore[no-untyped-call]

    async def _raise_for_status(self, response: httpx.Response) -> None:
        """An error answer, mapped while its headers (``Retry-After``) are at hand."""
        if response.status_code < 400:
            return
        await response.aread()
        try:
            body = response.json()
            message = str(body.get("error") or body) if isinstance(body, dict) else str(body)
        except ValueError:
            message = response.text
        raise upstream_error(
            self.location,
            response.status_code,
            message,
            retry_after=response.headers.get("retry-after"),
        )

    def _translate(self, exc: Exception) -> AimlError | None:
        """What the server or the connection did, as :mod:`aiml.errors`; else ``None``.

        An exception that is neither the server's answer nor the connection's failure is
        aiml's own bug: it propagates as it is (500), never as a 502.
        """
        if isinstance(exc, ollama.ResponseError):  # an error in a stream, after the status
            if exc.status_code >= 400:
                return upstream_error(self.location, exc.status_code, exc.error)
            return EngineError(f"{self.location} answered: {exc.error}")
        if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError | ConnectionError):
            return EngineUnavailable(f"{self.location} is unreachable")
        if isinstance(exc, httpx.TimeoutException):
            return EngineTimeout(f"{self.location} did not answer in time")
        if isinstance(exc, httpx.TransportError):
            return EngineUnavailable(
                f"{self.location} dropped the connection: {type(exc).__name__}"
            )
        if isinstance(exc, httpx.DecodingError | json.JSONDecodeError):
            return EngineError(f"{self.location} answered something unreadable: {exc}")
        return None


class _LeanOllamaClient(ollama.AsyncClient):
    """The official client, its methods and types unchanged, over :class:`LeanAsyncClient`."""

    def __init__(self, host: str, **kwargs: Any) -> None:
        # ollama.AsyncClient passes httpx.AsyncClient to the shared base; ours instead.
        super(ollama.AsyncClient, self).__init__(LeanAsyncClient, host, **kwargs)


def _options(params: SamplingParams) -> dict[str, Any]:
    options: dict[str, Any] = {
        "num_predict": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "seed": params.seed,
        "repeat_penalty": params.repeat_penalty,
        "stop": list(params.stop) or None,
    }
    return {key: value for key, value in options.items() if value is not None}


def _format(params: SamplingParams) -> Literal["json"] | dict[str, Any] | None:
    """Ollama's ``format``: "json", or the JSON schema itself (passed through)."""
    output = params.output_format
    if output is None:
        return None
    return "json" if output.schema is None else cast(dict[str, Any], json.loads(output.schema))


def _tools(params: SamplingParams) -> list[dict[str, Any]] | None:
    """Passed through; Ollama has no ``tool_choice``, so only "auto" (and "none") can be
    honoured there."""
    if not params.tools or params.tool_choice == "none":
        return None
    if params.tool_choice != "auto":
        raise InvalidRequest(
            f"tool_choice {params.tool_choice!r} is not supported by the ollama engine "
            "(Ollama lets the model choose)",
            param="tool_choice",
        )
    return openai_tools(params.tools)


def _calls(response: Any) -> tuple[ToolCall, ...]:
    return tuple(
        ToolCall(f"call_{uuid.uuid4().hex[:24]}", c.function.name, json.dumps(c.function.arguments))
        for c in response.message.tool_calls or ()
    )


def _messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for message in messages:
        item: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.images:
            item["images"] = [ollama.Image(value=image) for image in message.images]
        if message.tool_calls:
            item["tool_calls"] = [ollama_call(c) for c in message.tool_calls]
        out.append(item)
    return out


def _generation(response: Any, text: str, calls: tuple[ToolCall, ...] = ()) -> Generation:
    metadata = {
        key: getattr(response, key)
        for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")
        if getattr(response, key, None) is not None
    }
    return Generation(
        text=text,
        finish_reason="tool_calls" if calls else response.done_reason,
        tool_calls=calls,
        prompt_tokens=response.prompt_eval_count,
        completion_tokens=response.eval_count,
        engine_metadata=metadata,
    )
