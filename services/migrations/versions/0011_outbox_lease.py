"""Alerting: outbox leases (locked_until), per-delivery failure reasons and a retry budget.

A delivery pass leases its rows (``locked_until``) in a short transaction, sends, then
records each delivery on its own: no row lock is held while a receiver is called, and a
crashed instance's lease simply runs out. Notifications of alerts opened under a silence
are kept ``held`` and released when the silence ends.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("notifications", sa.Column("locked_until", sa.DateTime(timezone=True)))
    # Which lease a send was made under: only that lease may record its outcome.
    op.add_column("notifications", sa.Column("lease_id", sa.Uuid()))
    # The retry budget counts from here: queued, or released when its silence ended.
    op.add_column(
        "notifications",
        sa.Column(
            "due_since", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.execute("UPDATE notifications SET due_since = created_at")
    # last_error kept the first 200 characters of a refusal's body, which receivers fill
    # with the payload they were sent (customer text): keep only the status code.
    op.execute(
        "UPDATE notifications SET last_error = substring(last_error from '^HTTP [0-9]+')"
        " || ': refused by the receiver' WHERE last_error ~ '^HTTP [0-9]+: '"
    )
    op.drop_constraint("notifications_status", "notifications", type_="check")
    op.create_check_constraint(
        "notifications_status",
        "notifications",
        "status IN ('pending', 'delivered', 'failed', 'held')",
    )
    op.create_index(
        "notifications_held",
        "notifications",
        ["id"],
        postgresql_where=sa.text("status = 'held'"),
    )


def downgrade() -> None:
    # Before this revision a silenced alert was announced to nobody, ever.
    op.execute("DELETE FROM notifications WHERE status = 'held'")
    op.drop_index("notifications_held", "notifications")
    op.drop_constraint("notifications_status", "notifications", type_="check")
    op.create_check_constraint(
        "notifications_status", "notifications", "status IN ('pending', 'delivered', 'failed')"
    )
    op.drop_column("notifications", "due_since")
    op.drop_column("notifications", "lease_id")
    op.drop_column("notifications", "locked_until")
