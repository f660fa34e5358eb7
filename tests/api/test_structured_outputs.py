"""Structured outputs through the unmodified official clients.

On llama.cpp the answer is generated under a grammar made from the schema, so even
SmolLM2-135M returns JSON that validates: ten pydantic models (nested objects, enums,
arrays, optional and required fields) through ``client.chat.completions.parse`` and
``.stream``; ``json_object``; Ollama's ``format``. Schemas the grammar cannot enforce are a
400 naming the keyword; the transformers engine refuses by name; the Ollama and OpenAI
engines pass the field through.
"""

from __future__ import annotations

import datetime
import json
from enum import StrEnum
from typing import Literal

import ollama
import openai
import pydantic
import pytest
from pydantic import BaseModel, Field

from tests.conftest import RunningAiml, Shared

pytestmark = pytest.mark.slow

ASK = [{"role": "user", "content": "Describe a cat as JSON."}]


class Color(StrEnum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"


class Flat(BaseModel):
    name: str = Field(max_length=20)
    age: int


class WithEnum(BaseModel):
    color: Color
    bright: bool


class WithLiteral(BaseModel):
    mood: Literal["happy", "sad", "calm"]


class WithArray(BaseModel):
    tags: list[str] = Field(max_length=3)


class Point(BaseModel):
    x: int
    y: int


class Nested(BaseModel):
    start: Point
    end: Point


class WithOptional(BaseModel):
    title: str = Field(max_length=30)
    subtitle: str | None


class Item(BaseModel):
    sku: str = Field(max_length=10)
    count: int


class Order(BaseModel):
    items: list[Item] = Field(max_length=2)
    paid: bool


class WithNumbers(BaseModel):
    price: float
    quantity: int
    discount: float | None


class WithDate(BaseModel):
    born: datetime.date


class Deep(BaseModel):
    owner: WithEnum
    order: Order
    where: Literal["home", "work"]


SCHEMAS: list[type[BaseModel]] = [
    Flat, WithEnum, WithLiteral, WithArray, Nested, WithOptional, Order, WithNumbers,
    WithDate, Deep,
]  # fmt: skip


def test_parse_returns_objects_that_validate_for_ten_schemas(shared_aiml: RunningAiml) -> None:
    api = shared_aiml.openai()
    for schema in SCHEMAS:  # one server and one model load for all ten
        answer = api.chat.completions.parse(
            model="smol", messages=ASK, response_format=schema, max_tokens=400, temperature=0
        )
        message = answer.choices[0].message
        assert isinstance(message.parsed, schema), (schema.__name__, message.content)
        assert answer.choices[0].finish_reason == "stop", schema.__name__


def test_stream_yields_the_parsed_object(shared_aiml: RunningAiml) -> None:
    with shared_aiml.openai().chat.completions.stream(
        model="smol", messages=ASK, response_format=Order, max_tokens=400, temperature=0
    ) as stream:
        deltas = [event for event in stream if event.type == "content.delta"]
        final = stream.get_final_completion()
    assert len(deltas) > 3  # it streamed, token by token
    assert isinstance(final.choices[0].message.parsed, Order)


def test_json_object_and_sampling_stay_json(shared_aiml: RunningAiml) -> None:
    for seed in range(2):
        answer = shared_aiml.openai().chat.completions.create(
            model="smol", messages=ASK, response_format={"type": "json_object"},
            max_tokens=80, temperature=1.0, seed=seed,
        )  # fmt: skip
        content = answer.choices[0].message.content or ""
        if answer.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(content), dict | list | str | int | float | bool)


def test_ollama_format_json_schema_and_json(shared_aiml: RunningAiml) -> None:
    api = ollama.Client(host=shared_aiml.url)
    reply = api.chat(model="smol", messages=ASK, format=Nested.model_json_schema(),
                     options={"temperature": 0, "num_predict": 200})  # fmt: skip
    Nested.model_validate_json(reply.message.content or "")
    generated = api.generate(model="smol", prompt="A cat as JSON:", format=Flat.model_json_schema(),
                             options={"temperature": 0, "num_predict": 200})  # fmt: skip
    Flat.model_validate_json(generated.response)


def test_a_schema_the_grammar_cannot_enforce_is_refused_by_name(shared_aiml: RunningAiml) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 3}},
              "patternProperties": {"^x": {"type": "string"}}}  # fmt: skip
    with pytest.raises(openai.BadRequestError) as caught:
        shared_aiml.openai().chat.completions.create(
            model="smol", messages=ASK,
            response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
        )  # fmt: skip
    message = str(caught.value)
    assert "minimum" in message and "patternProperties" in message
    assert caught.value.body["param"] == "response_format"  # type: ignore[index]
    with pytest.raises(ollama.ResponseError) as refused:
        ollama.Client(host=shared_aiml.url).chat(model="smol", messages=ASK, format=schema)
    assert refused.value.status_code == 400 and "minimum" in refused.value.error


def test_the_transformers_engine_refuses_by_name(shared_aiml: RunningAiml) -> None:
    with pytest.raises(openai.BadRequestError, match="not supported by the transformers engine"):
        shared_aiml.openai().chat.completions.create(
            model="tiny-lm", messages=ASK, response_format={"type": "json_object"}
        )


def test_the_ollama_engine_gets_the_format_passed_through(shared: Shared) -> None:
    aiml, ollama = shared.aiml, shared.ollama
    api = aiml.openai()
    with pytest.raises(pydantic.ValidationError):  # the stand-in answers in words, not JSON
        api.chat.completions.parse(model="llama2-7b-chat", messages=ASK, response_format=Flat)
    route, sent = ollama.state.received[-1]
    assert route == "POST /api/chat"
    assert sent["format"]["properties"]["age"] == {"title": "Age", "type": "integer"}
    api.chat.completions.create(
        model="llama2-7b-chat", messages=ASK, response_format={"type": "json_object"}
    )
    assert ollama.state.received[-1][1]["format"] == "json"
