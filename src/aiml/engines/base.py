"""The engine interface every backend implements.

An engine knows models by its own names. It answers whether it has a model
(:meth:`Engine.find_model`), maps a registry version to its own name
(:meth:`Engine.engine_model_for`) and runs the generative and embedding calls, each either
whole or as an async stream. Engines raise only :mod:`aiml.errors` exceptions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from typing import ClassVar

from aiml.types import (
    ChatMessage,
    Embeddings,
    Generation,
    GenerationChunk,
    RegistryVersion,
    SamplingParams,
    Task,
)

__all__ = ["Engine"]


class Engine(ABC):
    """An inference backend, built once per process and shared by every executor."""

    name: ClassVar[str]
    tasks: ClassVar[frozenset[Task]]
    #: Version tag (or registered-model tag) that holds this engine's name for the model.
    model_name_tag: ClassVar[str | None] = None

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the engine is, for messages ("the Ollama server at http://...")."""

    def engine_model_for(self, version: RegistryVersion) -> str | None:
        """This engine's name for a registry version, or ``None`` when it is not tagged."""
        if self.model_name_tag is None:
            return None
        return version.tag(self.model_name_tag)

    @abstractmethod
    async def find_model(self, name: str) -> str | None:
        """The engine's canonical name for ``name`` if it has that model, else ``None``."""

    async def pull(self, name: str) -> str | None:
        """Fetch a model the engine lacks; ``None`` when this engine cannot or may not."""
        return None

    @abstractmethod
    async def generate(
        self, model: str, prompt: str, params: SamplingParams, *, images: Sequence[bytes] = ()
    ) -> Generation:
        """Complete ``prompt`` (raw text generation, optionally with images)."""

    @abstractmethod
    def stream_generate(
        self, model: str, prompt: str, params: SamplingParams, *, images: Sequence[bytes] = ()
    ) -> AsyncIterator[GenerationChunk]:
        """Like :meth:`generate`, as chunks; closing the iterator cancels the engine work."""

    @abstractmethod
    async def chat(
        self, model: str, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> Generation:
        """The assistant's next message, with the model's own chat template applied."""

    @abstractmethod
    def stream_chat(
        self, model: str, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncIterator[GenerationChunk]:
        """Like :meth:`chat`, as chunks; closing the iterator cancels the engine work."""

    @abstractmethod
    async def embed(self, model: str, inputs: Sequence[str]) -> Embeddings:
        """One vector per input."""

    @abstractmethod
    async def health(self) -> None:
        """Return when the engine is reachable; raise an :mod:`aiml.errors` error otherwise."""

    async def aclose(self) -> None:
        """Release connections and loaded models."""
        return None
