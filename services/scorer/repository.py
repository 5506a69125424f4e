"""The scorer's SQL: apply a batch idempotently with bulk writes, and sum buckets.

Every statement of :func:`apply_batch` runs in the caller's transaction: the ledger rows,
the raw responses, the bucket increments, the ticket facts and the activity commit together
or not at all. Rows are sorted by key so that concurrent instances lock them in one order.
A batch's responses are COPYed once, into a staging table, and folded there by SQL into
everything they add (:data:`_APPLY_STAGED`); ``cxloop scorer rebuild`` folds the raw
responses with the same statements.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Final, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from services.scorer.aggregates import (
    Completion,
    Refund,
    activity,
    fold_orders,
    fold_tickets,
)
from services.scorer.models import COUNTS
from shared.events import (
    NPS_PASSIVE_FROM,
    NPS_PROMOTER_FROM,
    Metric,
    NpsCategory,
    ResponseSubmitted,
    TouchpointEvent,
)
from shared.scoring import EASY_FROM, SATISFIED_FROM, in_utc


@dataclass(frozen=True)
class Applied:
    """The events of a batch applied for the first time."""

    responses: list[ResponseSubmitted]
    touchpoints: list[TouchpointEvent]
    activity: bool = False
    """Whether it staged activity: new rows may wait in new_activity for count_retention."""


def _columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    return {name: [row[name] for row in rows] for name in rows[0]}


async def _execute(conn: AsyncConnection, sql: str, rows: Sequence[Mapping[str, Any]]) -> None:
    if rows:
        await conn.execute(sa.text(sql), _columns(rows))


_LEDGER = """
INSERT INTO scorer_applied_events (event_id)
SELECT * FROM unnest(CAST(:event_id AS uuid[]))
ON CONFLICT DO NOTHING
RETURNING event_id
"""

RESPONSE_COLUMNS = (
    "event_id", "submission_id", "metric", "scale", "score", "survey_type", "channel",
    "touchpoint", "location", "product", "business_unit", "customer_id", "ticket_id", "comment",
    "reasons", "locale", "source", "occurred_at", "received_at",
)  # fmt: skip

_DIMS = "channel, survey_type, touchpoint, location, product, business_unit"
_SCORE_KEY = f"bucket_start, metric, scale, {_DIMS}"
_REASON_KEY = f"bucket_start, category, reason, {_DIMS}"
_ACTIVITY_KEY = "period, period_start, customer_key"

# A batch's responses are COPYed into a per-session staging table, and folded from there
# into staged bucket, reason and activity rows by SQL; those are merged by one INSERT ...
# SELECT each. COPY's binary rows cost a fraction of unnest()'s array parameters, and
# Postgres folds in C what the scorer's Python spent about a fifth of its time on (py-spy).
# ON COMMIT DELETE ROWS empties them with each transaction without churning the catalog;
# the DELETEs empty them between two segments of one transaction (a batch an erasure
# splits). Not new_activity: it gathers the transaction's new activity rows, over every
# segment of a batch, for count_retention at its end. Their columns are spelt out, not
# LIKE the tables they stage for: LIKE would lock those tables (ACCESS SHARE) in a
# session's first batch, before it writes customer_latest_nps, against the order
# rebuild.LOCKS relies on (tests/integration/test_sql_fold.py holds the types equal).
_STAGED_TABLES: Final = {
    "staged_responses": (
        "event_id uuid, submission_id uuid, metric text, scale smallint, score smallint,"
        " survey_type text, channel text, touchpoint text, location text, product text,"
        " business_unit text, customer_id text, ticket_id text, comment text, reasons text[],"
        " locale text, source text, occurred_at timestamptz, received_at timestamptz"
    ),
    "staged_scores": (
        f"bucket_start timestamptz, metric text, scale smallint, {_DIMS.replace(',', ' text,')}"
        f" text, {', '.join(f'{c} bigint' for c in COUNTS)}"
    ),
    "staged_reasons": (
        f"bucket_start timestamptz, category text, reason text,"
        f" {_DIMS.replace(',', ' text,')} text, n bigint"
    ),
    "staged_activity": "period text, period_start date, customer_key text",
    "new_activity": "period text, period_start date, customer_key text",
}
_STAGING = (
    "".join(
        f"CREATE TEMP TABLE IF NOT EXISTS {name} ({columns}) ON COMMIT DELETE ROWS;\n"
        for name, columns in _STAGED_TABLES.items()
    )
    + """
DELETE FROM staged_responses;
DELETE FROM staged_scores;
DELETE FROM staged_reasons;
DELETE FROM staged_activity;
"""
)

# The fold of responses in SQL, from a source table (staged_responses live, responses for a
# rebuild): the same keys and counts as aggregates.fold and fold_reasons, which
# tests/integration/test_sql_fold.py holds them equal to. A bucket is the UTC hour of
# occurred_at; an absent segment is ''; a reason named twice in one answer counts once.
_HOUR = "date_trunc('hour', occurred_at, 'UTC')"
_SEGMENTS = (
    "channel, survey_type, touchpoint,"
    " coalesce(location, ''), coalesce(product, ''), coalesce(business_unit, '')"
)
_NPS, _CSAT, _CES = (f"metric = '{m.value}'" for m in (Metric.NPS, Metric.CSAT, Metric.CES))
_EASY = " ".join(f"WHEN {scale} THEN score >= {least}" for scale, least in EASY_FROM.items())
_CATEGORY = (
    f"CASE WHEN score >= {NPS_PROMOTER_FROM} THEN '{NpsCategory.PROMOTER.value}'"
    f" WHEN score >= {NPS_PASSIVE_FROM} THEN '{NpsCategory.PASSIVE.value}'"
    f" ELSE '{NpsCategory.DETRACTOR.value}' END"
)


def _fold_scores(source: str) -> str:
    # sum(score * score) of two smallints would overflow past 181 (as migration 0017).
    return f"""
INSERT INTO staged_scores ({_SCORE_KEY}, {", ".join(COUNTS)})
SELECT {_HOUR}, metric, scale, {_SEGMENTS},
    count(*), sum(score), sum(CAST(score AS integer) * score),
    count(*) FILTER (WHERE {_NPS} AND score >= {NPS_PROMOTER_FROM}),
    count(*) FILTER (WHERE {_NPS} AND score >= {NPS_PASSIVE_FROM} AND score < {NPS_PROMOTER_FROM}),
    count(*) FILTER (WHERE {_NPS} AND score < {NPS_PASSIVE_FROM}),
    count(*) FILTER (WHERE {_CSAT} AND score >= {SATISFIED_FROM}),
    count(*) FILTER (WHERE {_CES} AND CASE scale {_EASY} ELSE false END)
FROM {source} GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9
"""


def _fold_reasons(source: str) -> str:
    return f"""
INSERT INTO staged_reasons ({_REASON_KEY}, n)
SELECT {_HOUR}, {_CATEGORY}, u.reason, {_SEGMENTS}, count(*)
FROM {source} r CROSS JOIN LATERAL (SELECT DISTINCT x FROM unnest(r.reasons) AS x) u(reason)
WHERE {_NPS} GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9
"""


# A customer's ISO week and month of each answer, in UTC (aggregates.period_starts).
_FOLD_ACTIVITY = """
INSERT INTO staged_activity (period, period_start, customer_key)
SELECT 'week', CAST(date_trunc('week', occurred_at AT TIME ZONE 'UTC') AS date), customer_id
FROM staged_responses
UNION
SELECT 'month', CAST(date_trunc('month', occurred_at AT TIME ZONE 'UTC') AS date), customer_id
FROM staged_responses
"""
# Plain INSERTs, without ON CONFLICT, are safe: a raw row (and its customer_nps row) is
# only ever written in the transaction that adds its id to the ledger, and the ledger just
# said these ids are new.
_STORE_RESPONSES = f"""
INSERT INTO responses ({", ".join(RESPONSE_COLUMNS)})
SELECT {", ".join(RESPONSE_COLUMNS)} FROM staged_responses
"""


def _store_nps(source: str) -> str:
    """The NPS answers of the responses in ``source``, as rows of ``customer_nps``."""
    return f"""
INSERT INTO customer_nps (customer_key, occurred_at, event_id, score)
SELECT customer_id, occurred_at, event_id, score FROM {source} WHERE {_NPS}
"""


_STORE_NPS = _store_nps("staged_responses")
# A customer's latest answer is the greatest (occurred_at, event id): any arrival order
# leaves the same row. One row per customer, in key order (row locks in one order).
_LATEST_NPS = f"""
INSERT INTO customer_latest_nps AS l (customer_key, occurred_at, event_id, score)
SELECT * FROM (
    SELECT DISTINCT ON (customer_id) customer_id, occurred_at, event_id, score
    FROM staged_responses WHERE {_NPS}
    ORDER BY customer_id, occurred_at DESC, event_id DESC
) latest ORDER BY 1
ON CONFLICT ON CONSTRAINT customer_latest_nps_pkey DO UPDATE SET
    occurred_at = EXCLUDED.occurred_at, event_id = EXCLUDED.event_id, score = EXCLUDED.score
WHERE (EXCLUDED.occurred_at, EXCLUDED.event_id) > (l.occurred_at, l.event_id)
"""

# Built from constant column names only. Rows merge in key order, so that concurrent
# instances take the same row locks in the same order and cannot deadlock.
_MERGE_SCORES = f"""
INSERT INTO score_buckets AS b ({_SCORE_KEY}, {", ".join(COUNTS)})
SELECT {_SCORE_KEY}, {", ".join(COUNTS)} FROM staged_scores ORDER BY {_SCORE_KEY}
ON CONFLICT ON CONSTRAINT score_buckets_pkey DO UPDATE SET
    {", ".join(f"{c} = b.{c} + EXCLUDED.{c}" for c in COUNTS)}
"""

_DAY_KEY = f"date_trunc('day', bucket_start, 'UTC'), metric, scale, {_DIMS}"
_MERGE_SCORE_DAYS = f"""
INSERT INTO score_days AS b ({_SCORE_KEY}, {", ".join(COUNTS)})
SELECT {_DAY_KEY}, {", ".join(f"sum({c})" for c in COUNTS)}
FROM staged_scores GROUP BY {_DAY_KEY} ORDER BY {_DAY_KEY}
ON CONFLICT ON CONSTRAINT score_days_pkey DO UPDATE SET
    {", ".join(f"{c} = b.{c} + EXCLUDED.{c}" for c in COUNTS)}
"""

_MERGE_REASONS = f"""
INSERT INTO reason_buckets AS b ({_REASON_KEY}, n)
SELECT {_REASON_KEY}, n FROM staged_reasons ORDER BY {_REASON_KEY}
ON CONFLICT ON CONSTRAINT reason_buckets_pkey DO UPDATE SET n = b.n + EXCLUDED.n
"""

# The activity rows new to customer_activity are kept in new_activity: they, and only they,
# add to retention_counts (count_retention). A row staged twice (a customer's response and
# touchpoint event in one period) is inserted once: DO NOTHING skips the second.
_MERGE_ACTIVITY = f"""
WITH inserted AS (
    INSERT INTO customer_activity ({_ACTIVITY_KEY})
    SELECT {_ACTIVITY_KEY} FROM staged_activity ORDER BY {_ACTIVITY_KEY}
    ON CONFLICT DO NOTHING
    RETURNING {_ACTIVITY_KEY}
)
INSERT INTO new_activity ({_ACTIVITY_KEY}) SELECT {_ACTIVITY_KEY} FROM inserted
"""

# Everything a batch's staged responses add, in the order every batch takes its row locks
# (raw rows, NPS answers, latest answers, buckets, reasons, activity): one simple query,
# one round trip (each statement with its own snapshot).
_APPLY_STAGED = ";".join(
    (
        _STORE_RESPONSES,
        _STORE_NPS,
        _LATEST_NPS,
        _fold_scores("staged_responses"),
        _fold_reasons("staged_responses"),
        _FOLD_ACTIVITY,
        _MERGE_SCORES,
        _MERGE_SCORE_DAYS,
        _MERGE_REASONS,
        _MERGE_ACTIVITY,
    )
)

# A customer's activity in two neighbouring periods is one retained pair, counted for the
# earlier period, whichever of its two rows arrives last. Two batches in flight (or two
# scorers) may insert the two rows at once, and neither statement sees a row the other has
# not committed; so a transaction that inserted any new row takes this transaction advisory
# lock before it looks for neighbours, as its last statements, and holds it to its commit:
# of two such transactions the second sees the first's rows (READ COMMITTED: each statement
# after the lock reads what its previous holder committed), and the first could not see the
# second's. Last, after every other lock a batch takes (bucket rows, orders, customers), so
# that no transaction waits for another while holding it, but for the commit. A batch with
# no new activity takes no lock. The key is a space of its own (0x6352, "cR") with one key.
RETENTION_LOCK: Final = 0x6352
_NEXT = """CASE WHEN {t}.period = 'week' THEN {t}.period_start + 7
         ELSE CAST({t}.period_start + interval '1 month' AS date) END"""
_PREVIOUS = """CASE WHEN {t}.period = 'week' THEN {t}.period_start - 7
         ELSE CAST({t}.period_start - interval '1 month' AS date) END"""
_LOCK_RETENTION = f"""
SELECT pg_advisory_xact_lock({RETENTION_LOCK}, 0) FROM (SELECT 1 FROM new_activity LIMIT 1) s
"""
# An erasure between two segments of a batch: its new rows are the pseudonym's now, as the
# customer's rows in customer_activity are.
_RENAME_NEW_ACTIVITY = "UPDATE new_activity SET customer_key = $2 WHERE customer_key = $1"
# Each new row: +1 active in its period; +1 retained for the period before it if the
# customer was active then; +1 retained for its own period if the customer is active in the
# next one and that row is not itself new here (else that row counts the pair, as the later).
# Each neighbour is one index lookup: the LIMIT keeps Postgres from flattening the LATERAL
# subquery into the outer query, so it runs once per new row. An EXISTS was flattened into
# a semi-join, and with the planner's guess of hundreds of rows for the unanalysed
# new_activity that became a hash join reading every row of customer_activity (14 ms per
# batch at the median in bench/latency.py, under the retention lock). test_retention_counts
# guards it.
_COUNT_RETENTION = f"""
INSERT INTO retention_counts AS r (period, period_start, active, retained)
SELECT period, period_start, sum(active), sum(retained) FROM (
    SELECT n.period, n.period_start, 1 AS active, 0 AS retained FROM new_activity n
    UNION ALL
    SELECT n.period, {_PREVIOUS.format(t="n")}, 0, 1 FROM new_activity n
    CROSS JOIN LATERAL (SELECT 1 FROM customer_activity a
                        WHERE a.period = n.period AND a.customer_key = n.customer_key
                          AND a.period_start = {_PREVIOUS.format(t="n")} LIMIT 1) earlier
    UNION ALL
    SELECT n.period, n.period_start, 0, 1 FROM new_activity n
    CROSS JOIN LATERAL (SELECT 1 FROM customer_activity a
                        WHERE a.period = n.period AND a.customer_key = n.customer_key
                          AND a.period_start = {_NEXT.format(t="n")} LIMIT 1) later
    WHERE NOT EXISTS (SELECT 1 FROM new_activity m
                      WHERE m.period = n.period AND m.customer_key = n.customer_key
                        AND m.period_start = {_NEXT.format(t="n")})
) x
GROUP BY period, period_start ORDER BY period, period_start
ON CONFLICT ON CONSTRAINT retention_counts_pkey DO UPDATE SET
    active = r.active + EXCLUDED.active, retained = r.retained + EXCLUDED.retained
"""

# retention_counts derived again from customer_activity (cxloop scorer rebuild).
_DERIVE_RETENTION = f"""
INSERT INTO retention_counts (period, period_start, active, retained)
SELECT a.period, a.period_start, count(*), count(b.customer_key)
FROM customer_activity a
LEFT JOIN customer_activity b
  ON b.period = a.period AND b.customer_key = a.customer_key
 AND b.period_start = {_NEXT.format(t="a")}
GROUP BY a.period, a.period_start
"""


async def derive_retention(conn: AsyncConnection) -> int:
    """Derive every row of ``retention_counts`` again from ``customer_activity``, under
    the retention lock: a live batch counts its new activity before or after, never across.
    DELETE, not TRUNCATE, so that readers of the counts never wait for it. Return the
    number of periods counted."""
    await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k, 0)"), {"k": RETENTION_LOCK})
    await conn.execute(sa.text("DELETE FROM retention_counts"))
    return (await conn.execute(sa.text(_DERIVE_RETENTION))).rowcount


async def count_retention(conn: AsyncConnection) -> None:
    """Add the activity rows this transaction inserted (every :func:`apply_batch` since its
    start that was given activity) to ``retention_counts``: the transaction's last
    statements, taking the retention lock only if there is any."""
    driver = await _driver(conn)
    await driver.execute(";".join((_LOCK_RETENTION, _COUNT_RETENTION)))


async def rename_new_activity(conn: AsyncConnection, customer_id: str, pseudonym: str) -> None:
    """Give the pseudonym of an erased customer the activity rows this transaction inserted
    for them and has not counted yet."""
    await (await _driver(conn)).execute(_RENAME_NEW_ACTIVITY, customer_id, pseudonym)


_TICKETS = """
INSERT INTO tickets AS t (source, ticket_id, customer_id, channel, priority, priority_at,
    created_at, first_response_at, resolved_at, reopened_at, reopens, first_seen_at)
SELECT * FROM unnest(
    CAST(:source AS text[]), CAST(:ticket_id AS text[]), CAST(:customer_id AS text[]),
    CAST(:channel AS text[]), CAST(:priority AS text[]), CAST(:priority_at AS timestamptz[]),
    CAST(:created_at AS timestamptz[]), CAST(:first_response_at AS timestamptz[]),
    CAST(:resolved_at AS timestamptz[]), CAST(:reopened_at AS timestamptz[]),
    CAST(:reopens AS integer[]), CAST(:first_seen_at AS timestamptz[])
)
ON CONFLICT ON CONSTRAINT tickets_pkey DO UPDATE SET
    channel = CASE WHEN EXCLUDED.created_at < t.created_at
                     OR (t.created_at IS NULL AND EXCLUDED.created_at IS NOT NULL)
                   THEN EXCLUDED.channel ELSE t.channel END,
    priority = CASE WHEN EXCLUDED.priority_at >= t.priority_at
                      OR (t.priority_at IS NULL AND EXCLUDED.priority_at IS NOT NULL)
                    THEN EXCLUDED.priority ELSE t.priority END,
    priority_at = GREATEST(t.priority_at, EXCLUDED.priority_at),
    created_at = LEAST(t.created_at, EXCLUDED.created_at),
    first_response_at = LEAST(t.first_response_at, EXCLUDED.first_response_at),
    resolved_at = GREATEST(t.resolved_at, EXCLUDED.resolved_at),
    reopened_at = GREATEST(t.reopened_at, EXCLUDED.reopened_at),
    reopens = t.reopens + EXCLUDED.reopens,
    first_seen_at = LEAST(t.first_seen_at, EXCLUDED.first_seen_at)
"""


async def apply_batch(
    conn: AsyncConnection, events: Sequence[ResponseSubmitted | TouchpointEvent]
) -> Applied:
    """Store and count the events not applied before; return those new ones. Their new
    activity waits in ``new_activity`` for :func:`count_retention`, which the transaction
    runs once, after its last ``apply_batch``."""
    unique = {e.event_id: e for e in events}
    if not unique:
        return Applied([], [])
    driver = await _driver(conn)
    # Sorted, like every other write here: batches in flight at once then wait on each
    # other's redelivered ids in one order instead of deadlocking. By the ids' integers:
    # the order of UUIDs and of Postgres's uuid, without a Python __lt__ per comparison.
    new_ids = {row[0] for row in await driver.fetch(_LEDGER_IDS, sorted(unique, key=_uuid_order))}
    fresh = [e for event_id, e in unique.items() if event_id in new_ids]
    # By exact type first: a failing isinstance on a pydantic model goes through ABCMeta's
    # Python __instancecheck__ (a match returns early in C); subclasses still fall through.
    responses: list[ResponseSubmitted] = []
    touchpoints: list[TouchpointEvent] = []
    for e in fresh:
        kind = type(e)
        if kind is ResponseSubmitted:
            responses.append(cast(ResponseSubmitted, e))
        elif kind is TouchpointEvent:
            touchpoints.append(cast(TouchpointEvent, e))
        elif isinstance(e, ResponseSubmitted):
            responses.append(e)
        elif isinstance(e, TouchpointEvent):
            touchpoints.append(e)
    # Checked first: an event's time past the calendar in UTC is a PermanentError naming
    # its field, not an OverflowError of the driver's COPY (a bug, retried for ever). Only
    # the first and last years of the calendar can pass it in UTC.
    for e in responses:
        if e.occurred_at.year in _CALENDAR_ENDS:
            in_utc(e.occurred_at)
        if e.received_at.year in _CALENDAR_ENDS:
            in_utc(e.received_at, "received_at")
    active = activity(list(touchpoints)) if touchpoints else set()
    tickets = _sorted(_as_dict(facts) for facts in fold_tickets(touchpoints).values())
    completions, refunds = fold_orders(touchpoints)
    if responses or active:
        await driver.execute(_STAGING)
        if responses:
            await driver.copy_records_to_table(
                "staged_responses",
                records=[response_record(e) for e in responses],
                columns=RESPONSE_COLUMNS,
            )
        if active:
            await driver.copy_records_to_table(
                "staged_activity", records=list(active), columns=_ACTIVITY_KEY.split(", ")
            )
        await driver.execute(_APPLY_STAGED if responses else _MERGE_ACTIVITY)
    await _execute(conn, _TICKETS, tickets)
    await apply_orders(conn, completions, refunds)
    return Applied(responses, touchpoints, bool(responses or active))


def _uuid_order(event_id: uuid.UUID) -> int:
    return event_id.int


_CALENDAR_ENDS: Final = frozenset({1, 9999})


# The ledger statement for the driver itself (positional parameters): the hot path's
# statements skip SQLAlchemy's text() compilation and result rows.
_LEDGER_IDS = """
INSERT INTO scorer_applied_events (event_id)
SELECT * FROM unnest($1::uuid[])
ON CONFLICT DO NOTHING
RETURNING event_id
"""


_DERIVE_LATEST_NPS = """
INSERT INTO customer_latest_nps (customer_key, occurred_at, event_id, score)
SELECT DISTINCT ON (customer_key) customer_key, occurred_at, event_id, score
FROM customer_nps {where}
ORDER BY customer_key, occurred_at DESC, event_id DESC
"""


# The NPS answers of raw responses that customer_nps lacks: those an older scorer stored
# during a rolling deploy. Erased customers' answers have no raw response: they stay.
_RESTORE_NPS = f"{_store_nps('responses')}ON CONFLICT DO NOTHING\n"
# Data-modifying WITH queries share the statement's one snapshot, and each runs to its end
# whether or not the query reads it.
_FOLD_STORED = f"""
WITH scores AS ({_fold_scores("responses")} RETURNING n),
reasons AS ({_fold_reasons("responses")}),
restored AS ({_RESTORE_NPS})
SELECT coalesce(sum(n), 0) FROM scores
"""


async def derive_latest_nps(conn: AsyncConnection, keys: set[str] | None = None) -> None:
    """Derive ``customer_latest_nps`` again from ``customer_nps``: for ``keys`` only, or
    (None) for every customer."""
    if keys is None:
        # DELETE, not TRUNCATE: readers keep the old rows until this commits (a rebuild
        # holds the table against writers only).
        await conn.execute(sa.text("DELETE FROM customer_latest_nps"))
        await conn.execute(sa.text(_DERIVE_LATEST_NPS.format(where="")))
        return
    params = {"k": sorted(keys)}
    await conn.execute(
        sa.text("DELETE FROM customer_latest_nps WHERE customer_key = ANY(CAST(:k AS text[]))"),
        params,
    )
    where = "WHERE customer_key = ANY(CAST(:k AS text[]))"
    await conn.execute(sa.text(_DERIVE_LATEST_NPS.format(where=where)), params)


# Of two events for one refund, or for one order's completion, the earliest by
# (occurred_at, event id) wins: any arrival order leaves the same row.
_REFUNDS = """
INSERT INTO order_refunds AS r (order_id, refund_id, currency, amount_minor, occurred_at, event_id)
SELECT * FROM unnest(
    CAST(:order_id AS text[]), CAST(:refund_id AS text[]), CAST(:currency AS text[]),
    CAST(:amount_minor AS bigint[]), CAST(:occurred_at AS timestamptz[]),
    CAST(:event_id AS uuid[])
) ORDER BY 1, 2
ON CONFLICT ON CONSTRAINT order_refunds_pkey DO UPDATE SET
    currency = EXCLUDED.currency, amount_minor = EXCLUDED.amount_minor,
    occurred_at = EXCLUDED.occurred_at, event_id = EXCLUDED.event_id
WHERE (EXCLUDED.occurred_at, EXCLUDED.event_id) < (r.occurred_at, r.event_id)
"""

# Transaction advisory locks of the two-int4 form, per order id and per customer id, each
# in a key space of its own (shared.erasure's erasure locks use 0x6378). Two batches in
# flight at once must see each other's writes to an order or a customer: a row lock reaches
# only rows the statement's snapshot sees, never one another transaction has inserted and
# not committed, whereas an advisory lock is taken on a key, and once it is held every
# statement after it (READ COMMITTED) sees what its previous holder committed. Every
# transaction takes all its order locks, then all its customer locks, each set sorted by
# key in one statement: two phases in one global order, so no two wait in a cycle. A key is
# one of LOCK_STRIPES stripes of the id's hash, not the id itself: every lock takes a slot
# of Postgres's shared lock table (64 per connection by default), and a backlog's batch of
# thousands of orders from thousands of customers, two such batches in flight, would run
# it out ("out of shared memory", retried for ever). Two ids in one stripe only wait for
# each other.
ORDER_LOCKS: Final = 0x634F
CUSTOMER_LOCKS: Final = 0x6343
LOCK_STRIPES: Final = 1024
_LOCK_KEYS = f"""
SELECT count(pg_advisory_xact_lock(:space, k))
FROM (
    SELECT DISTINCT hashtext(x) & {LOCK_STRIPES - 1} AS k
    FROM unnest(CAST(:keys AS text[])) AS u(x) ORDER BY k
) s
"""


async def lock_keys(conn: AsyncConnection, space: int, keys: Iterable[str]) -> None:
    """Take this transaction's advisory lock of each of ``keys`` in ``space``
    (``ORDER_LOCKS``, ``CUSTOMER_LOCKS``), in the order of their hashes."""
    await conn.execute(sa.text(_LOCK_KEYS), {"space": space, "keys": sorted(set(keys))})


# Whose the batch's orders were, read under their locks: every owner committed so far.
_OWNERS = """
SELECT order_id, customer_id FROM orders WHERE order_id = ANY(CAST(:order_id AS text[]))
"""

# A refund seen before its order leaves a row with completed_at (and the rest) NULL.
_ORDERS = """
INSERT INTO orders AS o (order_id, customer_id, currency, amount_minor, completed_at,
    completed_event, channel, location, product, business_unit)
SELECT * FROM unnest(
    CAST(:order_id AS text[]), CAST(:customer_id AS text[]), CAST(:currency AS text[]),
    CAST(:amount_minor AS bigint[]), CAST(:completed_at AS timestamptz[]),
    CAST(:completed_event AS uuid[]), CAST(:channel AS text[]), CAST(:location AS text[]),
    CAST(:product AS text[]), CAST(:business_unit AS text[])
) ORDER BY 1
ON CONFLICT ON CONSTRAINT orders_pkey DO UPDATE SET
    customer_id = EXCLUDED.customer_id, currency = EXCLUDED.currency,
    amount_minor = EXCLUDED.amount_minor, completed_at = EXCLUDED.completed_at,
    completed_event = EXCLUDED.completed_event, channel = EXCLUDED.channel,
    location = EXCLUDED.location, product = EXCLUDED.product,
    business_unit = EXCLUDED.business_unit
WHERE EXCLUDED.completed_at IS NOT NULL
  AND (o.completed_at IS NULL
       OR (EXCLUDED.completed_at, EXCLUDED.completed_event) < (o.completed_at, o.completed_event))
"""

# An order's refunds in its own currency, capped at its amount (a refund in another
# currency, or before the order, counts for nothing until it matches one).
_REFUNDED = """
UPDATE orders o SET refunded_minor = x.refunded
FROM (
    SELECT o2.order_id,
           least(coalesce(sum(r.amount_minor) FILTER (WHERE r.currency = o2.currency), 0),
                 coalesce(o2.amount_minor, 0)) AS refunded
    FROM orders o2 LEFT JOIN order_refunds r ON r.order_id = o2.order_id
    {where}
    GROUP BY o2.order_id, o2.amount_minor
) x
WHERE o.order_id = x.order_id AND o.refunded_minor <> x.refunded
"""

_CUSTOMER_FACTS = """
SELECT customer_id, currency, count(*) AS orders, sum(amount_minor - refunded_minor) AS revenue,
       min(completed_at) AS first_purchase_at, max(completed_at) AS last_purchase_at
FROM orders WHERE customer_id IS NOT NULL {where}
GROUP BY customer_id, currency
"""

_MERGE_CUSTOMERS = f"""
INSERT INTO customer_revenue AS c (customer_id, currency, orders, revenue_minor,
    first_purchase_at, last_purchase_at)
SELECT * FROM ({_CUSTOMER_FACTS.format(where="AND customer_id = ANY(CAST(:c AS text[]))")}) f
ORDER BY customer_id, currency
ON CONFLICT ON CONSTRAINT customer_revenue_pkey DO UPDATE SET
    orders = EXCLUDED.orders, revenue_minor = EXCLUDED.revenue_minor,
    first_purchase_at = EXCLUDED.first_purchase_at, last_purchase_at = EXCLUDED.last_purchase_at
"""

_DROP_CUSTOMERS = """
DELETE FROM customer_revenue c WHERE c.customer_id = ANY(CAST(:c AS text[]))
  AND NOT EXISTS (SELECT 1 FROM orders o
                  WHERE o.customer_id = c.customer_id AND o.currency = c.currency)
"""


async def apply_orders(
    conn: AsyncConnection,
    completions: Mapping[str, Completion],
    refunds: Mapping[tuple[str, str], Refund],
) -> None:
    """Store new order completions and refunds, then derive what they change: the orders'
    refunded amounts and the customer revenue facts of every customer concerned."""
    if not (completions or refunds):
        return
    order_ids = sorted(set(completions) | {order_id for order_id, _ in refunds})
    # First every order's lock, before anything reads or writes an order or its refunds.
    await lock_keys(conn, ORDER_LOCKS, order_ids)
    if refunds:
        await _execute(conn, _REFUNDS, [r._asdict() for _, r in sorted(refunds.items())])
    owners = await conn.execute(sa.text(_OWNERS), {"order_id": order_ids})
    customers = {row.customer_id for row in owners if row.customer_id is not None}
    rows = []
    for order_id in order_ids:
        completion = completions.get(order_id)
        if completion is None:
            rows.append(_pending(order_id))
        else:
            rows.append(completion._asdict())
            customers.add(completion.customer_id)
    await _execute(conn, _ORDERS, rows)
    where = "WHERE o2.order_id = ANY(CAST(:ids AS text[]))"
    await conn.execute(sa.text(_REFUNDED.format(where=where)), {"ids": order_ids})
    await refresh_customers(conn, customers)


def _pending(order_id: str) -> dict[str, Any]:
    return {
        "order_id": order_id, "customer_id": None, "currency": None, "amount_minor": None,
        "completed_at": None, "completed_event": None, "channel": "", "location": "",
        "product": "", "business_unit": "",
    }  # fmt: skip


async def refresh_customers(conn: AsyncConnection, customers: set[str]) -> None:
    """Recompute the ``customer_revenue`` rows of ``customers`` from their orders, under
    each customer's lock: after the orders' locks, never before them."""
    if not customers:
        return
    await lock_keys(conn, CUSTOMER_LOCKS, customers)
    params = {"c": sorted(customers)}
    await conn.execute(sa.text(_MERGE_CUSTOMERS), params)
    await conn.execute(sa.text(_DROP_CUSTOMERS), params)


async def rebuild_orders(conn: AsyncConnection) -> int:
    """Derive every order's refunded amount and every customer's revenue facts again from
    the raw order and refund rows; return the number of completed orders."""
    await conn.execute(sa.text(_REFUNDED.format(where="")))
    await conn.execute(sa.text("DELETE FROM customer_revenue"))  # readers never wait
    await conn.execute(
        sa.text(
            "INSERT INTO customer_revenue (customer_id, currency, orders, revenue_minor, "
            f"first_purchase_at, last_purchase_at) {_CUSTOMER_FACTS.format(where='')}"
        )
    )
    completed = await conn.scalar(
        sa.text("SELECT count(*) FROM orders WHERE completed_at IS NOT NULL")
    )
    return int(completed or 0)


async def stage(conn: AsyncConnection) -> None:
    """Create this session's staging tables if need be, and empty them: what a batch does
    before it COPYs anything (apply_batch)."""
    await (await _driver(conn)).execute(_STAGING)


async def fold_stored_responses(conn: AsyncConnection) -> int:
    """Add every stored raw response to the score and reason buckets, folded as a live
    batch's responses are, and to ``customer_nps`` the raw NPS answers it lacks (those an
    older scorer stored during a rolling deploy): ``cxloop scorer rebuild``, after it
    empties the buckets. Return the number of responses folded.

    One statement reads the raw rows once, for all three: a scheduled DELETE of old
    responses (docs/operations.md) that commits meanwhile leaves them agreeing."""
    driver = await _driver(conn)
    await driver.execute(_STAGING)
    folded = await driver.fetchval(_FOLD_STORED)
    await driver.execute(";".join((_MERGE_SCORES, _MERGE_SCORE_DAYS, _MERGE_REASONS)))
    return int(folded)


async def _driver(conn: AsyncConnection) -> Any:
    """Return the asyncpg connection under ``conn``, inside the transaction ``conn`` began.

    SQLAlchemy's asyncpg adapter sends BEGIN only with the first statement it runs itself,
    so a statement sent straight to asyncpg before any other would run, and commit, on its
    own: the ledger would say an event was applied while its counts were never written.
    """
    if not conn.in_transaction():
        raise RuntimeError("apply_batch needs a connection inside a transaction")
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    if not driver.is_in_transaction():
        # Makes the adapter send its BEGIN now (once per transaction; the consumer's
        # erasure lock has usually done so already).
        await conn.exec_driver_sql("SELECT 1")
    return driver


def _as_dict(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def _sorted(rows: Any) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: tuple(str(v) for v in r.values()))


def response_record(e: ResponseSubmitted) -> tuple[Any, ...]:
    """Return a response as a row of RESPONSE_COLUMNS, for COPY into ``staged_responses``."""
    s = e.segments
    # The enums as they are: each is a str (StrEnum) whose text is its value, which the
    # driver writes as it is, without the ``.value`` property's lookup for each of them.
    return (
        e.event_id, e.submission_id, e.metric, e.scale, e.score, e.survey_type,
        e.channel, e.touchpoint, s.location, s.product, s.business_unit, e.customer_id,
        e.ticket_id, e.comment, list(e.reasons), e.locale, e.source, e.occurred_at,
        e.received_at,
    )  # fmt: skip
