"""Alerting: silences, and when an alert was escalated.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("alerts", sa.Column("escalated_at", sa.DateTime(timezone=True)))
    op.create_table(
        "silences",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("matchers", pg.JSONB, nullable=False),
        sa.Column(
            "starts_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.Column("comment", sa.Text, nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_index("silences_ends_at", "silences", ["ends_at"])


def downgrade() -> None:
    op.drop_table("silences")
    op.drop_column("alerts", "escalated_at")
