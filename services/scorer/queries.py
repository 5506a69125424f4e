"""The scorer's read-side SQL: scores by group and interval, service times, drivers,
retention, drill-down, a customer's history, the latest responses and erasure."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncConnection

from services.scorer.models import COUNTS, DIMENSIONS, responses, score_buckets, score_days
from shared.scoring import Counts

INTERVALS = ("hour", "day", "week", "month")


@dataclass(frozen=True)
class Group:
    """Counts for one group value and/or one interval start."""

    group: str | None
    start: datetime | None
    counts: Counts


_SCORE_COLUMNS = ("bucket_start", "metric", "scale", *DIMENSIONS, *COUNTS)


def _spans(
    since: datetime, until: datetime, interval: str | None
) -> list[tuple[sa.Table, datetime, datetime]]:
    """Cover [since, until) with whole UTC days from ``score_days`` and hours elsewhere."""
    first = _day_start(since)
    if first < since:
        first += timedelta(days=1)
    last = _day_start(until)
    if interval == "hour" or first >= last:
        return [(score_buckets, since, until)]
    spans = [(score_days, first, last)]
    if since < first:
        spans.append((score_buckets, since, first))
    if last < until:
        spans.append((score_buckets, last, until))
    return spans


def _score_source(
    since: datetime,
    until: datetime,
    interval: str | None,
    filters: Mapping[str, str],
    *,
    metric: str | None,
    scale: int | None = None,
) -> sa.Subquery:
    """The score rows of [since, until), whole days from ``score_days``, edges by the hour."""
    parts = []
    for table, start, end in _spans(since, until, interval):
        part = sa.select(*(table.c[c] for c in _SCORE_COLUMNS)).where(
            table.c.bucket_start >= start, table.c.bucket_start < end
        )
        if metric is not None:
            part = part.where(table.c.metric == metric)
        if scale is not None:
            part = part.where(table.c.scale == scale)
        for dimension, value in filters.items():
            part = part.where(table.c[dimension] == value)
        parts.append(part)
    return (parts[0] if len(parts) == 1 else sa.union_all(*parts)).subquery()


def _counts(row: Any) -> Counts:
    return Counts(**{f.name: int(getattr(row, f.name)) for f in fields(Counts)})


async def counts_by_metric(
    conn: AsyncConnection, *, since: datetime, until: datetime, filters: Mapping[str, str]
) -> dict[tuple[str, int], Counts]:
    """Sum score buckets in [since, until) per (metric, scale), for every metric at once."""
    source = _score_source(since, until, None, filters, metric=None)
    keys = (source.c.metric, source.c.scale)
    query = sa.select(*keys, *(sa.func.sum(source.c[c]).label(c) for c in COUNTS)).group_by(*keys)
    return {(row.metric, int(row.scale)): _counts(row) for row in await conn.execute(query)}


def _day_start(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


async def score_counts(
    conn: AsyncConnection,
    *,
    metric: str,
    since: datetime,
    until: datetime,
    scale: int | None,
    filters: Mapping[str, str],
    group_by: str | None = None,
    interval: str | None = None,
) -> list[Group]:
    """Sum score buckets in [since, until), optionally by a dimension and/or an interval."""
    source = _score_source(since, until, interval, filters, metric=metric, scale=scale)
    keys: list[Any] = []
    if group_by is not None:
        keys.append(source.c[group_by].label("grp"))
    if interval is not None:
        assert interval in INTERVALS
        keys.append(sa.func.date_trunc(interval, source.c.bucket_start, "UTC").label("start"))
    query = sa.select(
        *keys, *(sa.func.coalesce(sa.func.sum(source.c[c]), 0).label(c) for c in COUNTS)
    )
    if keys:
        query = query.group_by(*keys).order_by(*keys)
    rows = (await conn.execute(query)).all()
    return [
        Group(
            group=getattr(row, "grp", None),
            start=getattr(row, "start", None),
            counts=_counts(row),
        )
        for row in rows
    ]


_SERVICE_TIMES = """
WITH sla(key, first_response, resolution) AS (
    SELECT * FROM unnest(CAST(:keys AS text[]), CAST(:fr AS float8[]), CAST(:res AS float8[]))
), t AS (
    SELECT {group_expr} AS grp,
           extract(epoch FROM first_response_at - created_at) AS fr,
           CASE WHEN resolved_at IS NOT NULL
                 AND (reopened_at IS NULL OR resolved_at > reopened_at)
                THEN extract(epoch FROM resolved_at - created_at) END AS res,
           extract(epoch FROM CAST(:now AS timestamptz) - created_at) AS age,
           coalesce(by_channel.first_response, by_priority.first_response) * 60 AS fr_sla,
           coalesce(by_channel.resolution, by_priority.resolution) * 60 AS res_sla
    FROM tickets
    LEFT JOIN sla by_channel
      ON by_channel.key = tickets.channel || '/' || coalesce(tickets.priority, 'normal')
    LEFT JOIN sla by_priority ON by_priority.key = coalesce(tickets.priority, 'normal')
    WHERE created_at >= :since AND created_at < :until {where}
)
SELECT grp, count(*) AS tickets,
       count(fr) AS fr_n, avg(fr) AS fr_mean,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY fr) AS fr_median,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY fr) AS fr_p90,
       count(*) FILTER (WHERE fr > fr_sla OR (fr IS NULL AND age > fr_sla)) AS fr_breaches,
       count(*) FILTER (WHERE fr_sla IS NOT NULL AND (fr IS NOT NULL OR age > fr_sla)) AS fr_due,
       count(res) AS res_n, avg(res) AS res_mean,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY res) AS res_median,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY res) AS res_p90,
       count(*) FILTER (WHERE res > res_sla OR (res IS NULL AND age > res_sla)) AS res_breaches,
       count(*) FILTER (WHERE res_sla IS NOT NULL AND (res IS NOT NULL OR age > res_sla))
           AS res_due
FROM t GROUP BY grp ORDER BY grp NULLS FIRST
"""


async def service_times(
    conn: AsyncConnection,
    *,
    since: datetime,
    until: datetime,
    now: datetime,
    filters: Mapping[str, str],
    group_by: str | None,
    sla_first_response: Mapping[str, float],
    sla_resolution: Mapping[str, float],
) -> list[dict[str, Any]]:
    """First-response and resolution times of tickets created in [since, until).

    A ticket past its SLA with no response (or resolution) yet counts as a breach; one
    still within its SLA is not yet due and stays out of the breach rate.
    """
    assert group_by in (None, "channel", "priority")
    keys = sorted(set(sla_first_response) | set(sla_resolution))
    where = "".join(
        f" AND coalesce(tickets.{d}, 'normal') = :f_{d}"
        if d == "priority"
        else f" AND tickets.{d} = :f_{d}"
        for d in filters
    )
    group_expr = (
        f"coalesce(tickets.{group_by}, 'normal')"
        if group_by == "priority"
        else (f"tickets.{group_by}" if group_by else "NULL")
    )
    sql = _SERVICE_TIMES.format(group_expr=group_expr, where=where)
    params: dict[str, Any] = {
        "keys": keys,
        "fr": [sla_first_response.get(k) for k in keys],
        "res": [sla_resolution.get(k) for k in keys],
        "since": since,
        "until": until,
        "now": now,
        **{f"f_{d}": v for d, v in filters.items()},
    }
    return [dict(row._mapping) for row in await conn.execute(sa.text(sql), params)]


_DRIVERS = """
SELECT category, reason, sum(n) AS n FROM reason_buckets
WHERE bucket_start >= :since AND bucket_start < :until {where}
GROUP BY category, reason ORDER BY category, n DESC, reason
"""


async def reason_counts(
    conn: AsyncConnection, *, since: datetime, until: datetime, filters: Mapping[str, str]
) -> list[tuple[str, str, int]]:
    """Return (NPS category, reason, count) over [since, until), most frequent first."""
    where = "".join(f" AND {d} = :f_{d}" for d in filters)
    params = {"since": since, "until": until, **{f"f_{d}": v for d, v in filters.items()}}
    rows = await conn.execute(sa.text(_DRIVERS.format(where=where)), params)
    return [(row.category, row.reason, int(row.n)) for row in rows]


_RETENTION = """
SELECT a.period_start, count(*) AS active, count(b.customer_key) AS retained
FROM customer_activity a
LEFT JOIN customer_activity b
  ON b.period = a.period AND b.customer_key = a.customer_key
 AND b.period_start = CASE WHEN a.period = 'week' THEN a.period_start + 7
                           ELSE CAST(a.period_start + interval '1 month' AS date) END
WHERE a.period = :period AND a.period_start >= :since AND a.period_start < :until
GROUP BY a.period_start ORDER BY a.period_start
"""


async def retention(
    conn: AsyncConnection, *, period: str, since: date, until: date
) -> list[tuple[date, int, int]]:
    """Return (period start, customers active, of them active again the next period)."""
    rows = await conn.execute(
        sa.text(_RETENTION), {"period": period, "since": since, "until": until}
    )
    return [(row.period_start, int(row.active), int(row.retained)) for row in rows]


async def list_responses(
    conn: AsyncConnection,
    *,
    filters: Mapping[str, Any],
    since: datetime | None,
    until: datetime | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Return raw responses, newest first, after the cursor ``after``."""
    query = sa.select(responses).order_by(
        responses.c.occurred_at.desc(), responses.c.event_id.desc()
    )
    for column, value in filters.items():
        query = query.where(responses.c[column] == value)
    if since is not None:
        query = query.where(responses.c.occurred_at >= since)
    if until is not None:
        query = query.where(responses.c.occurred_at < until)
    if after is not None:
        query = query.where(
            sa.tuple_(responses.c.occurred_at, responses.c.event_id)
            < sa.tuple_(
                sa.literal(after[0], sa.DateTime(timezone=True)),
                sa.literal(after[1], pg.UUID(as_uuid=True)),
            )
        )
    return [dict(row._mapping) for row in await conn.execute(query.limit(limit))]


async def latest_responses(
    conn: AsyncConnection,
    *,
    stored_since: datetime | None,
    look_back: timedelta,
    filters: Mapping[str, str],
    limit: int,
) -> tuple[list[dict[str, Any]], datetime]:
    """Return responses stored after ``stored_since`` (if None, those stored in the
    ``look_back`` before now), newest stored first, and the database's now(): the time the
    read's transaction began."""
    query = sa.select(responses).order_by(responses.c.stored_at.desc(), responses.c.event_id.desc())
    if stored_since is not None:
        query = query.where(responses.c.stored_at > stored_since)
    else:
        query = query.where(responses.c.stored_at > sa.func.now() - look_back)
    for column, value in filters.items():
        query = query.where(responses.c[column] == value)
    rows = [dict(row._mapping) for row in await conn.execute(query.limit(limit))]
    read_at = await conn.scalar(sa.select(sa.func.now()))
    assert isinstance(read_at, datetime)
    return rows, read_at


async def customer_responses(
    conn: AsyncConnection,
    customer_id: str,
    *,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None = None,
) -> list[dict[str, Any]]:
    """Return a customer's responses, newest first, after the cursor ``after``."""
    return await list_responses(
        conn, filters={"customer_id": customer_id}, since=None, until=None, after=after, limit=limit
    )


# Status and durations as /v1/service-times counts them: resolved only if not reopened since.
_CUSTOMER_TICKETS = """
SELECT source, ticket_id, channel, priority, created_at, first_response_at, resolved_at, reopens,
       CASE WHEN resolved_at IS NOT NULL AND (reopened_at IS NULL OR resolved_at > reopened_at)
                THEN 'resolved'
            WHEN reopened_at IS NOT NULL THEN 'reopened'
            ELSE 'open' END AS status,
       extract(epoch FROM first_response_at - created_at) AS first_response_seconds,
       CASE WHEN resolved_at IS NOT NULL AND (reopened_at IS NULL OR resolved_at > reopened_at)
            THEN extract(epoch FROM resolved_at - created_at) END AS resolution_seconds
FROM tickets WHERE customer_id = :customer_id
ORDER BY coalesce(created_at, first_seen_at) DESC, source, ticket_id
LIMIT :limit
"""


async def customer_tickets(
    conn: AsyncConnection, customer_id: str, *, limit: int
) -> list[dict[str, Any]]:
    """Return a customer's tickets with their status and service times, newest first."""
    rows = await conn.execute(
        sa.text(_CUSTOMER_TICKETS), {"customer_id": customer_id, "limit": limit}
    )
    return [dict(row._mapping) for row in rows]


async def erase_customer(conn: AsyncConnection, customer_id: str, pseudonym: str) -> dict[str, int]:
    """Delete a customer's raw responses; replace their id in tickets and activity.

    Aggregates keep their counts, and retention still links the customer's periods to each
    other, through the customer's random pseudonym (``shared.erasure.pseudonym_for``),
    which only a keyed hash of their id leads to.
    """
    deleted = await conn.execute(responses.delete().where(responses.c.customer_id == customer_id))
    tickets = await conn.execute(
        sa.text("UPDATE tickets SET customer_id = :p WHERE customer_id = :c"),
        {"p": pseudonym, "c": customer_id},
    )
    activity = await conn.execute(
        sa.text("UPDATE customer_activity SET customer_key = :p WHERE customer_key = :c"),
        {"p": pseudonym, "c": customer_id},
    )
    return {
        "responses_deleted": int(deleted.rowcount),
        "tickets_pseudonymised": int(tickets.rowcount),
        "activity_pseudonymised": int(activity.rowcount),
    }
