"""Erasure everywhere: erasure requests, keyed phone hashes, invitation expiry.

* ``erasures`` (one row per erasure and service, with its completion) and
  ``erased_customers`` (per service, an erased customer's id only as a keyed hash, and
  their pseudonym there).
* Phone numbers of invitations and SMS opt-outs become HMAC-SHA256 hashes (``phone_hash``),
  and the unkeyed ``caller:`` ids of IVR callers are re-keyed in every table that holds
  customer ids (see ``shared/privacy.py``). An HMAC needs the secret, which never enters
  the database: this migration reads ``CXLOOP_PRIVACY_HASH_KEY`` from the environment (as
  the services do) and computes the HMACs in Python, a batch of distinct values at a time;
  only the hashes are sent back (neither the key nor a plaintext number is ever a bind
  parameter, so a statement log shows neither). A database with nothing to hash needs no
  key. The plaintext numbers stay in dead row versions until VACUUM reclaims them, and in
  WAL archives and backups taken before the upgrade until those expire.
* ``privacy_key_check``: the HMAC of a fixed label under the key (stored here when the key
  is set, else by the first service to start); every service refuses to start under
  another key.
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
from collections.abc import Callable

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from shared.privacy import KEY_CHECK_TABLE, Hasher
from shared.settings import PrivacySettings, load

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_KEY = "CXLOOP_PRIVACY_HASH_KEY"
_BATCH = 10_000
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
    hasher = Hasher(load(PrivacySettings).key())
    conn.execute(
        sa.text(f"INSERT INTO {KEY_CHECK_TABLE} (id, check_value) VALUES (true, :check)"),
        {"check": hasher.check_value()},
    )
    phones = (
        ("invitations", "phone_hash", "phone_hash IS NOT NULL"),
        (
            "sms_opt_outs",
            "phone_hash",
            "true",
        ),
    )
    _rekey(conn, phones, hasher.phone)
    callers = tuple(
        (table, column, f"{column} LIKE 'caller:%'")
        for table, column in (*_CUSTOMER_COLUMNS, ("alerts", "customer_id"))
    )
    _rekey(conn, callers, lambda old: hasher.rekey_caller(old.removeprefix("caller:")))


def _rekey(
    conn: sa.Connection, columns: tuple[tuple[str, str, str], ...], new: Callable[[str], str]
) -> None:
    """Replace each stored value of ``columns`` by ``new(value)``, computed in Python.

    Neither the key nor a stored value is ever a bind parameter (a statement logged with
    its parameters would show them): Postgres numbers the distinct values in a temporary
    table, the migration reads them a batch at a time and sends back only the numbers and
    the hashes, and one UPDATE per table joins on the table.
    """
    conn.execute(
        sa.text(
            "CREATE TEMP TABLE cxloop_rekey (n bigint PRIMARY KEY, old text NOT NULL UNIQUE, "
            "new text) ON COMMIT DROP"
        )
    )
    values = " UNION ".join(f"SELECT {c} AS old FROM {t} WHERE {w}" for t, c, w in columns)
    conn.execute(
        sa.text(
            "INSERT INTO cxloop_rekey (n, old) "
            f"SELECT row_number() OVER (ORDER BY old), old FROM ({values}) AS v"
        )
    )
    last = 0
    while rows := conn.execute(
        sa.text("SELECT n, old FROM cxloop_rekey WHERE n > :last ORDER BY n LIMIT :batch"),
        {"last": last, "batch": _BATCH},
    ).all():
        conn.execute(
            sa.text(
                "UPDATE cxloop_rekey SET new = h.new FROM unnest(:ns, :news) AS h(n, new) "
                "WHERE cxloop_rekey.n = h.n"
            ).bindparams(
                sa.bindparam("ns", type_=pg.ARRAY(sa.BigInteger)),
                sa.bindparam("news", type_=pg.ARRAY(sa.Text)),
            ),
            {"ns": [row.n for row in rows], "news": [new(row.old) for row in rows]},
        )
        last = rows[-1].n
    for table, column, where in columns:
        dedupe = (
            ", dedupe_key = replace(dedupe_key, ':' || alerts.customer_id || ':', "
            "':' || cxloop_rekey.new || ':')"
            if table == "alerts"
            else ""
        )
        conn.execute(
            sa.text(
                f"UPDATE {table} SET {column} = cxloop_rekey.new{dedupe} FROM cxloop_rekey "
                f"WHERE {table}.{column} = cxloop_rekey.old AND {where}"
            )
        )
    conn.execute(sa.text("DROP TABLE cxloop_rekey"))


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
    op.create_table(
        KEY_CHECK_TABLE,
        sa.Column("id", sa.Boolean, primary_key=True),
        sa.Column("check_value", sa.LargeBinary, nullable=False),
        sa.CheckConstraint("id", name="privacy_key_check_one_row"),
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
    op.drop_table(KEY_CHECK_TABLE)
    op.drop_table("erased_customers")
    op.drop_table("erasures")
