"""Scorer: ``customer_nps``'s primary key carries each answer's score.

Customer value over a range that ends in the past (``GET /v1/value?from=…&to=…``, the
dashboard's custom range) rates each customer whose latest answer is at or after ``to`` by
their answer before it: one probe of ``customer_nps`` by its key per such customer. Each
probe read the table's row for its score as well as the index. On 1M orders, 200,000
customers and 10M answers, 3.6 s of the 4.5 s statement were these probes (166,000 of them,
21 µs each); with an index of this shape on the freshly vacuumed table, 2.6 s.

With the score in the key's index (``INCLUDE (score)``) a probe reads the index alone on
the pages the visibility map marks all-visible. The table is only appended to (and
pseudonymised on erasure), and autovacuum visits an insert-only table only after 20% more
rows by default: this table's threshold is lowered to 2%, so that the answers of the last
weeks are marked too (a vacuum of an insert-only table reads only its new pages).

The new index is built ``CONCURRENTLY`` (scorers keep writing, readers keep reading), then
takes the key's place in one short ``ALTER`` (``PRIMARY KEY USING INDEX``) that waits at
most ``lock_timeout`` for its lock: the migration then fails, and running it again resumes.
The key's columns do not change, so every ``ON CONFLICT`` and lookup by it is as before.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None

_NEW = "customer_nps_key_score"


def upgrade() -> None:
    with op.get_context().autocommit_block():
        # A failed concurrent build leaves an INVALID index behind: dropped first.
        invalid = op.get_bind().scalar(
            sa.text("SELECT 1 FROM pg_index WHERE indexrelid = to_regclass(:n) AND NOT indisvalid"),
            {"n": _NEW},
        )
        if invalid:
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {_NEW}")
        op.execute(
            f"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {_NEW} "
            "ON customer_nps (customer_key, occurred_at, event_id) INCLUDE (score)"
        )
    op.execute("SET LOCAL lock_timeout = '10s'")
    # The new index becomes the key, renamed to the key's name.
    op.execute(
        "ALTER TABLE customer_nps DROP CONSTRAINT customer_nps_pkey, "
        f"ADD CONSTRAINT customer_nps_pkey PRIMARY KEY USING INDEX {_NEW}"
    )
    op.execute("ALTER TABLE customer_nps SET (autovacuum_vacuum_insert_scale_factor = 0.02)")


def downgrade() -> None:
    op.execute("ALTER TABLE customer_nps RESET (autovacuum_vacuum_insert_scale_factor)")
    op.execute(
        "ALTER TABLE customer_nps DROP CONSTRAINT customer_nps_pkey, "
        "ADD CONSTRAINT customer_nps_pkey PRIMARY KEY (customer_key, occurred_at, event_id)"
    )
