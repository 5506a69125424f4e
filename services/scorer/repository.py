"""The scorer's SQL: apply a batch idempotently with bulk ``unnest`` writes, and sum buckets.

Every statement of :func:`apply_batch` runs in the caller's transaction: the ledger rows,
the raw responses, the bucket increments, the ticket facts and the activity commit together
or not at all. Rows are sorted by key so that concurrent instances lock them in one order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import date
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from services.scorer.aggregates import (
    BucketKey,
    ReasonKey,
    activity,
    fold,
    fold_reasons,
    fold_tickets,
)
from services.scorer.models import COUNTS
from shared.events import ResponseSubmitted, TouchpointEvent
from shared.scoring import Counts


@dataclass(frozen=True)
class Applied:
    """The events of a batch applied for the first time."""

    responses: list[ResponseSubmitted]
    touchpoints: list[TouchpointEvent]


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

# Bucket and activity rows are COPYed into per-session staging tables, then merged by one
# INSERT ... SELECT each: COPY's binary rows cost a fraction of unnest()'s array parameters.
# ON COMMIT DELETE ROWS empties them with each transaction without churning the catalog;
# the DELETEs empty them between two merges of one transaction (a rebuild's chunks).
_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS staged_scores
    (LIKE score_buckets INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS staged_reasons
    (LIKE reason_buckets INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS staged_activity
    (LIKE customer_activity INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
DELETE FROM staged_scores;
DELETE FROM staged_reasons;
DELETE FROM staged_activity;
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

_MERGE_ACTIVITY = f"""
INSERT INTO customer_activity ({_ACTIVITY_KEY})
SELECT {_ACTIVITY_KEY} FROM staged_activity ORDER BY {_ACTIVITY_KEY}
ON CONFLICT DO NOTHING
"""

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
    """Store and count the events not applied before; return those new ones."""
    unique = {e.event_id: e for e in events}
    if not unique:
        return Applied([], [])
    # Sorted, like every other write here: batches in flight at once then wait on each
    # other's redelivered ids in one order instead of deadlocking.
    result = await conn.execute(sa.text(_LEDGER), {"event_id": sorted(unique)})
    new_ids = {row.event_id for row in result}
    fresh = [e for event_id, e in unique.items() if event_id in new_ids]
    responses = [e for e in fresh if isinstance(e, ResponseSubmitted)]
    touchpoints = [e for e in fresh if isinstance(e, TouchpointEvent)]
    # Folded first: an event's time past the calendar in UTC is a PermanentError naming
    # occurred_at, not an OverflowError of the driver's COPY.
    buckets, reasons, active = fold(responses), fold_reasons(responses), activity(fresh)
    tickets = _sorted(_as_dict(facts) for facts in fold_tickets(touchpoints).values())
    driver = await _driver(conn)
    # Plain COPY, without ON CONFLICT, is safe: a raw row is only ever written in the
    # transaction that adds its id to the ledger, and the ledger just said these ids are new.
    if responses:
        await driver.copy_records_to_table(
            "responses", records=[response_record(e) for e in responses], columns=RESPONSE_COLUMNS
        )
    await _stage_and_merge(driver, buckets, reasons, active)
    await _execute(conn, _TICKETS, tickets)
    return Applied(responses, touchpoints)


async def add_to_buckets(
    conn: AsyncConnection, scores: Mapping[BucketKey, Counts], reasons: Mapping[ReasonKey, int]
) -> None:
    """Add folded counts to the score and reason buckets."""
    await _stage_and_merge(await _driver(conn), scores, reasons, set())


async def _driver(conn: AsyncConnection) -> Any:
    """Return the asyncpg connection under ``conn``, inside the transaction ``conn`` began."""
    raw = await conn.get_raw_connection()
    return raw.driver_connection


async def _stage_and_merge(
    driver: Any,
    scores: Mapping[BucketKey, Counts],
    reasons: Mapping[ReasonKey, int],
    seen: set[tuple[str, date, str]],
) -> None:
    if not (scores or reasons or seen):
        return
    await driver.execute(_STAGING)
    merges = []
    if scores:
        await driver.copy_records_to_table(
            "staged_scores",
            records=[(*k, *_values(c)) for k, c in scores.items()],
            columns=[*BucketKey._fields, *COUNTS],
        )
        merges += [_MERGE_SCORES, _MERGE_SCORE_DAYS]
    if reasons:
        await driver.copy_records_to_table(
            "staged_reasons",
            records=[(*k, n) for k, n in reasons.items()],
            columns=[*ReasonKey._fields, "n"],
        )
        merges.append(_MERGE_REASONS)
    if seen:
        await driver.copy_records_to_table(
            "staged_activity", records=list(seen), columns=_ACTIVITY_KEY.split(", ")
        )
        merges.append(_MERGE_ACTIVITY)
    # One round trip: without parameters, asyncpg sends these as one simple query.
    await driver.execute(";".join(merges))


def _values(obj: Any) -> tuple[Any, ...]:
    # Not dataclasses.astuple, which deep-copies every value.
    return tuple(getattr(obj, f.name) for f in fields(obj))


def _as_dict(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def _sorted(rows: Any) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: tuple(str(v) for v in r.values()))


def response_record(e: ResponseSubmitted) -> tuple[Any, ...]:
    """Return a response as a row of RESPONSE_COLUMNS, for COPY into ``responses``."""
    s = e.segments
    return (
        e.event_id, e.submission_id, e.metric.value, e.scale, e.score, e.survey_type.value,
        e.channel.value, e.touchpoint, s.location, s.product, s.business_unit, e.customer_id,
        e.ticket_id, e.comment, list(e.reasons), e.locale, e.source, e.occurred_at,
        e.received_at,
    )  # fmt: skip
