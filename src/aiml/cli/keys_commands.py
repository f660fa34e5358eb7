"""``aiml keys``, ``aiml teams``, ``aiml usage``, ``aiml audit``: keys as data, on aiml's own
database directly (AIML_DATABASE_URL, or aiml.db in AIML_HOME), so no service need run.

Running fronts take a change when they next poll the keys' revision (AIML_KEYS_REFRESH_S);
a new key works at once (a front looks a key it does not know up in the database). Every
change is written to the audit log as ``cli:<user>@<host>`` (client ``cli``), with the
status the same action has through the admin API: 201 created, 200 changed, the error's
(404, 409, 422) when refused, so one query finds the refusals of both.
"""

from __future__ import annotations

import csv
import json
import re
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from aiml.errors import Conflict, InvalidRequest, NotFound
from aiml.settings import Settings
from aiml.teams.keys import ApiKey, Role, Team

from .common import console, err
from .keys_common import (
    LIMITS,
    UNSETTABLE,
    Concurrent,
    DailyCost,
    DailyTokens,
    Expires,
    Meta,
    Models,
    MonthlyCost,
    MonthlyTokens,
    Name,
    Owner,
    RoleOpt,
    Rpm,
    Surfaces,
    Tasks,
    TeamName,
    TeamOpt,
    Tpm,
    Unset,
    change,
    check_name,
    database,
    describe,
    key_changes,
    limits_text,
    merged_limits,
    pairs,
    rules_text,
    seconds,
    unset_of,
    when,
)

if TYPE_CHECKING:
    from aiml.teams.key_store import KeyStore
    from aiml.teams.usage import UsageRow

__all__ = ["register"]

keys_app = typer.Typer(help="API keys: what each may use, its limits.", no_args_is_help=True)
teams_app = typer.Typer(help="Teams: limits and budgets their keys share.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
    app.add_typer(teams_app, name="teams")
    app.command()(usage)
    app.command()(audit)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="The key's name (unique)")],
    role: RoleOpt = None, team: TeamOpt = None, owner: Owner = None, models: Models = None,
    tasks: Tasks = None, surfaces: Surfaces = None, rpm: Rpm = None, tpm: Tpm = None,
    concurrent: Concurrent = None, daily_tokens: DailyTokens = None,
    monthly_tokens: MonthlyTokens = None, daily_cost: DailyCost = None,
    monthly_cost: MonthlyCost = None, expires_in: Expires = None, meta: Meta = None,
) -> None:  # fmt: skip
    """Make a key; its secret is printed this once (aiml keeps only its digest)."""
    changes = key_changes(ApiKey(check_name(name, "key"), "", ""), dict(locals()), set())
    changes["role"] = role or Role.USER
    key, secret = change("keys create", name, 201, lambda s: s.create_key(name, **changes),
                         role=str(changes["role"]), team=team)  # fmt: skip
    err.print(f"created key [bold]{escape(name)}[/] ({describe(key)}); its secret, shown once:")
    typer.echo(secret)


@keys_app.command("update")
def keys_update(
    name: Name, role: RoleOpt = None, team: TeamOpt = None, owner: Owner = None,
    models: Models = None, tasks: Tasks = None, surfaces: Surfaces = None, rpm: Rpm = None,
    tpm: Tpm = None, concurrent: Concurrent = None, daily_tokens: DailyTokens = None,
    monthly_tokens: MonthlyTokens = None, daily_cost: DailyCost = None,
    monthly_cost: MonthlyCost = None, expires_in: Expires = None, meta: Meta = None,
    unset: Unset = None,
) -> None:  # fmt: skip
    """Change a key: the limits given, one by one; --models, --tasks, --surfaces replace
    the lists; --meta merges; --unset clears one."""
    given, cleared = dict(locals()), unset_of(unset, UNSETTABLE)

    def update(store: KeyStore) -> ApiKey:
        if not (changes := key_changes(store.key(name), given, cleared)):
            raise InvalidRequest("nothing to change: give an option")
        return store.update_key(name, **changes)

    changed = sorted(k for k, v in given.items() if v is not None and k not in ("name", "unset"))
    key = change("keys update", name, 200, update, changed=changed, unset=sorted(cleared))
    console.print(f"updated key [bold]{escape(name)}[/] ({describe(key)})")


@keys_app.command("rotate")
def keys_rotate(
    name: Name,
    grace: Annotated[str, typer.Option(help="How long the old secret still works: 1h, 0")] = "0",
) -> None:
    """A new secret for the key, printed this once; the old one stops (after --grace)."""
    if (grace_s := seconds(grace, "--grace", zero=True)) > 30 * 86400:
        raise typer.BadParameter("at most 30 days", param_hint="--grace")
    key, secret = change(
        "keys rotate", name, 200, lambda s: s.rotate_key(name, grace_s=grace_s), grace_s=grace_s
    )
    old = f"works until {when(key.previous_until)}" if key.previous_until else "stops now"
    err.print(f"rotated key [bold]{escape(name)}[/] (the old secret {old}); new, shown once:")
    typer.echo(secret)


@keys_app.command("revoke")
def keys_revoke(name: Name) -> None:
    """Revoke a key: it stops on every front within AIML_KEYS_REFRESH_S (its usage stays)."""
    change("keys revoke", name, 200, lambda store: store.revoke_key(name))
    within = f"{Settings().keys_refresh_s:g} s"
    console.print(f"revoked key [bold]{escape(name)}[/]: running fronts refuse it within {within}")


@keys_app.command("list")
def keys_list(
    as_json: Annotated[bool, typer.Option("--json", help="JSON rather than a table")] = False,
) -> None:
    """Every key: the database's and the environment's (AIML_API_KEYS, AIML_ADMIN_KEYS)."""
    from aiml.teams.directory import environment_keys

    settings = Settings()
    with database() as db:
        keys = [*db.keys.all_keys(), *environment_keys(settings.api_keys, settings.admin_keys)]
    now = time.time()
    if as_json:
        typer.echo(json.dumps([key.as_dict(now) for key in keys], indent=2))
        return
    table = Table("name", "prefix", "role", "team", "models", "limits", "status", "expires")
    for key in keys:
        status = "environment" if key.from_environment else key.status(now)
        table.add_row(key.name, key.prefix, str(key.role), key.team or "", rules_text(key.rules),
                      limits_text(key.limits), status, when(key.expires_at))  # fmt: skip
    console.print(table)


@keys_app.command("show")
def keys_show(name: Name) -> None:
    """One key, as JSON (never its secret; times in UTC)."""
    with database() as db:
        shown = db.keys.key(name).as_dict(time.time())
    for field in ("created_at", "expires_at", "revoked_at"):
        shown[field] = when(shown[field]) or None
    typer.echo(json.dumps(shown, indent=2))


@teams_app.command("create")
def teams_create(
    name: TeamName, rpm: Rpm = None, tpm: Tpm = None, concurrent: Concurrent = None,
    daily_tokens: DailyTokens = None, monthly_tokens: MonthlyTokens = None,
    daily_cost: DailyCost = None, monthly_cost: MonthlyCost = None, meta: Meta = None,
) -> None:  # fmt: skip
    """Make a team; its limits and budgets hold for all its keys together."""
    _put_team(check_name(name, "team"), dict(locals()), meta, set(), create=True)


@teams_app.command("update")
def teams_update(
    name: TeamName, rpm: Rpm = None, tpm: Tpm = None, concurrent: Concurrent = None,
    daily_tokens: DailyTokens = None, monthly_tokens: MonthlyTokens = None,
    daily_cost: DailyCost = None, monthly_cost: MonthlyCost = None, meta: Meta = None,
    unset: Annotated[list[str] | None, typer.Option(help="Clear a limit, or meta")] = None,
) -> None:  # fmt: skip
    """Change a team's limits (the ones given) or metadata (merged)."""
    _put_team(name, dict(locals()), meta, unset_of(unset, (*LIMITS, "meta")), create=False)


def _put_team(
    name: str, given: dict[str, Any], meta: list[str] | None, unset: set[str], *, create: bool
) -> None:
    def put(store: KeyStore) -> Team:
        team = next((t for t in store.teams() if t.name == name), None)
        if create and team is not None:
            raise Conflict(f"a team named {name!r} exists (aiml teams update changes it)")
        if team is None and not create:
            raise NotFound(f"no team named {name!r}")
        team = team or Team(name)
        kept = {} if "meta" in unset else dict(team.meta)
        limits = merged_limits(team.limits, given, unset)
        return store.put_team(name, limits=limits, meta={**kept, **pairs(meta)})

    verb = "create" if create else "update"
    team = change(f"teams {verb}", name, 201 if create else 200, put)
    console.print(f"{verb}d team [bold]{escape(name)}[/] (limits: {limits_text(team.limits)})")


@teams_app.command("delete")
def teams_delete(name: TeamName) -> None:
    """Delete a team that has no key left (revoke or move them first)."""
    change("teams delete", name, 200, lambda store: store.delete_team(name))
    console.print(f"deleted team [bold]{escape(name)}[/]")


@teams_app.command("list")
def teams_list() -> None:
    """Every team, its limits and how many keys (not revoked) it has."""
    with database() as db:
        teams, keys = db.keys.teams(), db.keys.all_keys()
    table = Table("name", "limits", "keys", "metadata", "created")
    for t in teams:
        members = sum(1 for key in keys if key.team == t.name and key.revoked_at is None)
        meta = json.dumps(dict(t.meta)) if t.meta else ""
        table.add_row(t.name, limits_text(t.limits), str(members), meta, when(t.created_at))
    console.print(table)


_USAGE = ("day", "key", "team", "model", "version", "requests", "errors",
          "input_tokens", "output_tokens", "cost")  # fmt: skip
Day = Annotated[str | None, typer.Option(help="UTC day, YYYY-MM-DD (inclusive)")]


def usage(
    key: Annotated[str | None, typer.Option(help="One key's usage")] = None,
    team: Annotated[str | None, typer.Option(help="One team's usage")] = None,
    model: Annotated[str | None, typer.Option(help="One registry model's usage")] = None,
    since: Day = None,
    until: Day = None,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV, as /admin/usage writes it")] = False,
) -> None:
    """Usage per UTC day, key, model and version: requests, errors, tokens, cost (what
    running fronts counted in their last AIML_USAGE_FLUSH_S is not written yet)."""
    from aiml.teams.usage import UsageRow

    for day, option in ((since, "--since"), (until, "--until")):
        if day is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day):
            raise typer.BadParameter("a UTC day, YYYY-MM-DD", param_hint=option)
    with database() as db:
        rows = db.usage.rows(key=key, team=team, model=model, since=since, until=until)
    if as_csv:
        writer = csv.writer(sys.stdout)
        writer.writerows([_USAGE, *([getattr(row, c) for c in _USAGE] for row in rows)])
        return
    if not rows:
        console.print("no usage counted (for these filters)")
        return
    table = Table(*_USAGE)
    total = UsageRow("total", "", "", "", "")
    for row in rows:
        total.add(row)
        table.add_row(*_cells(row), end_section=row is rows[-1])
    table.add_row(*_cells(total))
    console.print(table)


def _cells(row: UsageRow) -> list[str]:
    values = (getattr(row, column) for column in _USAGE)
    return [f"{v:.6g}" if isinstance(v, float) else str(v) for v in values]


def audit(
    limit: Annotated[int, typer.Option(min=1, max=5000, help="The newest N entries")] = 50,
    actor: Annotated[str | None, typer.Option(help="Only this actor's (a key's name)")] = None,
    action: Annotated[str | None, typer.Option(help="Actions starting so: 'keys', 'POST'")] = None,
) -> None:
    """The audit log, newest first: every admin action (API and CLI), who, from where."""
    with database() as db:
        entries = db.audit.entries(actor=actor, action=action, limit=limit)
    table = Table("at", "actor", "action", "target", "status", "client", "detail")
    for e in entries:
        detail = json.dumps(dict(e.detail)) if e.detail else ""
        table.add_row(when(e.at), e.actor, e.action, e.target, str(e.status), e.client, detail)
    console.print(table)
