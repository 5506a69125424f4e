"""Raw responses, hourly score buckets, alerts, and the applied-event ledgers.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _ledger(name: str) -> None:
    # A ledger row outlives erasure of the raw response, so a redelivered event stays deduplicated.
    op.create_table(
        name,
        sa.Column("event_id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column(
            "applied_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )


def upgrade() -> None:
    _ledger("scorer_applied_events")
    op.create_table(
        "responses",
        sa.Column("event_id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("submission_id", pg.UUID(as_uuid=True)),
        sa.Column("metric", sa.Text, nullable=False),
        sa.Column("scale", sa.SmallInteger, nullable=False),
        sa.Column("score", sa.SmallInteger, nullable=False),
        sa.Column("survey_type", sa.Text, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("touchpoint", sa.Text, nullable=False),
        sa.Column("location", sa.Text),
        sa.Column("product", sa.Text),
        sa.Column("business_unit", sa.Text),
        sa.Column("customer_id", sa.Text, nullable=False),
        sa.Column("ticket_id", sa.Text),
        sa.Column("comment", sa.Text),
        sa.Column("reasons", pg.ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("locale", sa.Text),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "stored_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_index("responses_occurred_at", "responses", ["occurred_at"])
    op.create_index("responses_customer_id", "responses", ["customer_id"])

    # Segment columns are '' rather than NULL when absent, so they can be part of the key.
    op.create_table(
        "score_buckets",
        sa.Column("bucket_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("metric", sa.Text, nullable=False),
        sa.Column("scale", sa.SmallInteger, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("survey_type", sa.Text, nullable=False),
        sa.Column("touchpoint", sa.Text, nullable=False),
        sa.Column("location", sa.Text, nullable=False),
        sa.Column("product", sa.Text, nullable=False),
        sa.Column("business_unit", sa.Text, nullable=False),
        sa.Column("n", sa.BigInteger, nullable=False),
        sa.Column("score_sum", sa.BigInteger, nullable=False),
        sa.Column("promoters", sa.BigInteger, nullable=False),
        sa.Column("passives", sa.BigInteger, nullable=False),
        sa.Column("detractors", sa.BigInteger, nullable=False),
        sa.Column("satisfied", sa.BigInteger, nullable=False),
        sa.Column("easy", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint(
            "metric",
            "bucket_start",
            "scale",
            "channel",
            "survey_type",
            "touchpoint",
            "location",
            "product",
            "business_unit",
            name="score_buckets_pkey",
        ),
    )

    _ledger("alerting_applied_events")
    op.create_table(
        "alerts",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("dedupe_key", sa.Text, nullable=False),
        sa.Column("rule", sa.Text, nullable=False),
        sa.Column("severity", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("customer_id", sa.Text, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("touchpoint", sa.Text),
        sa.Column("ticket_id", sa.Text),
        sa.Column("metric", sa.Text),
        sa.Column("score", sa.SmallInteger),
        sa.Column("comment", sa.Text),
        sa.Column("reasons", pg.ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("event_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("occurrences", sa.Integer, nullable=False, server_default="1"),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True)),
        sa.Column("acknowledged_by", sa.Text),
        sa.Column("resolved_at", sa.DateTime(timezone=True)),
        sa.Column("resolved_by", sa.Text),
        sa.Column("note", sa.Text),
        sa.CheckConstraint(
            "status IN ('open', 'acknowledged', 'resolved')", name="alerts_status_valid"
        ),
    )
    # At most one unresolved alert per dedupe key; a repeat folds into it.
    op.create_index(
        "alerts_unresolved_dedupe_key",
        "alerts",
        ["dedupe_key"],
        unique=True,
        postgresql_where=sa.text("status <> 'resolved'"),
    )
    op.create_index("alerts_status_opened_at", "alerts", ["status", "opened_at"])


def downgrade() -> None:
    op.drop_table("alerts")
    op.drop_table("alerting_applied_events")
    op.drop_table("score_buckets")
    op.drop_table("responses")
    op.drop_table("scorer_applied_events")
