"""Erasure everywhere: erasure requests, keyed phone hashes, invitation expiry.

* ``erasures`` (one row per erasure and service, with its completion) and
  ``erased_customers`` (per service, an erased customer's id only as a keyed hash, and
  their pseudonym there).
* Phone numbers of invitations and SMS opt-outs become HMAC-SHA256 hashes (``phone_hash``),
  and the unkeyed ``caller:`` ids of IVR callers are re-keyed in every table that holds
  customer ids (see ``shared/privacy.py``). An HMAC needs the secret, which never enters
  the database: this migration reads ``CXLOOP_PRIVACY_HASH_KEY`` from the environment (as
  the services do) and computes the HMAC inside Postgres with the padded keys as bind
  parameters, one statement per table. A database with nothing to hash needs no key.
* Indexes for erasing by customer id and purging old invitations.

Downgrade drops the new tables and renames the columns back; the hashes stay hashes (a
keyed hash cannot be reversed), so invitations sent before it no longer match replies.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02
"""

# ruff: noqa: S608 - SQL built from constant table and column names only
from __future__ import annotations

import os

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from shared.privacy import sql_hmac, sql_hmac_pads
from shared.settings import PrivacySettings, load

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_KEY = "CXLOOP_PRIVACY_HASH_KEY"
_CALLER = "'caller:' || left(encode({hmac}, 'hex'), 24)"
# (table, customer id column) of every table that holds customer ids.
_CUSTOMER_COLUMNS = (
    ("responses", "customer_id"),
    ("tickets", "customer_id"),
    ("customer_activity", "customer_key"),
    ("sla_deadlines", "customer_id"),
    ("invitations", "customer_id"),
)


def _needs_key(conn: sa.Connection) -> bool:
    checks = [
        "SELECT 1 FROM invitations WHERE phone_hash IS NOT NULL",
        "SELECT 1 FROM sms_opt_outs",
        "SELECT 1 FROM alerts WHERE customer_id LIKE 'caller:%'",
        *(f"SELECT 1 FROM {t} WHERE {c} LIKE 'caller:%'" for t, c in _CUSTOMER_COLUMNS),
    ]
    return any(conn.execute(sa.text(f"{check} LIMIT 1")).first() for check in checks)


def _rehash(conn: sa.Connection) -> None:
    if _KEY not in os.environ:
        if _needs_key(conn):
            raise RuntimeError(
                f"migration 0013 hashes stored phone numbers and caller ids: set {_KEY} "
                "(the same secret the services use) and run cxloop migrate again"
            )
        return
    ipad, opad = sql_hmac_pads(load(PrivacySettings).key())
    pads = {"ipad": ipad, "opad": opad}
    phone = f"encode({sql_hmac('phone', 'phone_hash')}, 'hex')"
    conn.execute(
        sa.text(f"UPDATE invitations SET phone_hash = {phone} WHERE phone_hash IS NOT NULL"), pads
    )
    conn.execute(sa.text(f"UPDATE sms_opt_outs SET phone_hash = {phone}"), pads)
    for table, column in _CUSTOMER_COLUMNS:
        caller = _CALLER.format(hmac=sql_hmac("caller", f"substr({column}, 8)"))
        conn.execute(
            sa.text(f"UPDATE {table} SET {column} = {caller} WHERE {column} LIKE 'caller:%'"),
            pads,
        )
    caller = _CALLER.format(hmac=sql_hmac("caller", "substr(customer_id, 8)"))
    conn.execute(
        sa.text(
            f"UPDATE alerts SET customer_id = {caller}, dedupe_key = replace(dedupe_key, "
            f"':' || customer_id || ':', ':' || {caller} || ':') "
            "WHERE customer_id LIKE 'caller:%'"
        ),
        pads,
    )


def upgrade() -> None:
    op.create_table(
        "erasures",
        sa.Column("id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("service", sa.Text, nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("id", "service", name="erasures_pkey"),
    )
    op.create_table(
        "erased_customers",
        sa.Column("service", sa.Text, primary_key=True),
        sa.Column("id_hash", sa.LargeBinary, primary_key=True),
        sa.Column("pseudonym", sa.Text, nullable=False, unique=True),
        sa.Column(
            "erased_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.alter_column("invitations", "phone", new_column_name="phone_hash")
    op.alter_column("sms_opt_outs", "phone", new_column_name="phone_hash")
    _rehash(op.get_bind())
    op.create_index("invitations_created_at", "invitations", ["created_at"])
    op.create_index("alerts_customer_id", "alerts", ["customer_id"])
    op.create_index("sla_deadlines_customer_id", "sla_deadlines", ["customer_id"])


def downgrade() -> None:
    op.drop_index("sla_deadlines_customer_id", "sla_deadlines")
    op.drop_index("alerts_customer_id", "alerts")
    op.drop_index("invitations_created_at", "invitations")
    op.alter_column("sms_opt_outs", "phone_hash", new_column_name="phone")
    op.alter_column("invitations", "phone_hash", new_column_name="phone")
    op.drop_table("erased_customers")
    op.drop_table("erasures")
