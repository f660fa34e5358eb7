"""Structured outputs on llama.cpp: a JSON Schema as a grammar that constrains sampling.

The grammar is llama.cpp's own JSON-schema-to-GBNF conversion as llama-cpp-python ships it
(``llama_cpp.llama_grammar.json_schema_to_gbnf``); any JSON object uses its ``JSON_GBNF``.
The converter skips what it does not understand, which would let an answer break the
schema, so a schema is first checked against what it does support and anything else is a
400 naming the keyword. Conversions are cached per schema text (bench/grammar.py measures
both the conversion and llama.cpp's parse of the result).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from typing import Any

from aiml.errors import InvalidRequest
from aiml.types import OutputFormat

__all__ = ["check_schema", "grammar_for"]

#: Keywords the converter turns into grammar rules.
_CONSTRAINTS = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "prefixItems",
    "minItems", "maxItems", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs",
    "definitions", "pattern", "format", "minLength", "maxLength",
})  # fmt: skip
#: Keywords that say something about the schema without constraining the value.
_ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "$schema", "$id", "$comment",
    "deprecated", "readOnly", "writeOnly", "strict",
})  # fmt: skip
#: String formats the converter has rules for.
_FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4",
                      "uuid5"})  # fmt: skip
_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})


def check_schema(schema: Any, param: str) -> None:
    """Refuse (400) a schema that uses anything the grammar could not enforce."""
    if not isinstance(schema, dict):
        raise InvalidRequest("the JSON schema must be an object", param=param)
    unsupported = sorted(set(_unsupported(schema, "#")))
    if unsupported:
        raise InvalidRequest(
            "the JSON schema uses what llama.cpp's grammar cannot enforce: "
            + ", ".join(unsupported),
            param=param,
        )


def _unsupported(schema: Any, where: str) -> Iterator[str]:
    if isinstance(schema, bool):
        return  # true / false as a (sub)schema
    if not isinstance(schema, dict):
        yield f"{where} (not a schema)"
        return
    for key, value in schema.items():
        if key not in _CONSTRAINTS and key not in _ANNOTATIONS:
            yield f"{key} (at {where})"
        elif key == "format" and value not in _FORMATS:
            yield f"format {value!r} (at {where})"
        elif key == "type":
            types = value if isinstance(value, list) else [value]
            yield from (f"type {t!r} (at {where})" for t in types if t not in _TYPES)
        elif key == "$ref" and not (isinstance(value, str) and value.startswith("#/")):
            yield f"$ref {value!r} (at {where}; only references inside the schema)"
        elif key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            for name, sub in value.items():
                yield from _unsupported(sub, f"{where}/{key}/{name}")
        elif key in ("anyOf", "oneOf", "allOf", "prefixItems") and isinstance(value, list):
            for index, sub in enumerate(value):
                yield from _unsupported(sub, f"{where}/{key}/{index}")
        elif key in ("items", "additionalProperties") and not isinstance(value, list):
            yield from _unsupported(value, f"{where}/{key}")
        elif key == "items":
            for index, sub in enumerate(value):
                yield from _unsupported(sub, f"{where}/items/{index}")


def grammar_for(output: OutputFormat) -> str:
    """The GBNF grammar of ``output`` (checked first; cached per schema)."""
    if output.schema is None:
        return _any_json()
    try:
        return _schema_grammar(output.schema)
    except InvalidRequest as exc:  # name the field this request sent it in
        raise InvalidRequest(exc.message, param=output.param) from None


@functools.cache
def _any_json() -> str:
    from llama_cpp.llama_grammar import JSON_GBNF

    return str(JSON_GBNF)


@functools.lru_cache(maxsize=512)
def _schema_grammar(schema: str) -> str:
    param = "response_format"  # replaced by grammar_for
    check_schema(json.loads(schema), param)
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return str(json_schema_to_gbnf(schema))
    except (AssertionError, ValueError, KeyError, TypeError) as exc:
        raise InvalidRequest(
            f"the JSON schema cannot be made a grammar: {exc}", param=param
        ) from None
