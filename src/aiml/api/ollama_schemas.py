"""Ollama's request bodies (``docs/api.md``), as far as aiml honours them.

Options that only tune how Ollama itself loads a model (``num_ctx``, ``num_thread``, ...) are
accepted and have no effect here; sampling options aiml cannot honour are refused by name
unless they are at their neutral value, so a tool that sends Ollama's defaults still works.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import replace
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field

from aiml.errors import InvalidRequest
from aiml.inference.tasks.base import CleanText, GenerationOptions, parse_model
from aiml.types import ChatMessage, OutputFormat, SamplingParams, ToolCall

from .openai_schemas import ToolIn
from .output_formats import schema_format

__all__ = [
    "ChatBody",
    "EmbedBody",
    "EmbeddingsBody",
    "GenerateBody",
    "PullBody",
    "ShowBody",
    "sampling",
]

_LOAD_TIME = {
    "numa", "num_ctx", "num_batch", "num_gpu", "main_gpu", "low_vram", "f16_kv", "logits_all",
    "vocab_only", "use_mmap", "use_mlock", "embedding_only", "num_thread", "num_keep",
}  # fmt: skip
_MAPPED = {
    "num_predict": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "seed": "seed",
    "repeat_penalty": "repeat_penalty",
}


class _Body(CleanText):
    """Ignores unknown fields; no text may hold NUL or a lone surrogate (400, never a 500)."""

    model_config = ConfigDict(extra="ignore")


class ShowBody(_Body):
    model: str = Field(min_length=1, max_length=512)
    verbose: bool = False


#: A Go duration, as Ollama reads ``keep_alive`` strings (``time.ParseDuration``).
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0,
                 "m": 60.0, "h": 3600.0}  # fmt: skip


def keep_alive_seconds(value: object) -> float | None:
    """Ollama's ``keep_alive`` in seconds: a number is seconds, a string a Go duration
    (``"0"``, ``"5m"``, ``"1h30m"``, ``"-1s"``); negative means for ever. Anything else is
    refused, as Ollama refuses it."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        raise ValueError("keep_alive must be a number of seconds or a duration such as 5m")
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    text = text.lstrip("+-")
    if text == "0":
        return 0.0
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"keep_alive {value!r} is not a duration such as 5m, 1h30m or 0")
    return sign * sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


KeepAlive = Annotated[float | None, BeforeValidator(keep_alive_seconds)]


class PullBody(_Body):
    model: str = Field(min_length=1, max_length=512)
    insecure: bool = False
    stream: bool = True


class GenerateBody(_Body):
    model: str = Field(min_length=1, max_length=512)
    prompt: str = ""
    system: str | None = None
    images: list[str] | None = None
    stream: bool = True
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None
    format: str | dict[str, Any] | None = None
    template: str | None = None
    suffix: str | None = None
    context: list[int] | None = None
    raw: bool = False

    def check(self) -> None:
        for name in ("template", "context"):
            if getattr(self, name):
                raise InvalidRequest(f"{name!r} is not supported", param=name)
        if self.images and len(self.images) > 1:
            raise InvalidRequest("one image per request", param="images")


class _CalledFunction(_Body):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class _ToolCall(_Body):
    function: _CalledFunction


class _Message(_Body):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[_ToolCall] | None = None

    def to_message(self, index: int) -> ChatMessage:
        images = tuple(decode_image(i, f"messages.{index}.images") for i in self.images or ())
        calls = tuple(  # Ollama's calls carry no id: number them within the turn
            ToolCall(f"call_{index}_{n}", c.function.name, json.dumps(c.function.arguments))
            for n, c in enumerate(self.tool_calls or ())
        )
        return ChatMessage(role=self.role, content=self.content, images=images, tool_calls=calls)


class ChatBody(_Body):
    model: str = Field(min_length=1, max_length=512)
    messages: list[_Message] = Field(default_factory=list)
    stream: bool = True
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None
    format: str | dict[str, Any] | None = None
    tools: list[ToolIn] | None = None

    def to_messages(self) -> tuple[ChatMessage, ...]:
        return tuple(message.to_message(i) for i, message in enumerate(self.messages))

    def params(self) -> SamplingParams:
        params = sampling(self.options, self.format)
        return replace(params, tools=tuple(tool.to_tool() for tool in self.tools or ()))


class EmbedBody(_Body):
    model: str = Field(min_length=1, max_length=512)
    input: str | list[str] = Field(min_length=1)
    truncate: bool = True
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None

    def texts(self) -> tuple[str, ...]:
        return (self.input,) if isinstance(self.input, str) else tuple(self.input)


class EmbeddingsBody(_Body):
    """The legacy ``/api/embeddings``: one prompt, one vector."""

    model: str = Field(min_length=1, max_length=512)
    prompt: str = Field(min_length=1)


def sampling(
    options: dict[str, Any] | None, output: str | dict[str, Any] | None = None
) -> SamplingParams:
    """Ollama's option names onto aiml's, validated as aiml's own options are; ``output``
    is the body's ``format`` ("json" or a JSON schema)."""
    params = _sampling(options)
    if not output:
        return params
    return replace(params, output_format=ollama_format(output))


def ollama_format(output: str | dict[str, Any]) -> OutputFormat:
    if output == "json":
        return OutputFormat(param="format")
    if isinstance(output, dict):
        return schema_format(output, None, "format")
    raise InvalidRequest('format must be "json" or a JSON schema', param="format")


def _sampling(options: dict[str, Any] | None) -> SamplingParams:
    if not options:
        return SamplingParams()
    values: dict[str, Any] = {}
    for name, value in (options or {}).items():
        if name in _MAPPED:
            values[_MAPPED[name]] = value
        elif name == "stop":
            values["stop"] = value
        elif name in _LOAD_TIME or not value:
            continue  # Ollama's own loading knobs, or a sampler left at its neutral value
        else:
            raise InvalidRequest(f"option {name!r} is not supported", param=f"options.{name}")
    if isinstance(values.get("max_tokens"), int) and values["max_tokens"] < 0:
        del values["max_tokens"]  # Ollama's -1: no limit
    return parse_model(GenerationOptions, values, "options").to_params()


def decode_image(text: str, param: str) -> bytes:
    """A base64 image (never a path, although Ollama's client accepts paths)."""
    try:
        image = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("images must be base64", param=param) from None
    if not image:
        raise InvalidRequest("empty image", param=param)
    return image
