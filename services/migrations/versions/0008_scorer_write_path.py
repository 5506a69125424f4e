"""Scorer: room on each bucket page for in-place (HOT) updates, and one index fewer to keep.

Bucket rows are incremented far more often than inserted. With free space on their page,
Postgres rewrites them without touching the primary-key index. ``responses_occurred_at``
duplicates the leading column of ``responses_stored_order`` and only slowed inserts.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_UPDATED_IN_PLACE = ("score_buckets", "reason_buckets", "tickets")


def upgrade() -> None:
    for table in _UPDATED_IN_PLACE:
        op.execute(f"ALTER TABLE {table} SET (fillfactor = 70)")
    op.drop_index("responses_occurred_at", "responses")


def downgrade() -> None:
    op.create_index("responses_occurred_at", "responses", ["occurred_at"])
    for table in _UPDATED_IN_PLACE:
        op.execute(f"ALTER TABLE {table} RESET (fillfactor)")
