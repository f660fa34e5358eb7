"""The engine interface every backend implements, and how engines report failures.

An engine knows models by its own names. It answers whether it has a model
(:meth:`Engine.find_model`), makes a registry version available under its own name
(:meth:`Engine.model_for_version`) and runs the generative, embedding and classification
calls, generation either whole or as an async stream.

The error contract. Engines raise :mod:`aiml.errors` exceptions for what the upstream
(a server, a library) said or did, mapped by :func:`upstream_error` for HTTP engines:

* the engine's 4xx is passed on with its status and the engine's message
  (:class:`~aiml.errors.EngineRejected`: a prompt past the context length stays a 400),
  except 404, which is :class:`~aiml.errors.ModelNotFound`; 429 is
  :class:`~aiml.errors.EngineOverloaded` with the engine's ``Retry-After``;
* 401, 403, 405 and 407 are about aiml's own credentials or configuration, not the
  client's request: 502 :class:`~aiml.errors.EngineError`, as is any other 5xx but
  503 (:class:`~aiml.errors.EngineUnavailable`, with its ``Retry-After``) and 504/408
  (:class:`~aiml.errors.EngineTimeout`);
* unreachable or a dropped connection: 503; no answer in time: 504.

Anything else, a Python exception in aiml's own code included, is not translated: it
propagates, and the API answers 500 with the request id (never a 502 that would blame
the engine for aiml's bug).
"""

from __future__ import annotations

import email.utils
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Any, ClassVar, TypeVar

from aiml.errors import (
    AimlError,
    EngineError,
    EngineOverloaded,
    EngineRejected,
    EngineTimeout,
    EngineUnavailable,
    ModelNotFound,
    ModelNotServable,
)
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
    Task,
    TextLine,
    TranscribeOptions,
)

__all__ = [
    "Engine",
    "UpstreamErrors",
    "retry_after_seconds",
    "standing_in_for",
    "upstream_error",
]

# Statuses about aiml's own credentials or configuration, never the client's request.
_OURS = frozenset({401, 403, 405, 407})


class Engine(ABC):
    """An inference backend, built once per process and shared by every request."""

    name: ClassVar[str]
    tasks: ClassVar[frozenset[Task]]
    #: Tags that may sit on the registered model instead of the version (fetched if missing).
    model_tag_keys: ClassVar[tuple[str, ...]] = ()
    #: Runs in this process (up while the process is); remote engines can be down.
    in_process: ClassVar[bool] = False
    #: Optional sampling options it honours beyond the common ones (``ignore_eos``).
    extra_options: ClassVar[frozenset[str]] = frozenset()

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the engine is, for messages ("the Ollama server at http://...")."""

    @abstractmethod
    async def find_model(self, name: str) -> str | None:
        """The engine's canonical name for a model it knows by ``name``, else ``None``.

        This is the design note's "way 2": a name the registry does not hold. Engines whose
        models only come from the registry return ``None``.
        """

    @abstractmethod
    async def model_for_version(self, version: RegistryVersion) -> str:
        """The engine's model for a registry version, made available (checked, fetched).

        Raises :class:`~aiml.errors.ModelNotServable` when the version's tags do not describe
        a model for this engine and :class:`~aiml.errors.ModelNotFound` when the engine
        cannot get it.
        """

    @abstractmethod
    async def generate(
        self,
        model: ResolvedModel,
        prompt: str,
        params: SamplingParams,
        *,
        images: Sequence[bytes] = (),
    ) -> Generation:
        """Complete ``prompt`` (raw text generation, optionally with images)."""

    @abstractmethod
    def stream_generate(
        self,
        model: ResolvedModel,
        prompt: str,
        params: SamplingParams,
        *,
        images: Sequence[bytes] = (),
    ) -> AsyncIterator[GenerationChunk]:
        """Like :meth:`generate`, as chunks; closing the iterator cancels the engine work."""

    @abstractmethod
    async def chat(
        self, model: ResolvedModel, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> Generation:
        """The assistant's next message, with the model's own chat template applied."""

    @abstractmethod
    def stream_chat(
        self, model: ResolvedModel, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncIterator[GenerationChunk]:
        """Like :meth:`chat`, as chunks; closing the iterator cancels the engine work."""

    @abstractmethod
    async def embed(self, model: ResolvedModel, inputs: Sequence[str]) -> Embeddings:
        """One vector per input."""

    async def classify(self, model: ResolvedModel, inputs: Sequence[str]) -> list[list[Label]]:
        """Labels with scores per input, best first (engines with classifiers override)."""
        raise ModelNotServable(f"{self.name} models do not classify text", param="task")

    def stream_transcribe(
        self, model: ResolvedModel, audio: bytes, options: TranscribeOptions
    ) -> AsyncIterator[GenerationChunk]:
        """Speech to text as it is heard: a chunk per segment, then a final chunk whose
        generation holds the whole :class:`Transcript` in ``engine_metadata["transcript"]``
        (engines with speech models override)."""
        raise ModelNotServable(f"{self.name} models do not transcribe speech", param="task")

    async def detect_speech(self, model: ResolvedModel, audio: bytes) -> list[SpeechSegment]:
        """Where the speech is (engines with voice activity models override)."""
        raise ModelNotServable(f"{self.name} models do not detect speech", param="task")

    async def read_text(self, model: ResolvedModel, image: bytes) -> list[TextLine]:
        """OCR: the text lines of an image (engines with OCR models override)."""
        raise ModelNotServable(f"{self.name} models do not read images", param="task")

    async def analyse_document(self, model: ResolvedModel, pdf: bytes) -> list[DocumentPage]:
        """A PDF's text per page (engines with OCR models override)."""
        raise ModelNotServable(f"{self.name} models do not analyse documents", param="task")

    async def preload(self, model: ResolvedModel) -> None:
        """Load a model ahead of its first request (engines that hold models in memory)."""
        raise ModelNotServable(f"the {self.name} engine loads models itself", param="engine")

    async def unload(self, model: ResolvedModel) -> bool:
        """Free a loaded model now; ``False`` if it was not loaded."""
        raise ModelNotServable(f"the {self.name} engine unloads models itself", param="engine")

    async def describe(self, model: ResolvedModel) -> ModelDetails:
        """What the model is and can do; engines that can read the model say more."""
        from .details import generic_details

        return generic_details(self.name, model.declared_task, self.extra_options)

    async def pull(self, model: ResolvedModel) -> AsyncIterator[dict[str, Any]]:
        """Make the model ready to serve, as Ollama's progress lines (nothing to do here)."""
        return
        yield  # an async generator that yields nothing

    @abstractmethod
    async def health(self) -> None:
        """Return when the engine is reachable; raise an :mod:`aiml.errors` error otherwise."""

    async def aclose(self) -> None:
        """Release connections and loaded models."""
        return None


E = TypeVar("E", bound="Engine")


def standing_in_for(kind: type[E], inner: Engine) -> type[E]:
    """A subclass of ``kind`` (an engine that wraps others) that says what ``inner`` is:
    its name, tasks, registry tags and extra options, which the rest of aiml reads."""
    mirrored = {
        "name": inner.name,
        "tasks": inner.tasks,
        "model_tag_keys": inner.model_tag_keys,
        "extra_options": inner.extra_options,
    }
    return type(f"{kind.__name__}For{type(inner).__name__}", (kind,), mirrored)


def upstream_error(
    location: str,
    status: int,
    message: str,
    *,
    retry_after: str | None = None,
    model: str | None = None,
) -> AimlError:
    """The :mod:`aiml.errors` exception for an engine's HTTP error answer (the contract above).

    ``location`` says which engine ("the Ollama server at ..."), ``message`` is the engine's
    own text, ``retry_after`` its ``Retry-After`` header if it sent one, ``model`` the model
    the request named, if any.
    """
    said = f"{location} answered {status}: {message}"
    if status == 404:
        if model is not None:
            return ModelNotFound(f"{location} does not have model {model!r}: {message}")
        return ModelNotFound(said)
    if status == 429:
        return EngineOverloaded(said, retry_after=retry_after_seconds(retry_after))
    if status == 503:
        return EngineUnavailable(said, retry_after=retry_after_seconds(retry_after))
    if status in (408, 504):
        return EngineTimeout(said)
    if 400 <= status < 500 and status not in _OURS:
        return EngineRejected(said, status_code=status)
    return EngineError(said)


def retry_after_seconds(value: str | None) -> int | None:
    """``Retry-After`` as whole seconds: delta-seconds or an HTTP date; ``None`` if unusable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return int(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0, round(when.timestamp() - time.time()))


class UpstreamErrors:
    """``with``: an exception ``translate`` maps is raised as its :mod:`aiml.errors` error.

    ``translate`` returns ``None`` for what is not the upstream's doing (aiml's own bug),
    which then propagates as it is. A class rather than a generator-based context manager:
    it wraps every engine call, and costs a fraction of one.
    """

    __slots__ = ("_translate",)

    def __init__(self, translate: Callable[[Exception], AimlError | None]) -> None:
        self._translate = translate

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if isinstance(exc, Exception) and not isinstance(exc, AimlError):
            mapped = self._translate(exc)
            if mapped is not None:
                raise mapped from exc
