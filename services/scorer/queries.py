"""The scorer's read-side SQL: scores by group and interval, service times, drivers,
retention, drill-down, a customer's history, the latest responses and erasure."""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncConnection

from services.scorer import repository
from services.scorer.models import (
    COUNTS,
    DIMENSIONS,
    ORDER_DIMENSIONS,
    responses,
    score_buckets,
    score_days,
)
from shared.events import NPS_PASSIVE_FROM, NPS_PROMOTER_FROM
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


def _score_parts(
    since: datetime,
    until: datetime,
    interval: str | None,
    filters: Mapping[str, str],
    *,
    metrics: Sequence[str] | None,
    scale: int | None = None,
    period: int | None = None,
) -> list[sa.Select[Any]]:
    """The score rows of [since, until), whole days from ``score_days``, edges by the hour;
    each row labelled with ``period`` if given. Its values are bound under the names
    :func:`_score_values` gives them, so a statement of one shape can be compiled once."""
    parts = []
    for i, (table, start, end) in enumerate(_spans(since, until, interval)):
        key = f"{'' if period is None else f'r{period}_'}{i}"
        columns: list[Any] = [table.c[c] for c in _SCORE_COLUMNS]
        if period is not None:
            columns.append(sa.literal(period).label("period"))
        part = sa.select(*columns).where(
            table.c.bucket_start >= _bind(table.c.bucket_start, f"since_{key}", start),
            table.c.bucket_start < _bind(table.c.bucket_start, f"until_{key}", end),
        )
        # The tables' keys lead with the metric: naming it lets Postgres read the range
        # through the key instead of scanning every hour.
        if metrics is not None and len(metrics) == 1:
            part = part.where(table.c.metric == _bind(table.c.metric, f"metric_{key}", metrics[0]))
        elif metrics is not None:
            array = sa.bindparam(
                f"metrics_{key}", list(metrics), type_=pg.ARRAY(table.c.metric.type)
            )
            part = part.where(table.c.metric == sa.any_(array))
        if scale is not None:
            part = part.where(table.c.scale == _bind(table.c.scale, f"scale_{key}", scale))
        for dimension, value in filters.items():
            column = table.c[dimension]
            part = part.where(column == _bind(column, f"{dimension}_{key}", value))
        parts.append(part)
    return parts


def _bind(column: sa.Column[Any], name: str, value: Any) -> sa.BindParameter[Any]:
    return sa.bindparam(name, value, type_=column.type)


def _score_values(
    since: datetime,
    until: datetime,
    interval: str | None,
    filters: Mapping[str, str],
    *,
    metrics: Sequence[str] | None,
    scale: int | None = None,
) -> dict[str, Any]:
    """The values :func:`_score_parts` binds (without ``period``), by name."""
    values: dict[str, Any] = {}
    for i, (_, start, end) in enumerate(_spans(since, until, interval)):
        values[f"since_{i}"], values[f"until_{i}"] = start, end
        if metrics is not None and len(metrics) == 1:
            values[f"metric_{i}"] = metrics[0]
        elif metrics is not None:
            values[f"metrics_{i}"] = list(metrics)
        if scale is not None:
            values[f"scale_{i}"] = scale
        for dimension, value in filters.items():
            values[f"{dimension}_{i}"] = value
    return values


def _union(parts: Sequence[sa.Select[Any]]) -> sa.Subquery:
    return (parts[0] if len(parts) == 1 else sa.union_all(*parts)).subquery()


def _counts(row: Any) -> Counts:
    return Counts(**{f.name: int(getattr(row, f.name)) for f in fields(Counts)})


async def counts_by_metric(
    conn: AsyncConnection,
    *,
    ranges: Sequence[tuple[datetime, datetime]],
    metrics: Sequence[str],
    filters: Mapping[str, str],
) -> list[dict[tuple[str, int], Counts]]:
    """Sum score buckets per (metric, scale) in each of ``ranges``, in one statement."""
    source = _union(
        [
            part
            for i, (since, until) in enumerate(ranges)
            for part in _score_parts(since, until, None, filters, metrics=metrics, period=i)
        ]
    )
    keys = (source.c.period, source.c.metric, source.c.scale)
    query = sa.select(*keys, *(sa.func.sum(source.c[c]).label(c) for c in COUNTS)).group_by(*keys)
    found: list[dict[tuple[str, int], Counts]] = [{} for _ in ranges]
    for row in await conn.execute(query):
        found[row.period][(row.metric, int(row.scale))] = _counts(row)
    return found


def _day_start(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


# What score rows can be grouped by: ``start`` is the interval's start (UTC).
SCORE_KEYS = ("metric", "scale", *DIMENSIONS, "start")


@dataclass(frozen=True)
class Grouped:
    """Counts for one combination of a grouping set's keys."""

    keys: dict[str, Any]
    counts: Counts


async def grouped_counts(
    conn: AsyncConnection,
    *,
    metrics: Sequence[str] | None,
    since: datetime,
    until: datetime,
    scale: int | None,
    filters: Mapping[str, str],
    sets: Sequence[tuple[str, ...]],
    interval: str | None = None,
) -> list[list[Grouped]]:
    """Sum score buckets in [since, until) by each grouping set of ``SCORE_KEYS`` (``()``
    is the total), reading the rows once for all of them; each set's rows come ordered by
    its keys, as ``GROUP BY keys ORDER BY keys`` gives them."""
    assert sets
    assert len(set(sets)) == len(sets)
    assert all(k in SCORE_KEYS for s in sets for k in s)
    assert interval in (None, *INTERVALS)
    assert interval is not None or not any("start" in s for s in sets)
    shape: tuple[Any, ...] = (
        conn.dialect.name,
        tuple(table.name for table, _, _ in _spans(since, until, interval)),
        interval,
        tuple(filters),
        None if metrics is None else min(len(metrics), 2),
        scale is None,
        tuple(sets),
    )
    values = _score_values(since, until, interval, filters, metrics=metrics, scale=scale)
    compiled = _GROUPED.get(shape)
    if compiled is None:
        query = _grouped_query(since, until, interval, filters, metrics, scale, sets)
        compiled = _Compiled.of(conn, query, values)
        _GROUPED[shape] = compiled
        if len(_GROUPED) > GROUPED_CACHE_SIZE:
            _GROUPED.popitem(last=False)
    else:
        _GROUPED.move_to_end(shape)
    result = await conn.exec_driver_sql(compiled.sql, compiled.parameters(values))
    rows = result.all()
    at = {name: i for i, name in enumerate(result.keys())}
    counts = [at[c] for c in COUNTS]

    def grouped(row: Sequence[Any], keys: tuple[str, ...]) -> Grouped:
        return Grouped(
            {k: row[at[k]] for k in keys},
            Counts(*(int(row[i]) for i in counts)),  # COUNTS is Counts' fields, in order
        )

    if len(sets) == 1:
        return [[grouped(row, sets[0]) for row in rows]]
    used = [k for k in SCORE_KEYS if any(k in s for s in sets)]
    index = {
        sum(1 << (len(used) - 1 - i) for i, k in enumerate(used) if k not in s): n
        for n, s in enumerate(sets)
    }
    bits = at["grouping_bits"]
    found: list[list[Grouped]] = [[] for _ in sets]
    for row in rows:
        n = index[row[bits]]
        found[n].append(grouped(row, sets[n]))
    return found


@dataclass(frozen=True)
class _Compiled:
    """A statement compiled once for the driver (asyncpg's ``$n`` form): its text, the
    name of each ``$n`` in order, and the values its shape fixes (``'UTC'``, ``0``): only
    the binds a request's ``values`` never name, so no request's value is kept for another.
    """

    sql: str
    names: tuple[str, ...]
    fixed: dict[str, Any]

    @classmethod
    def of(
        cls, conn: AsyncConnection, query: sa.Select[Any], values: Mapping[str, Any]
    ) -> _Compiled:
        compiled = query.compile(dialect=conn.dialect)
        names = tuple(compiled.positiontup or ())
        fixed = {k: v for k, v in compiled.construct_params().items() if k not in values}
        # Every bind is either the request's or one of the query's own literals (the
        # interval's time zone, a sum's 0): a request's bind missing from ``values`` would
        # otherwise reuse the first request's value for every later one.
        strays = [n for n in names if n in fixed and not n.startswith(_CONSTANT_BINDS)]
        if strays:
            raise AssertionError(f"binds {strays} are neither the request's nor constants")
        return cls(compiled.string, names, fixed)

    def parameters(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(values[n] if n in values else self.fixed[n] for n in self.names)


# grouped_counts' statements by shape: which tables its range reads, the interval, which
# filters, one metric or several, a scale or not, the grouping sets. Bounded: every part of
# the key comes from a closed set. Built and compiled once each, they skip SQLAlchemy's
# statement building, cache-key walk and result processing on every request after.
_GROUPED: OrderedDict[tuple[Any, ...], _Compiled] = OrderedDict()
# The binds SQLAlchemy makes for the statement's own literals: date_trunc's 'UTC', coalesce's 0.
_CONSTANT_BINDS: Final = ("date_trunc_", "coalesce_")
# Least recently used shapes go first past this many (the closed sets multiply to thousands).
GROUPED_CACHE_SIZE: Final = 512


def _grouped_query(
    since: datetime,
    until: datetime,
    interval: str | None,
    filters: Mapping[str, str],
    metrics: Sequence[str] | None,
    scale: int | None,
    sets: Sequence[tuple[str, ...]],
) -> sa.Select[Any]:
    source = _union(_score_parts(since, until, interval, filters, metrics=metrics, scale=scale))
    used = [k for k in SCORE_KEYS if any(k in s for s in sets)]
    exprs: dict[str, Any] = {
        k: (
            sa.func.date_trunc(interval, source.c.bucket_start, "UTC")
            if k == "start"
            else source.c[k]
        )
        for k in used
    }
    sums = [sa.func.coalesce(sa.func.sum(source.c[c]), 0).label(c) for c in COUNTS]
    if len(sets) == 1:
        keys = [exprs[k] for k in sets[0]]
        query = sa.select(*(exprs[k].label(k) for k in sets[0]), *sums)
        if keys:
            query = query.group_by(*keys).order_by(*keys)
        return query
    # GROUPING(...) has a bit per key, the first key the highest, set when a row's set
    # leaves that key out: it names the row's set even where a key's value is NULL.
    bits = sa.func.grouping(*(exprs[k] for k in used)).label("grouping_bits")
    return (
        sa.select(*(exprs[k].label(k) for k in used), bits, *sums)
        .group_by(sa.func.grouping_sets(*(sa.tuple_(*(exprs[k] for k in s)) for s in sets)))
        .order_by(bits, *(exprs[k] for k in used))
    )


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
    keys = (*((group_by,) if group_by else ()), *(("start",) if interval else ()))
    (rows,) = await grouped_counts(
        conn,
        metrics=[metric],
        since=since,
        until=until,
        scale=scale,
        filters=filters,
        sets=[keys],
        interval=interval,
    )
    return [
        Group(
            group=r.keys[group_by] if group_by else None,
            start=r.keys.get("start"),
            counts=r.counts,
        )
        for r in rows
    ]


_SERVICE_TIMES = """
WITH sla(key, first_response, resolution) AS (
    SELECT * FROM unnest(CAST(:keys AS text[]), CAST(:fr AS float8[]), CAST(:res AS float8[]))
), t AS (
    SELECT CAST(NULL AS text) AS whole,
           coalesce(tickets.priority, 'normal') AS priority,
           tickets.channel AS channel,
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
SELECT GROUPING({keys}) AS grouping_bits, coalesce({keys}) AS grp, count(*) AS tickets,
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
FROM t GROUP BY GROUPING SETS ({sets}) ORDER BY grouping_bits, {order}
"""
# The key of each grouping: ``whole`` is NULL on every row, so its group is every ticket,
# and like the others it has no row when no ticket matches.
_TIME_KEYS = {None: "whole", "priority": "priority", "channel": "channel"}


async def service_times(
    conn: AsyncConnection,
    *,
    since: datetime,
    until: datetime,
    now: datetime,
    filters: Mapping[str, str],
    group_bys: Sequence[str | None],
    sla_first_response: Mapping[str, float],
    sla_resolution: Mapping[str, float],
) -> list[list[dict[str, Any]]]:
    """First-response and resolution times of tickets created in [since, until), grouped
    by each of ``group_bys`` (None: all of them together) in one statement.

    A ticket past its SLA with no response (or resolution) yet counts as a breach; one
    still within its SLA is not yet due and stays out of the breach rate.
    """
    assert group_bys
    assert all(g in _TIME_KEYS for g in group_bys)
    assert len(set(group_bys)) == len(group_bys)
    keys = sorted(set(sla_first_response) | set(sla_resolution))
    where = "".join(
        f" AND coalesce(tickets.{d}, 'normal') = :f_{d}"
        if d == "priority"
        else f" AND tickets.{d} = :f_{d}"
        for d in filters
    )
    used = [_TIME_KEYS[g] for g in group_bys]
    sql = _SERVICE_TIMES.format(
        keys=", ".join(used),
        sets=", ".join(f"({k})" for k in used),
        order=", ".join(f"{k} NULLS FIRST" for k in used),
        where=where,
    )
    params: dict[str, Any] = {
        "keys": keys,
        "fr": [sla_first_response.get(k) for k in keys],
        "res": [sla_resolution.get(k) for k in keys],
        "since": since,
        "until": until,
        "now": now,
        **{f"f_{d}": v for d, v in filters.items()},
    }
    # GROUPING(keys) sets a bit (the first key the highest) for each key a row's set leaves out.
    full = (1 << len(used)) - 1
    index = {full ^ (1 << (len(used) - 1 - n)): n for n in range(len(used))}
    found: list[list[dict[str, Any]]] = [[] for _ in group_bys]
    for row in await conn.execute(sa.text(sql), params):
        found[index[row.grouping_bits]].append(dict(row._mapping))
    return found


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


# Kept by the write path (services.scorer.repository.count_retention): the same figures as
# joining customer_activity with itself on the next period, without reading it (once every
# scorer is at migration 0023 or later, or `cxloop scorer retention` ran after them).
_RETENTION = """
SELECT period_start, active, retained FROM retention_counts
WHERE period = :period AND period_start >= :since AND period_start < :until AND active > 0
ORDER BY period_start
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
    """Delete a customer's raw responses; replace their id in tickets, activity, orders and
    NPS answers.

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
    # Orders keep counting, and NPS answers keep their customer's category, under the
    # pseudonym; the revenue facts move with them.
    orders = await conn.execute(
        sa.text("UPDATE orders SET customer_id = :p WHERE customer_id = :c"),
        {"p": pseudonym, "c": customer_id},
    )
    await conn.execute(
        sa.text("UPDATE customer_nps SET customer_key = :p WHERE customer_key = :c"),
        {"p": pseudonym, "c": customer_id},
    )
    await repository.derive_latest_nps(conn, {customer_id, pseudonym})
    await repository.refresh_customers(conn, {customer_id, pseudonym})
    return {
        "responses_deleted": int(deleted.rowcount),
        "tickets_pseudonymised": int(tickets.rowcount),
        "activity_pseudonymised": int(activity.rowcount),
        "orders_pseudonymised": int(orders.rowcount),
    }


@dataclass(frozen=True)
class CustomerTotals:
    """Per-customer sums of one currency, group and NPS category: how many customers, their
    orders and net revenue, the sum of each customer's revenue squared (for the spread of
    revenue per customer) and how many ordered twice or more."""

    currency: str
    group: str | None
    whole: bool
    category: str
    customers: int
    orders: int
    revenue: int
    revenue_sq: int
    repeaters: int


# A customer's NPS score at ``until``: their latest NPS answer before it (ties by event id).
# customer_latest_nps holds every customer's latest answer; only where that is at or after
# ``until`` does the history (customer_nps) have to be probed, once, by its key: the
# lateral's condition on ``l`` alone is a one-time filter, so the other customers cost one
# hash join and no probe.
_LATEST_SCORE = """
LEFT JOIN customer_latest_nps l ON l.customer_key = {customer}
LEFT JOIN LATERAL (
    SELECT n.score FROM customer_nps n
    WHERE l.occurred_at >= :until AND n.customer_key = l.customer_key AND n.occurred_at < :until
    ORDER BY n.occurred_at DESC, n.event_id DESC LIMIT 1
) earlier ON true
"""
_SCORE = "CASE WHEN l.occurred_at < :until THEN l.score ELSE earlier.score END"
_CATEGORY = f"""CASE WHEN score >= {NPS_PROMOTER_FROM} THEN 'promoter'
     WHEN score >= {NPS_PASSIVE_FROM} THEN 'passive'
     WHEN score IS NOT NULL THEN 'detractor' ELSE 'unrated' END"""

# sum() of bigint is numeric in Postgres: a customer's or a category's sums never overflow
# (they become Python ints).
_VALUE = """
WITH per_customer AS (
    SELECT currency, customer_id, {group} AS grp, {whole} AS whole, count(*) AS orders,
           sum(amount_minor - refunded_minor) AS net
    FROM orders
    WHERE completed_at >= :since AND completed_at < :until {where}
    GROUP BY {sets}
), rated AS (
    SELECT p.*, {score} AS score FROM per_customer p {latest}
)
SELECT currency, grp, whole, {category} AS category, count(*) AS customers, sum(orders) AS orders,
       sum(net) AS revenue, sum(CAST(net AS numeric) * net) AS revenue_sq,
       count(*) FILTER (WHERE orders >= 2) AS repeaters
FROM rated
GROUP BY currency, whole, grp, category
ORDER BY currency, whole DESC, grp, category
"""


async def _for_aggregation(conn: AsyncConnection) -> None:
    """Settings for this transaction's per-customer aggregation: JIT compiling cost 0.4 s of
    a 3 s statement at 1M orders and saved nothing, and the per-customer hash aggregate
    spilled to disk at the default work_mem."""
    await conn.execute(sa.text("SET LOCAL jit = off"))
    await conn.execute(sa.text("SET LOCAL work_mem = '64MB'"))


def _order_filters(filters: Mapping[str, str], table: str = "") -> tuple[str, dict[str, str]]:
    assert all(d in ORDER_DIMENSIONS for d in filters)
    where = "".join(f" AND {table}{d} = :f_{d}" for d in filters)
    return where, {f"f_{d}": v for d, v in filters.items()}


async def customer_totals(
    conn: AsyncConnection,
    *,
    since: datetime,
    until: datetime,
    filters: Mapping[str, str],
    group_by: str | None,
) -> list[CustomerTotals]:
    """Sum the net revenue of the orders completed in [since, until) per customer, then per
    currency, NPS category at ``until`` and (with ``group_by``, an order dimension) group;
    ``whole`` rows are every group together."""
    assert group_by is None or group_by in ORDER_DIMENSIONS
    where, params = _order_filters(filters)
    if group_by is None:
        shape = {
            "group": "CAST(NULL AS text)",
            "whole": "true",
            "sets": "currency, customer_id",
        }
    else:
        shape = {
            "group": group_by,
            "whole": f"GROUPING({group_by}) = 1",
            "sets": f"GROUPING SETS ((currency, customer_id), (currency, customer_id, {group_by}))",
        }
    sql = _VALUE.format(
        where=where,
        score=_SCORE,
        category=_CATEGORY,
        latest=_LATEST_SCORE.format(customer="p.customer_id"),
        **shape,
    )
    await _for_aggregation(conn)
    rows = await conn.execute(sa.text(sql), {"since": since, "until": until, **params})
    return [
        CustomerTotals(
            currency=row.currency,
            group=row.grp,
            whole=bool(row.whole),
            category=row.category,
            customers=int(row.customers),
            orders=int(row.orders),
            revenue=int(row.revenue),
            revenue_sq=int(row.revenue_sq),
            repeaters=int(row.repeaters),
        )
        for row in rows
    ]
