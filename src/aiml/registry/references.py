"""Parsing and validating model references.

Accepted everywhere a model is named::

    name                 latest registry version (or the engine's own model of that name)
    name@alias           the version an alias points to
    name/3               version 3
    models:/name/3       MLflow's URI form
    models:/name@alias
    models:/name/latest

Names that contain ``:`` or ``/`` (``llama2:7b``, ``library/llama2``) cannot be MLflow
registered model names; they are engine names and pass straight to the engine.

Every accepted name matches a conservative character set, so no reference can smuggle a
path separator sequence (``..``), whitespace or a URL into anything downstream.
"""

from __future__ import annotations

import re

from aiml.errors import InvalidRequest
from aiml.types import ModelRef

__all__ = ["MAX_REFERENCE_LENGTH", "parse_reference", "validate_alias", "validate_registry_name"]

MAX_REFERENCE_LENGTH = 512
_PART = r"[A-Za-z0-9_][A-Za-z0-9_.\-]*"
# A registry name: what MLflow allows, minus whitespace and punctuation we never want to see.
_REGISTRY_NAME = re.compile(rf"{_PART}")
# An engine name: Ollama's [host/][namespace/]model[:tag]; Hugging Face's org/name.
_ENGINE_NAME = re.compile(rf"{_PART}(?:/{_PART}){{0,3}}(?::[A-Za-z0-9_][A-Za-z0-9_.\-]{{0,127}})?")
_ALIAS = re.compile(r"[A-Za-z0-9_\-]{1,255}")
_VERSION = re.compile(r"[1-9][0-9]{0,9}")
_URI_PREFIX = "models:/"


def parse_reference(text: str, *, param: str = "model_name") -> ModelRef:
    """Parse a model reference; a malformed one is an :class:`InvalidRequest` naming ``param``."""
    ref = text.strip()
    if not ref:
        raise InvalidRequest("model reference is empty", param=param)
    if len(ref) > MAX_REFERENCE_LENGTH:
        raise InvalidRequest(
            f"model reference is longer than {MAX_REFERENCE_LENGTH} characters", param=param
        )
    if ref.startswith(_URI_PREFIX):
        return _parse_uri(ref, param)
    if "@" in ref:
        name, _, alias = ref.partition("@")
        return _with_alias(name, alias, ref, param)
    head, sep, tail = ref.rpartition("/")
    if sep and tail.isdigit() and _REGISTRY_NAME.fullmatch(head):
        if not _VERSION.fullmatch(tail):
            raise InvalidRequest(f"{ref!r}: versions are numbered from 1", param=param)
        return ModelRef(name=head, version=int(tail))
    _check_name(ref, ref, param, engine_names=True)
    return ModelRef(name=ref)


def validate_registry_name(name: str, *, param: str = "registered_name") -> str:
    """A name the registry may hold (no ``/``, ``:``, whitespace or ``..``)."""
    _check_name(name, name, param, engine_names=False)
    return name


def validate_alias(alias: str, *, param: str = "alias") -> str:
    if not _ALIAS.fullmatch(alias):
        raise InvalidRequest(
            f"alias {alias!r} is invalid: use letters, digits, '_' and '-'", param=param
        )
    if alias == "latest" or re.fullmatch(r"v[0-9]+", alias):
        raise InvalidRequest(f"alias {alias!r} is reserved by MLflow", param=param)
    return alias


def _parse_uri(ref: str, param: str) -> ModelRef:
    body = ref[len(_URI_PREFIX) :]
    if "@" in body:
        name, _, alias = body.partition("@")
        return _with_alias(name, alias, ref, param)
    name, sep, selector = body.partition("/")
    if not sep or not selector:
        raise InvalidRequest(
            f"{ref!r} is not a model URI: use models:/<name>/<version> or models:/<name>@<alias>",
            param=param,
        )
    _check_name(name, ref, param, engine_names=False)
    if selector == "latest":
        return ModelRef(name=name)
    if _VERSION.fullmatch(selector):
        return ModelRef(name=name, version=int(selector))
    raise InvalidRequest(
        f"{ref!r}: {selector!r} is not a version number (stages are not supported; use an alias)",
        param=param,
    )


def _with_alias(name: str, alias: str, ref: str, param: str) -> ModelRef:
    _check_name(name, ref, param, engine_names=False)
    if alias == "latest":
        return ModelRef(name=name)
    validate_alias(alias, param=param)
    return ModelRef(name=name, alias=alias)


def _check_name(name: str, ref: str, param: str, *, engine_names: bool) -> None:
    pattern = _ENGINE_NAME if engine_names else _REGISTRY_NAME
    if pattern.fullmatch(name) and ".." not in name and len(name) <= 256:
        return
    allowed = "letters, digits, '_', '.', '-'" + (
        ", and ':' or '/' for engine names" if engine_names else ""
    )
    raise InvalidRequest(
        f"model reference {ref!r} is malformed: a name uses {allowed}", param=param
    )
