"""aiml's own tables (keys, teams, usage, shared rate windows, audit), as SQLAlchemy Core.

The schema is made and changed by Alembic's migrations (``migrations/``), never by
``create_all``; these definitions are what the code reads and writes, and
``tests/teams/test_migrations.py`` checks that the migrations build exactly them.
Times are epoch seconds (floats: the same on sqlite and PostgreSQL); days are UTC
``YYYY-MM-DD`` strings.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = ["audit", "keys", "metadata", "revision", "slots", "teams", "usage", "windows"]

metadata = sa.MetaData()

teams = sa.Table(
    "aiml_teams",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("limits", sa.JSON, nullable=False),
    sa.Column("meta", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

keys = sa.Table(
    "aiml_keys",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    #: The hex SHA-256 of the secret; the secret itself is never stored.
    sa.Column("digest", sa.String(64), nullable=False, unique=True),
    #: The secret's first characters, to tell keys apart in listings.
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("team", sa.String(128), nullable=True),
    sa.Column("owner", sa.String(256), nullable=True),
    sa.Column("rules", sa.JSON, nullable=False),
    sa.Column("limits", sa.JSON, nullable=False),
    sa.Column("meta", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=True),
    sa.Column("revoked_at", sa.Float, nullable=True),
    #: After a rotation with a grace period: the old secret's digest, valid until then.
    sa.Column("previous_digest", sa.String(64), nullable=True),
    sa.Column("previous_until", sa.Float, nullable=True),
)

#: One row, bumped in the same transaction as every change of keys or teams: fronts poll
#: it to know when to read the keys again.
revision = sa.Table(
    "aiml_revision",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)

usage = sa.Table(
    "aiml_usage",
    metadata,
    sa.Column("day", sa.String(10), primary_key=True),
    sa.Column("key", sa.String(128), primary_key=True),
    sa.Column("model", sa.String(256), primary_key=True),
    sa.Column("version", sa.String(32), primary_key=True),
    sa.Column("team", sa.String(128), nullable=False),
    sa.Column("requests", sa.BigInteger, nullable=False),
    sa.Column("errors", sa.BigInteger, nullable=False),
    sa.Column("input_tokens", sa.BigInteger, nullable=False),
    sa.Column("output_tokens", sa.BigInteger, nullable=False),
    sa.Column("cost", sa.Float, nullable=False),
    sa.Index("aiml_usage_team_day", "team", "day"),
)

#: Shared rate-limit windows: how much of each subject's per-minute allowance the fronts
#: have taken (leased) in each minute.
windows = sa.Table(
    "aiml_rate_windows",
    metadata,
    sa.Column("subject", sa.String(140), primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("window", sa.BigInteger, primary_key=True),
    sa.Column("used", sa.BigInteger, nullable=False),
)

#: Concurrency slots: how many of each subject's requests at once each front holds (a
#: front's row counts while it is seen: its heartbeat keeps ``seen_at`` fresh).
slots = sa.Table(
    "aiml_slots",
    metadata,
    sa.Column("subject", sa.String(140), primary_key=True),
    sa.Column("front", sa.String(64), primary_key=True),
    sa.Column("held", sa.Integer, nullable=False),
    sa.Column("seen_at", sa.Float, nullable=False),
)

audit = sa.Table(
    "aiml_audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False, index=True),
    sa.Column("actor", sa.String(160), nullable=False),
    sa.Column("action", sa.String(160), nullable=False),
    sa.Column("target", sa.String(512), nullable=False),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("client", sa.String(128), nullable=False),
    sa.Column("detail", sa.JSON, nullable=False),
)
