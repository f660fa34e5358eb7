"""OpenAI's request bodies, as far as aiml honours them.

Unknown fields are ignored (clients send many optional ones); fields that would change the
answer in a way aiml cannot honour (``n > 1``, log probabilities, penalties other than
repetition; tools and response formats on engines without them) are refused with a 400
that names them, never silently dropped.
"""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from typing import Any, Literal

from pydantic import ConfigDict, Field

from aiml.errors import InvalidRequest
from aiml.inference.tasks.base import CleanText
from aiml.types import ChatMessage, OutputFormat, SamplingParams, Tool, ToolCall

from .output_formats import schema_format

__all__ = ["ChatCompletionRequest", "CompletionRequest", "EmbeddingRequest", "openai_format"]


class _Body(CleanText):
    """Ignores unknown fields; no text may hold NUL or a lone surrogate (400, never a 500)."""

    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class _TextPart(_Body):
    type: Literal["text"]
    text: str


class _ImageUrl(_Body):
    url: str


class _ImagePart(_Body):
    type: Literal["image_url"]
    image_url: _ImageUrl


class _Function(_Body):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    strict: bool | None = None


class ToolIn(_Body):
    type: Literal["function"]
    function: _Function

    def to_tool(self) -> Tool:
        spec = self.function
        return Tool(spec.name, spec.description, json.dumps(spec.parameters))


class _CalledFunction(_Body):
    name: str
    arguments: str


class _ToolCallIn(_Body):
    id: str
    type: Literal["function"] = "function"
    function: _CalledFunction


class ChatMessageIn(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_TextPart | _ImagePart] | None = None
    tool_calls: list[_ToolCallIn] | None = None
    tool_call_id: str | None = None

    def to_message(self, index: int) -> ChatMessage:
        message = self._content(index)
        calls = tuple(
            ToolCall(c.id, c.function.name, c.function.arguments) for c in self.tool_calls or ()
        )
        return replace(message, tool_calls=calls, tool_call_id=self.tool_call_id)

    def _content(self, index: int) -> ChatMessage:
        role = "system" if self.role == "developer" else self.role
        if self.content is None or isinstance(self.content, str):
            return ChatMessage(role=role, content=self.content or "")
        texts: list[str] = []
        images: list[bytes] = []
        for part in self.content:
            if isinstance(part, _TextPart):
                texts.append(part.text)
            else:
                images.append(_data_url(part.image_url.url, f"messages.{index}.content"))
        return ChatMessage(role=role, content="\n".join(texts), images=tuple(images))


class _Sampling(_Body):
    model: str = Field(max_length=512)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0, description="Not OpenAI's; as vLLM takes it.")
    stop: str | list[str] | None = None
    seed: int | None = None
    repetition_penalty: float | None = Field(default=None, gt=0, description="As vLLM takes it.")
    ignore_eos: bool = Field(
        default=False, description="As vLLM takes it: generate max_tokens whatever comes."
    )
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool | int | None = None
    user: str | None = None

    def sampling(
        self, max_tokens: int | None, output_format: OutputFormat | None = None
    ) -> SamplingParams:
        self._refuse()
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            stop=stop,
            seed=self.seed,
            repeat_penalty=self.repetition_penalty,
            ignore_eos=self.ignore_eos,
            output_format=output_format,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def _refuse(self) -> None:
        if self.n != 1:
            raise InvalidRequest("only n=1 is supported", param="n")
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name):
                raise InvalidRequest(f"{name} is not supported; use repetition_penalty", param=name)
        if self.logprobs:
            raise InvalidRequest("logprobs are not supported", param="logprobs")


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[ToolIn] | None = None
    tool_choice: Literal["auto", "none", "required"] | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None

    def to_messages(self) -> tuple[ChatMessage, ...]:
        return tuple(message.to_message(i) for i, message in enumerate(self.messages))

    def params(self) -> SamplingParams:
        output = openai_format(self.response_format, "response_format")
        params = self.sampling(self.max_completion_tokens or self.max_tokens, output)
        tools = tuple(tool.to_tool() for tool in self.tools or ())
        return replace(params, tools=tools, tool_choice=tool_choice(self.tool_choice))


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's default for completions
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def text(self) -> str:
        if self.echo or (self.best_of or 1) > 1:
            raise InvalidRequest("echo and best_of are not supported", param="echo")
        if isinstance(self.prompt, list):
            if len(self.prompt) != 1:
                raise InvalidRequest("send one prompt per request", param="prompt")
            return self.prompt[0]
        return self.prompt

    def params(self) -> SamplingParams:
        return replace(self.sampling(self.max_tokens), suffix=self.suffix)  # None: no gap


class EmbeddingRequest(_Body):
    model: str = Field(max_length=512)
    input: str | list[str] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None

    def texts(self) -> tuple[str, ...]:
        if self.dimensions is not None:
            raise InvalidRequest("dimensions is not supported", param="dimensions")
        return (self.input,) if isinstance(self.input, str) else tuple(self.input)


def tool_choice(choice: str | dict[str, Any] | None) -> str:
    """OpenAI's ``tool_choice``: a mode, or ``{"type": "function", "function": {"name"}}``."""
    if choice is None or isinstance(choice, str):
        return choice or "auto"
    name = (choice.get("function") or {}).get("name")
    if choice.get("type") != "function" or not isinstance(name, str):
        raise InvalidRequest("tool_choice must name a function", param="tool_choice")
    return name


def openai_format(spec: dict[str, Any] | None, param: str) -> OutputFormat | None:
    """``response_format`` (chat completions): text, json_object or json_schema."""
    kind = (spec or {}).get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return OutputFormat(param=param)
    if kind == "json_schema":
        inner = (spec or {}).get("json_schema")
        if not isinstance(inner, dict) or not isinstance(inner.get("schema"), dict):
            raise InvalidRequest(f"{param}.json_schema.schema must be a JSON schema", param=param)
        return schema_format(inner["schema"], inner.get("name"), param)
    raise InvalidRequest(f"{param} type {kind!r} is not supported", param=param)


def _data_url(url: str, param: str) -> bytes:
    """Images only inline (``data:image/...;base64,``): a URL is never fetched (no SSRF)."""
    if not url.startswith("data:") or ";base64," not in url:
        raise InvalidRequest("images must be inline data: URLs; aiml fetches nothing", param=param)
    try:
        return base64.b64decode(url.split(",", 1)[1], validate=True)
    except ValueError:
        raise InvalidRequest("the image is not valid base64", param=param) from None
