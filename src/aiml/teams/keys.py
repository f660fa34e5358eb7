"""Keys as aiml keeps them: who a key is, what it may use, what it may spend.

A key's secret is shown once, at creation or rotation, and kept only as its SHA-256
digest. What a key may use (:class:`ModelRules`) is checked where a request's model is
known (the request gate); its limits (:class:`KeyLimits`, and its team's) where the request
enters (the API's quota middleware).
"""

from __future__ import annotations

import fnmatch
import hashlib
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from aiml.types import ModelRef

__all__ = [
    "SECRET_PREFIX",
    "ApiKey",
    "KeyLimits",
    "ModelRules",
    "Role",
    "Team",
    "new_secret",
    "secret_digest",
]

#: Every secret aiml makes starts so (secret scanners and people can tell what it is).
SECRET_PREFIX = "aiml-"


class Role(StrEnum):
    """A user key calls the serving routes; an admin key also the admin routes."""

    USER = "user"
    ADMIN = "admin"


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ModelRules:
    """What a key may use; an empty list allows everything of its kind.

    ``models``: registry names, exact or globs, each optionally with ``@`` and the aliases
    or versions it may use (``chat-*@production``, ``embed@3``, ``llama@*``); a name
    without ``@`` allows every alias and version of it, and its latest. ``tasks``: task
    names (``text-generation``, ``embeddings``...). ``surfaces``: ``inference`` (aiml's
    own), ``openai`` (/v1), ``ollama`` (/api).
    """

    models: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()
    surfaces: tuple[str, ...] = ()

    def model_refusal(self, ref: ModelRef, task: str | None = None) -> str | None:
        """Why this key may not use ``ref`` for ``task`` (the rule, named), or ``None``."""
        if self.tasks and task is not None and task not in self.tasks:
            return f"task {task!r} is not among the key's tasks ({', '.join(self.tasks)})"
        if self.models and not self.allows(ref.name, _selector(ref)):
            return f"model {str(ref)!r} is not among the key's models ({', '.join(self.models)})"
        return None

    def surface_refusal(self, surface: str | None) -> str | None:
        if self.surfaces and surface is not None and surface not in self.surfaces:
            allowed = ", ".join(self.surfaces)
            return f"surface {surface!r} is not among the key's surfaces ({allowed})"
        return None

    def allows(self, name: str, selector: str | None) -> bool:
        """``selector``: the alias or version number asked for (``None``: the latest)."""
        for rule in self.models:
            pattern, at, which = rule.partition("@")
            if not fnmatch.fnmatchcase(name, pattern):
                continue
            if not at or (selector is not None and fnmatch.fnmatchcase(selector, which)):
                return True
        return not self.models

    def as_dict(self) -> dict[str, list[str]]:
        return {f.name: list(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def of(cls, value: Mapping[str, Iterable[str]] | None) -> ModelRules:
        value = value or {}
        return cls(*(tuple(value.get(f.name, ())) for f in fields(cls)))


def _selector(ref: ModelRef) -> str | None:
    if ref.alias is not None:
        return ref.alias
    return str(ref.version) if ref.version is not None else None


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """A key's (or a team's) limits; ``None``: no limit.

    Per minute (fixed UTC minutes, shared by every front): ``rpm`` requests,
    ``tpm`` tokens (input and output). At once: ``concurrent`` requests. Budgets (UTC days
    and months): ``daily_tokens``, ``monthly_tokens``, and in money (the versions' prices,
    their ``aiml.price.*`` tags) ``daily_cost``, ``monthly_cost``.
    """

    rpm: int | None = None
    tpm: int | None = None
    concurrent: int | None = None
    daily_tokens: int | None = None
    monthly_tokens: int | None = None
    daily_cost: float | None = None
    monthly_cost: float | None = None

    def __bool__(self) -> bool:  # asked on every request: no dataclasses.fields() here
        return (
            self.rpm is not None
            or self.tpm is not None
            or self.concurrent is not None
            or (self.budgeted)
        )

    @property
    def budgeted(self) -> bool:
        return (
            self.daily_tokens is not None
            or self.monthly_tokens is not None
            or self.daily_cost is not None
            or self.monthly_cost is not None
        )

    def as_dict(self) -> dict[str, float | int | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def of(cls, value: Mapping[str, Any] | None) -> KeyLimits:
        value = value or {}
        return cls(**{f.name: value.get(f.name) for f in fields(cls)})


@dataclass(frozen=True, slots=True)
class Team:
    name: str
    limits: KeyLimits = KeyLimits()
    meta: Mapping[str, Any] = field(default_factory=dict)
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as the fronts know it (never its secret)."""

    name: str
    digest: str
    prefix: str
    role: Role = Role.USER
    team: str | None = None
    owner: str | None = None
    rules: ModelRules = ModelRules()
    limits: KeyLimits = KeyLimits()
    meta: Mapping[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    expires_at: float | None = None
    revoked_at: float | None = None
    previous_digest: str | None = None
    previous_until: float | None = None
    #: A key from the environment (AIML_API_KEYS, AIML_ADMIN_KEYS): not in the database.
    from_environment: bool = False

    @property
    def admin(self) -> bool:
        return self.role is Role.ADMIN

    def usable(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def status(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if not self.usable(now) else "active"

    def as_dict(self, now: float) -> dict[str, Any]:
        """What the admin API shows of a key (never the digest whole)."""
        return {
            "name": self.name,
            "prefix": self.prefix,
            "role": str(self.role),
            "team": self.team,
            "owner": self.owner,
            "rules": self.rules.as_dict(),
            "limits": self.limits.as_dict(),
            "metadata": dict(self.meta),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "status": self.status(now),
            "source": "environment" if self.from_environment else "database",
        }
