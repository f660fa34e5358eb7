"""Properties of the parsers and validators that stand between user input and everything else."""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from aiml.api.ollama_schemas import EmbedBody, sampling
from aiml.api.openai_schemas import ChatCompletionRequest
from aiml.api.schemas import InferRequest
from aiml.engines.remote.ollama import is_valid_ollama_name, normalize_ollama_name
from aiml.errors import InvalidRequest
from aiml.inference.tasks.base import GenerationOptions, text_problem
from aiml.registry.artifacts import safe_relpath
from aiml.registry.references import parse_reference, validate_alias
from aiml.types import ModelRef

names = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,40}", fullmatch=True).filter(
    lambda n: ".." not in n
)
aliases = st.from_regex(r"[A-Za-z0-9_\-]{1,20}", fullmatch=True).filter(
    lambda a: a != "latest" and not re.fullmatch(r"v[0-9]+", a)
)
versions = st.integers(min_value=1, max_value=10**9)
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-/:]*")


@given(name=names, alias=aliases, version=versions)
def test_every_written_form_parses_to_what_it_says(name: str, alias: str, version: int) -> None:
    assert parse_reference(name) == ModelRef(name)
    assert parse_reference(f"{name}@{alias}") == ModelRef(name, alias=alias)
    assert parse_reference(f"{name}/{version}") == ModelRef(name, version=version)
    assert parse_reference(f"models:/{name}/{version}") == ModelRef(name, version=version)
    assert parse_reference(f"models:/{name}@{alias}") == ModelRef(name, alias=alias)
    assert parse_reference(f"models:/{name}/latest") == ModelRef(name)


@settings(max_examples=500)
@given(text=st.text(max_size=80))
@example("../../etc/passwd")
@example("models:/../x/1")
@example("a\x00b")
@example("http://169.254.169.254/latest")
def test_any_text_is_a_safe_reference_or_a_422(text: str) -> None:
    try:
        ref = parse_reference(text)
    except InvalidRequest as exc:
        assert exc.param == "model_name"
        return
    assert _SAFE_NAME.fullmatch(ref.name)
    assert ".." not in ref.name
    assert "://" not in ref.name
    assert parse_reference(str(ref)) == ref  # what we print reads back the same


@settings(max_examples=500)
@given(text=st.text(max_size=60))
@example("a/../../b")
@example("/etc/passwd")
@example("a\\b")
def test_model_file_paths_never_leave_their_folder(text: str) -> None:
    root = Path("/srv/cache/model/1")
    try:
        relative = safe_relpath(text)
    except InvalidRequest:
        return
    assert (root / relative).resolve().is_relative_to(root)


@given(
    name=st.from_regex(
        r"[a-z0-9][a-z0-9._\-]{0,20}(/[a-z0-9][a-z0-9._\-]{0,20})?(:[a-z0-9][a-z0-9._\-]{0,10})?",
        fullmatch=True,
    )
)
def test_ollama_names_normalise_once(name: str) -> None:
    normal = normalize_ollama_name(name)
    assert normalize_ollama_name(normal) == normal
    assert normal.rsplit("/", 1)[-1].count(":") == 1
    if ":" not in name.rsplit("/", 1)[-1]:
        assert normal == f"{name}:latest"


@given(text=st.text(max_size=60))
def test_ollama_name_validation_rejects_paths_and_urls(text: str) -> None:
    if is_valid_ollama_name(text):
        assert ".." not in text
        assert "://" not in text
        assert not text.startswith("/")
        assert not any(c.isspace() for c in text)


@given(alias=st.text(max_size=30))
def test_aliases_are_plain_words(alias: str) -> None:
    try:
        validate_alias(alias)
    except InvalidRequest:
        return
    assert re.fullmatch(r"[A-Za-z0-9_\-]{1,255}", alias)
    assert alias != "latest"


@given(
    options=st.dictionaries(
        st.text(max_size=20),
        st.one_of(
            st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5)
        ),
        max_size=6,
    )
)
def test_ollama_options_map_or_are_refused_by_name(options: dict[str, object]) -> None:
    try:
        params = sampling(options)
    except InvalidRequest as exc:
        assert exc.param is not None
        assert exc.param.startswith("options")
        return
    if params.max_tokens is not None:
        assert params.max_tokens >= 1
    if params.temperature is not None:
        assert 0 <= params.temperature <= 2


def _is_clean(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


#: Any code point, lone surrogates included (hypothesis leaves them out by default).
any_text = st.text(st.characters(exclude_categories=()), max_size=20)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300)
@given(value=json_values)
@example("\ud800")
@example({"a": ["ok", {"b\x00": 1}]})
def test_text_is_refused_exactly_when_some_string_in_it_is_not_clean(value: object) -> None:
    strings: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            strings.append(item)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            strings.extend(item)
            stack.extend(item.values())
    problem = text_problem(value)
    assert (problem is None) == all(_is_clean(s) for s in strings)
    if problem is not None:
        problem.encode("utf-8")  # the reason itself never quotes the bad text


@settings(max_examples=200)
@given(text=any_text)
def test_every_request_model_refuses_unclean_text_as_a_validation_error(text: str) -> None:
    bodies = [
        (InferRequest, {"task": "chat", "engine": "e", "model_name": "m",
                        "data": {"messages": [{"role": "user", "content": text}]}}),
        (ChatCompletionRequest, {"model": "m", "messages": [{"role": "user", "content": text}]}),
        (EmbedBody, {"model": "m", "input": [text]}),
        (GenerationOptions, {"stop": [text]}),
    ]  # fmt: skip
    for model, body in bodies:
        try:
            model.model_validate(body)
        except ValidationError as exc:
            assert not _is_clean(text)
            assert exc.errors()[0]["type"] == "invalid_text"
            continue
        assert _is_clean(text)
