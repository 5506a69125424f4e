"""Scorer: the sum of squared scores in every hourly and daily bucket, for CES's margin.

A mean's 95% margin, 1.96·sd/sqrt(n), needs the spread of the scores, which ``n`` and
``score_sum`` alone do not give. ``score_sq_sum`` is added to ``score_buckets`` and
``score_days`` and filled in from the raw ``responses``, in SQL:

* Hours: the squares of each bucket's raw rows, grouped exactly as the write path keys a
  bucket (the UTC hour of ``occurred_at``, metric, scale, channel, survey type, touchpoint,
  and location, product and business unit with NULL as '').
* Answers whose raw rows an erasure deleted (``DELETE /v1/customers/{id}``) still count in
  their bucket's ``n`` and ``score_sum``, but their squares are lost. A bucket's missing m
  answers, whose scores sum to S (both known from the bucket less its raw rows), are filled
  in as evenly as integer scores allow: S mod m answers of ⌊S/m⌋ + 1 and the rest of ⌊S/m⌋,
  the least sum of squares they can have. Exact when they were all alike; otherwise those
  buckets' spread, and so their CES margin, is somewhat understated. A later
  ``cxloop scorer rebuild`` drops erased answers from every count, squares included.
* Days: the sum of their hours, as the write path adds them, so a day is always its hours.

Measured on the test Postgres (2 cores shared with other work, so ±50%), with the bench's
seed SQL (NPS over 100 days, 256 segment combinations) and 1 raw row in 1,000 erased:

* 200,000 responses (171,000 hourly buckets, 26,000 days): 4.2 to 6.2 s for the whole
  upgrade; the hours' UPDATE 1.9 s (0.6 s to group the raw rows, the rest writing rows),
  the days' 0.35 s.
* 1,000,000 responses (494,000 hourly buckets): 21.5 s; the hours' UPDATE 9.1 s (4.3 s
  grouping and joining, 4.8 s writing).

It reads every raw row once (a hash aggregate, ``work_mem`` raised for this transaction
only, so it does not sort on disk: 2.9 s at 200,000 without) and writes every bucket row
once. At 10M responses expect one to two minutes (extrapolated, not measured): grouping
grows with the raw rows, writing with the buckets (at most hours × segment combinations).
Each bucket row gets a new version and stays locked until the migration commits: stop the
scorer (as any migration needs) and let autovacuum reclaim a table's worth of dead rows
afterwards. Adding the column itself (a constant default) rewrites nothing.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

_TABLES = ("score_buckets", "score_days")
_DIMENSIONS = ("channel", "survey_type", "touchpoint", "location", "product", "business_unit")
_KEY = ("bucket_start", "metric", "scale", *_DIMENSIONS)


def _spread_evenly(m: str, s: str) -> str:
    """The least sum of squares of ``m`` integer scores summing to ``s`` (0 when m <= 0).

    ``m`` and ``s`` are bigint expressions, so ``/`` and ``%`` are integer division."""
    q, r = f"(({s}) / ({m}))", f"(({s}) % ({m}))"
    return (
        f"CASE WHEN {m} > 0 THEN {r} * ({q} + 1) * ({q} + 1) + ({m} - {r}) * {q} * {q} ELSE 0 END"
    )


_MATCH = " AND ".join(f"b.{k} = r.{k}" for k in _KEY)

_HOURS = f"""
UPDATE score_buckets AS b
SET score_sq_sum = r.squares + {_spread_evenly("b.n - r.n", "b.score_sum - r.score_sum")}
FROM (
    SELECT date_trunc('hour', occurred_at, 'UTC') AS bucket_start, metric, scale, channel,
           survey_type, touchpoint, coalesce(location, '') AS location,
           coalesce(product, '') AS product, coalesce(business_unit, '') AS business_unit,
           count(*) AS n, sum(score) AS score_sum,
           sum(CAST(score AS integer) * score) AS squares
    FROM responses
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9
) AS r
WHERE {_MATCH}
"""  # noqa: S608 - constant names only

_DAYS = f"""
UPDATE score_days AS b SET score_sq_sum = CAST(r.squares AS bigint)
FROM (
    SELECT date_trunc('day', bucket_start, 'UTC') AS bucket_start, metric, scale,
           {", ".join(_DIMENSIONS)}, sum(score_sq_sum) AS squares
    FROM score_buckets
    GROUP BY {", ".join(str(i) for i in range(1, len(_KEY) + 1))}
) AS r
WHERE {_MATCH} AND r.squares <> 0
"""  # noqa: S608 - constant names only

# Rows the statements above left at 0 although their scores were not all 0: an hour none of
# whose raw rows is left (every answer missing), and, should one lack its hours, a day.
_ALL_MISSING = """
UPDATE {table} SET score_sq_sum = {spread} WHERE score_sq_sum = 0 AND score_sum <> 0
"""


def upgrade() -> None:
    for table in _TABLES:
        op.add_column(
            table,
            sa.Column("score_sq_sum", sa.BigInteger, nullable=False, server_default="0"),
        )
    # Enough to group the raw rows in memory rather than sort them on disk; this
    # migration's transaction only.
    op.execute("SET LOCAL work_mem = '256MB'")
    op.execute(_HOURS)
    op.execute(_ALL_MISSING.format(table="score_buckets", spread=_spread_evenly("n", "score_sum")))
    op.execute(_DAYS)
    op.execute(_ALL_MISSING.format(table="score_days", spread=_spread_evenly("n", "score_sum")))


def downgrade() -> None:
    for table in _TABLES:
        op.drop_column(table, "score_sq_sum")
