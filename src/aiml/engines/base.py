"""The engine interface every backend implements.

An engine knows models by its own names. It answers whether it has a model
(:meth:`Engine.find_model`), makes a registry version available under its own name
(:meth:`Engine.model_for_version`) and runs the generative, embedding and classification
calls, generation either whole or as an async stream. Engines raise only
:mod:`aiml.errors` exceptions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from typing import ClassVar

from aiml.errors import ModelNotServable
from aiml.types import (
    ChatMessage,
    Embeddings,
    Generation,
    GenerationChunk,
    Label,
    RegistryVersion,
    ResolvedModel,
    SamplingParams,
    Task,
)

__all__ = ["Engine"]


class Engine(ABC):
    """An inference backend, built once per process and shared by every executor."""

    name: ClassVar[str]
    tasks: ClassVar[frozenset[Task]]
    #: Tags that may sit on the registered model instead of the version (fetched if missing).
    model_tag_keys: ClassVar[tuple[str, ...]] = ()

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

    async def preload(self, model: ResolvedModel) -> None:
        """Load a model ahead of its first request (engines that hold models in memory)."""
        raise ModelNotServable(f"the {self.name} engine loads models itself", param="engine")

    async def unload(self, model: ResolvedModel) -> bool:
        """Free a loaded model now; ``False`` if it was not loaded."""
        raise ModelNotServable(f"the {self.name} engine unloads models itself", param="engine")

    @abstractmethod
    async def health(self) -> None:
        """Return when the engine is reachable; raise an :mod:`aiml.errors` error otherwise."""

    async def aclose(self) -> None:
        """Release connections and loaded models."""
        return None
