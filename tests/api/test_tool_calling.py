"""Tool calling through the unmodified official clients, on SmolLM2 under llama.cpp.

SmolLM2's chat template has no tool format of its own, so the tools go in a system turn and
the answer is generated under the grammar of ``{"tool_call": ...}`` / ``{"response": ...}``
(llama.cpp server's generic format): a round trip (the model calls the function, the result
goes back as a ``tool`` turn, the model answers) on the OpenAI and Ollama surfaces,
streaming and not; ``tool_choice`` none, required and a named function.
"""

from __future__ import annotations

import json
from typing import Any

import ollama
import openai
import pytest

from tests.conftest import RunningAiml, Shared

pytestmark = pytest.mark.slow

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time now in a timezone.",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
            "required": ["zone"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
#: Ollama has no tool_choice: the model decides, so the request asks for the tool outright.
USE_TOOL = [{"role": "user", "content": "Call the get_weather tool for Paris."}]


def test_a_round_trip_on_the_openai_surface(shared_aiml: RunningAiml) -> None:
    api = shared_aiml.openai()
    called = api.chat.completions.create(
        model="smol", messages=ASK, tools=[WEATHER, TIME], tool_choice="required",  # type: ignore[list-item]
        temperature=0, max_tokens=100,
    )  # fmt: skip
    choice = called.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name in ("get_weather", "get_time")
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == ({"city"} if call.function.name == "get_weather" else {"zone"})
    history: list[Any] = [
        *ASK,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C."},
    ]
    answered = api.chat.completions.create(
        model="smol", messages=history, tools=[WEATHER, TIME], tool_choice="none",  # type: ignore[list-item]
        temperature=0, max_tokens=40,
    )  # fmt: skip
    assert answered.choices[0].message.content
    assert not answered.choices[0].message.tool_calls


def test_a_named_function_streamed(shared_aiml: RunningAiml) -> None:
    chunks = list(
        shared_aiml.openai().chat.completions.create(
            model="smol", messages=ASK, tools=[WEATHER, TIME],  # type: ignore[list-item]
            tool_choice={"type": "function", "function": {"name": "get_time"}},
            temperature=0, max_tokens=100, stream=True,
        )
    )  # fmt: skip
    calls = [
        c for chunk in chunks for c in chunk.choices[0].delta.tool_calls or [] if chunk.choices
    ]
    assert [c.function.name for c in calls if c.function] == ["get_time"]
    assert json.loads(calls[0].function.arguments or "")["zone"] in ("UTC", "CET")  # type: ignore[union-attr]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_a_round_trip_on_the_ollama_surface(shared_aiml: RunningAiml) -> None:
    api = ollama.Client(host=shared_aiml.url)
    options = {"temperature": 0, "num_predict": 100}
    first = api.chat(model="smol", messages=USE_TOOL, tools=[WEATHER], options=options)
    calls = first.message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather"]
    assert set(calls[0].function.arguments) == {"city"}
    history: list[Any] = [
        *USE_TOOL,
        first.message,
        {"role": "tool", "content": "Sunny, 21 C.", "tool_name": "get_weather"},
    ]
    parts = list(api.chat(model="smol", messages=history, options=options, stream=True))
    assert "".join(p.message.content or "" for p in parts).strip()
    assert parts[-1].done


def test_a_streamed_call_on_the_ollama_surface(shared_aiml: RunningAiml) -> None:
    parts = list(
        ollama.Client(host=shared_aiml.url).chat(
            model="smol", messages=[{"role": "user", "content": "Call get_time for UTC."}],
            tools=[TIME], stream=True,
            options={"temperature": 0, "num_predict": 100},
        )
    )  # fmt: skip
    calls = [c for p in parts for c in p.message.tool_calls or []]
    assert [c.function.name for c in calls] == ["get_time"] and parts[-1].done


def test_tools_with_what_the_grammar_cannot_enforce_are_refused(shared_aiml: RunningAiml) -> None:
    parameters = {"type": "object", "minProperties": 1}
    bad: Any = {"type": "function", "function": {"name": "f", "parameters": parameters}}
    with pytest.raises(openai.BadRequestError, match="minProperties") as caught:
        shared_aiml.openai().chat.completions.create(model="smol", messages=ASK, tools=[bad])
    assert caught.value.body["param"] == "tools"  # type: ignore[index]


def test_the_ollama_engine_gets_tools_passed_through(shared: Shared) -> None:
    aiml, ollama = shared.aiml, shared.ollama
    api = aiml.openai()
    for stream in (False, True):
        if stream:
            chunks = list(api.chat.completions.create(
                model="llama2-7b-chat", messages=ASK, tools=[WEATHER], stream=True))  # type: ignore[list-item]  # fmt: skip
            deltas = [c.choices[0].delta for c in chunks if c.choices]
            calls = [call for delta in deltas for call in delta.tool_calls or []]
            finish = chunks[-1].choices[0].finish_reason
        else:
            answer = api.chat.completions.create(
                model="llama2-7b-chat", messages=ASK, tools=[WEATHER])  # type: ignore[list-item]  # fmt: skip
            calls = list(answer.choices[0].message.tool_calls or [])
            finish = answer.choices[0].finish_reason
        assert [(c.function.name, c.function.arguments) for c in calls if c.function] == [
            ("get_weather", '{"city": "x"}')
        ]
        assert finish == "tool_calls"
        _, sent = ollama.state.received[-1]
        assert sent["tools"][0]["function"]["name"] == "get_weather"
    history: list[Any] = [
        *ASK,
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "x"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "Sunny"},
    ]  # fmt: skip
    answer = api.chat.completions.create(model="llama2-7b-chat", messages=history, tools=[WEATHER])  # type: ignore[list-item]
    assert answer.choices[0].message.content == "llama2:7b heard: Sunny"
    sent_turn = ollama.state.received[-1][1]["messages"][1]
    assert sent_turn["tool_calls"] == [
        {"function": {"name": "get_weather", "arguments": {"city": "x"}}}
    ]
    with pytest.raises(openai.BadRequestError, match="tool_choice"):
        api.chat.completions.create(model="llama2-7b-chat", messages=ASK, tools=[WEATHER],  # type: ignore[list-item]
                                    tool_choice="required")  # fmt: skip


def test_arguments_that_are_not_a_json_object_are_a_400_for_ollama(shared: Shared) -> None:
    # A client may send back whatever a model wrote; Ollama's client refusing it was a 500.
    history: list[Any] = [
        *ASK,
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
         "function": {"name": "get_weather", "arguments": "Paris, please"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "Sunny"},
    ]  # fmt: skip
    with pytest.raises(openai.BadRequestError, match="not a JSON object") as refused:
        shared.aiml.openai().chat.completions.create(model="llama2-7b-chat", messages=history)
    assert refused.value.body["param"] == "messages"  # type: ignore[index]
