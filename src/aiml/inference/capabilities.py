"""What each model version can do, asked of its engine once, and checked before a request runs.

A registry version never changes, so its :class:`ModelDetails` are read once, when it is
first used, loaded or shown (the llama.cpp engine reads the GGUF's metadata, transformers
the folder's config, Ollama its ``/api/show``), and kept for the life of the process.
Concurrent first callers share one reading. A request that needs what the model cannot do
(messages for a model without a chat template, ``suffix`` without fill-in-the-middle
tokens, tools, images) is refused with a 400 naming the capability before the model is
loaded, not midway through a generation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from aiml.engines.base import Engine
from aiml.errors import InvalidRequest
from aiml.types import ModelDetails, ResolvedModel, SamplingParams, Task

__all__ = ["CapabilityBook", "needed"]

_Key = tuple[str, str, str | None, int | None, str | None]

#: Why a request needs each capability: the request field a refusal names, and its words.
_NEEDS = {
    "chat": ("messages", "chat template"),
    "tools": ("tools", "tool calling"),
    "insert": ("suffix", "fill-in-the-middle tokens, which suffix needs"),
    "vision": ("images", "image input"),
}


def needed(task: Task, request: Any) -> list[str]:
    """The capabilities ``request`` (a task's input) asks of the model, in check order."""
    wanted = ["chat"] if task == Task.CHAT else []
    images = any(getattr(m, "images", ()) for m in getattr(request, "messages", ()))
    if images or task in (Task.VLM, Task.IMAGE_CAPTIONING):
        wanted.append("vision")
    params = getattr(request, "params", None)
    if isinstance(params, SamplingParams):
        wanted += ["tools"] if params.tools and params.tool_choice != "none" else []
        wanted += ["insert"] if params.suffix is not None else []
    return wanted


class CapabilityBook:
    """Model versions' details, one engine call each; used on the event loop only."""

    def __init__(self) -> None:
        self._known: dict[_Key, ModelDetails] = {}
        self._by_version: dict[tuple[str, int], ModelDetails] = {}  # for listings
        self._reading: dict[_Key, asyncio.Future[ModelDetails]] = {}
        self._cleared = 0  # a reading started before a clear is not kept after it

    async def details(self, engine: Engine, model: ResolvedModel) -> ModelDetails:
        key = _key(model)
        known = self._known.get(key)
        if known is not None:  # the warm path: one dict lookup
            return known
        reading = self._reading.get(key)
        if reading is None:
            reading = asyncio.ensure_future(engine.describe(model))
            self._reading[key] = reading
            cleared = self._cleared
            reading.add_done_callback(lambda done: self._settle(key, done, cleared))
        return await asyncio.shield(reading)  # a caller that leaves does not cancel the others

    async def require(self, engine: Engine, model: ResolvedModel, task: Task, request: Any) -> None:
        """Refuse (400) a request that needs a capability the model lacks."""
        wanted = needed(task, request)
        if not wanted:
            return
        has = (await self.details(engine, model)).capabilities
        for capability in wanted:
            if capability not in has:
                param, words = _NEEDS[capability]
                label = model.registry_name or model.engine_model
                if model.registry_version is not None:
                    label += f" version {model.registry_version}"
                raise InvalidRequest(
                    f"model {label} lacks capability {capability!r}: it has no {words} "
                    f"(it can do: {', '.join(has) or 'nothing known'})",
                    param=param,
                )

    def known(self) -> Mapping[str, ModelDetails]:
        """``name/version`` -> details, for every registry version read so far."""
        return {
            f"{name}/{version}": details
            for (_, _, name, version, _), details in self._known.items()
            if name is not None
        }

    def of_version(self, name: str, version: int | None) -> ModelDetails | None:
        return None if version is None else self._by_version.get((name, version))

    def clear(self) -> None:
        """Forget what was read (an engine's direct model may have changed under its name)."""
        self._known.clear()
        self._by_version.clear()
        self._reading.clear()
        self._cleared += 1

    def _settle(self, key: _Key, done: asyncio.Future[ModelDetails], cleared: int) -> None:
        if self._reading.get(key) is done:
            del self._reading[key]
        if cleared == self._cleared and not done.cancelled() and done.exception() is None:
            self._known[key] = details = done.result()  # failures are not kept: asked again
            _, _, name, version, _ = key
            if name is not None and version is not None:
                self._by_version[(name, version)] = details


def _key(model: ResolvedModel) -> _Key:
    return (
        model.engine,
        model.engine_model,
        model.registry_name,
        model.registry_version,
        model.declared_task,
    )
