"""JSON schemas as llama.cpp grammars: what the grammar cannot enforce is refused by name,
pydantic's schemas pass, and a schema is converted once however often it is asked for."""

from __future__ import annotations

import json
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from aiml.engines.json_grammar import check_schema, grammar_for
from aiml.errors import InvalidRequest
from aiml.types import OutputFormat


class Inner(BaseModel):
    kind: Literal["a", "b"]


class Outer(BaseModel):
    name: str = Field(max_length=5)
    inner: Inner
    items: list[Inner] = Field(max_length=2)
    maybe: int | None = None


def refused(schema: dict[str, object]) -> str:
    with pytest.raises(InvalidRequest) as caught:
        check_schema(schema, "response_format")
    assert caught.value.param == "response_format"
    return caught.value.message


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "integer", "minimum": 1}, "minimum"),
        ({"type": "number", "multipleOf": 2}, "multipleOf"),
        ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "uniqueItems"),
        ({"not": {"type": "string"}}, "not"),
        ({"type": "object", "properties": {"a": {"if": {}, "then": {}}}}, "if (at #/properties/a)"),
        ({"type": "string", "format": "email"}, "format 'email'"),
        ({"$ref": "https://example.com/schema.json"}, "only references inside the schema"),
        ({"type": "object", "patternProperties": {"^x": {}}}, "patternProperties"),
        ({"type": "decimal"}, "type 'decimal'"),
        (
            {"anyOf": [{"type": "string"}, {"type": "integer", "maximum": 3}]},
            "maximum (at #/anyOf/1)",
        ),
    ],
)
def test_what_the_grammar_cannot_enforce_is_refused_by_name(
    schema: dict[str, object], named: str
) -> None:
    assert named in refused(schema)


def test_every_unsupported_keyword_is_named_at_once() -> None:
    message = refused({"type": "object", "minProperties": 1, "properties": {"n": {"minimum": 0}}})
    assert "minProperties (at #)" in message and "minimum (at #/properties/n)" in message


def test_pydantic_schemas_pass() -> None:
    check_schema(Outer.model_json_schema(), "response_format")  # $defs, $ref, anyOf, enums


def test_a_schema_is_converted_once() -> None:
    schema = OutputFormat(schema=json.dumps(Outer.model_json_schema()))
    from aiml.engines.json_grammar import _schema_grammar  # the cache, keyed by schema text

    _schema_grammar.cache_clear()
    first = grammar_for(schema)
    again = grammar_for(OutputFormat(schema=schema.schema, name="other", param="format"))
    info = _schema_grammar.cache_info()
    assert first == again and 'Inner-kind ::= "\\"a\\"" | "\\"b\\""' in first
    assert (info.misses, info.hits) == (1, 1)


def test_any_json_object_uses_llama_cpps_json_grammar() -> None:
    assert grammar_for(OutputFormat()).lstrip().startswith("root")
