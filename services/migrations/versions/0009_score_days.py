"""Scorer: daily score buckets beside the hourly ones, so long windows sum days, not hours.

A 90-day score over hourly buckets summed up to 2,160 rows per segment combination: half a
second and more over a few million answers. Whole days now come from ``score_days``; only
a window's partial first and last day are read hour by hour. Existing history is rolled up
here.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_DIMENSIONS = ("channel", "survey_type", "touchpoint", "location", "product", "business_unit")
_COUNTS = ("n", "score_sum", "promoters", "passives", "detractors", "satisfied", "easy")


def upgrade() -> None:
    op.create_table(
        "score_days",
        sa.Column("bucket_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("metric", sa.Text, nullable=False),
        sa.Column("scale", sa.SmallInteger, nullable=False),
        *(sa.Column(d, sa.Text, nullable=False) for d in _DIMENSIONS),
        *(sa.Column(c, sa.BigInteger, nullable=False) for c in _COUNTS),
        sa.PrimaryKeyConstraint("metric", "bucket_start", "scale", *_DIMENSIONS,
                                name="score_days_pkey"),
    )  # fmt: skip
    op.execute("ALTER TABLE score_days SET (fillfactor = 70)")
    keys = ", ".join(("metric", "scale", *_DIMENSIONS))
    sums = ", ".join(f"sum({c})" for c in _COUNTS)
    # Built from the constant column names above only.
    rollup = "INSERT INTO score_days (bucket_start, {k}, {c}) SELECT {day}, {k}, {s} " \
        "FROM score_buckets GROUP BY {day}, {k}"  # fmt: skip
    op.execute(
        rollup.format(
            k=keys, c=", ".join(_COUNTS), s=sums, day="date_trunc('day', bucket_start, 'UTC')"
        )
    )


def downgrade() -> None:
    op.drop_table("score_days")
