"""Model references: every accepted form, and malformed ones named as 422s."""

from __future__ import annotations

import pytest

from aiml.errors import InvalidRequest
from aiml.registry.references import parse_reference, validate_alias, validate_registry_name
from aiml.types import ModelRef


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("llama2-7b-chat", ModelRef("llama2-7b-chat")),
        ("llama2-7b-chat@production", ModelRef("llama2-7b-chat", alias="production")),
        ("llama2-7b-chat/3", ModelRef("llama2-7b-chat", version=3)),
        ("models:/llama2-7b-chat/3", ModelRef("llama2-7b-chat", version=3)),
        ("models:/llama2-7b-chat@production", ModelRef("llama2-7b-chat", alias="production")),
        ("models:/llama2-7b-chat/latest", ModelRef("llama2-7b-chat")),
        ("llama2-7b-chat@latest", ModelRef("llama2-7b-chat")),
        ("  padded  ", ModelRef("padded")),
        # engine names pass through whole
        ("llama2:7b", ModelRef("llama2:7b")),
        ("library/llama2:13b-q4_0", ModelRef("library/llama2:13b-q4_0")),
        ("hf.co/org/model:Q4_K_M", ModelRef("hf.co/org/model:Q4_K_M")),
        ("user/model", ModelRef("user/model")),
    ],
)
def test_accepted_forms(text: str, expected: ModelRef) -> None:
    assert parse_reference(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "a b",
        "../etc/passwd",
        "name/../../x",
        "/abs",
        "name@",
        "name@bad alias",
        "name@v3",
        "llama2:7b@prod",
        "models:/name",
        "models:/name/Production",
        "models:/na:me/1",
        "name/0",
        "http://evil.example/x",
        "x" * 600,
        "name;rm -rf",
    ],
)
def test_malformed_is_a_422_naming_the_field(text: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_reference(text, param="model_name")
    assert caught.value.status_code == 422
    assert caught.value.param == "model_name"


def test_pinned_and_registry_eligibility() -> None:
    assert parse_reference("m/2").pinned
    assert not parse_reference("m@prod").pinned
    assert parse_reference("m").registry_eligible
    assert not parse_reference("m:7b").registry_eligible
    assert str(parse_reference("models:/m/2")) == "m/2"


def test_name_and_alias_validators() -> None:
    assert validate_registry_name("ok-name_1.0") == "ok-name_1.0"
    for bad in ("with:colon", "with/slash", "..", "sp ace"):
        with pytest.raises(InvalidRequest):
            validate_registry_name(bad)
    assert validate_alias("production") == "production"
    for bad in ("latest", "v1", "a b", ""):
        with pytest.raises(InvalidRequest):
            validate_alias(bad)
