"""Scorer: orders, refunds, customer revenue facts and customers' NPS answers (issue 13).

* ``orders``: one row per ``order_id`` seen, from its ``order.completed`` (the earliest by
  occurred_at, then event id: any arrival order gives the same row) or, until that
  arrives, from its refunds alone (``completed_at`` NULL). ``refunded_minor`` is the sum of
  its refunds in the order's currency, kept by the write path and ``cxloop scorer
  rebuild``; net revenue is ``amount_minor - least(refunded_minor, amount_minor)``.
  ``orders_completed`` covers the range reads of ``GET /v1/value`` (an index-only scan of
  the completions in a range, and of the CLV year's); ``orders_customer`` finds a
  customer's orders, and covers the columns of their ``customer_revenue`` row (an
  index-only scan per customer).
* ``order_refunds``: one row per (order_id, refund_id), kept even before its order.
* ``customer_revenue``: per customer and currency, the exact facts of their completed
  orders: how many, net revenue (``numeric``: 10,000 orders of ``shared.money.MAX_MINOR``
  pass bigint), first and last purchase. Recomputed from ``orders`` for every customer a
  batch touches, under the customer's advisory lock, and by a rebuild.
* ``customer_nps``: every NPS answer's customer, time and score, without its text, so a
  customer's latest category survives erasure under the pseudonym (raw responses do not).
  Filled here from the raw responses: answers erased before this migration are gone.
* ``customer_latest_nps``: each customer's latest NPS answer (the greatest (occurred_at,
  event_id) of ``customer_nps``), kept by the write path, erasure and ``cxloop scorer
  rebuild``. ``GET /v1/value`` takes a customer's category at ``to`` from it, and reads
  ``customer_nps`` only for the customers whose latest answer is at or after ``to``
  (``customer_latest_nps_occurred`` finds them).

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

_DIMENSIONS = ("channel", "location", "product", "business_unit")


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("order_id", sa.Text, primary_key=True),
        sa.Column("customer_id", sa.Text),
        sa.Column("currency", sa.Text),
        sa.Column("amount_minor", sa.BigInteger),
        sa.Column("completed_at", sa.DateTime(timezone=True)),
        sa.Column("completed_event", pg.UUID(as_uuid=True)),
        *(sa.Column(d, sa.Text, nullable=False, server_default="") for d in _DIMENSIONS),
        sa.Column("refunded_minor", sa.BigInteger, nullable=False, server_default="0"),
        sa.CheckConstraint(
            "(completed_at IS NULL) = (amount_minor IS NULL)"
            " AND (completed_at IS NULL) = (customer_id IS NULL)"
            " AND (completed_at IS NULL) = (currency IS NULL)",
            name="orders_completed_whole",
        ),
        sa.CheckConstraint("amount_minor >= 0 AND refunded_minor >= 0", name="orders_amounts"),
    )
    op.create_index(
        "orders_completed",
        "orders",
        ["completed_at"],
        postgresql_include=[
            "currency", "customer_id", "amount_minor", "refunded_minor", *_DIMENSIONS,
        ],
        postgresql_where=sa.text("completed_at IS NOT NULL"),
    )  # fmt: skip
    op.create_index(
        "orders_customer",
        "orders",
        ["customer_id", "completed_at"],
        postgresql_include=["currency", "amount_minor", "refunded_minor"],
        postgresql_where=sa.text("customer_id IS NOT NULL"),
    )
    op.create_table(
        "order_refunds",
        sa.Column("order_id", sa.Text, primary_key=True),
        sa.Column("refund_id", sa.Text, primary_key=True),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event_id", pg.UUID(as_uuid=True), nullable=False),
        sa.CheckConstraint("amount_minor >= 0", name="order_refunds_amount"),
    )
    op.create_table(
        "customer_revenue",
        sa.Column("customer_id", sa.Text, primary_key=True),
        sa.Column("currency", sa.Text, primary_key=True),
        sa.Column("orders", sa.BigInteger, nullable=False),
        # numeric: a customer's many large orders can sum past bigint.
        sa.Column("revenue_minor", sa.Numeric, nullable=False),
        sa.Column("first_purchase_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_purchase_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "customer_nps",
        sa.Column("customer_key", sa.Text, primary_key=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("event_id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("score", sa.SmallInteger, nullable=False),
    )
    op.execute(
        "INSERT INTO customer_nps (customer_key, occurred_at, event_id, score) "
        "SELECT customer_id, occurred_at, event_id, score FROM responses WHERE metric = 'nps'"
    )
    op.create_table(
        "customer_latest_nps",
        sa.Column("customer_key", sa.Text, primary_key=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("score", sa.SmallInteger, nullable=False),
    )
    op.create_index("customer_latest_nps_occurred", "customer_latest_nps", ["occurred_at"])
    op.execute(
        "INSERT INTO customer_latest_nps (customer_key, occurred_at, event_id, score) "
        "SELECT DISTINCT ON (customer_key) customer_key, occurred_at, event_id, score "
        "FROM customer_nps ORDER BY customer_key, occurred_at DESC, event_id DESC"
    )


def downgrade() -> None:
    op.drop_table("customer_latest_nps")
    op.drop_table("customer_nps")
    op.drop_table("customer_revenue")
    op.drop_table("order_refunds")
    op.drop_index("orders_customer", "orders")
    op.drop_index("orders_completed", "orders")
    op.drop_table("orders")
