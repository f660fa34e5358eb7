"""What the ``keys``, ``teams``, ``usage`` and ``audit`` commands share: their options,
aiml's database opened (and migrated), a change written to the audit log, the options read
into the keywords of :class:`~aiml.teams.key_store.KeyStore`."""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.markup import escape

from aiml.errors import AimlError
from aiml.settings import Settings
from aiml.teams.keys import ApiKey, KeyLimits, ModelRules, Role

from .common import err

if TYPE_CHECKING:  # SQLAlchemy's modules load only for a command that opens the database
    from aiml.teams.audit import AuditLog
    from aiml.teams.key_store import KeyStore
    from aiml.teams.usage import UsageStore

T = TypeVar("T")

_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,128}$")  # as the admin API takes them
_SURFACES = ("inference", "openai", "ollama")
_RULES = ("models", "tasks", "surfaces")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
LIMITS = tuple(f.name for f in fields(KeyLimits))
UNSETTABLE = ("team", "owner", "expiry", *_RULES, "meta", *LIMITS)

Name = Annotated[str, typer.Argument(help="The key's name")]
TeamName = Annotated[str, typer.Argument(help="The team's name")]
RoleOpt = Annotated[Role | None, typer.Option(help="user: the serving routes; admin: all")]
TeamOpt = Annotated[str | None, typer.Option(help="Its team (shares the team's limits)")]
Owner = Annotated[str | None, typer.Option(help="Who it is for (a person, a service)")]
Models = Annotated[list[str] | None, typer.Option(
    help="Registry names it may use, exact or globs, each optionally @alias or @version "
    "(chat-*@production); repeatable or comma-separated; none: every model")]  # fmt: skip
Tasks = Annotated[list[str] | None, typer.Option(help="Tasks it may use; none: every task")]
Surfaces = Annotated[list[str] | None, typer.Option(help="inference, openai, ollama; none: all")]
Rpm = Annotated[int | None, typer.Option(min=1, help="Requests per minute (all fronts)")]
Tpm = Annotated[int | None, typer.Option(min=1, help="Tokens per minute (all fronts)")]
Concurrent = Annotated[int | None, typer.Option(min=1, help="Requests at once (per front)")]
DailyTokens = Annotated[int | None, typer.Option(min=0, help="Tokens per UTC day")]
MonthlyTokens = Annotated[int | None, typer.Option(min=0, help="Tokens per UTC month")]
DailyCost = Annotated[float | None, typer.Option(min=0, help="Cost per UTC day (versions' price)")]
MonthlyCost = Annotated[float | None, typer.Option(min=0, help="Cost per UTC month")]
Expires = Annotated[str | None, typer.Option(help="Expires after: 30d, 12h, 90m, 3600s")]
Meta = Annotated[list[str] | None, typer.Option(help="Metadata key=value, repeatable")]
Unset = Annotated[list[str] | None, typer.Option(help=f"Clear: {', '.join(UNSETTABLE)}")]


@dataclass
class Database:
    keys: KeyStore
    audit: AuditLog
    usage: UsageStore


@contextlib.contextmanager
def database() -> Iterator[Database]:
    """aiml's database, migrated to the newest schema; errors reported plainly."""
    import sqlalchemy as sa

    from aiml.teams.audit import AuditLog
    from aiml.teams.database import open_database
    from aiml.teams.key_store import KeyStore
    from aiml.teams.usage import UsageStore

    url = Settings().database
    try:
        engine = open_database(url)
    except sa.exc.SQLAlchemyError as exc:
        where = sa.make_url(url).render_as_string(hide_password=True)
        err.print(f"[red]cannot open aiml's database {escape(where)}: {escape(str(exc))}[/]")
        raise typer.Exit(1) from None
    try:
        yield Database(KeyStore(engine), AuditLog(engine), UsageStore(engine))
    except AimlError as exc:
        fail(exc)
    finally:
        engine.dispose()


def fail(exc: AimlError) -> NoReturn:
    err.print(f"[red]{exc.status_code} {exc.code}: {escape(exc.message)}[/]")
    raise typer.Exit(1) from None


def actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container's user)
        user = str(os.getuid())
    return f"cli:{user}@{socket.gethostname()}"[:160]


def change(action: str, target: str, status: int, do: Callable[[KeyStore], T], **detail: Any) -> T:
    """Run one change and write it to the audit log, refused or not."""
    from aiml.teams.audit import AuditEntry

    with database() as db:
        try:
            done = do(db.keys)
        except AimlError as exc:
            refused = {**detail, "error": exc.message}
            db.audit.append(AuditEntry(actor(), action, target, exc.status_code, "cli", refused))
            fail(exc)
        db.audit.append(AuditEntry(actor(), action, target, status, "cli", detail))
        return done


def check_name(name: str, what: str) -> str:
    if not _NAME.match(name):
        raise typer.BadParameter(f"{what} names are 1-128 of A-Z a-z 0-9 . _ @ -")
    return name


def seconds(text: str, option: str, *, zero: bool = False) -> float:
    match = _DURATION.match(text.strip().lower())
    if match is None or (float(match[1]) == 0 and not zero):
        raise typer.BadParameter("a duration such as 30d, 12h, 90m or 3600s", param_hint=option)
    return float(match[1]) * _UNITS[match[2]]


def listed(values: list[str] | None) -> tuple[str, ...] | None:
    """Repeated or comma-separated values; ``None`` when the option was not given."""
    if values is None:
        return None
    return tuple(part.strip() for value in values for part in value.split(",") if part.strip())


def pairs(values: list[str] | None) -> dict[str, str]:
    pairs = [item.partition("=") for item in values or []]
    if bad := [k + s + v for k, s, v in pairs if not (k and s)]:
        raise typer.BadParameter(f"{bad[0]!r} is not key=value", param_hint="--meta")
    return {key: value for key, _, value in pairs}


def unset_of(values: list[str] | None, allowed: tuple[str, ...]) -> set[str]:
    unset = set(values or ())
    if unknown := unset - set(allowed):
        raise typer.BadParameter(f"{', '.join(sorted(unknown))}: not one of {', '.join(allowed)}")
    return unset


def merged_limits(current: KeyLimits, given: dict[str, Any], unset: set[str]) -> KeyLimits:
    values = current.as_dict()
    values.update({k: given[k] for k in LIMITS if given.get(k) is not None})
    values.update({k: None for k in unset if k in LIMITS})
    return KeyLimits.of(values)


def key_changes(current: ApiKey, given: dict[str, Any], unset: set[str]) -> dict[str, Any]:
    """What the options (``given``) change of ``current``: the keywords of create_key and
    update_key. Limits change one by one, lists as a whole, metadata merged."""
    changes: dict[str, Any] = {f: None for f in ("team", "owner") if f in unset}
    changes.update({f: given[f] for f in ("role", "team", "owner") if given[f] is not None})
    if given["team"] is not None:
        check_name(given["team"], "team")
    parts = {f: () if f in unset else listed(given[f]) for f in _RULES}
    if wrong := set(parts["surfaces"] or ()) - set(_SURFACES):
        raise typer.BadParameter(f"surfaces are {', '.join(_SURFACES)}, not {', '.join(wrong)}")
    if any(v is not None for v in parts.values()):
        old = current.rules
        changes["rules"] = ModelRules(
            *(getattr(old, f) if v is None else v for f, v in parts.items())
        )
    if (limits := merged_limits(current.limits, given, unset)) != current.limits:
        changes["limits"] = limits
    if given["meta"] is not None or "meta" in unset:
        changes["meta"] = {**({} if "meta" in unset else current.meta), **pairs(given["meta"])}
    if given["expires_in"] is not None:
        changes["expires_at"] = time.time() + seconds(given["expires_in"], "--expires-in")
    elif "expiry" in unset:
        changes["expires_at"] = None
    return changes


def describe(key: ApiKey) -> str:
    team = f"team {key.team}, " if key.team else ""
    return escape(f"{key.role}, {team}{rules_text(key.rules)}, limits: {limits_text(key.limits)}")


def rules_text(rules: ModelRules) -> str:
    text = ", ".join(rules.models) or "all models"
    for label, values in (("tasks", rules.tasks), ("surfaces", rules.surfaces)):
        text += f"; {label} {', '.join(values)}" if values else ""
    return text


def limits_text(limits: KeyLimits) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in limits.as_dict().items() if v is not None) or "none"


def when(at: float | None) -> str:
    return (
        "" if at is None else dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    )
