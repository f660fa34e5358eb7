"""Keys and teams in aiml's tables: create, list, change, rotate, revoke (blocking calls:
the API runs them on worker threads).

Every change bumps the one revision row in the same transaction, so a front that polls
the revision (:class:`~aiml.teams.directory.KeyDirectory`) never reads half a change.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import sqlalchemy as sa

from aiml.errors import Conflict, InvalidRequest, NotFound

from . import tables
from .keys import ApiKey, KeyLimits, ModelRules, Role, Team, new_secret, secret_digest

__all__ = ["KeyStore"]

NO_RULES = ModelRules()
NO_LIMITS = KeyLimits()
#: How many characters of a secret a listing shows (``aiml-`` and four more).
_PREFIX_CHARS = 9


class KeyStore:
    def __init__(self, engine: sa.Engine, *, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self._clock = clock

    # -- keys --------------------------------------------------------------------------

    def create_key(
        self,
        name: str,
        *,
        role: Role = Role.USER,
        team: str | None = None,
        owner: str | None = None,
        rules: ModelRules = NO_RULES,
        limits: KeyLimits = NO_LIMITS,
        meta: Mapping[str, Any] | None = None,
        expires_at: float | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key and its secret (shown this once)."""
        secret = new_secret()
        key = ApiKey(
            name=name, digest=secret_digest(secret), prefix=secret[:_PREFIX_CHARS], role=role,
            team=team, owner=owner, rules=rules, limits=limits, meta=dict(meta or {}),
            created_at=self._clock(), expires_at=expires_at,
        )  # fmt: skip
        with self.engine.begin() as db:
            if team is not None:
                self._require_team(db, team)
            if db.execute(sa.select(tables.keys.c.name).where(tables.keys.c.name == name)).first():
                raise Conflict(f"a key named {name!r} exists")
            db.execute(tables.keys.insert().values(**_row(key)))
            _bump(db)
        return key, secret

    def all_keys(self) -> list[ApiKey]:
        with self.engine.connect() as db:
            rows = db.execute(sa.select(tables.keys).order_by(tables.keys.c.name)).mappings()
            return [_key(row) for row in rows]

    def key(self, name: str) -> ApiKey:
        with self.engine.connect() as db:
            return self._key(db, name)

    def find(self, digest: str) -> ApiKey | None:
        """The key whose secret (or, within its grace, previous secret) has this digest."""
        k = tables.keys.c
        query = sa.select(tables.keys).where((k.digest == digest) | (k.previous_digest == digest))
        with self.engine.connect() as db:
            row = db.execute(query).mappings().first()
        return _key(row) if row is not None else None

    def update_key(self, name: str, **changes: Any) -> ApiKey:
        """Change a key's ``team``, ``owner``, ``rules``, ``limits``, ``meta``, ``expires_at``
        or ``role``."""
        with self.engine.begin() as db:
            key = replace(self._key(db, name), **changes)
            if (team := changes.get("team")) is not None:  # one deleted since may stay named
                self._require_team(db, team)
            db.execute(tables.keys.update().where(tables.keys.c.name == name).values(**_row(key)))
            _bump(db)
        return key

    def rotate_key(self, name: str, *, grace_s: float = 0.0) -> tuple[ApiKey, str]:
        """A new secret for the key; the old one stops working at once, or after ``grace_s``."""
        secret = new_secret()
        with self.engine.begin() as db:
            key = self._key(db, name)
            if key.revoked_at is not None:
                raise Conflict(f"key {name!r} is revoked")
            key = replace(
                key, digest=secret_digest(secret), prefix=secret[:_PREFIX_CHARS],
                previous_digest=key.digest if grace_s > 0 else None,
                previous_until=self._clock() + grace_s if grace_s > 0 else None,
            )  # fmt: skip
            db.execute(tables.keys.update().where(tables.keys.c.name == name).values(**_row(key)))
            _bump(db)
        return key, secret

    def revoke_key(self, name: str) -> ApiKey:
        with self.engine.begin() as db:
            key = self._key(db, name)
            if key.revoked_at is None:
                key = replace(key, revoked_at=self._clock(), previous_digest=None)
                db.execute(
                    tables.keys.update().where(tables.keys.c.name == name).values(**_row(key))
                )
                _bump(db)
        return key

    # -- teams -------------------------------------------------------------------------

    def put_team(
        self, name: str, *, limits: KeyLimits = NO_LIMITS, meta: Mapping[str, Any] | None = None
    ) -> Team:
        """Create a team or change its limits and metadata."""
        with self.engine.begin() as db:
            row = db.execute(
                sa.select(tables.teams.c.created_at).where(tables.teams.c.name == name)
            ).first()
            team = Team(name, limits, dict(meta or {}), row[0] if row else self._clock())
            values = {"limits": limits.as_dict(), "meta": dict(team.meta)}
            t = tables.teams
            if row is None:
                db.execute(t.insert().values(name=name, created_at=team.created_at, **values))
            else:
                db.execute(t.update().where(t.c.name == name).values(**values))
            _bump(db)
        return team

    def teams(self) -> list[Team]:
        with self.engine.connect() as db:
            rows = db.execute(sa.select(tables.teams).order_by(tables.teams.c.name)).mappings()
            return [_team(row) for row in rows]

    def delete_team(self, name: str) -> None:
        with self.engine.begin() as db:
            self._require_team(db, name)
            members = db.execute(
                sa.select(sa.func.count()).where(
                    (tables.keys.c.team == name) & tables.keys.c.revoked_at.is_(None)
                )
            ).scalar_one()
            if members:
                raise Conflict(f"team {name!r} has {members} key(s) not revoked")
            db.execute(tables.teams.delete().where(tables.teams.c.name == name))
            _bump(db)

    # -- the revision ------------------------------------------------------------------

    def revision(self) -> int:
        with self.engine.connect() as db:
            return int(db.execute(sa.select(tables.revision.c.value)).scalar_one())

    def snapshot(self) -> tuple[int, list[ApiKey], list[Team]]:
        """The revision and, as of it, every key and team (one read transaction)."""
        with self.engine.begin() as db:
            value = int(db.execute(sa.select(tables.revision.c.value)).scalar_one())
            keys = [_key(r) for r in db.execute(sa.select(tables.keys)).mappings()]
            teams = [_team(r) for r in db.execute(sa.select(tables.teams)).mappings()]
        return value, keys, teams

    @staticmethod
    def _key(db: sa.Connection, name: str) -> ApiKey:
        query = sa.select(tables.keys).where(tables.keys.c.name == name)
        row = db.execute(query).mappings().first()
        if row is None:
            raise NotFound(f"no key named {name!r}")
        return _key(row)

    @staticmethod
    def _require_team(db: sa.Connection, name: str) -> None:
        t = tables.teams
        if not db.execute(sa.select(t.c.name).where(t.c.name == name)).first():
            raise InvalidRequest(f"no team named {name!r} (create it first)", param="team")


def _bump(db: sa.Connection) -> None:
    db.execute(tables.revision.update().values(value=tables.revision.c.value + 1))


def _row(key: ApiKey) -> dict[str, Any]:
    return {
        "name": key.name, "digest": key.digest, "prefix": key.prefix, "role": str(key.role),
        "team": key.team, "owner": key.owner, "rules": key.rules.as_dict(),
        "limits": key.limits.as_dict(), "meta": dict(key.meta), "created_at": key.created_at,
        "expires_at": key.expires_at, "revoked_at": key.revoked_at,
        "previous_digest": key.previous_digest, "previous_until": key.previous_until,
    }  # fmt: skip


def _key(row: sa.RowMapping) -> ApiKey:
    return ApiKey(
        name=row["name"], digest=row["digest"], prefix=row["prefix"], role=Role(row["role"]),
        team=row["team"], owner=row["owner"], rules=ModelRules.of(row["rules"]),
        limits=KeyLimits.of(row["limits"]), meta=row["meta"] or {},
        created_at=row["created_at"], expires_at=row["expires_at"],
        revoked_at=row["revoked_at"], previous_digest=row["previous_digest"],
        previous_until=row["previous_until"],
    )  # fmt: skip


def _team(row: sa.RowMapping) -> Team:
    return Team(row["name"], KeyLimits.of(row["limits"]), row["meta"] or {}, row["created_at"])
