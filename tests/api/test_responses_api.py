"""``/v1/responses`` through the unmodified ``openai`` client: create, stream with its typed
events, ``previous_response_id`` across turns, retrieve and delete stored responses,
structured output through ``text.format``, function calls and their outputs, and errors in
OpenAI's format."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from tests.conftest import RunningAiml

pytestmark = pytest.mark.slow


class Pet(BaseModel):
    kind: str
    legs: int


def test_create_then_continue_with_previous_response_id(shared_aiml: RunningAiml) -> None:
    api = shared_aiml.openai()
    first = api.responses.create(
        model="llama2-7b-chat", input="My cat is called Tom.", instructions="Be brief."
    )
    assert (
        first.status == "completed"
        and first.output_text == "llama2:7b heard: My cat is called Tom."
    )
    assert first.usage is not None and first.usage.output_tokens > 0
    second = api.responses.create(
        model="llama2-7b-chat", input="What is my cat called?", previous_response_id=first.id
    )
    assert second.previous_response_id == first.id
    assert api.responses.retrieve(second.id).output_text == second.output_text
    cut = api.responses.create(model="llama2-7b-chat", input="one two three", max_output_tokens=2)
    assert cut.status == "incomplete" and cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"
    with pytest.raises(openai.NotFoundError):
        api.responses.create(model="llama2-7b-chat", input="hi", previous_response_id="resp_nope")
    unstored = api.responses.create(model="llama2-7b-chat", input="hi", store=False)
    with pytest.raises(openai.NotFoundError):
        api.responses.retrieve(unstored.id)
    api.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        api.responses.retrieve(first.id)


def test_the_conversation_reaches_the_model(shared_aiml: RunningAiml) -> None:
    api = shared_aiml.openai()
    first = api.responses.create(model="smol", input="My cat is called Tom.", max_output_tokens=20,
                                 temperature=0)  # fmt: skip
    second = api.responses.create(model="smol", input="What is my cat called?",
                                  previous_response_id=first.id, max_output_tokens=20,
                                  temperature=0)  # fmt: skip
    alone = api.responses.create(model="smol", input="What is my cat called?",
                                 max_output_tokens=20, temperature=0)  # fmt: skip
    assert second.usage is not None and alone.usage is not None
    assert second.usage.input_tokens > alone.usage.input_tokens + 10  # the first turn was sent
    assert second.output_text != alone.output_text or "Tom" in second.output_text


def test_stream_with_typed_events(shared_aiml: RunningAiml) -> None:
    api = shared_aiml.openai()
    with api.responses.stream(model="smol", input="Say hello.", max_output_tokens=200,
                              temperature=0) as stream:  # fmt: skip
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds.count("response.output_text.delta") > 2
    assert kinds[-1] == "response.completed"
    assert final.output_text and api.responses.retrieve(final.id).output_text == final.output_text
    followed = api.responses.create(model="smol", input="Again.", previous_response_id=final.id,
                                    max_output_tokens=5)  # fmt: skip
    assert followed.status in ("completed", "incomplete")


def test_text_format_json_schema(shared_aiml: RunningAiml) -> None:
    parsed = shared_aiml.openai().responses.parse(
        model="smol", input="Describe a cat.", text_format=Pet, max_output_tokens=100, temperature=0
    )
    assert isinstance(parsed.output_parsed, Pet)


def test_function_call_round_trip(shared_aiml: RunningAiml) -> None:
    api = shared_aiml.openai()
    tools: Any = [{"type": "function", "name": "get_weather", "description": "Weather now.",
                   "parameters": {"type": "object", "properties": {"city": {"type": "string",
                                  "maxLength": 20}}, "required": ["city"]}}]  # fmt: skip
    called = api.responses.create(model="smol", input="Weather in Paris?", tools=tools,
                                  tool_choice="required", temperature=0,
                                  max_output_tokens=60)  # fmt: skip
    (call,) = [item for item in called.output if item.type == "function_call"]
    assert call.name == "get_weather" and "city" in json.loads(call.arguments)
    answered = api.responses.create(
        model="smol", previous_response_id=called.id, tools=tools, tool_choice="none",
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}],
        temperature=0, max_output_tokens=30,
    )  # fmt: skip
    assert answered.output_text


def test_errors_come_in_openais_format(shared_aiml: RunningAiml) -> None:
    api = shared_aiml.openai()
    with pytest.raises(openai.BadRequestError) as caught:
        api.responses.create(model="smol", input=[{"type": "input_image", "image_url": "x"}])
    assert caught.value.body["param"] == "input"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        api.responses.create(model="no-such-model", input="hi")


@pytest.mark.parametrize("model", ["tiny-lm", "smol", "llama2-7b-chat"])
def test_an_empty_conversation_is_a_400_on_input(shared_aiml: RunningAiml, model: str) -> None:
    """Found by the fuzzer: ``input: []`` reached transformers' chat template, a 500."""
    with pytest.raises(openai.BadRequestError) as refused:
        shared_aiml.openai().responses.create(model=model, input=[])
    assert refused.value.body["param"] == "input"  # type: ignore[index]
