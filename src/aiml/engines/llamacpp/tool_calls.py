"""Tool calling on local models: the answer is JSON under a grammar, parsed into calls.

As llama.cpp's server does for chat templates without a tool format of their own (its
"generic" format), the model answers ``{"tool_call": {"name": ..., "arguments": {...}}}``
or, when it may choose (``tool_choice: "auto"``), ``{"response": "..."}``; the grammar built
from the tools' parameter schemas makes any model, however small, produce one of the two.
A template that takes a ``tools`` variable renders the tools itself (the model sees them as
it was trained to); otherwise a system turn describes them. Earlier calls and tool results
go back into the prompt in the same shapes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from aiml.engines.tool_shapes import arguments_of, openai_call, openai_tools
from aiml.errors import EngineError, InvalidRequest
from aiml.types import ChatMessage, OutputFormat, SamplingParams, Tool, ToolCall

from .schema_bounds import MAX_SCHEMA_BYTES

__all__ = ["answer_of", "template_messages", "tool_format", "tool_prompt"]


def tool_format(params: SamplingParams) -> OutputFormat:
    """The JSON the answer must be: a call of one of the tools (or of the named one), or,
    under "auto", a plain response. Blocking (the schemas are the client's): call it on a
    worker thread."""
    if params.output_format is not None:
        raise InvalidRequest("use tools or a response format, not both", param="tools")
    tools = params.tools
    if params.tool_choice not in ("auto", "required"):
        tools = tuple(t for t in tools if t.name == params.tool_choice)
        if not tools:
            raise InvalidRequest(f"tool_choice names no tool: {params.tool_choice!r}",
                                 param="tool_choice")  # fmt: skip
    calls = [_call_schema(tool) for tool in tools]
    call = {"type": "object", "properties": {"tool_call": {"anyOf": calls}},
            "required": ["tool_call"]}  # fmt: skip
    if params.tool_choice == "auto":
        said = {"type": "object", "properties": {"response": {"type": "string"}},
                "required": ["response"]}  # fmt: skip
        schema: dict[str, Any] = {"anyOf": [call, said]}
    else:
        schema = call
    return OutputFormat(schema=json.dumps(schema), name="tool_call", param="tools")


def _call_schema(tool: Tool) -> dict[str, Any]:
    if len(tool.parameters) > MAX_SCHEMA_BYTES:  # refused unread (see schema_bounds)
        raise InvalidRequest(
            f"tool {tool.name!r}: parameters are {len(tool.parameters)} bytes of JSON schema; "
            f"the most is {MAX_SCHEMA_BYTES}",
            param="tools",
        )
    try:
        parameters = json.loads(tool.parameters)
    except ValueError:
        raise InvalidRequest(
            f"tool {tool.name!r}: parameters are not JSON", param="tools"
        ) from None
    return {"type": "object", "properties": {"name": {"const": tool.name}, "arguments": parameters},
            "required": ["name", "arguments"]}  # fmt: skip


def tool_prompt(params: SamplingParams) -> str:
    """The system turn that describes the tools to a model whose template cannot."""
    listed = "\n".join(json.dumps(t) for t in openai_tools(params.tools))
    must = params.tool_choice != "auto"
    return (
        "You can call these tools:\n" + listed + "\n\nTo call a tool, answer with JSON: "
        '{"tool_call": {"name": "<tool name>", "arguments": {...}}}.'
        + ("" if must else ' To answer the user directly, answer {"response": "<your answer>"}.')
    )


def template_messages(
    messages: Sequence[ChatMessage], params: SamplingParams, *, native: bool
) -> list[dict[str, Any]]:
    """The conversation for the chat template: earlier calls as the model made them, tool
    results as ``tool`` turns, and (without a native tool format) the tools in a system turn."""
    out: list[dict[str, Any]] = []
    for message in messages:
        item: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.tool_calls:
            if native:  # templates read the arguments as an object
                item["tool_calls"] = [
                    openai_call(c, arguments=arguments_of(c)) for c in message.tool_calls
                ]
            else:
                call = message.tool_calls[0]
                item["content"] = json.dumps(
                    {"tool_call": {"name": call.name, "arguments": arguments_of(call)}}
                )
        if message.tool_call_id:
            item["tool_call_id"] = message.tool_call_id
        out.append(item)
    if params.tools and params.tool_choice != "none" and not native:
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + tool_prompt(params)}
        else:
            out.insert(0, {"role": "system", "content": tool_prompt(params)})
    return out


def answer_of(text: str) -> tuple[str, tuple[ToolCall, ...]]:
    """The model's JSON answer as (text, calls)."""
    try:
        data = json.loads(text)
    except ValueError:
        raise EngineError("the model's tool answer was cut short (raise max_tokens)") from None
    call = data.get("tool_call")
    if call is None:
        return str(data.get("response", "")), ()
    arguments = json.dumps(call["arguments"])
    return "", (
        ToolCall(id=f"call_{uuid.uuid4().hex[:24]}", name=call["name"], arguments=arguments),
    )
