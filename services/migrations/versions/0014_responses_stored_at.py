"""An index for the latest responses: those stored since a cursor, newest first.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("responses_stored_at", "responses", ["stored_at", "event_id"])


def downgrade() -> None:
    op.drop_index("responses_stored_at", "responses")
