"""Which engine and model a name means on the OpenAI- and Ollama-compatible surfaces.

Those requests carry only a model name, no engine. A registered name's version says its
engine (its ``inference_engine`` tag); ``<engine>/<name>`` addresses an engine's own model
directly (``ollama/llama2:7b``). On the Ollama surface the ``name:tag`` convention maps onto
the registry: ``name:latest`` is the latest version, ``name:3`` version 3, ``name:prod`` the
alias ``prod``; a name the registry does not hold goes to the Ollama engine as it is.
"""

from __future__ import annotations

from aiml.errors import InvalidRequest, ModelNotFound
from aiml.registry.references import parse_reference, validate_alias
from aiml.types import ModelRef

from .key_rules import check_key, key_refusal
from .router import TaskRouter

__all__ = ["ollama_target", "openai_target"]


async def openai_target(router: TaskRouter, model: str) -> tuple[str, ModelRef]:
    """(engine, reference) for an OpenAI ``model`` field."""
    direct = _engine_prefixed(router, model)
    if direct is not None:
        return direct
    ref = parse_reference(model, param="model")
    check_key(ref)  # before the registry is asked: no 404 for a name outside the key's rules
    return await router.resolver.engine_for(ref), ref


async def ollama_target(router: TaskRouter, name: str) -> tuple[str, ModelRef]:
    """(engine, reference) for an Ollama ``model`` field."""
    direct = _engine_prefixed(router, name)
    if direct is not None:
        return direct
    ref = parse_reference(name, param="model")
    if ref.version is not None or ref.alias is not None:  # aiml's own forms work here too
        check_key(ref)
        return await router.resolver.engine_for(ref), ref
    base, _, tag = name.partition(":")
    _check_key_before_lookups(ref, base, tag)
    plain = ModelRef(base)
    if plain.registry_eligible and await router.resolver.version(plain) is not None:
        tagged = _tagged(base, tag)
        return await router.resolver.engine_for(tagged), tagged
    if "ollama" not in router.engines:
        raise ModelNotFound(f"model {name!r} is not registered in the registry", param="model")
    return "ollama", ref


def _check_key_before_lookups(ref: ModelRef, base: str, tag: str) -> None:
    """``name:tag`` is the registry's ``name@tag`` (or ``name/3``), or else the engine's own
    model of that name: refused if the key may use neither."""
    try:
        tagged: ModelRef | None = _tagged(base, tag)
    except InvalidRequest:  # not a registry tag: only the engine's own name is meant
        tagged = None
    if key_refusal(ref) is not None and (tagged is None or key_refusal(tagged) is not None):
        check_key(tagged or ref)


def _engine_prefixed(router: TaskRouter, name: str) -> tuple[str, ModelRef] | None:
    engine, sep, rest = name.partition("/")
    if not sep or engine not in (*router.engines, *router.unavailable):
        return None
    router.engine(engine)  # 422 when configured but not installed
    ref = parse_reference(rest, param="model")
    check_key(ref)
    return engine, ref


def _tagged(name: str, tag: str) -> ModelRef:
    if tag in ("", "latest"):
        return ModelRef(name)
    if tag.isdigit():
        if int(tag) < 1:
            raise InvalidRequest(f"{name}:{tag}: versions are numbered from 1", param="model")
        return ModelRef(name, version=int(tag))
    return ModelRef(name, alias=validate_alias(tag, param="model"))
