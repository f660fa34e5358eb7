"""OpenAI's request bodies, as far as aiml honours them.

Unknown fields are ignored (clients send many optional ones); fields that would change the
answer in a way aiml cannot honour (``n > 1``, tools, log probabilities, penalties other
than repetition) are refused with a 400 that names them, never silently dropped.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

from pydantic import ConfigDict, Field

from aiml.errors import InvalidRequest
from aiml.inference.tasks.base import CleanText
from aiml.types import ChatMessage, SamplingParams

__all__ = ["ChatCompletionRequest", "CompletionRequest", "EmbeddingRequest"]


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


class ChatMessageIn(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_TextPart | _ImagePart] | None = None

    def to_message(self, index: int) -> ChatMessage:
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

    def sampling(self, max_tokens: int | None) -> SamplingParams:
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
    tools: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None

    def to_messages(self) -> tuple[ChatMessage, ...]:
        if self.tools:
            raise InvalidRequest("tools are not supported", param="tools")
        kind = (self.response_format or {}).get("type", "text")
        if kind != "text":
            raise InvalidRequest(
                f"response_format {kind!r} is not supported", param="response_format"
            )
        return tuple(message.to_message(i) for i, message in enumerate(self.messages))

    def params(self) -> SamplingParams:
        return self.sampling(self.max_completion_tokens or self.max_tokens)


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's default for completions
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def text(self) -> str:
        if self.echo or self.suffix or (self.best_of or 1) > 1:
            raise InvalidRequest("echo, suffix and best_of are not supported", param="echo")
        if isinstance(self.prompt, list):
            if len(self.prompt) != 1:
                raise InvalidRequest("send one prompt per request", param="prompt")
            return self.prompt[0]
        return self.prompt

    def params(self) -> SamplingParams:
        return self.sampling(self.max_tokens)


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


def _data_url(url: str, param: str) -> bytes:
    """Images only inline (``data:image/...;base64,``): a URL is never fetched (no SSRF)."""
    if not url.startswith("data:") or ";base64," not in url:
        raise InvalidRequest("images must be inline data: URLs; aiml fetches nothing", param=param)
    try:
        return base64.b64decode(url.split(",", 1)[1], validate=True)
    except ValueError:
        raise InvalidRequest("the image is not valid base64", param=param) from None
