"""Scorer: ``customer_nps``'s primary key carries each answer's score.

Customer value over a range that ends in the past (``GET /v1/value?from=…&to=…``, the
dashboard's custom range) rates each customer whose latest answer is at or after ``to`` by
their answer before it: one probe of ``customer_nps`` by its key per such customer. Each
probe read the table's row for its score as well as the index. On 1M orders, 200,000
customers and 10M answers, 3.6 s of the 4.5 s statement were these probes (166,000 of them,
21 µs each). With the score in the key's index (``INCLUDE (score)``), a probe is an
index-only scan once the table's pages are all-visible (autovacuum keeps them so; the table
is only appended to, and pseudonymised on erasure): the statement took 2.6 s there.

The key's columns do not change, so every ``ON CONFLICT`` and lookup by it is as before;
the index is rebuilt once here (an exclusive lock on the table while it builds).

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE customer_nps DROP CONSTRAINT customer_nps_pkey, "
        "ADD CONSTRAINT customer_nps_pkey PRIMARY KEY (customer_key, occurred_at, event_id) "
        "INCLUDE (score)"
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE customer_nps DROP CONSTRAINT customer_nps_pkey, "
        "ADD CONSTRAINT customer_nps_pkey PRIMARY KEY (customer_key, occurred_at, event_id)"
    )
