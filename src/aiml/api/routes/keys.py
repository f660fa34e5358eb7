"""``/admin/keys``, ``/admin/teams``, ``/admin/usage``, ``/admin/audit`` (admin keys): keys
as data, their teams, the usage counted per key and the audit log.

A key's secret is in the answer that creates or rotates it, and nowhere after. Each change
is applied on this front at once and told to the others (:meth:`Teams.changed`).
"""

from __future__ import annotations

import csv
import io
import time
from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from aiml.errors import InvalidRequest
from aiml.teams.audit import AuditEntry
from aiml.teams.keys import ApiKey, KeyLimits, ModelRules, Role, Team
from aiml.teams.usage import UsageRow

from ..audit_trail import note_audit
from ..deps import ServicesDep
from ..responses import JSONResponse
from ..threaded_json import ThreadedJsonRoute

__all__ = ["router"]

router = APIRouter(prefix="/admin", tags=["keys"], route_class=ThreadedJsonRoute)

_Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._@-]+$")]
_Rule = Annotated[str, Field(min_length=1, max_length=256)]


class Limits(BaseModel):
    """Per minute (every front together), at once, and per UTC day and month."""

    model_config = ConfigDict(extra="forbid")

    rpm: int | None = Field(None, ge=1, description="Requests per minute.")
    tpm: int | None = Field(None, ge=1, description="Tokens (input and output) per minute.")
    concurrent: int | None = Field(None, ge=1, description="Requests at once (per front).")
    daily_tokens: int | None = Field(None, ge=0)
    monthly_tokens: int | None = Field(None, ge=0)
    daily_cost: float | None = Field(None, ge=0, description="In the versions' price unit.")
    monthly_cost: float | None = Field(None, ge=0)

    def domain(self) -> KeyLimits:
        return KeyLimits.of(self.model_dump())


class KeyChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    team: _Name | None = None
    owner: str | None = Field(None, max_length=256)
    models: list[_Rule] | None = Field(
        None, max_length=256, examples=[["chat-*@production"]],
        description="Registry names (exact or globs), each optionally @alias or @version.",
    )  # fmt: skip
    tasks: list[_Rule] | None = Field(None, max_length=64)
    surfaces: list[Literal["inference", "openai", "ollama"]] | None = None
    limits: Limits | None = None
    metadata: dict[str, Any] | None = None
    expires_at: float | None = Field(None, description="Epoch seconds; omitted: never.")
    expires_in_s: float | None = Field(None, gt=0, description="Or: seconds from now.")

    def changes(self, current: ModelRules) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        for field in ("role", "team", "owner"):
            if field in self.model_fields_set:
                changes[field] = getattr(self, field)
        if self.models is not None or self.tasks is not None or self.surfaces is not None:
            changes["rules"] = ModelRules(
                tuple(self.models if self.models is not None else current.models),
                tuple(self.tasks if self.tasks is not None else current.tasks),
                tuple(self.surfaces if self.surfaces is not None else current.surfaces),
            )
        if self.limits is not None:
            changes["limits"] = self.limits.domain()
        if self.metadata is not None:
            changes["meta"] = self.metadata
        if self.expires_in_s is not None:
            changes["expires_at"] = time.time() + self.expires_in_s
        elif "expires_at" in self.model_fields_set:
            changes["expires_at"] = self.expires_at
        return changes


class NewKey(KeyChange):
    name: _Name


class Rotation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_s: float = Field(0.0, ge=0, le=30 * 86400, description="How long the old secret works.")


class TeamBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limits: Limits = Limits()
    metadata: dict[str, Any] = Field(default_factory=dict)


@router.post("/keys", status_code=201)
async def create_key(body: NewKey, services: ServicesDep) -> JSONResponse:
    """A new key; its secret (``key``) is in this answer only."""
    changes = body.changes(ModelRules())
    changes.setdefault("role", Role.USER)
    if changes["role"] is None:
        raise InvalidRequest("role is 'user' or 'admin'", param="role")
    key, secret = await anyio.to_thread.run_sync(
        lambda: services.teams.keys.create_key(body.name, **changes)
    )
    services.teams.changed(key)
    note_audit(target=key.name, role=str(key.role), team=key.team)
    return JSONResponse({**key.as_dict(time.time()), "key": secret}, status_code=201)


@router.get("/keys")
async def list_keys(services: ServicesDep) -> JSONResponse:
    """Every key: the database's and the environment's (never a secret)."""
    stored = await anyio.to_thread.run_sync(services.teams.keys.all_keys)
    environment = [k for k in services.teams.directory.known() if k.from_environment]
    now = time.time()
    return JSONResponse({"keys": [k.as_dict(now) for k in [*stored, *environment]]})


@router.get("/keys/{name}")
async def get_key(name: str, services: ServicesDep) -> JSONResponse:
    key = await anyio.to_thread.run_sync(services.teams.keys.key, name)
    return JSONResponse(key.as_dict(time.time()))


@router.patch("/keys/{name}")
async def change_key(name: str, body: KeyChange, services: ServicesDep) -> JSONResponse:
    """Change a key's role, team, owner, models, tasks, surfaces, limits, metadata, expiry."""
    store = services.teams.keys

    def change() -> ApiKey:
        return store.update_key(name, **body.changes(store.key(name).rules))

    key = await anyio.to_thread.run_sync(change)
    services.teams.changed(key)
    note_audit(target=name, changed=sorted(body.model_fields_set))
    return JSONResponse(key.as_dict(time.time()))


@router.post("/keys/{name}/rotate")
async def rotate_key(name: str, body: Rotation, services: ServicesDep) -> JSONResponse:
    """A new secret (in this answer only); the old one stops now, or after ``grace_s``."""
    key, secret = await anyio.to_thread.run_sync(
        lambda: services.teams.keys.rotate_key(name, grace_s=body.grace_s)
    )
    services.teams.changed(key)
    note_audit(target=name, grace_s=body.grace_s)
    return JSONResponse({**key.as_dict(time.time()), "key": secret})


@router.delete("/keys/{name}")
async def revoke_key(name: str, services: ServicesDep) -> JSONResponse:
    """Revoke a key: it stops working on every front (its record and usage stay)."""
    key = await anyio.to_thread.run_sync(services.teams.keys.revoke_key, name)
    services.teams.changed(key)
    note_audit(target=name)
    return JSONResponse(key.as_dict(time.time()))


@router.get("/teams")
async def list_teams(services: ServicesDep) -> JSONResponse:
    teams = await anyio.to_thread.run_sync(services.teams.keys.teams)
    return JSONResponse({"teams": [_team_dict(team) for team in teams]})


@router.put("/teams/{name}")
async def put_team(name: str, body: TeamBody, services: ServicesDep) -> JSONResponse:
    """Create a team, or set its limits and metadata (its keys share them)."""
    team = await anyio.to_thread.run_sync(
        lambda: services.teams.keys.put_team(name, limits=body.limits.domain(), meta=body.metadata)
    )
    services.teams.changed(team=team)
    note_audit(target=name)
    return JSONResponse(_team_dict(team))


def _team_dict(team: Team) -> dict[str, Any]:
    return {
        "name": team.name,
        "limits": team.limits.as_dict(),
        "metadata": dict(team.meta),
        "created_at": team.created_at,
    }


@router.delete("/teams/{name}")
async def delete_team(name: str, services: ServicesDep) -> JSONResponse:
    """Delete a team that has no keys (revoke or move them first)."""
    await anyio.to_thread.run_sync(services.teams.keys.delete_team, name)
    services.teams.changed()
    note_audit(target=name)
    return JSONResponse({"deleted": name})


_Day = Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}-\d{2}$", description="UTC YYYY-MM-DD")]


@router.get("/usage", responses={200: {"content": {"text/csv": {}}}})
async def usage(
    services: ServicesDep,
    key: Annotated[str | None, Query(max_length=128)] = None,
    team: Annotated[str | None, Query(max_length=128)] = None,
    model: Annotated[str | None, Query(max_length=256)] = None,
    since: _Day = None,
    until: _Day = None,
    format: Literal["json", "csv"] = "json",
) -> Response:
    """Requests, errors, tokens and cost per day, key, model and version (this front's
    latest counts written first); ``format=csv`` for a spreadsheet."""
    await services.teams.usage.flush()
    rows = await anyio.to_thread.run_sync(
        lambda: services.teams.usage_store.rows(
            key=key, team=team, model=model, since=since, until=until
        )
    )
    if format == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(_USAGE_COLUMNS)
        for row in rows:
            writer.writerow([getattr(row, column) for column in _USAGE_COLUMNS])
        return Response(out.getvalue(), media_type="text/csv")
    return JSONResponse({"usage": [_usage_dict(row) for row in rows]})


_USAGE_COLUMNS = ("day", "key", "team", "model", "version", "requests", "errors",
                  "input_tokens", "output_tokens", "cost")  # fmt: skip


def _usage_dict(row: UsageRow) -> dict[str, Any]:
    return {column: getattr(row, column) for column in _USAGE_COLUMNS}


@router.get("/audit")
async def audit(
    services: ServicesDep,
    actor: Annotated[str | None, Query(max_length=160)] = None,
    action: Annotated[
        str | None, Query(max_length=160, description="A prefix: 'POST /admin/keys'")
    ] = None,
    since: float | None = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> JSONResponse:
    """The newest admin actions first: who, what, when, from where, how it ended."""
    entries = await anyio.to_thread.run_sync(
        lambda: services.teams.audit.entries(actor=actor, action=action, since=since, limit=limit)
    )
    return JSONResponse({"entries": [_entry_dict(entry) for entry in entries]})


def _entry_dict(e: AuditEntry) -> dict[str, Any]:
    return {"id": e.id, "at": e.at, "actor": e.actor, "action": e.action, "target": e.target,
            "status": e.status, "client": e.client, "detail": dict(e.detail)}  # fmt: skip
