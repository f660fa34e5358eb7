"""The Ollama engine, on the official ``ollama`` AsyncClient.

Ollama's client has no timeout by default and leaks httpx's exceptions on some paths
(streams, timeouts); every call here goes through :func:`_translate` so the service sees
only :mod:`aiml.errors`: model not found -> 404, connection refused -> 503, timeout -> 504,
anything else the server says -> 502.
"""

from __future__ import annotations

import http.cookiejar
import re
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any, cast

import httpx
import ollama

from aiml.errors import (
    AimlError,
    EngineError,
    EngineTimeout,
    EngineUnavailable,
    ModelNotFound,
    ModelNotServable,
)
from aiml.types import (
    ChatMessage,
    Embeddings,
    Generation,
    GenerationChunk,
    RegistryVersion,
    ResolvedModel,
    SamplingParams,
    Task,
)

from .base import Engine
from .transport import FastTransport, LeanAsyncClient

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
    tasks = frozenset(Task) - {Task.TEXT_CLASSIFICATION}
    model_tag_keys = (MODEL_NAME_TAG,)

    def __init__(
        self,
        host: str,
        *,
        timeout_s: float,
        connect_timeout_s: float,
        allow_pull: bool = False,
        fast_transport: bool = True,
    ) -> None:
        self._host = host
        self._allow_pull = allow_pull
        # Ollama's default timeout is None: a stuck server would hold a request forever.
        timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        if fast_transport:
            self._client: ollama.AsyncClient = _LeanOllamaClient(
                host, timeout=timeout, transport=FastTransport()
            )
        else:
            self._client = ollama.AsyncClient(host=host, timeout=timeout, cookies=_NoCookies())

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
        try:
            listing = await self._client.list()
        except Exception as exc:
            raise self._translate(exc, name) from exc
        for model in listing.models:
            if model.model and normalize_ollama_name(model.model) == wanted:
                return model.model
        return None

    async def _pull(self, name: str) -> str | None:
        """Pull ``name`` when configured to; ``None`` when pulling is off."""
        if not self._allow_pull:
            return None
        try:
            await self._client.pull(name, stream=False)
        except Exception as exc:
            raise self._translate(exc, name) from exc
        return await self.find_model(name)

    async def generate(
        self,
        model: ResolvedModel,
        prompt: str,
        params: SamplingParams,
        *,
        images: Sequence[bytes] = (),
    ) -> Generation:
        try:
            response = await self._client.generate(
                model=model.engine_model,
                prompt=prompt,
                # Bytes, never str: the client reads a str that names a file from disk.
                images=list(images) or None,
                options=_options(params),
                stream=False,
            )
        except Exception as exc:
            raise self._translate(exc, model.engine_model) from exc
        return _generation(response, response.response or "")

    async def stream_generate(
        self,
        model: ResolvedModel,
        prompt: str,
        params: SamplingParams,
        *,
        images: Sequence[bytes] = (),
    ) -> AsyncIterator[GenerationChunk]:
        try:
            stream = cast(
                AsyncGenerator[ollama.GenerateResponse, None],
                await self._client.generate(
                    model=model.engine_model,
                    prompt=prompt,
                    images=list(images) or None,
                    options=_options(params),
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
        except AimlError:
            raise
        except Exception as exc:
            raise self._translate(exc, model.engine_model) from exc

    async def chat(
        self, model: ResolvedModel, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> Generation:
        try:
            response = await self._client.chat(
                model=model.engine_model,
                messages=_messages(messages),
                options=_options(params),
                stream=False,
            )
        except Exception as exc:
            raise self._translate(exc, model.engine_model) from exc
        return _generation(response, response.message.content or "")

    async def stream_chat(
        self, model: ResolvedModel, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncIterator[GenerationChunk]:
        try:
            stream = cast(
                AsyncGenerator[ollama.ChatResponse, None],
                await self._client.chat(
                    model=model.engine_model,
                    messages=_messages(messages),
                    options=_options(params),
                    stream=True,
                ),
            )
            text: list[str] = []
            try:
                async for part in stream:
                    piece = part.message.content or ""
                    text.append(piece)
                    final = _generation(part, "".join(text)) if part.done else None
                    yield GenerationChunk(text=piece, done=bool(part.done), final=final)
            finally:
                await stream.aclose()
        except AimlError:
            raise
        except Exception as exc:
            raise self._translate(exc, model.engine_model) from exc

    async def embed(self, model: ResolvedModel, inputs: Sequence[str]) -> Embeddings:
        try:
            response = await self._client.embed(model=model.engine_model, input=list(inputs))
        except Exception as exc:
            raise self._translate(exc, model.engine_model) from exc
        vectors = [list(map(float, vector)) for vector in response.embeddings]
        return Embeddings(vectors=vectors, prompt_tokens=response.prompt_eval_count)

    async def preload(self, model: ResolvedModel) -> None:
        """Ollama loads a model when asked to generate from an empty prompt."""
        try:
            await self._client.generate(model=model.engine_model, prompt="")
        except Exception as exc:
            raise self._translate(exc, model.engine_model) from exc

    async def unload(self, model: ResolvedModel) -> bool:
        """... and unloads it for an empty prompt with ``keep_alive`` 0."""
        try:
            await self._client.generate(model=model.engine_model, prompt="", keep_alive=0)
        except Exception as exc:
            raise self._translate(exc, model.engine_model) from exc
        return True

    async def health(self) -> None:
        try:
            await self._client.ps()
        except Exception as exc:
            raise self._translate(exc, None) from exc

    async def aclose(self) -> None:
        await self._client.close()  # type: ignore[no-untyped-call]

    def _translate(self, exc: BaseException, model: str | None) -> AimlError:
        """Map the ollama client's and httpx's exceptions onto ours."""
        if isinstance(exc, AimlError):
            return exc
        if isinstance(exc, ollama.ResponseError):
            if exc.status_code == 404:
                return ModelNotFound(f"{self.location} does not have model {model!r}: {exc.error}")
            status = f" {exc.status_code}" if exc.status_code > 0 else ""
            return EngineError(f"{self.location} answered{status}: {exc.error}")
        if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError | ConnectionError):
            return EngineUnavailable(f"{self.location} is unreachable")
        if isinstance(exc, httpx.TimeoutException):
            return EngineTimeout(f"{self.location} did not answer in time")
        if isinstance(exc, httpx.TransportError):
            return EngineUnavailable(
                f"{self.location} dropped the connection: {type(exc).__name__}"
            )
        return EngineError(f"{self.location} failed: {type(exc).__name__}: {exc}")


class _LeanOllamaClient(ollama.AsyncClient):
    """The official client, its methods and types unchanged, over :class:`LeanAsyncClient`."""

    def __init__(self, host: str, **kwargs: Any) -> None:
        # ollama.AsyncClient passes httpx.AsyncClient to the shared base; ours instead.
        super(ollama.AsyncClient, self).__init__(LeanAsyncClient, host, **kwargs)


class _NoCookies(http.cookiejar.CookieJar):
    """Ollama sets no cookies; httpx would still parse every response for them (measured:
    a visible share of a gateway request's CPU)."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None

    def add_cookie_header(self, request: Any) -> None:
        return None


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


def _messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for message in messages:
        item: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.images:
            item["images"] = [ollama.Image(value=image) for image in message.images]
        out.append(item)
    return out


def _generation(response: Any, text: str) -> Generation:
    metadata = {
        key: getattr(response, key)
        for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")
        if getattr(response, key, None) is not None
    }
    return Generation(
        text=text,
        finish_reason=response.done_reason,
        prompt_tokens=response.prompt_eval_count,
        completion_tokens=response.eval_count,
        engine_metadata=metadata,
    )
