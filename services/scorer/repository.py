"""The scorer's SQL: apply a batch idempotently with bulk ``unnest`` writes, and sum buckets.

Every statement of :func:`apply_batch` runs in the caller's transaction: the ledger rows,
the raw responses, the bucket increments, the ticket facts and the activity commit together
or not at all. Rows are sorted by key so that concurrent instances lock them in one order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from services.scorer.aggregates import (
    BucketKey,
    Counts,
    ReasonKey,
    activity,
    fold,
    fold_reasons,
    fold_tickets,
)
from services.scorer.models import COUNTS
from shared.events import ResponseSubmitted, TouchpointEvent


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

_RESPONSES = """
INSERT INTO responses (event_id, submission_id, metric, scale, score, survey_type, channel,
    touchpoint, location, product, business_unit, customer_id, ticket_id, comment, reasons,
    locale, source, occurred_at, received_at)
SELECT event_id, submission_id, metric, scale, score, survey_type, channel, touchpoint,
    location, product, business_unit, customer_id, ticket_id, comment,
    string_to_array(reasons, ','), locale, source, occurred_at, received_at
FROM unnest(
    CAST(:event_id AS uuid[]), CAST(:submission_id AS uuid[]), CAST(:metric AS text[]),
    CAST(:scale AS smallint[]), CAST(:score AS smallint[]), CAST(:survey_type AS text[]),
    CAST(:channel AS text[]), CAST(:touchpoint AS text[]), CAST(:location AS text[]),
    CAST(:product AS text[]), CAST(:business_unit AS text[]), CAST(:customer_id AS text[]),
    CAST(:ticket_id AS text[]), CAST(:comment AS text[]), CAST(:reasons AS text[]),
    CAST(:locale AS text[]), CAST(:source AS text[]), CAST(:occurred_at AS timestamptz[]),
    CAST(:received_at AS timestamptz[])
) AS r(event_id, submission_id, metric, scale, score, survey_type, channel, touchpoint,
    location, product, business_unit, customer_id, ticket_id, comment, reasons, locale,
    source, occurred_at, received_at)
ON CONFLICT DO NOTHING
"""

_DIMS = "channel, survey_type, touchpoint, location, product, business_unit"
_DIM_ARRAYS = ", ".join(f"CAST(:{d} AS text[])" for d in _DIMS.split(", "))

# Built from constant column names only; every value is a bound parameter.
_SCORES = f"""
INSERT INTO score_buckets AS b (bucket_start, metric, scale, {_DIMS}, {", ".join(COUNTS)})
SELECT * FROM unnest(
    CAST(:bucket_start AS timestamptz[]), CAST(:metric AS text[]), CAST(:scale AS smallint[]),
    {_DIM_ARRAYS}, {", ".join(f"CAST(:{c} AS bigint[])" for c in COUNTS)}
)
ON CONFLICT ON CONSTRAINT score_buckets_pkey DO UPDATE SET
    {", ".join(f"{c} = b.{c} + EXCLUDED.{c}" for c in COUNTS)}
"""

_REASONS = f"""
INSERT INTO reason_buckets AS b (bucket_start, category, reason, {_DIMS}, n)
SELECT * FROM unnest(
    CAST(:bucket_start AS timestamptz[]), CAST(:category AS text[]), CAST(:reason AS text[]),
    {_DIM_ARRAYS}, CAST(:n AS bigint[])
)
ON CONFLICT ON CONSTRAINT reason_buckets_pkey DO UPDATE SET n = b.n + EXCLUDED.n
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

_ACTIVITY = """
INSERT INTO customer_activity (period, period_start, customer_key)
SELECT * FROM unnest(CAST(:period AS text[]), CAST(:period_start AS date[]),
                     CAST(:customer_key AS text[]))
ON CONFLICT DO NOTHING
"""


async def apply_batch(
    conn: AsyncConnection, events: Sequence[ResponseSubmitted | TouchpointEvent]
) -> Applied:
    """Store and count the events not applied before; return those new ones."""
    unique = {e.event_id: e for e in events}
    if not unique:
        return Applied([], [])
    result = await conn.execute(sa.text(_LEDGER), {"event_id": list(unique)})
    new_ids = {row.event_id for row in result}
    fresh = [e for event_id, e in unique.items() if event_id in new_ids]
    responses = [e for e in fresh if isinstance(e, ResponseSubmitted)]
    touchpoints = [e for e in fresh if isinstance(e, TouchpointEvent)]
    await _execute(conn, _RESPONSES, [_response_row(e) for e in responses])
    await add_to_buckets(conn, fold(responses), fold_reasons(responses))
    await _execute(
        conn, _TICKETS, _sorted(_as_dict(facts) for facts in fold_tickets(touchpoints).values())
    )
    await _execute(
        conn,
        _ACTIVITY,
        _sorted({"period": p, "period_start": d, "customer_key": c} for p, d, c in activity(fresh)),
    )
    return Applied(responses, touchpoints)


async def add_to_buckets(
    conn: AsyncConnection, scores: Mapping[BucketKey, Counts], reasons: Mapping[ReasonKey, int]
) -> None:
    """Add folded counts to the score and reason buckets."""
    await _execute(
        conn,
        _SCORES,
        _sorted({**_as_dict(key), **_as_dict(counts)} for key, counts in scores.items()),
    )
    await _execute(conn, _REASONS, _sorted({**_as_dict(key), "n": n} for key, n in reasons.items()))


def _as_dict(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def _sorted(rows: Any) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: tuple(str(v) for v in r.values()))


def _response_row(e: ResponseSubmitted) -> dict[str, Any]:
    return {
        "event_id": e.event_id,
        "submission_id": e.submission_id,
        "metric": e.metric.value,
        "scale": e.scale,
        "score": e.score,
        "survey_type": e.survey_type.value,
        "channel": e.channel.value,
        "touchpoint": e.touchpoint,
        "location": e.segments.location,
        "product": e.segments.product,
        "business_unit": e.segments.business_unit,
        "customer_id": e.customer_id,
        "ticket_id": e.ticket_id,
        "comment": e.comment,
        # Reason codes cannot hold a comma (see shared.events.ReasonCode).
        "reasons": ",".join(e.reasons),
        "locale": e.locale,
        "source": e.source,
        "occurred_at": e.occurred_at,
        "received_at": e.received_at,
    }
