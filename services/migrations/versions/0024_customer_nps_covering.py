"""Scorer: ``customer_nps``'s primary key carries each answer's score.

Customer value over a range that ends in the past (``GET /v1/value?from=…&to=…``, the
dashboard's custom range) rates each customer whose latest answer is at or after ``to`` by
their answer before it: one probe of ``customer_nps`` by its key per such customer. Each
probe read the table's row for its score as well as the index. On 1M orders, 200,000
customers and 10M answers, 3.6 s of the 4.5 s statement were these probes (166,000 of them,
21 µs each); with an index of this shape on the freshly vacuumed table, 2.6 s.

With the score in the key's index (``INCLUDE (score)``) a probe reads the index alone on
the pages the visibility map marks all-visible. Rows are appended (and, on erasure, their
key rewritten); autovacuum visits a table for its inserts only after 1,000 rows and 20% more
by default. This table's insert share is lowered to 2%, so that its pages are marked more
often, at the cost of more frequent vacuums of it.

The new index is built ``CONCURRENTLY`` (scorers keep writing, readers keep reading), then
takes the key's place (``PRIMARY KEY USING INDEX``, which renames it ``customer_nps_pkey``).
That statement needs the table alone for an instant: it waits at most 500 ms for its lock
(less than ``deadlock_timeout``, as ``cxloop scorer rebuild`` does), then gives way and tries
again, for about a minute in all, and fails (rolled back, the built index kept) if it
never gets it; running the migration again then swaps without building again. The key's
columns do not change, so every ``ON CONFLICT`` and lookup by it is as before.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-03
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op
from sqlalchemy.exc import DBAPIError

from shared.db import postgres_error

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None

_NEW = "customer_nps_key_next"
_COLUMNS = "(customer_key, occurred_at, event_id)"
LOCK_TIMEOUT = "500ms"
SWAP_ATTEMPTS = 60


def upgrade() -> None:
    _build(f"{_COLUMNS} INCLUDE (score)", key_columns=3, columns=4)
    _swap()
    op.execute("ALTER TABLE customer_nps SET (autovacuum_vacuum_insert_scale_factor = 0.02)")


def downgrade() -> None:
    _build(_COLUMNS, key_columns=3, columns=3)
    _swap()
    op.execute("ALTER TABLE customer_nps RESET (autovacuum_vacuum_insert_scale_factor)")


def _build(definition: str, *, key_columns: int, columns: int) -> None:
    """Build the next key's unique index concurrently, outside the migration's transaction.

    A failed concurrent build leaves an INVALID index behind, and an index of this name
    left by anything else may not be this one: either is dropped and built again.
    """
    with op.get_context().autocommit_block():
        found = (
            op.get_bind()
            .execute(
                sa.text(
                    "SELECT indisvalid AND indisunique AND indpred IS NULL AND indexprs IS NULL"
                    " AND indnkeyatts = :k AND indnatts = :n"
                    " FROM pg_index WHERE indexrelid = to_regclass(:name)"
                ),
                {"name": _NEW, "k": key_columns, "n": columns},
            )
            .scalar()
        )
        if found is False:
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {_NEW}")
        op.execute(
            f"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {_NEW} ON customer_nps {definition}"
        )


def _swap() -> None:
    """Make the built index the key, in a savepoint per attempt, each lock wait bounded."""
    conn = op.get_bind()
    for attempt in range(1, SWAP_ATTEMPTS + 1):
        savepoint = conn.begin_nested()
        try:
            conn.execute(sa.text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            conn.execute(
                sa.text(
                    "ALTER TABLE customer_nps DROP CONSTRAINT customer_nps_pkey, "
                    f"ADD CONSTRAINT customer_nps_pkey PRIMARY KEY USING INDEX {_NEW}"
                )
            )
            conn.execute(sa.text("SET LOCAL lock_timeout TO DEFAULT"))
        except DBAPIError as exc:
            savepoint.rollback()
            error = postgres_error(exc)
            if error is None or error.sqlstate != "55P03" or attempt == SWAP_ATTEMPTS:
                raise
            time.sleep(0.5)
            continue
        savepoint.commit()
        return
