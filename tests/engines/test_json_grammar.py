"""JSON schemas as llama.cpp grammars: what the grammar cannot enforce is refused by name,
pydantic's schemas pass, a schema is converted once however often it is asked for, what a
schema may cost is bounded (past a limit: a 400 naming it), and bounds too large to spell
out are left open in the grammar and checked on the answer."""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field

from aiml.engines.llamacpp.json_grammar import check_schema, grammar_for
from aiml.errors import EngineError, InvalidRequest
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
    from aiml.engines.llamacpp.json_grammar import (
        _schema_grammar,  # the cache, keyed by schema text
    )

    _schema_grammar.cache_clear()
    first = grammar_for(schema)
    again = grammar_for(OutputFormat(schema=schema.schema, name="other", param="format"))
    info = _schema_grammar.cache_info()
    assert first == again and 'Inner-kind ::= "\\"a\\"" | "\\"b\\""' in first.text
    assert (info.misses, info.hits) == (1, 1)


def test_any_json_object_uses_llama_cpps_json_grammar() -> None:
    assert grammar_for(OutputFormat()).text.lstrip().startswith("root")


def grammar(schema: dict[str, object]) -> Any:
    return grammar_for(OutputFormat(schema=json.dumps(schema), param="format"))


def limit_named(schema: dict[str, object]) -> str:
    with pytest.raises(InvalidRequest) as caught:
        grammar(schema)
    assert caught.value.param == "format"
    return caught.value.message


def nested(depth: int) -> dict[str, object]:
    schema: dict[str, object] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        (nested(40), "nests deeper than 32 levels"),
        ({"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(8000)}},
         "8000 optional properties; the most is 100"),
        ({"enum": list(range(40_000))}, "more than 256 alternatives"),
        ({"anyOf": [{"const": i} for i in range(300)]}, "more than 256 alternatives"),
        ({"type": "object", "required": [f"p{i}" for i in range(5000)],
          "properties": {f"p{i}": {"type": "integer"} for i in range(5000)}},
         "more than 4096 subschemas"),
        ({"type": "string", "pattern": "^a{0,20000}$"}, "repeats {0,20000}"),
        ({"type": "string", "pattern": "^((a{0,99}){0,99}){0,99}$"}, "nested repetitions"),
        ({"type": "string", "pattern": "^" + "a" * 2000 + "$"}, "the most a grammar takes"),
        ({"type": "object", "description": "x" * 600_000}, "bytes; the most is 524288"),
        ({"type": "object", "required": [f"p{i:04}" for i in range(4000)],
          "properties": {f"p{i:04}": {"type": "integer"} for i in range(4000)}},
         "makes a grammar of"),
    ],
    ids=["depth", "optional", "enum", "anyOf", "subschemas", "repetition", "pattern-size",
         "pattern-length", "schema-bytes", "grammar-bytes"],
)  # fmt: skip
def test_a_schema_past_a_limit_is_refused_naming_it(schema: dict[str, object], named: str) -> None:
    assert named in limit_named(schema)


def test_large_bounds_are_left_open_in_the_grammar_and_checked_on_the_answer() -> None:
    schema = {"type": "object", "required": ["s", "n"],
              "properties": {"s": {"type": "string", "maxLength": 20_000},
                             "n": {"type": "array", "items": {"type": "integer"},
                                   "minItems": 300, "maxItems": 20_000}}}  # fmt: skip
    made = grammar(schema)
    assert "(char (char" not in made.text  # not nested 20,000 deep
    assert sorted(made.open_bounds) == [
        "maxItems 20000 (at #/properties/n)", "maxLength 20000 (at #/properties/s)",
        "minItems 300 (at #/properties/n)",
    ]  # fmt: skip
    made.check(json.dumps({"s": "x" * 20_000, "n": list(range(300))}))
    with pytest.raises(EngineError, match=r"maxLength 20000 not met \(at \$\.s\)"):
        made.check(json.dumps({"s": "x" * 20_001, "n": list(range(300))}))
    with pytest.raises(EngineError, match=r"minItems 300 not met \(at \$\.n\)"):
        made.check(json.dumps({"s": "", "n": list(range(299))}))


def test_bounds_within_the_limit_stay_in_the_grammar() -> None:
    made = grammar({"type": "string", "maxLength": 256})
    assert made.open_bounds == () and made.text.count("(char") == 256
