"""Who may call what, and who is calling.

* :data:`ROUTE_ACCESS`: the one path table of open, user and admin routes
  (:func:`access_of`), which the Authentication middleware enforces and the OpenAPI
  schema's security is drawn from.
* :class:`KeyRing`: bearer keys, kept only as SHA-256 digests, compared in constant time.
* :class:`Caller`: who sent a request (its key's digest, admin or not), left by the
  middleware in the request's ASGI scope state; routes that decide by key (stored
  responses, Ollama's load and unload) read it with :func:`caller_of`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from starlette.types import Scope

__all__ = [
    "ANONYMOUS",
    "NO_KEYS",
    "ROUTE_ACCESS",
    "Access",
    "Caller",
    "KeyRing",
    "RouteRule",
    "access_of",
    "caller_of",
    "key_digest",
    "set_caller",
]


class KeyRing:
    """A set of keys; the plain keys are dropped as soon as they are hashed."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [key_digest(key) for key in keys if key]

    @classmethod
    def from_setting(cls, value: str) -> KeyRing:
        return cls(part.strip() for part in value.split(","))

    def __bool__(self) -> bool:
        return bool(self._digests)

    def accepts(self, key: str) -> bool:
        return self.holds(key_digest(key))

    def holds(self, digest: bytes) -> bool:
        # Every digest is compared, match or not, so timing says nothing about which key.
        matches = [hmac.compare_digest(digest, known) for known in self._digests]
        return any(matches)


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class Access(StrEnum):
    """What a route needs: no key, a user (API) key (or an admin key), an admin key."""

    OPEN = "open"
    USER = "user"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class RouteRule:
    """A method (``None``: any) and a path, or a path prefix ending in ``*``."""

    method: str | None
    path: str
    access: Access

    def __str__(self) -> str:
        return f"{self.method} {self.path}" if self.method else self.path


#: Who may call what: every route or route group that needs no key or an admin key; every
#: other route needs a user (or admin) key. The OpenAPI schema's security is drawn from it,
#: and the README's key table is this table (tests/api/test_security.py compares them).
ROUTE_ACCESS: tuple[RouteRule, ...] = (
    RouteRule(None, "/health/live", Access.OPEN),
    RouteRule(None, "/health/ready", Access.OPEN),
    RouteRule(None, "/metrics", Access.OPEN),
    RouteRule(None, "/openapi.json", Access.OPEN),
    RouteRule(None, "/docs", Access.OPEN),
    RouteRule(None, "/docs/*", Access.OPEN),
    RouteRule(None, "/redoc", Access.OPEN),
    # The console (``/ui``): its page and files hold no data; every call they make carries a key.
    RouteRule(None, "/ui", Access.OPEN),
    RouteRule(None, "/ui/", Access.OPEN),
    RouteRule(None, "/ui/static/*", Access.OPEN),
    # MLflow's webhooks: MLflow sends no key; the delivery's HMAC signature is checked instead.
    RouteRule("POST", "/hooks/mlflow", Access.OPEN),
    # What changes the service: registering, aliases, the cache; loading, unloading and
    # fetching model files outside a request (a user's request loads what it uses).
    RouteRule(None, "/admin/*", Access.ADMIN),
    RouteRule("POST", "/models/register_ollama", Access.ADMIN),
    RouteRule("PUT", "/models/registered_in_mlflow/*", Access.ADMIN),
    RouteRule("DELETE", "/models/registered_in_mlflow/*", Access.ADMIN),
    RouteRule("POST", "/models/registered_in_mlflow/*", Access.ADMIN),  # a canary's promotion
    RouteRule("POST", "/inference/clear-cache", Access.ADMIN),
    RouteRule("POST", "/api/pull", Access.ADMIN),
)
# Looked up on every request: one dict lookup by path, one C-level prefix test; only a
# path under a prefix walks the (few) prefix rules.
_EXACT: dict[str, dict[str | None, Access]] = {}
for _rule in ROUTE_ACCESS:
    if not _rule.path.endswith("*"):
        _EXACT.setdefault(_rule.path, {})[_rule.method] = _rule.access
_PREFIX_RULES = tuple((r.method, r.path[:-1], r.access) for r in ROUTE_ACCESS if r.path[-1] == "*")
_PREFIXES = tuple(prefix for _, prefix, _ in _PREFIX_RULES)


def access_of(method: str, path: str) -> Access:
    """Who may call a route: anyone, holders of an API (or admin) key, admin keys only."""
    exact = _EXACT.get(path)
    if exact is not None:
        found = exact.get(None) or exact.get(method)
        if found is not None:
            return found
    if path.startswith(_PREFIXES):
        for rule_method, prefix, access in _PREFIX_RULES:
            if path.startswith(prefix) and rule_method in (None, method):
                return access
    return Access.USER


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request, as the Authentication middleware found it.

    ``key``: the hex SHA-256 digest of the caller's bearer key (what owns its stored
    responses); ``None`` when no keys are configured, or on an open route, where no key is
    asked for. ``admin``: may do what admin keys may: true for admin keys, and for everyone
    when no keys are configured (then every route is open).
    """

    key: str | None
    admin: bool

    @property
    def name(self) -> str | None:
        """The key's name where aiml shows who asked (traces, feedback, logs): ``key-`` and
        the digest's first 12 hex digits, never the key; ``None`` without a key."""
        return f"key-{self.key[:12]}" if self.key else None

    @property
    def access(self) -> Literal["open", "admin", "user", "anonymous"]:
        if self.key is None:
            return "open" if self.admin else "anonymous"
        return "admin" if self.admin else "user"


#: Every caller when no keys are configured.
NO_KEYS = Caller(key=None, admin=True)
#: A caller on an open route when keys are configured (no key was asked for).
ANONYMOUS = Caller(key=None, admin=False)

_STATE_KEY = "aiml.caller"


def set_caller(scope: Scope, caller: Caller) -> None:
    # The scope's "state" is the server's per-request copy of the lifespan state (ASGI).
    scope.setdefault("state", {})[_STATE_KEY] = caller


def caller_of(scope: Scope) -> Caller:
    caller = scope.get("state", {}).get(_STATE_KEY)
    if not isinstance(caller, Caller):  # fail closed: never guess who is asking
        raise RuntimeError("the Authentication middleware did not run for this request")
    return caller
