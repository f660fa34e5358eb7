"""OpenAI's Responses API request (``POST /v1/responses``), as far as aiml honours it.

Input is a string or a list of items: messages (``{"role", "content"}``, content a string
or ``input_text``/``output_text`` parts), ``function_call`` items a model made and
``function_call_output`` items answering them. Tools are function tools, flat as the
Responses API writes them. Other item and tool types are refused by name.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import ConfigDict, Field

from aiml.errors import InvalidRequest
from aiml.inference.tasks.base import CleanText
from aiml.types import ChatMessage, OutputFormat, SamplingParams, Tool, ToolCall

from .openai_schemas import openai_format, tool_choice

__all__ = ["ResponsesRequest", "messages_of"]


class _Body(CleanText):
    model_config = ConfigDict(extra="ignore")


class _TextOptions(_Body):
    format: dict[str, Any] | None = None


class ResponsesRequest(_Body):
    model: str = Field(max_length=512)
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    text: _TextOptions | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["auto", "none", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = Field(default=None, max_length=128)
    metadata: dict[str, str] | None = None
    seed: int | None = None
    #: Who the caller is (OpenAI's field; ``user`` is its older name): a canary sticks to it.
    safety_identifier: str | None = Field(default=None, max_length=512)
    user: str | None = Field(default=None, max_length=512)

    def items(self) -> list[dict[str, Any]]:
        """The input as items (a string is one user message)."""
        if isinstance(self.input, str):
            return [{"type": "message", "role": "user", "content": self.input}]
        return list(self.input)

    def params(self) -> SamplingParams:
        tools = tuple(_tool(spec, i) for i, spec in enumerate(self.tools or ()))
        choice = self.tool_choice
        if isinstance(choice, dict) and "function" not in choice and "name" in choice:
            choice = {"type": "function", "function": {"name": choice["name"]}}  # flat form
        return SamplingParams(
            max_tokens=self.max_output_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            output_format=self.output_format(),
            tools=tools,
            tool_choice=tool_choice(choice),
        )

    def output_format(self) -> OutputFormat | None:
        spec = (self.text.format if self.text else None) or {"type": "text"}
        if spec.get("type") == "json_schema" and "json_schema" not in spec:
            spec = {"type": "json_schema", "json_schema": spec}  # the Responses API's flat form
        return openai_format(spec, "text.format")


def _tool(spec: dict[str, Any], index: int) -> Tool:
    if spec.get("type") != "function" or not isinstance(spec.get("name"), str):
        raise InvalidRequest(
            f"only function tools are supported (tools[{index}] is {spec.get('type')!r})",
            param=f"tools.{index}",
        )
    parameters = spec.get("parameters") or {"type": "object", "properties": {}}
    return Tool(spec["name"], spec.get("description") or "", json.dumps(parameters))


def messages_of(items: list[dict[str, Any]]) -> list[ChatMessage]:
    """Response items as chat turns: consecutive function calls make one assistant turn."""
    out: list[ChatMessage] = []
    for index, item in enumerate(items):
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise InvalidRequest(f"input.{index}: unknown role {role!r}", param="input")
            role = "system" if role == "developer" else role
            out.append(ChatMessage(role, _text(item.get("content"), index)))
        elif kind == "function_call":
            call = ToolCall(str(item.get("call_id")), str(item.get("name")),
                            str(item.get("arguments", "{}")))  # fmt: skip
            if out and out[-1].role == "assistant" and out[-1].tool_calls:
                last = out.pop()
                out.append(
                    ChatMessage("assistant", last.content, tool_calls=(*last.tool_calls, call))
                )
            else:
                out.append(ChatMessage("assistant", "", tool_calls=(call,)))
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else json.dumps(output)
            out.append(ChatMessage("tool", text, tool_call_id=str(item.get("call_id"))))
        else:
            raise InvalidRequest(f"input.{index}: items of type {kind!r} are not supported",
                                 param="input")  # fmt: skip
    return out


def _text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text"):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise InvalidRequest(f"input.{index}: content parts of type {kind!r} are not "
                                     "supported", param="input")  # fmt: skip
            texts.append(str(part.get("text", "")))
        return "\n".join(texts)
    raise InvalidRequest(f"input.{index}: content must be text", param="input")
