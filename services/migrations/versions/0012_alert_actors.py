"""Alerting: the authenticated actor beside the display name on every alert action.

``alert_history.actor`` becomes the name of the API key that acted (``cxloop`` for the
service itself) and ``actor_id`` its id (``operator`` for the environment's keys), since
two keys may share a name; the ``by`` a caller gives is kept apart as ``display_name``.
Alerts record the key that acknowledged and the key that resolved them the same way.
Silences record the key that created them and the key that ended them, and when.

Before this revision nobody recorded which key acted, only the name a caller typed, and a
caller could type ``cxloop``. Only the service's own actions (opened, folded, escalated,
auto_resolved: no caller can record those) keep ``cxloop`` as their actor; every other
row keeps its name as its display name, and its actor is ``unknown``.

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

_ALERT_COLUMNS = (
    "acknowledged_actor",
    "acknowledged_actor_id",
    "resolved_actor",
    "resolved_actor_id",
)
_SILENCE_COLUMNS = ("actor_id", "expired_by", "expired_by_id")


def upgrade() -> None:
    op.add_column("alert_history", sa.Column("display_name", sa.Text))
    op.add_column("alert_history", sa.Column("actor_id", sa.Text))
    # The service's own actions: no caller can record one of these.
    op.execute(
        "UPDATE alert_history SET display_name = actor, actor = 'unknown' WHERE NOT ("
        "actor = 'cxloop' AND action IN ('opened', 'folded', 'escalated', 'auto_resolved'))"
    )
    for column in _ALERT_COLUMNS:
        op.add_column("alerts", sa.Column(column, sa.Text))
    op.execute("UPDATE alerts SET acknowledged_actor = 'unknown' WHERE acknowledged_at IS NOT NULL")
    op.execute(
        "UPDATE alerts SET resolved_actor = CASE WHEN EXISTS (SELECT 1 FROM alert_history h "
        "WHERE h.alert_id = alerts.id AND h.actor = 'cxloop' AND h.action = 'auto_resolved') "
        "THEN 'cxloop' ELSE 'unknown' END WHERE resolved_at IS NOT NULL"
    )
    op.add_column("silences", sa.Column("actor", sa.Text))
    op.execute("UPDATE silences SET actor = 'unknown'")
    op.alter_column("silences", "actor", nullable=False)
    for column in _SILENCE_COLUMNS:
        op.add_column("silences", sa.Column(column, sa.Text))
    op.add_column("silences", sa.Column("expired_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    for column in (*_SILENCE_COLUMNS, "expired_at", "actor"):
        op.drop_column("silences", column)
    for column in _ALERT_COLUMNS:
        op.drop_column("alerts", column)
    op.execute("UPDATE alert_history SET actor = display_name WHERE display_name IS NOT NULL")
    op.drop_column("alert_history", "actor_id")
    op.drop_column("alert_history", "display_name")
