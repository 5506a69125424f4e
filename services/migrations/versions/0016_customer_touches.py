"""Alerting: a customer's recent answers and ticket events, for an alert's page.

``customer_touches`` keeps, per customer, the last 20 answers and ticket events the
alerting service applied (the consumer trims the older ones in the batch's transaction).
An answer keeps its metric, score, comment, reasons, channel and touchpoint; a ticket event
its ticket id, source, event type, status and priority. Erasure pseudonymises the rows as
it does the customer's alerts (their id becomes the pseudonym; comment and reasons go).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "customer_touches",
        sa.Column("event_id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("customer_id", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("touchpoint", sa.Text),
        sa.Column("metric", sa.Text),
        sa.Column("score", sa.SmallInteger),
        sa.Column("comment", sa.Text),
        sa.Column("reasons", pg.ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("ticket_id", sa.Text),
        sa.Column("event_type", sa.Text),
        sa.Column("status", sa.Text),
        sa.Column("priority", sa.Text),
        sa.Column(
            "recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.CheckConstraint("kind IN ('answer', 'ticket')", name="customer_touches_kind"),
    )
    op.create_index(
        "customer_touches_recent",
        "customer_touches",
        ["customer_id", sa.text("occurred_at DESC"), sa.text("event_id DESC")],
    )


def downgrade() -> None:
    op.drop_index("customer_touches_recent", "customer_touches")
    op.drop_table("customer_touches")
