"""Who may call what, and who is calling.

* :data:`ROUTE_ACCESS`: the one path table of open, user and admin routes
  (:func:`access_of`), which the Authentication middleware enforces and the OpenAPI
  schema's security is drawn from.
* :class:`Caller`: who sent a request (its key, admin or not), left by the middleware in
  the request's ASGI scope state; routes that decide by key (stored responses, Ollama's
  load and unload, listings) read it with :func:`caller_of`. The keys themselves, from the
  environment and the database, are :mod:`aiml.teams`'s (``KeyDirectory``).
* :func:`surface_of`: which surface a path is on (what a key's ``surfaces`` rule names).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from starlette.types import Scope

from aiml.teams.keys import ApiKey

__all__ = [
    "ANONYMOUS",
    "NO_KEYS",
    "ROUTE_ACCESS",
    "Access",
    "Caller",
    "RouteRule",
    "access_of",
    "caller_of",
    "found_caller",
    "set_caller",
    "surface_of",
]


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

    ``key``: the caller's key; ``None`` when no keys are configured, or on an open route,
    where no key is asked for. ``admin``: may do what admin keys may: true for admin keys,
    and for everyone when no keys are configured (then every route is open).
    """

    key: ApiKey | None
    admin: bool

    @property
    def name(self) -> str | None:
        """The key's name where aiml shows who asked (traces, usage, audit, logs); an
        environment key's is ``key-`` and its digest's first 12 hex digits, never the key."""
        return self.key.name if self.key is not None else None

    @property
    def owner(self) -> str | None:
        """What owns the caller's stored responses and sticky choices: an environment key's
        digest, a database key's name (which outlives rotations of its secret)."""
        if self.key is None:
            return None
        return self.key.digest if self.key.from_environment else "key:" + self.key.name

    def may_list(self, name: str, alias: str | None) -> bool:
        """Whether a listing shows this key ``name`` (its latest) or ``name@alias``."""
        return self.key is None or self.key.rules.allows(name, alias)

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


def found_caller(scope: Scope) -> Caller | None:
    """The caller, if the Authentication middleware let the request through."""
    caller = scope.get("state", {}).get(_STATE_KEY)
    return caller if isinstance(caller, Caller) else None


def caller_of(scope: Scope) -> Caller:
    caller = scope.get("state", {}).get(_STATE_KEY)
    if not isinstance(caller, Caller):  # fail closed: never guess who is asking
        raise RuntimeError("the Authentication middleware did not run for this request")
    return caller


#: Path prefixes and the surface each is (a key's ``surfaces`` rule names them).
_SURFACES = (("/inference/", "inference"), ("/v1/", "openai"), ("/api/", "ollama"))


def surface_of(path: str) -> str | None:
    for prefix, surface in _SURFACES:
        if path.startswith(prefix):
            return surface
    return None
