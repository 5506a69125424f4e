"""Scorer: retention counted as activity arrives, not joined at every read.

``retention_counts`` holds, per period (``week``, ``month``) and period start, how many
customers were active in it (``active``: its rows of ``customer_activity``) and how many of
them were active again in the next period (``retained``). ``GET /v1/retention``, the
dashboard's retention panel and the lifetime in ``GET /v1/value`` read it instead of
joining ``customer_activity`` with itself (about a second over 200,000 customers and a
year of months).

The scorer's batches add to it in the transaction that inserts the activity rows: each new
row adds one to its period's ``active``, and one to ``retained`` for each neighbouring
period the customer was already active in (a pair found from both sides counts once).
Batches that insert new rows take one transaction advisory lock before they look for
neighbours, so that two batches adding the two halves of one pair see each other.
``cxloop scorer rebuild`` derives it again from ``customer_activity``; here it is derived
once from what is there.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "retention_counts",
        sa.Column("period", sa.Text, nullable=False),
        sa.Column("period_start", sa.Date, nullable=False),
        sa.Column("active", sa.BigInteger, nullable=False),
        sa.Column("retained", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("period", "period_start", name="retention_counts_pkey"),
        sa.CheckConstraint("period IN ('week', 'month')", name="retention_counts_period_valid"),
    )
    op.execute(
        """
        INSERT INTO retention_counts (period, period_start, active, retained)
        SELECT a.period, a.period_start, count(*), count(b.customer_key)
        FROM customer_activity a
        LEFT JOIN customer_activity b
          ON b.period = a.period AND b.customer_key = a.customer_key
         AND b.period_start = CASE WHEN a.period = 'week' THEN a.period_start + 7
                                   ELSE CAST(a.period_start + interval '1 month' AS date) END
        GROUP BY a.period, a.period_start
        """
    )


def downgrade() -> None:
    op.drop_table("retention_counts")
