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

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


_INDEXES = {
    "notifications_receiver_due": "(receiver, next_attempt_at) WHERE status = 'pending'",
    "notifications_budget": "(due_since) WHERE status = 'pending'",
}


def upgrade() -> None:
    # Built CONCURRENTLY, outside the migration's transaction: a plain CREATE INDEX holds a
    # SHARE lock on notifications (never purged, so large) through the build, and every
    # alert change waits for it. A failed concurrent build leaves an INVALID index behind,
    # which IF NOT EXISTS would keep: it is dropped first.
    with op.get_context().autocommit_block():
        for name, definition in _INDEXES.items():
            invalid = op.get_bind().scalar(
                sa.text(
                    "SELECT 1 FROM pg_index WHERE indexrelid = to_regclass(:name)"
                    " AND NOT indisvalid"
                ),
                {"name": name},
            )
            if invalid:
                op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
            op.execute(
                f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON notifications {definition}"
            )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name in reversed(_INDEXES):
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
