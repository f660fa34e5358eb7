"""Structured outputs on llama.cpp: a JSON Schema as a grammar that constrains sampling.

The grammar is llama.cpp's own JSON-schema-to-GBNF conversion as llama-cpp-python ships it
(``llama_cpp.llama_grammar.json_schema_to_gbnf``); any JSON object uses its ``JSON_GBNF``.
The converter skips what it does not understand, which would let an answer break the
schema, so a schema is first checked against what it does support and anything else is a
400 naming the keyword; what a schema may cost is bounded by the named limits of
:mod:`.schema_bounds` (past one, a 400 naming it). A length or item bound too large for the
grammar to spell out is left open in it, and the answer is checked against the whole
schema (``jsonschema``) when it is done. Conversions are cached per schema text, and run
on a worker thread, never on the event loop (bench/grammar.py measures the conversion and
llama.cpp's parse of the result; bench/grammar_attacks.py the schemas that used to crash).
"""

from __future__ import annotations

import asyncio
import functools
import json
from dataclasses import dataclass
from typing import Any

from aiml.errors import EngineError, InvalidRequest
from aiml.types import OutputFormat

from .schema_bounds import (
    MAX_GRAMMAR_BYTES,
    MAX_SCHEMA_BYTES,
    REPETITION_LIMIT,
    Survey,
    relaxed,
    survey,
)

__all__ = ["Grammar", "check_schema", "grammar_for", "parse_grammar"]


@dataclass(frozen=True, slots=True)
class Grammar:
    """A GBNF grammar, and (when the grammar had to leave bounds open) the schema its
    answers are checked against."""

    text: str
    #: The bounds the grammar leaves open, as the refusal of an answer names them.
    open_bounds: tuple[str, ...] = ()
    schema: str | None = None

    def check(self, answer: str) -> None:
        """Fail (502) an answer that breaks a bound the grammar left open."""
        if not self.open_bounds or self.schema is None:
            return
        broken = _violations(self.schema, answer)
        if broken:
            raise EngineError(
                "the answer breaks the JSON schema where the grammar could not hold it "
                f"(bounds past {REPETITION_LIMIT}: {', '.join(self.open_bounds)}): {broken}"
            )


def check_schema(schema: Any, param: str) -> None:
    """Refuse (400) a schema that uses anything the grammar could not enforce, or that is
    past one of the limits."""
    _checked(schema, param)


def _checked(schema: Any, param: str) -> Survey:
    if not isinstance(schema, dict):
        raise InvalidRequest("the JSON schema must be an object", param=param)
    try:
        found = survey(schema)
    except InvalidRequest as exc:
        raise InvalidRequest(exc.message, param=param) from None
    unsupported = sorted(set(found.unsupported))
    if unsupported:
        raise InvalidRequest(
            "the JSON schema uses what llama.cpp's grammar cannot enforce: "
            + ", ".join(unsupported),
            param=param,
        )
    return found


def grammar_for(output: OutputFormat) -> Grammar:
    """The grammar of ``output`` (checked first; cached per schema). Blocking: call it on a
    worker thread."""
    if output.schema is None:
        return _any_json()
    try:
        return _schema_grammar(output.schema)
    except InvalidRequest as exc:  # name the field this request sent it in
        raise InvalidRequest(exc.message, param=output.param) from None


@functools.cache
def _any_json() -> Grammar:
    from llama_cpp.llama_grammar import JSON_GBNF

    return Grammar(str(JSON_GBNF))


@functools.lru_cache(maxsize=512)
def _schema_grammar(text: str) -> Grammar:
    param = "response_format"  # replaced by grammar_for
    if len(text) > MAX_SCHEMA_BYTES:  # refused unread
        raise InvalidRequest(
            f"the JSON schema is {len(text)} bytes; the most is {MAX_SCHEMA_BYTES}", param=param
        )
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        schema = json.loads(text)
        open_bounds = tuple(_checked(schema, param).open_bounds)
        text_for_grammar = json.dumps(relaxed(schema)) if open_bounds else text
        gbnf = str(json_schema_to_gbnf(text_for_grammar))
    except (AssertionError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise InvalidRequest(
            f"the JSON schema cannot be made a grammar: {exc}", param=param
        ) from None
    except RecursionError:  # the limits should keep it from happening; never a 500
        raise InvalidRequest(
            "the JSON schema is too deeply recursive to be made a grammar", param=param
        ) from None
    if len(gbnf) > MAX_GRAMMAR_BYTES:
        raise InvalidRequest(
            f"the JSON schema makes a grammar of {len(gbnf)} bytes; the most is "
            f"{MAX_GRAMMAR_BYTES}",
            param=param,
        )
    return Grammar(gbnf, open_bounds, text if open_bounds else None)


async def parse_grammar(vocab: Any, grammar: Grammar, output: OutputFormat) -> Any:
    """``grammar`` parsed by llama.cpp for ``vocab`` (a ``native.ParsedGrammar``), on a
    worker thread: a large one takes seconds that the event loop and the scheduler's other
    requests must not wait for. Freed if the request is cancelled meanwhile."""
    from .native import ParsedGrammar

    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(None, ParsedGrammar, vocab, grammar.text)
    try:
        return await asyncio.shield(future)
    except ValueError as exc:
        raise InvalidRequest(
            f"llama.cpp could not parse the grammar of this JSON schema: {exc}",
            param=output.param,
        ) from None
    except asyncio.CancelledError:
        future.add_done_callback(_free_parsed)
        raise


def _free_parsed(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().free()


def _violations(schema: str, answer: str) -> str:
    """What in ``answer`` breaks ``schema`` (empty: nothing). Patterns are not checked here:
    the grammar enforced every one, and Python's regular expressions can backtrack for
    ever on a client's pattern."""
    import jsonschema  # type: ignore[import-untyped]  # no stubs shipped

    try:
        value = json.loads(answer)
    except ValueError:
        return "the answer is not JSON"
    rules = json.loads(schema)
    base = jsonschema.validators.validator_for(rules, jsonschema.Draft202012Validator)
    checker = jsonschema.validators.extend(base, {"pattern": _pattern_not_checked})
    errors = sorted(checker(rules).iter_errors(value), key=lambda e: str(e.json_path))
    return "; ".join(  # the rule broken and where: the value itself may be megabytes
        f"{e.validator} {repr(e.validator_value)[:80]} not met (at {e.json_path})"
        for e in errors[:3]
    )


def _pattern_not_checked(*_: Any) -> None:
    return None
