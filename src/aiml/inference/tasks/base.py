"""What every task module provides: input validation, option mapping, a handler per model.

A :class:`TaskSpec` parses a request's ``data`` and ``options`` into a typed input (a 422
that names the field on any mistake) and picks a :class:`Handler` for each resolved model:
the handler depends on what the model is (its registry ``inference_task`` tag), so it is
chosen per model on every request and never frozen by the first model its (task, engine) route saw.
"""

from __future__ import annotations

import base64
import binascii
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from aiml.engines.base import Engine
from aiml.errors import InvalidRequest, ModelNotServable
from aiml.types import Generation, GenerationChunk, ResolvedModel, SamplingParams, Task

__all__ = [
    "GENERATIVE_TASKS",
    "CleanText",
    "GenerationOptions",
    "GenerativeHandler",
    "Handler",
    "NoOptions",
    "StrictModel",
    "TaskSpec",
    "decode_base64",
    "generation_metadata",
    "parse_model",
    "text_problem",
]

InputT = TypeVar("InputT")
ModelT = TypeVar("ModelT", bound=BaseModel)

#: Registry ``inference_task`` values of models that generate text.
GENERATIVE_TASKS = frozenset({"text-generation", "chat", "vlm", "text2text-generation"})


def _bad_char(text: str) -> str | None:
    """A character no text from a client may hold, if it has one.

    NUL ends a string in the C libraries engines call. A lone surrogate (JSON's ``"\\ud800"``
    escape decodes to one; only a pair decodes to a character) is not Unicode: every UTF-8
    encoder, the engines' included, raises on it. Checked by the C-speed string methods
    (an ASCII string holds no surrogate), ~500x faster than a regex on a long ASCII prompt.
    """
    if "\x00" in text:
        return "\x00"
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return text[exc.start]
    return None


def _is_clean(value: object) -> bool:
    """Whether every string in ``value`` (keys too) is clean: the fast check, no paths kept.

    A stack, not recursion: JSON may nest deeper than Python's recursion limit.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _bad_char(item) is not None:
                return False
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return True


def text_problem(value: object) -> str | None:
    """Why a string, or any JSON-like value holding strings (keys too), is not clean text.

    None when it is clean. The reason says where, and never quotes the bad text itself.
    """
    if _is_clean(value):
        return None
    stack: list[tuple[object, tuple[str, ...], bool]] = [(value, (), False)]
    while stack:  # the slow walk, only for a value known to be bad: the path to the text
        item, path, is_key = stack.pop()
        if isinstance(item, str):
            char = _bad_char(item)
            if char is None:
                continue
            what = "NUL (U+0000)" if char == "\x00" else f"a lone surrogate (U+{ord(char):04X})"
            where = ".".join(path)
            if is_key:
                where = f" in a key of {where or 'the object'}"
            elif where:
                where = f" at {where}"
            return f"{what}{where}: text must be valid Unicode without NUL"
        if isinstance(item, dict):
            for key, inner in reversed(item.items()):
                stack.append((inner, (*path, str(key)), False))
                stack.append((key, path, True))  # popped first: no bad key goes into a path
        elif isinstance(item, list | tuple):
            stack.extend((item[i], (*path, str(i)), False) for i in reversed(range(len(item))))
    return None  # pragma: no cover - _is_clean said otherwise


class CleanText(BaseModel):
    """Every field, strings at any depth included, is clean text (see :func:`text_problem`).

    The base of every request model at the edge, so that no surface lets bad text reach an
    engine (where it was a 500): nested models check their own fields.
    """

    @field_validator("*")
    @classmethod
    def _clean_text(cls, value: Any) -> Any:
        # Most fields are short strings, numbers or nested models: settled without a walk.
        if isinstance(value, str):
            if _bad_char(value) is None:
                return value
        elif not isinstance(value, dict | list | tuple) or _is_clean(value):
            return value
        raise PydanticCustomError("invalid_text", "{problem}", {"problem": text_problem(value)})


class StrictModel(CleanText):
    """Unknown fields are errors; ``"5"`` is not a number and ``true`` is not 1."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class NoOptions(StrictModel):
    """For tasks that take no options: any option given is unknown."""


class GenerationOptions(StrictModel):
    """The earlier system's options, mapped to each engine's own names by the engine."""

    max_tokens: int | None = Field(default=None, ge=1)
    max_length: int | None = Field(default=None, ge=1, description="Alias of max_tokens.")
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    stop: str | list[str] | None = None
    seed: int | None = None
    repeat_penalty: float | None = Field(default=None, gt=0)
    ignore_eos: bool = Field(default=False, description="Generate max_tokens whatever comes.")

    @model_validator(mode="after")
    def _one_length(self) -> GenerationOptions:
        both = self.max_tokens is not None and self.max_length is not None
        if both and self.max_tokens != self.max_length:
            raise ValueError("max_tokens and max_length are the same option; give one")
        return self

    def to_params(self) -> SamplingParams:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            max_tokens=self.max_tokens if self.max_tokens is not None else self.max_length,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            stop=stop,
            seed=self.seed,
            repeat_penalty=self.repeat_penalty,
            ignore_eos=self.ignore_eos,
        )


def parse_model(model: type[ModelT], payload: Mapping[str, Any], prefix: str) -> ModelT:
    """Validate ``payload``; the first error becomes a 422 naming ``prefix.field``."""
    try:
        return model.model_validate(dict(payload))
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        location = ".".join(str(part) for part in (prefix, *error["loc"]))
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = f"unknown field {location!r}"
        raise InvalidRequest(f"{location}: {message}", param=location) from None


def generation_metadata(model: ResolvedModel, generation: Generation) -> dict[str, Any]:
    return {
        "model": model.engine_model,
        "finish_reason": generation.finish_reason,
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": generation.completion_tokens,
        **dict(generation.engine_metadata),
    }


class Handler(ABC, Generic[InputT]):
    """Runs one task's input on one engine model and shapes the ``result`` object."""

    @abstractmethod
    async def run(self, engine: Engine, model: ResolvedModel, request: InputT) -> dict[str, Any]:
        """The ``result`` object of the response."""

    def stream(
        self, engine: Engine, model: ResolvedModel, request: InputT
    ) -> AsyncIterator[GenerationChunk]:
        """The generation as chunks (generative tasks only)."""
        raise InvalidRequest("this task does not stream; leave out 'stream'", param="stream")

    def shape(self, model: ResolvedModel, generation: Generation) -> dict[str, Any]:
        """The ``result`` object for a finished generation."""
        raise NotImplementedError


class GenerativeHandler(Handler[InputT]):
    """A handler whose result is one generation, whole or streamed."""

    async def run(self, engine: Engine, model: ResolvedModel, request: InputT) -> dict[str, Any]:
        return self.shape(model, await self.generate(engine, model, request))

    @abstractmethod
    async def generate(self, engine: Engine, model: ResolvedModel, request: InputT) -> Generation:
        """The whole generation."""

    @abstractmethod
    def stream(
        self, engine: Engine, model: ResolvedModel, request: InputT
    ) -> AsyncIterator[GenerationChunk]:
        """The generation as chunks; closing the iterator cancels the engine's work."""

    def shape(self, model: ResolvedModel, generation: Generation) -> dict[str, Any]:
        return {"response": generation.text, "metadata": generation_metadata(model, generation)}


class TaskSpec(ABC, Generic[InputT]):
    """One task: how its input is validated and which handler serves a given model."""

    task: ClassVar[Task]
    #: Whether the task's result can be streamed (generative tasks).
    streams: ClassVar[bool] = False

    @abstractmethod
    def parse(self, data: Mapping[str, Any], options: Mapping[str, Any]) -> InputT:
        """Typed input from the request's ``data`` and ``options``; 422 on any mistake."""

    @abstractmethod
    def handler_for(self, model: ResolvedModel) -> Handler[InputT]:
        """The handler for this model (decided per model, per request)."""

    def require_generative(self, model: ResolvedModel) -> None:
        declared = model.declared_task
        if declared is not None and declared not in GENERATIVE_TASKS:
            raise ModelNotServable(
                f"registered model {model.registry_name!r} version {model.registry_version} "
                f"is a {declared!r} model; it cannot serve {self.task.value!r}",
                param="task",
            )


def decode_base64(text: str, param: str) -> bytes:
    """Strict base64 (a ``data:`` URL prefix allowed): the bytes, never a path, go on."""
    payload = text.split(",", 1)[1] if text.startswith("data:") and "," in text else text
    try:
        decoded = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{param}: not valid base64", param=param) from None
    if not decoded:
        raise InvalidRequest(f"{param}: empty", param=param)
    return decoded
