"""Alerting: notifications grouped by route labels are delivered together; alerts keep the
segments of the response that opened them, for routes, silences and groups to match.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


_SEGMENTS = ("location", "product", "business_unit", "survey_type")


def upgrade() -> None:
    for column in _SEGMENTS:
        op.add_column("alerts", sa.Column(column, sa.Text))
    op.add_column("notifications", sa.Column("group_key", sa.Text))
    op.create_index(
        "notifications_pending_group",
        "notifications",
        ["group_key"],
        postgresql_where=sa.text("status = 'pending' AND group_key IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("notifications_pending_group", "notifications")
    op.drop_column("notifications", "group_key")
    for column in _SEGMENTS:
        op.drop_column("alerts", column)
