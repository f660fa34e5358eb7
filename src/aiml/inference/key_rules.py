"""What the request's key may use (:mod:`aiml.teams`'s ``ModelRules``), checked as soon as
a model reference is parsed: before any registry lookup (a key must not learn, from a 404,
which names and aliases exist outside its rules), and again by the gate once the call is
located (its task known)."""

from __future__ import annotations

from aiml.errors import Forbidden
from aiml.teams.context import request_key
from aiml.types import ModelRef

__all__ = ["check_key", "key_refusal"]


def key_refusal(ref: ModelRef, task: str | None = None) -> str | None:
    """Why the request's key may not use ``ref`` (for ``task``), or ``None``."""
    key = request_key.get()
    if key is None:
        return None
    why = key.rules.model_refusal(ref, task)
    return f"key {key.name!r} may not: {why}" if why is not None else None


def check_key(ref: ModelRef, task: str | None = None) -> None:
    """Refuse, naming the rule, a model or task the request's key may not use."""
    why = key_refusal(ref, task)
    if why is not None:
        raise Forbidden(why)
