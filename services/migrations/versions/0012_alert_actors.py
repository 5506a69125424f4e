"""Alerting: the authenticated actor beside the display name on every alert action.

``alert_history.actor`` becomes the name of the API key that acted (``cxloop`` for the
service itself), and the ``by`` a caller gives is kept apart as ``display_name``. Silences
get an ``actor`` too; their ``created_by`` stays, as the display name.

Before this revision nobody recorded which key acted, only the name a caller typed: those
rows keep that name as their display name, and their actor is ``unknown``.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("alert_history", sa.Column("display_name", sa.Text))
    op.execute(
        "UPDATE alert_history SET display_name = actor, actor = 'unknown' WHERE actor <> 'cxloop'"
    )
    op.add_column("silences", sa.Column("actor", sa.Text))
    op.execute("UPDATE silences SET actor = 'unknown'")
    op.alter_column("silences", "actor", nullable=False)


def downgrade() -> None:
    op.drop_column("silences", "actor")
    op.execute("UPDATE alert_history SET actor = display_name WHERE display_name IS NOT NULL")
    op.drop_column("alert_history", "display_name")
