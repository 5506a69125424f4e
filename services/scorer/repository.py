"""The scorer's SQL: apply a batch idempotently, and sum buckets for a score."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.scorer.aggregates import BucketKey, Counts, fold
from services.scorer.models import COUNTS, applied_events, responses, score_buckets
from shared.db import record_new_event_ids
from shared.events import ResponseSubmitted


async def apply_responses(
    conn: AsyncConnection, events: Sequence[ResponseSubmitted]
) -> list[ResponseSubmitted]:
    """Store and count the events not applied before; return those new ones.

    Runs inside the caller's transaction: the ledger rows, the raw responses and the
    bucket increments commit together or not at all.
    """
    unique = {e.event_id: e for e in events}
    new_ids = await record_new_event_ids(conn, applied_events, unique)
    fresh = [e for event_id, e in unique.items() if event_id in new_ids]
    if not fresh:
        return []
    await conn.execute(
        insert(responses).on_conflict_do_nothing(), [_response_row(e) for e in fresh]
    )
    await _add_to_buckets(conn, fold(fresh))
    return fresh


def _response_row(e: ResponseSubmitted) -> dict[str, object]:
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
        "reasons": list(e.reasons),
        "locale": e.locale,
        "source": e.source,
        "occurred_at": e.occurred_at,
        "received_at": e.received_at,
    }


async def _add_to_buckets(conn: AsyncConnection, folded: Mapping[BucketKey, Counts]) -> None:
    # Sorted so that concurrent scorer instances take row locks in one order and never deadlock.
    rows = sorted(
        ({**asdict(key), **asdict(counts)} for key, counts in folded.items()),
        key=lambda r: tuple(str(v) for v in r.values()),
    )
    stmt = insert(score_buckets).values(rows)
    stmt = stmt.on_conflict_do_update(
        constraint="score_buckets_pkey",
        set_={c: score_buckets.c[c] + stmt.excluded[c] for c in COUNTS},
    )
    await conn.execute(stmt)


async def sum_buckets(
    conn: AsyncConnection,
    *,
    metric: str,
    since: datetime,
    until: datetime,
    scale: int | None,
    filters: Mapping[str, str],
) -> Counts:
    """Return the counts of ``metric`` over buckets starting in [since, until)."""
    query = sa.select(
        *(sa.func.coalesce(sa.func.sum(score_buckets.c[c]), 0).label(c) for c in COUNTS)
    ).where(
        score_buckets.c.metric == metric,
        score_buckets.c.bucket_start >= since,
        score_buckets.c.bucket_start < until,
    )
    if scale is not None:
        query = query.where(score_buckets.c.scale == scale)
    for dimension, value in filters.items():
        query = query.where(score_buckets.c[dimension] == value)
    row = (await conn.execute(query)).one()
    return Counts(**{f.name: int(getattr(row, f.name)) for f in fields(Counts)})
