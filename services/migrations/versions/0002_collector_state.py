"""The collector's state: hashed API keys, idempotency keys, SMS invitations and opt-outs.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("prefix", sa.Text, nullable=False),
        # SHA-256 of a 32-byte random secret: a slow hash buys nothing for keys this long.
        sa.Column("key_hash", sa.LargeBinary, nullable=False, unique=True),
        sa.Column("scopes", pg.ARRAY(sa.Text), nullable=False),
        sa.Column("sources", pg.ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("origins", pg.ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("kind IN ('secret', 'publishable')", name="api_keys_kind_valid"),
    )
    op.create_table(
        "collector_idempotency",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("event_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("produced", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("collector_idempotency_expires_at", "collector_idempotency", ["expires_at"])
    op.create_table(
        "invitations",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("customer_id", sa.Text, nullable=False),
        sa.Column("phone", sa.Text),
        sa.Column("metric", sa.Text, nullable=False),
        sa.Column("scale", sa.SmallInteger, nullable=False),
        sa.Column("survey_type", sa.Text, nullable=False),
        sa.Column("touchpoint", sa.Text, nullable=False),
        sa.Column("ticket_id", sa.Text),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("locale", sa.Text),
        sa.Column("segments", pg.JSONB, nullable=False, server_default="{}"),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("answered_at", sa.DateTime(timezone=True)),
        sa.Column("reasked", sa.Integer, nullable=False, server_default="0"),
        sa.CheckConstraint(
            "status IN ('open', 'suppressed', 'answered')", name="invitations_status_valid"
        ),
    )
    op.create_index("invitations_phone_created", "invitations", ["phone", "created_at"])
    op.create_index("invitations_customer_created", "invitations", ["customer_id", "created_at"])
    op.create_table(
        "sms_opt_outs",
        sa.Column("phone", sa.Text, primary_key=True),
        sa.Column("keyword", sa.Text, nullable=False),
        sa.Column(
            "opted_out_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )


def downgrade() -> None:
    op.drop_table("sms_opt_outs")
    op.drop_table("invitations")
    op.drop_table("collector_idempotency")
    op.drop_table("api_keys")
