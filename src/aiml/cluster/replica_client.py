"""A local engine whose models run on the Ray Serve cluster's model replicas.

In cluster mode the front keeps each local engine object for what it knows without loading
anything (its name, tasks, which registry tags it serves) and sends every call to the model
replicas through a Ray Serve deployment handle, with ``name/version`` as the multiplexed
model id: Ray routes it to a replica that already holds that version.

Faults: a replica that dies before answering a non-streaming call (or before a stream's
first chunk) is retried on another replica, since nothing reached the client yet; a stream
that loses its replica mid-way ends with 503 ``engine_unavailable``; so does a call still
failing after the retries (a lost node, no replica left).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

from ray.exceptions import RayActorError, RayTaskError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from aiml.engines.base import Engine, standing_in_for
from aiml.engines.local import LocalEngine
from aiml.errors import AimlError, EngineUnavailable
from aiml.observability.context import note_response_header
from aiml.types import (
    ChatMessage,
    DocumentPage,
    Embeddings,
    Generation,
    GenerationChunk,
    Label,
    ModelDetails,
    RegistryVersion,
    ResolvedModel,
    SamplingParams,
    SpeechSegment,
    TextLine,
    TranscribeOptions,
)

__all__ = ["RayModelsEngine", "on_ray"]

#: How many more replicas a call may try when the one it went to dies.
_RETRIES = 2
#: The header that names the model replica that served a request.
MODEL_REPLICA_HEADER = "x-aiml-model-replica"


def on_ray(inner: LocalEngine, handle: DeploymentHandle[Any]) -> Engine:
    """``inner``'s engine, running its models on the replicas behind ``handle``."""
    kind = standing_in_for(RayModelsEngine, inner)
    engine: RayModelsEngine = kind(inner, handle)
    return engine


class RayModelsEngine(Engine):
    def __init__(self, inner: LocalEngine, handle: DeploymentHandle[Any]) -> None:
        self._inner = inner
        self._handle = handle

    @property
    def location(self) -> str:
        return f"the {self.name} engine on the Ray Serve model replicas"

    async def find_model(self, name: str) -> str | None:
        return None  # registered models only, as in-process

    async def model_for_version(self, version: RegistryVersion) -> str:
        # The tags are checked here; the files are fetched by the replica that loads them.
        self._inner.check_version(version)
        return f"{version.name}/{version.version}"

    async def generate(
        self,
        model: ResolvedModel,
        prompt: str,
        params: SamplingParams,
        *,
        images: Sequence[bytes] = (),
    ) -> Generation:
        result: Generation = await self._call("generate", model, prompt, params, images=images)
        return result

    def stream_generate(
        self,
        model: ResolvedModel,
        prompt: str,
        params: SamplingParams,
        *,
        images: Sequence[bytes] = (),
    ) -> AsyncIterator[GenerationChunk]:
        return self._stream("stream_generate", model, prompt, params, images=tuple(images))

    async def chat(
        self, model: ResolvedModel, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> Generation:
        result: Generation = await self._call("chat", model, tuple(messages), params)
        return result

    def stream_chat(
        self, model: ResolvedModel, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncIterator[GenerationChunk]:
        return self._stream("stream_chat", model, tuple(messages), params)

    async def embed(self, model: ResolvedModel, inputs: Sequence[str]) -> Embeddings:
        result: Embeddings = await self._call("embed", model, list(inputs))
        return result

    async def classify(self, model: ResolvedModel, inputs: Sequence[str]) -> list[list[Label]]:
        result: list[list[Label]] = await self._call("classify", model, list(inputs))
        return result

    def stream_transcribe(
        self, model: ResolvedModel, audio: bytes, options: TranscribeOptions
    ) -> AsyncIterator[GenerationChunk]:
        return self._stream("stream_transcribe", model, audio, options)

    async def detect_speech(self, model: ResolvedModel, audio: bytes) -> list[SpeechSegment]:
        result: list[SpeechSegment] = await self._call("detect_speech", model, audio)
        return result

    async def read_text(self, model: ResolvedModel, image: bytes) -> list[TextLine]:
        result: list[TextLine] = await self._call("read_text", model, image)
        return result

    async def analyse_document(self, model: ResolvedModel, pdf: bytes) -> list[DocumentPage]:
        result: list[DocumentPage] = await self._call("analyse_document", model, pdf)
        return result

    async def preload(self, model: ResolvedModel) -> None:
        await self._call("preload", model)

    async def unload(self, model: ResolvedModel) -> bool:
        # Reaches the replica Ray routes the model to (one that holds it); another replica
        # holding it too unloads it by its own LRU or idle timer.
        unloaded: bool = await self._call("unload", model)
        return unloaded

    async def describe(self, model: ResolvedModel) -> ModelDetails:
        details: ModelDetails = await self._call("describe", model)
        return details

    async def pull(self, model: ResolvedModel) -> AsyncIterator[dict[str, Any]]:
        """On the replica Ray routes the model to: it fetches, verifies and loads it."""
        async for line in self._stream("pull", model):
            yield cast(dict[str, Any], line)

    async def health(self) -> None:
        try:
            await self._handle.health.remote()
        except RayActorError as exc:
            raise EngineUnavailable(f"{self.location}: no replica answers ({exc})") from exc

    async def stats(self, model: ResolvedModel) -> dict[str, Any]:
        """The stats of a replica that holds ``model`` (Ray routes to one)."""
        stats: dict[str, Any] = await self._for(model).stats.remote()
        return stats

    # -- calls ------------------------------------------------------------------------------

    def _for(self, model: ResolvedModel, *, stream: bool = False) -> DeploymentHandle[Any]:
        return self._handle.options(multiplexed_model_id=model_id(model), stream=stream)

    async def _call(self, method: str, model: ResolvedModel, *args: Any, **kw: Any) -> Any:
        handle = self._for(model)
        for attempt in range(_RETRIES + 1):
            response = handle.call.remote(self.name, method, model, *args, **kw)
            try:
                replica, result = await response
            except asyncio.CancelledError:
                _cancel(response)  # the deadline or the client: stop the replica's work too
                raise
            except RayTaskError as exc:
                raise _cause(exc) from None
            except RayActorError as exc:
                if attempt == _RETRIES:
                    raise self._lost(exc) from exc
                continue  # the replica died before answering: nothing was sent, try another
            note_response_header(MODEL_REPLICA_HEADER, replica)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    async def _stream(
        self, method: str, model: ResolvedModel, *args: Any, **kw: Any
    ) -> AsyncIterator[GenerationChunk]:
        handle = self._for(model, stream=True)
        for attempt in range(_RETRIES + 1):
            chunks = cast(
                DeploymentResponseGenerator[Any],
                handle.stream.remote(self.name, method, model, *args, **kw),
            )
            try:
                replica, first = await anext(chunks)
                break
            except StopAsyncIteration:
                return  # the engine sent nothing at all
            except BaseException as exc:
                _cancel(chunks)
                if isinstance(exc, RayTaskError):
                    raise _cause(exc) from None
                if isinstance(exc, RayActorError) and attempt < _RETRIES:
                    continue  # no chunk reached the client yet: another replica may serve it
                if isinstance(exc, RayActorError):
                    raise self._lost(exc) from exc
                raise
        note_response_header(MODEL_REPLICA_HEADER, replica)
        try:
            yield first
            async for batch in chunks:  # the replica sends later chunks in lists
                for chunk in batch:
                    yield chunk
        except RayTaskError as exc:
            raise _cause(exc) from None
        except RayActorError as exc:
            raise self._lost(exc) from exc
        finally:
            _cancel(chunks)  # a no-op once finished; otherwise stops the replica's generation

    def _lost(self, exc: BaseException) -> EngineUnavailable:
        return EngineUnavailable(f"{self.location}: the model replica was lost ({exc})")


def model_id(model: ResolvedModel) -> str:
    """The multiplexed model id: always the resolved version, never an alias."""
    return f"{model.registry_name}/{model.registry_version}"


def _cause(exc: RayTaskError) -> BaseException:
    """What the replica raised: aiml's own errors pass through with their status."""
    cause = exc.cause
    return cause if isinstance(cause, AimlError) else exc


def _cancel(response: Any) -> None:
    response.cancel()  # Ray's DeploymentResponse(Generator).cancel, untyped in Ray 2.60
