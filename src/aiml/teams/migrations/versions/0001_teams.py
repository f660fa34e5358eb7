"""Keys, teams, usage, shared rate windows and the audit log.

Revision ID: 0001
Revises:
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "aiml_teams",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("limits", sa.JSON, nullable=False),
        sa.Column("meta", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "aiml_keys",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
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
        sa.Column("previous_digest", sa.String(64), nullable=True),
        sa.Column("previous_until", sa.Float, nullable=True),
    )
    op.create_table(
        "aiml_revision",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    op.execute(sa.text("INSERT INTO aiml_revision (id, value) VALUES (1, 0)"))
    op.create_table(
        "aiml_usage",
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
    )
    op.create_index("aiml_usage_team_day", "aiml_usage", ["team", "day"])
    op.create_table(
        "aiml_rate_windows",
        sa.Column("subject", sa.String(140), primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("window", sa.BigInteger, primary_key=True),
        sa.Column("used", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "aiml_audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("actor", sa.String(160), nullable=False),
        sa.Column("action", sa.String(160), nullable=False),
        sa.Column("target", sa.String(512), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("client", sa.String(128), nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
    )
    op.create_index("ix_aiml_audit_at", "aiml_audit", ["at"])


def downgrade() -> None:
    for table in (
        "aiml_audit",
        "aiml_rate_windows",
        "aiml_usage",
        "aiml_revision",
        "aiml_keys",
        "aiml_teams",
    ):
        op.drop_table(table)
