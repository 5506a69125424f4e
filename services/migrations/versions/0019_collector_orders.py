"""Collector: the order ledger, so that an order id names one order and its refunds never
exceed it (the answers to the caller; counting is by order id downstream).

``collector_orders`` holds one row per order id: whose it is (the customer id, or the
collector's pseudonym once they are erased), its currency, its amount in the currency's
minor units (NULL while only refunds of it were seen), how much of it was refunded so far,
and the event id of the ``order.completed`` produced for it (NULL: none yet).
``collector_order_refunds`` holds one row per refund of an order, keyed by the order and
the refund id, with the event id produced for it, so a resent refund is a duplicate.

Both are written only in the transaction that commits after the broker acknowledged the
events, under row locks on the orders (``services/collector/orders.py``): an order not yet
known gets a placeholder row for the transaction, deleted unless an event made it one.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE collector_orders (
            order_id text PRIMARY KEY,
            customer_id text NOT NULL,
            currency text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
            amount_minor bigint CHECK (amount_minor >= 0),
            refunded_minor bigint NOT NULL DEFAULT 0 CHECK (refunded_minor >= 0),
            completed_event_id uuid,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX collector_orders_customer ON collector_orders (customer_id)")
    op.execute(
        """
        CREATE TABLE collector_order_refunds (
            order_id text NOT NULL REFERENCES collector_orders (order_id) ON DELETE CASCADE,
            refund_id text NOT NULL,
            amount_minor bigint NOT NULL CHECK (amount_minor >= 0),
            event_id uuid NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (order_id, refund_id)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE collector_order_refunds")
    op.execute("DROP TABLE collector_orders")
