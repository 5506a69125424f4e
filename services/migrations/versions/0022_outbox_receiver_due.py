"""Alerting: indexes that make an outbox pass cost what it leases, not the backlog.

A pass used to rank every due pending notification (window functions over all of them) to
give each receiver its room, once per freed slot: with a backlog of N rows, each pass was
O(N log N) and a backlog collapsed the outbox. Now each receiver with room reads its oldest
due rows from ``notifications_receiver_due`` (receiver, next_attempt_at) with a LIMIT, and
the receivers themselves are found by a skip scan of the same index.
``notifications_budget`` (due_since) lets the retry budget's check read only the rows past
it, not every due one.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-12
"""

from __future__ import annotations

from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX notifications_receiver_due ON notifications (receiver, next_attempt_at)"
        " WHERE status = 'pending'"
    )
    op.execute(
        "CREATE INDEX notifications_budget ON notifications (due_since) WHERE status = 'pending'"
    )


def downgrade() -> None:
    op.execute("DROP INDEX notifications_budget")
    op.execute("DROP INDEX notifications_receiver_due")
