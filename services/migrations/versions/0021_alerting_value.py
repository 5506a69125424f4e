"""Alerting: customers' orders, and the value an alert carries.

``alerting_orders`` holds each order the touchpoints topic completed (``order.completed``),
one row per ``order_id``: the first completion counts, a later one for the same order
changes nothing. ``alerting_refunds`` holds each refund (``order.refunded``) by
``(order_id, refund_id)``, counted once whatever event ids it is resent under, and whether
it arrived before or after its order. An order's net value is its amount less its refunds
in its currency, never below zero. Both keep the customer's id, so that erasure
pseudonymises them as it does alerts and touches; the gauges loop deletes the rows older
than ``CXLOOP_ALERTING_ORDER_RETENTION_DAYS``.

An alert opened by a response rule records the customer's value over the 12 months (365
days) up to the answer (``value``: per currency, its ISO exponent, the net revenue in minor
units, the order count and the configured threshold) when it opened, whether it passed a
threshold (``high_value``, a routing label) and, if so, why it became critical
(``value_reason``). ``value`` is NULL where it was not computed: alerts opened before this
revision, and score drops.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alerting_orders",
        sa.Column("order_id", sa.Text, primary_key=True),
        sa.Column("customer_id", sa.Text, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.CheckConstraint("amount_minor >= 0", name="alerting_orders_amount"),
    )
    op.create_index("alerting_orders_customer", "alerting_orders", ["customer_id", "completed_at"])
    # The hourly purge (repository.purge_orders) reads by age.
    op.create_index("alerting_orders_completed", "alerting_orders", ["completed_at"])
    op.create_table(
        "alerting_refunds",
        sa.Column("order_id", sa.Text, primary_key=True),
        sa.Column("refund_id", sa.Text, primary_key=True),
        sa.Column("customer_id", sa.Text, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column(
            "recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.CheckConstraint("amount_minor >= 0", name="alerting_refunds_amount"),
    )
    op.create_index("alerting_refunds_customer", "alerting_refunds", ["customer_id"])
    op.create_index("alerting_refunds_recorded", "alerting_refunds", ["recorded_at"])
    # NULL: not computed (the alerts opened before this, and score drops); a response
    # rule's alert always stores a list, empty without orders in the window.
    op.add_column("alerts", sa.Column("value", pg.JSONB))
    op.add_column(
        "alerts",
        sa.Column("high_value", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.add_column("alerts", sa.Column("value_reason", sa.Text))


def downgrade() -> None:
    op.drop_column("alerts", "value_reason")
    op.drop_column("alerts", "high_value")
    op.drop_column("alerts", "value")
    op.drop_index("alerting_refunds_recorded", "alerting_refunds")
    op.drop_index("alerting_refunds_customer", "alerting_refunds")
    op.drop_table("alerting_refunds")
    op.drop_index("alerting_orders_completed", "alerting_orders")
    op.drop_index("alerting_orders_customer", "alerting_orders")
    op.drop_table("alerting_orders")
