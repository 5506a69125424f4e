"""The scorer's tables (created by the Alembic migrations, described here for queries)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

metadata = sa.MetaData()

applied_events = sa.Table(
    "scorer_applied_events",
    metadata,
    sa.Column("event_id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("applied_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
)

responses = sa.Table(
    "responses",
    metadata,
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
    sa.Column("reasons", pg.ARRAY(sa.Text), nullable=False),
    sa.Column("locale", sa.Text),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("stored_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
)

DIMENSIONS = (
    "channel",
    "survey_type",
    "touchpoint",
    "location",
    "product",
    "business_unit",
)
# In the order of shared.scoring.Counts' fields: the staged rows and the merges name them.
COUNTS = (
    "n", "score_sum", "score_sq_sum", "promoters", "passives", "detractors", "satisfied", "easy",
)  # fmt: skip


def _score_table(name: str) -> sa.Table:
    return sa.Table(
        name,
        metadata,
        sa.Column("bucket_start", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("metric", sa.Text, primary_key=True),
        sa.Column("scale", sa.SmallInteger, primary_key=True),
        *(sa.Column(d, sa.Text, primary_key=True) for d in DIMENSIONS),
        *(sa.Column(c, sa.BigInteger, nullable=False) for c in COUNTS),
    )


# Hourly buckets, and the same counts rolled up by UTC day (for whole days of long windows).
score_buckets = _score_table("score_buckets")
score_days = _score_table("score_days")

ORDER_DIMENSIONS = ("channel", "location", "product", "business_unit")
"""What orders can be filtered and grouped by ('' when the order did not say)."""

# One row per order id seen; completed_at (and amount, customer, currency) NULL until its
# order.completed arrives. refunded_minor: its refunds in its currency, derived.
orders = sa.Table(
    "orders",
    metadata,
    sa.Column("order_id", sa.Text, primary_key=True),
    sa.Column("customer_id", sa.Text),
    sa.Column("currency", sa.Text),
    sa.Column("amount_minor", sa.BigInteger),
    sa.Column("completed_at", sa.DateTime(timezone=True)),
    sa.Column("completed_event", pg.UUID(as_uuid=True)),
    *(sa.Column(d, sa.Text, nullable=False) for d in ORDER_DIMENSIONS),
    sa.Column("refunded_minor", sa.BigInteger, nullable=False),
)

order_refunds = sa.Table(
    "order_refunds",
    metadata,
    sa.Column("order_id", sa.Text, primary_key=True),
    sa.Column("refund_id", sa.Text, primary_key=True),
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("amount_minor", sa.BigInteger, nullable=False),
    sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("event_id", pg.UUID(as_uuid=True), nullable=False),
)

# The exact per-customer facts, derived from orders (per currency: never added across).
customer_revenue = sa.Table(
    "customer_revenue",
    metadata,
    sa.Column("customer_id", sa.Text, primary_key=True),
    sa.Column("currency", sa.Text, primary_key=True),
    sa.Column("orders", sa.BigInteger, nullable=False),
    sa.Column("revenue_minor", sa.Numeric, nullable=False),  # sums can pass bigint
    sa.Column("first_purchase_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_purchase_at", sa.DateTime(timezone=True), nullable=False),
)

# Every NPS answer's customer, time and score (no text): survives erasure, pseudonymised.
# The key's index carries the score, so that rating a customer at a past time reads the
# index alone (migration 0024).
customer_nps = sa.Table(
    "customer_nps",
    metadata,
    sa.Column("customer_key", sa.Text),
    sa.Column("occurred_at", sa.DateTime(timezone=True)),
    sa.Column("event_id", pg.UUID(as_uuid=True)),
    sa.Column("score", sa.SmallInteger, nullable=False),
    sa.PrimaryKeyConstraint(
        "customer_key",
        "occurred_at",
        "event_id",
        name="customer_nps_pkey",
        postgresql_include=["score"],
    ),
)

# Each customer's latest NPS answer in customer_nps (the greatest (occurred_at, event_id)).
customer_latest_nps = sa.Table(
    "customer_latest_nps",
    metadata,
    sa.Column("customer_key", sa.Text, primary_key=True),
    sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("event_id", pg.UUID(as_uuid=True), nullable=False),
    sa.Column("score", sa.SmallInteger, nullable=False),
)

# Per period and period start: the customers active (rows of customer_activity) and, of
# them, those active again the next period. Kept by the write path and cxloop scorer rebuild.
retention_counts = sa.Table(
    "retention_counts",
    metadata,
    sa.Column("period", sa.Text, primary_key=True),
    sa.Column("period_start", sa.Date, primary_key=True),
    sa.Column("active", sa.BigInteger, nullable=False),
    sa.Column("retained", sa.BigInteger, nullable=False),
)
