"""Tools and tool calls as the wires write them: OpenAI's (and chat templates', which take
OpenAI's shape) and Ollama's. Every engine family that speaks tools, and the API surfaces,
use these; how a local model is made to call a tool is ``llamacpp/tool_calls.py``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from aiml.errors import InvalidRequest
from aiml.types import Tool, ToolCall

__all__ = ["arguments_of", "ollama_call", "openai_call", "openai_tools"]


def openai_tools(tools: Sequence[Tool]) -> list[dict[str, Any]]:
    """The tools as OpenAI (and chat templates that take ``tools``) write them."""
    return [
        {"type": "function",
         "function": {"name": t.name, "description": t.description,
                      "parameters": json.loads(t.parameters)}}
        for t in tools
    ]  # fmt: skip


def arguments_of(call: ToolCall) -> Any:
    """A call's arguments as an object; text that is not JSON stays text (a client or a
    remote server may send anything back)."""
    try:
        return json.loads(call.arguments)
    except ValueError:
        return call.arguments


def openai_call(call: ToolCall, *, arguments: Any = None) -> dict[str, Any]:
    """A call as OpenAI writes it (arguments as JSON text unless given)."""
    given = call.arguments if arguments is None else arguments
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": given}}


def ollama_call(call: ToolCall) -> dict[str, Any]:
    """A call as Ollama writes it: no id, the arguments an object (anything else is a 400,
    not a failure inside Ollama's client)."""
    arguments = arguments_of(call)
    if not isinstance(arguments, dict):
        raise InvalidRequest(
            f"the arguments of tool call {call.id!r} are not a JSON object; Ollama takes no other",
            param="messages",
        )
    return {"function": {"name": call.name, "arguments": arguments}}
