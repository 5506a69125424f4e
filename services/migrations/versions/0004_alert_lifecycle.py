"""Alerting: assignment, history (who did what, when, with which note), and SLA deadlines.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("alerts", sa.Column("assignee", sa.Text))
    op.add_column("alerts", sa.Column("ticket_source", sa.Text))
    op.create_table(
        "alert_history",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column(
            "alert_id",
            pg.UUID(as_uuid=True),
            sa.ForeignKey("alerts.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("note", sa.Text),
    )
    op.create_index("alert_history_alert", "alert_history", ["alert_id", "at"])
    # One row per ticket and kind of deadline. A response or resolution that arrives before
    # the ticket's creation is recorded first, so the deadline created later never fires.
    op.create_table(
        "sla_deadlines",
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("ticket_id", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("customer_id", sa.Text, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("priority", sa.Text),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("deadline", sa.DateTime(timezone=True)),
        sa.Column("satisfied_at", sa.DateTime(timezone=True)),
        sa.Column("fired_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("source", "ticket_id", "kind", name="sla_deadlines_pkey"),
        sa.CheckConstraint("kind IN ('first_response', 'resolution')", name="sla_kind_valid"),
    )
    op.create_index(
        "sla_deadlines_due",
        "sla_deadlines",
        ["deadline"],
        postgresql_where=sa.text("satisfied_at IS NULL AND fired_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_table("sla_deadlines")
    op.drop_table("alert_history")
    op.drop_column("alerts", "ticket_source")
    op.drop_column("alerts", "assignee")
