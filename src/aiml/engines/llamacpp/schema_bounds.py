"""What a JSON schema may cost before it becomes a llama.cpp grammar, and the bounds the
grammar leaves open.

llama-cpp-python's converter and llama.cpp's grammar parser are recursive, and their cost
grows with the schema in ways a client controls: ``maxLength: 20000`` becomes a grammar
nested 20,000 deep (llama.cpp's parser overflows its thread's stack), 8,000 optional
properties recurse 8,000 deep in the converter, a 40,000-value enum is 40,000 grammar
stacks that every sampled token is checked against. So a schema is surveyed first, without
recursion, against the named limits below (past one: a 400 naming it), and repetition
bounds too large to expand (a string's or an array's length) are left open in the grammar
and checked on the answer instead (:func:`relaxed`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiml.errors import InvalidRequest

__all__ = [
    "MAX_ALTERNATIVES",
    "MAX_DEPTH",
    "MAX_GRAMMAR_BYTES",
    "MAX_OPTIONAL_PROPERTIES",
    "MAX_PATTERN_LENGTH",
    "MAX_PATTERN_SIZE",
    "MAX_SCHEMA_BYTES",
    "MAX_SUBSCHEMAS",
    "REPETITION_LIMIT",
    "Survey",
    "relaxed",
    "survey",
]

#: Longest schema (JSON text) read at all: parsing holds the interpreter's lock (no other
#: request, the event loop's included, runs meanwhile), ~0.5 s for a few megabytes.
MAX_SCHEMA_BYTES = 512 * 1024
#: Most subschemas nested in one another (the converter recurses once per level).
MAX_DEPTH = 32
#: Most subschemas in one schema (conversion time and grammar size grow with them).
MAX_SUBSCHEMAS = 4096
#: Most alternatives in one schema: enum values, ``anyOf``/``oneOf`` branches, listed
#: types. Each is a grammar stack that a sampled token is checked against where it may
#: start; on SmolLM2's 49k-token vocabulary one alternative costs ~0.5 ms of the scheduler's
#: time whenever the grammar must filter the whole vocabulary (bench/grammar_attacks.py).
MAX_ALTERNATIVES = 256
#: Most optional properties in one object: the converter's rule for them recurses once per
#: property and costs their square; after each property, every later one is a stack.
MAX_OPTIONAL_PROPERTIES = 100
#: Longest ``pattern`` (the converter's regular-expression reader recurses per group).
MAX_PATTERN_LENGTH = 1000
#: Most grammar symbols one ``pattern`` expands to (a quantifier copies what it repeats).
MAX_PATTERN_SIZE = 4096
#: Largest repetition the grammar spells out (``maxLength``, ``maxItems``, a pattern's
#: ``{m,n}``): llama.cpp nests one level per optional repetition and refuses past ~1,000.
#: A length or item bound past it is left open in the grammar and checked on the answer; a
#: pattern's is refused.
REPETITION_LIMIT = 256
#: Largest grammar llama.cpp is given to parse (bytes of GBNF).
MAX_GRAMMAR_BYTES = 256 * 1024

_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
_FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4",
                      "uuid5"})  # fmt: skip
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
_BOUNDS = ("minLength", "maxLength", "minItems", "maxItems")
_QUANTIFIER = re.compile(r"\{(\d*)(,?)(\d*)\}")


@dataclass
class Survey:
    """What a schema uses that the grammar cannot enforce, and whether the grammar must
    leave any bound open (to be checked on the answer)."""

    unsupported: list[str] = field(default_factory=list)
    open_bounds: list[str] = field(default_factory=list)


def survey(schema: Any) -> Survey:
    """Walk ``schema`` (no recursion: its depth is the client's) and refuse (400) one past
    a limit; the rest is reported."""
    found = Survey()
    stack: list[tuple[Any, str, int]] = [(schema, "#", 1)]
    subschemas = alternatives = 0
    while stack:
        node, where, depth = stack.pop()
        subschemas += 1
        if depth > MAX_DEPTH:
            _refuse(f"the JSON schema nests deeper than {MAX_DEPTH} levels (at {where})")
        if subschemas > MAX_SUBSCHEMAS:
            _refuse(f"the JSON schema has more than {MAX_SUBSCHEMAS} subschemas")
        if isinstance(node, bool):
            continue  # true / false as a (sub)schema
        if not isinstance(node, dict):
            found.unsupported.append(f"{where} (not a schema)")
            continue
        alternatives += _alternatives(node)
        if alternatives > MAX_ALTERNATIVES:
            _refuse(f"the JSON schema has more than {MAX_ALTERNATIVES} alternatives (enum "
                    f"values, anyOf/oneOf branches, types), the last at {where}")  # fmt: skip
        _check_object(node, where)
        _check_bounds(node, where, found)
        found.unsupported.extend(_unsupported_keys(node, where))
        stack.extend((sub, at, depth + 1) for sub, at in _children(node, where))
    return found


def _refuse(message: str) -> None:
    raise InvalidRequest(message, param="response_format")


def _alternatives(node: dict[str, Any]) -> int:
    count = 0
    for key in ("enum", "anyOf", "oneOf"):
        if isinstance(node.get(key), list):
            count += len(node[key])
    if isinstance(node.get("type"), list):
        count += len(node["type"])
    return count


def _check_object(node: dict[str, Any], where: str) -> None:
    properties = node.get("properties")
    if not isinstance(properties, dict):
        return
    required = node.get("required", [])
    required = set(required) if isinstance(required, list) else set()
    optional = sum(1 for name in properties if name not in required)
    if optional > MAX_OPTIONAL_PROPERTIES:
        _refuse(f"the object at {where} has {optional} optional properties; the most is "
                f"{MAX_OPTIONAL_PROPERTIES} (list the others in required)")  # fmt: skip


def _check_bounds(node: dict[str, Any], where: str, found: Survey) -> None:
    for key in _BOUNDS:
        value = node.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            found.unsupported.append(f"{key} {value!r} (at {where}; not a count)")
        elif value > REPETITION_LIMIT:
            found.open_bounds.append(f"{key} {value} (at {where})")
    pattern = node.get("pattern")
    if pattern is not None:
        if not isinstance(pattern, str):
            found.unsupported.append(f"pattern {pattern!r} (at {where}; not a string)")
        else:
            _check_pattern(pattern, where)


def _check_pattern(pattern: str, where: str) -> None:
    if len(pattern) > MAX_PATTERN_LENGTH:
        _refuse(f"the pattern at {where} is {len(pattern)} characters; the most a grammar "
                f"takes is {MAX_PATTERN_LENGTH}")  # fmt: skip
    size = _pattern_size(pattern, where)
    if size > MAX_PATTERN_SIZE:
        _refuse(f"the pattern at {where} expands to ~{size} grammar symbols; the most is "
                f"{MAX_PATTERN_SIZE} (nested repetitions multiply)")  # fmt: skip


def _pattern_size(pattern: str, where: str) -> int:
    """How many symbols the converter writes for ``pattern``, over-estimated: a quantifier
    copies what it repeats (``(ab){3}`` is ``ab ab ab``), so nesting multiplies."""
    groups: list[list[int]] = [[0, 0]]  # per open group: [size so far, size of last atom]
    i = 0
    while i < len(pattern):
        c = pattern[i]
        atom = None
        if c == "\\":
            atom, i = 1, i + 2
        elif c == "[":
            i += 1
            if i < len(pattern) and pattern[i] == "]":
                i += 1
            while i < len(pattern) and pattern[i] != "]":
                i += 2 if pattern[i] == "\\" else 1
            atom, i = 1, i + 1
        elif c == "(":
            groups.append([0, 0])
            i += 1
        elif c == ")" and len(groups) > 1:
            atom, i = groups.pop()[0], i + 1
        elif c == "{" and (match := _QUANTIFIER.match(pattern, i)):
            low, comma, high = match.groups()
            times = [int(n) for n in (low, high) if n]
            most = max(times, default=0)
            if most > REPETITION_LIMIT:
                _refuse(f"the pattern at {where} repeats {match.group()}; the most a grammar "
                        f"spells out is {REPETITION_LIMIT}")  # fmt: skip
            top = groups[-1]
            top[0] += top[1] * (max(most, 1) - 1 + (1 if comma and not high else 0))
            top[1] = 0
            i = match.end()
        else:
            atom, i = 1, i + 1
        if atom is not None:
            groups[-1][0] += atom
            groups[-1][1] = atom
    return sum(group[0] for group in groups)


def _unsupported_keys(node: dict[str, Any], where: str) -> Iterator[str]:
    for key, value in node.items():
        if key not in _CONSTRAINTS and key not in _ANNOTATIONS:
            yield f"{key} (at {where})"
        elif key == "format" and value not in _FORMATS:
            yield f"format {value!r} (at {where})"
        elif key == "type":
            types = value if isinstance(value, list) else [value]
            yield from (f"type {t!r} (at {where})" for t in types if t not in _TYPES)
        elif key == "$ref" and not (isinstance(value, str) and value.startswith("#/")):
            yield f"$ref {value!r} (at {where}; only references inside the schema)"


def _children(node: dict[str, Any], where: str) -> Iterator[tuple[Any, str]]:
    for key, value in node.items():
        if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            yield from ((sub, f"{where}/{key}/{name}") for name, sub in value.items())
        elif key in ("anyOf", "oneOf", "allOf", "prefixItems", "items") and isinstance(value, list):
            yield from ((sub, f"{where}/{key}/{i}") for i, sub in enumerate(value))
        elif key in ("items", "additionalProperties") and not isinstance(value, list):
            yield value, f"{where}/{key}"


def relaxed(schema: Any) -> Any:
    """``schema`` with every length and item bound past :data:`REPETITION_LIMIT` left open
    for the grammar (a maximum dropped, a minimum lowered to the limit): the grammar stays
    shallow and still enforces all the rest; the answer is checked against the original."""
    schema = copy.deepcopy(schema)
    stack = [schema]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        for key in _BOUNDS:
            value = node.get(key)
            if isinstance(value, int) and value > REPETITION_LIMIT:
                if key.startswith("max"):
                    del node[key]
                else:
                    node[key] = REPETITION_LIMIT
        stack.extend(sub for sub, _ in _children(node, ""))
    return schema
