"""Concurrency slots shared by the fronts.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "aiml_slots",
        sa.Column("subject", sa.String(140), primary_key=True),
        sa.Column("front", sa.String(64), primary_key=True),
        sa.Column("held", sa.Integer, nullable=False),
        sa.Column("seen_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("aiml_slots")
