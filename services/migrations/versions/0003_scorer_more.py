"""Scorer: reason buckets (NPS+ drivers), tickets (service times), customer activity (retention).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_DIMENSIONS = ("channel", "survey_type", "touchpoint", "location", "product", "business_unit")


def upgrade() -> None:
    op.create_table(
        "reason_buckets",
        sa.Column("bucket_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("category", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        *(sa.Column(d, sa.Text, nullable=False) for d in _DIMENSIONS),
        sa.Column("n", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint(
            "bucket_start", "category", "reason", *_DIMENSIONS, name="reason_buckets_pkey"
        ),
    )
    # One row per ticket, folded from its events in any order: earliest creation and first
    # response, latest resolution and reopening. A ticket is resolved when its latest
    # resolution comes after its latest reopening.
    op.create_table(
        "tickets",
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("ticket_id", sa.Text, nullable=False),
        sa.Column("customer_id", sa.Text, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("priority", sa.Text),
        sa.Column("priority_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True)),
        sa.Column("first_response_at", sa.DateTime(timezone=True)),
        sa.Column("resolved_at", sa.DateTime(timezone=True)),
        sa.Column("reopened_at", sa.DateTime(timezone=True)),
        sa.Column("reopens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("source", "ticket_id", name="tickets_pkey"),
    )
    op.create_index("tickets_created_at", "tickets", ["created_at"])
    op.create_index("tickets_customer_id", "tickets", ["customer_id"])
    op.create_table(
        "customer_activity",
        sa.Column("period", sa.Text, nullable=False),
        sa.Column("period_start", sa.Date, nullable=False),
        sa.Column("customer_key", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint(
            "period", "period_start", "customer_key", name="customer_activity_pkey"
        ),
        sa.CheckConstraint("period IN ('week', 'month')", name="customer_activity_period_valid"),
    )
    op.create_index("customer_activity_customer", "customer_activity", ["customer_key"])
    op.create_index("responses_stored_order", "responses", ["occurred_at", "event_id"])


def downgrade() -> None:
    op.drop_index("responses_stored_order", "responses")
    op.drop_table("customer_activity")
    op.drop_table("tickets")
    op.drop_table("reason_buckets")
