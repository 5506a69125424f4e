"""The alerting service's SQL: open or fold alerts idempotently, and read them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncConnection

from services.alerting import lifecycle, outbox
from services.alerting.config import AlertingConfig
from services.alerting.models import (
    TOUCHES_KEPT,
    UNRESOLVED,
    alerts,
    alerts_version,
    applied_events,
    deadlines,
    history,
    notifications,
    orders,
    refunds,
    silences,
    touches,
)
from services.alerting.rules import AlertDraft, Severity
from services.alerting.schemas import QueueFilters, QueueSort, QueueStatus
from services.alerting.value import WINDOW_DAYS
from shared.db import record_new_event_ids
from shared.errors import PermanentError
from shared.events import ORDER_COMPLETED, ORDER_REFUNDED, ResponseSubmitted, TouchpointEvent


async def first_seen(
    conn: AsyncConnection, events: Sequence[ResponseSubmitted | TouchpointEvent]
) -> list[ResponseSubmitted | TouchpointEvent]:
    """Record the events in the ledger; return those never applied before, in order."""
    unique = {e.event_id: e for e in events}
    new_ids = await record_new_event_ids(conn, applied_events, unique)
    return [e for event_id, e in unique.items() if event_id in new_ids]


_OPEN_OR_FOLD = sa.text(f"""
INSERT INTO alerts AS a (id, dedupe_key, rule, severity, status, customer_id, channel,
    touchpoint, ticket_id, location, product, business_unit, survey_type, metric, score,
    comment, reasons, event_id, occurrences, opened_at, last_seen_at, value, high_value,
    value_reason)
SELECT id, dedupe_key, rule, severity, 'open', customer_id, channel, touchpoint, ticket_id,
    location, product, business_unit, survey_type, metric, score, comment,
    string_to_array(reasons, ','), event_id, occurrences, now(), now(), CAST(value AS jsonb),
    high_value, value_reason
FROM unnest(
    CAST(:id AS uuid[]), CAST(:dedupe_key AS text[]), CAST(:rule AS text[]),
    CAST(:severity AS text[]), CAST(:customer_id AS text[]), CAST(:channel AS text[]),
    CAST(:touchpoint AS text[]), CAST(:ticket_id AS text[]), CAST(:location AS text[]),
    CAST(:product AS text[]), CAST(:business_unit AS text[]), CAST(:survey_type AS text[]),
    CAST(:metric AS text[]), CAST(:score AS smallint[]), CAST(:comment AS text[]),
    CAST(:reasons AS text[]), CAST(:event_id AS uuid[]), CAST(:occurrences AS integer[]),
    CAST(:value AS text[]), CAST(:high_value AS boolean[]), CAST(:value_reason AS text[])
) AS d(id, dedupe_key, rule, severity, customer_id, channel, touchpoint, ticket_id, location,
    product, business_unit, survey_type, metric, score, comment, reasons, event_id, occurrences,
    value, high_value, value_reason)
ORDER BY dedupe_key
ON CONFLICT (dedupe_key) WHERE {UNRESOLVED.text} DO UPDATE SET
    occurrences = a.occurrences + EXCLUDED.occurrences,
    last_seen_at = now()
RETURNING a.*, (xmax = 0) AS inserted
""")

_HISTORY = sa.text("""
INSERT INTO alert_history (alert_id, actor, action, note)
SELECT * FROM unnest(CAST(:alert_id AS uuid[]), CAST(:actor AS text[]),
                     CAST(:action AS text[]), CAST(:note AS text[]))
""")


async def open_or_fold(
    conn: AsyncConnection,
    flagged: Sequence[tuple[AlertDraft, ResponseSubmitted]],
    config: AlertingConfig | None = None,
) -> list[bool]:
    """Open an alert for each flagged answer, or fold it into the unresolved one with the
    same dedupe key; return, per answer, whether it opened a new alert.

    One statement per table for the whole batch: answers of one batch sharing a key open (or
    fold into) one alert, the first of them giving its details, and each is in its history.
    """
    if not flagged:
        return []
    first: dict[str, tuple[AlertDraft, ResponseSubmitted]] = {}
    count: dict[str, int] = {}
    for draft, event in flagged:
        first.setdefault(draft.dedupe_key, (draft, event))
        count[draft.dedupe_key] = count.get(draft.dedupe_key, 0) + 1
    columns: dict[str, list[Any]] = {}
    for key, (draft, event) in first.items():
        values = _alert_row(draft, event, occurrences=count[key])
        for name, value in values.items():
            columns.setdefault(name, []).append(value)
    opened = {r.dedupe_key: r for r in await conn.execute(_OPEN_OR_FOLD, columns)}
    entries: dict[str, list[Any]] = {"alert_id": [], "actor": [], "action": [], "note": []}
    outcomes = []
    for draft, event in flagged:
        row = opened[draft.dedupe_key]
        is_first = first[draft.dedupe_key][1] is event
        outcomes.append(bool(row.inserted) and is_first)
        entries["alert_id"].append(row.id)
        entries["actor"].append("cxloop")
        entries["action"].append("opened" if outcomes[-1] else "folded")
        entries["note"].append(f"event {event.event_id}")
    await conn.execute(_HISTORY, entries)
    if config is not None:
        new = [
            {c.name: row._mapping[c.name] for c in alerts.columns}
            for row in opened.values()
            if row.inserted
        ]
        if new:
            await outbox.enqueue_many(conn, config, new, "trigger")
    return outcomes


def _alert_row(draft: AlertDraft, event: ResponseSubmitted, occurrences: int) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "dedupe_key": draft.dedupe_key,
        "rule": draft.rule,
        "severity": draft.severity.value,
        "customer_id": event.customer_id,
        "channel": event.channel.value,
        "touchpoint": event.touchpoint,
        "ticket_id": event.ticket_id,
        "location": event.segments.location,
        "product": event.segments.product,
        "business_unit": event.segments.business_unit,
        "survey_type": event.survey_type.value,
        "metric": event.metric.value,
        "score": event.score,
        "comment": event.comment,
        # Reason codes cannot hold a comma (see shared.events.ReasonCode).
        "reasons": ",".join(event.reasons),
        "event_id": event.event_id,
        "occurrences": occurrences,
        "value": json.dumps([v.stored() for v in draft.value]),
        "high_value": draft.high_value,
        "value_reason": draft.value_reason,
    }


async def list_alerts(
    conn: AsyncConnection, *, filters: dict[str, str], limit: int
) -> list[dict[str, Any]]:
    """Return alerts whose fields equal ``filters``, newest first."""
    query = sa.select(alerts).order_by(alerts.c.opened_at.desc(), alerts.c.id).limit(limit)
    for column, value in filters.items():
        query = query.where(alerts.c[column] == value)
    return [dict(row._mapping) for row in await conn.execute(query)]


# Stored by the database (0018), so the queue's orders are indexes rather than sorts.
_RANK = alerts.c.severity_rank
# Each order's keys, ending on the id; every key of one order runs the same way.
SORT_KEYS: dict[QueueSort, tuple[list[sa.ColumnElement[Any]], bool]] = {
    QueueSort.SEVERITY: ([_RANK, alerts.c.opened_at, alerts.c.id], False),
    QueueSort.OLDEST: ([alerts.c.opened_at, alerts.c.id], False),
    QueueSort.NEWEST: ([alerts.c.opened_at, alerts.c.id], True),
}
_FILTERED = ("rule", "severity", "channel", "location", "assignee", "customer_id", "ticket_id")


def _conditions(filters: QueueFilters, *, without: str | None = None) -> list[Any]:
    """The WHERE conditions of ``filters``, leaving out the field ``without`` (a facet)."""
    where: list[Any] = []
    if without != "status":
        if filters.status is QueueStatus.UNRESOLVED:
            where.append(alerts.c.status != "resolved")
        elif filters.status is not QueueStatus.ALL:
            where.append(alerts.c.status == filters.status.value)
    for name in _FILTERED:
        value = getattr(filters, name)
        if value is not None and name != without:
            where.append(alerts.c[name] == value)
    if filters.unassigned and without != "assignee":
        where.append(alerts.c.assignee.is_(None))
    return where


async def queue(
    conn: AsyncConnection,
    filters: QueueFilters,
    sort: QueueSort,
    limit: int,
    after: Sequence[Any] | None = None,
) -> list[dict[str, Any]]:
    """Return up to ``limit`` alerts matching ``filters`` in ``sort`` order, starting after
    the alert whose sort keys are ``after`` (see :func:`sort_values`)."""
    keys, descending = SORT_KEYS[sort]
    query = sa.select(alerts).where(*_conditions(filters))
    if after is not None:
        row = sa.tuple_(*keys)
        last = sa.tuple_(*(sa.literal(v, k.type) for k, v in zip(keys, after, strict=True)))
        query = query.where(row < last if descending else row > last)
    order = [k.desc() if descending else k.asc() for k in keys]
    return [dict(r._mapping) for r in await conn.execute(query.order_by(*order).limit(limit))]


async def version(conn: AsyncConnection) -> int:
    """A number that grows at the commit of every transaction that changed alerts."""
    found: int = await conn.scalar(sa.select(alerts_version.c.version)) or 0
    return found


def sort_values(sort: QueueSort, alert: dict[str, Any]) -> list[Any]:
    """Return an alert's sort keys under ``sort`` (what a cursor records)."""
    values: list[Any] = [alert["opened_at"], alert["id"]]
    if sort is QueueSort.SEVERITY:
        rank = {s.value: n for n, s in enumerate(Severity)}.get(alert["severity"], len(Severity))
        values.insert(0, rank)
    return values


FACETS = ("rule", "channel", "location", "assignee", "status")


async def facet_counts(
    conn: AsyncConnection, filters: QueueFilters, facet: str, most: int
) -> list[tuple[str | None, int]]:
    """Count alerts per value of ``facet`` under every filter but the facet's own, most
    frequent first; at most ``most`` values (ask for one more to learn if there are more)."""
    column = alerts.c[facet]
    n = sa.func.count().label("n")
    query = (
        sa.select(column, n)
        .where(*_conditions(filters, without=facet))
        .group_by(column)
        .order_by(n.desc(), column.asc().nulls_first())
        .limit(most)
    )
    return [(r[0], int(r.n)) for r in await conn.execute(query)]


async def alerts_of_customer(
    conn: AsyncConnection, customer_id: str, limit: int
) -> list[dict[str, Any]]:
    """Return a customer's alerts, newest first."""
    query = (
        sa.select(alerts)
        .where(alerts.c.customer_id == customer_id)
        .order_by(alerts.c.opened_at.desc(), alerts.c.id.desc())
        .limit(limit)
    )
    return [dict(r._mapping) for r in await conn.execute(query)]


# A touch dated later than this after it was applied is kept as dated then: a clock far
# ahead (an event of 2999) would otherwise stay on top of its customer's twenty for good.
TOUCH_SKEW = "5 minutes"
_TOUCH = sa.text(f"""
INSERT INTO customer_touches (event_id, customer_id, kind, occurred_at, channel, source,
    touchpoint, metric, score, comment, reasons, ticket_id, event_type, status, priority)
SELECT event_id, customer_id, kind, least(occurred_at, now() + interval '{TOUCH_SKEW}'),
    channel, source, touchpoint, metric, score, comment,
    coalesce(string_to_array(reasons, ','), '{{}}'), ticket_id, event_type, status, priority
FROM unnest(
    CAST(:event_id AS uuid[]), CAST(:customer_id AS text[]), CAST(:kind AS text[]),
    CAST(:occurred_at AS timestamptz[]), CAST(:channel AS text[]), CAST(:source AS text[]),
    CAST(:touchpoint AS text[]), CAST(:metric AS text[]), CAST(:score AS smallint[]),
    CAST(:comment AS text[]), CAST(:reasons AS text[]), CAST(:ticket_id AS text[]),
    CAST(:event_type AS text[]), CAST(:status AS text[]), CAST(:priority AS text[])
) AS t(event_id, customer_id, kind, occurred_at, channel, source, touchpoint, metric, score,
    comment, reasons, ticket_id, event_type, status, priority)
ORDER BY event_id
ON CONFLICT (event_id) DO NOTHING
""")

_TRIM = sa.text(f"""
DELETE FROM customer_touches AS t USING (
    SELECT event_id FROM (
        SELECT event_id, row_number() OVER (
            PARTITION BY customer_id ORDER BY occurred_at DESC, event_id DESC) AS n
        FROM customer_touches WHERE customer_id = ANY(CAST(:customers AS text[]))
    ) AS ranked WHERE n > {TOUCHES_KEPT}
) AS old
WHERE t.event_id = old.event_id
""")


async def record_touches(
    conn: AsyncConnection, events: Sequence[ResponseSubmitted | TouchpointEvent]
) -> None:
    """Keep each answer and ticket event among its customer's last touches, and only the
    last ``TOUCHES_KEPT`` of each customer. Give only events the ledger just found new."""
    columns: dict[str, list[Any]] = {name: [] for name in _TOUCH_COLUMNS}
    for event in events:
        row = _touch_row(event)
        if row is not None:
            for name in _TOUCH_COLUMNS:
                columns[name].append(row.get(name))
    if not columns["event_id"]:
        return
    await conn.execute(_TOUCH, columns)
    await conn.execute(_TRIM, {"customers": sorted(set(columns["customer_id"]))})


_TOUCH_COLUMNS = (
    "event_id",
    "customer_id",
    "kind",
    "occurred_at",
    "channel",
    "source",
    "touchpoint",
    "metric",
    "score",
    "comment",
    "reasons",
    "ticket_id",
    "event_type",
    "status",
    "priority",
)


def _touch_row(event: ResponseSubmitted | TouchpointEvent) -> dict[str, Any] | None:
    common = {
        "event_id": event.event_id,
        "customer_id": event.customer_id,
        "occurred_at": event.occurred_at,
        "channel": event.channel.value,
        "source": event.source,
        "ticket_id": event.ticket_id,
    }
    if isinstance(event, ResponseSubmitted):
        return common | {
            "kind": "answer",
            "touchpoint": event.touchpoint,
            "metric": event.metric.value,
            "score": event.score,
            "comment": event.comment,
            # Reason codes cannot hold a comma (see shared.events.ReasonCode).
            "reasons": ",".join(event.reasons),
        }
    if event.ticket_id is None:
        return None  # a purchase or other journey step: not a ticket
    return common | {
        "kind": "ticket",
        "event_type": event.type,
        "status": event.status,
        "priority": None if event.priority is None else event.priority.value,
    }


async def purge_touches(conn: AsyncConnection, older_than: timedelta) -> int:
    """Delete the touches that occurred more than ``older_than`` ago; return how many."""
    deleted = await conn.execute(
        touches.delete().where(touches.c.occurred_at < sa.func.now() - older_than)
    )
    return int(deleted.rowcount)


_ORDERS = sa.text(f"""
INSERT INTO alerting_orders (order_id, customer_id, currency, amount_minor, completed_at)
SELECT order_id, customer_id, currency, amount_minor,
    least(completed_at, now() + interval '{TOUCH_SKEW}')
FROM unnest(
    CAST(:order_id AS text[]), CAST(:customer_id AS text[]), CAST(:currency AS text[]),
    CAST(:amount_minor AS bigint[]), CAST(:completed_at AS timestamptz[])
) AS o(order_id, customer_id, currency, amount_minor, completed_at)
ORDER BY order_id
ON CONFLICT (order_id) DO NOTHING
""")

_REFUNDS = sa.text("""
INSERT INTO alerting_refunds (order_id, refund_id, customer_id, currency, amount_minor)
SELECT * FROM unnest(
    CAST(:order_id AS text[]), CAST(:refund_id AS text[]), CAST(:customer_id AS text[]),
    CAST(:currency AS text[]), CAST(:amount_minor AS bigint[])
) AS r(order_id, refund_id, customer_id, currency, amount_minor)
ORDER BY order_id, refund_id
ON CONFLICT (order_id, refund_id) DO NOTHING
""")


_STORED_ORDERS = sa.text("""
SELECT order_id, customer_id, currency, amount_minor FROM alerting_orders
WHERE order_id = ANY(CAST(:order_id AS text[]))
""")


async def record_orders(
    conn: AsyncConnection,
    events: Sequence[ResponseSubmitted | TouchpointEvent],
    fresh: Collection[uuid.UUID] = (),
) -> list[str]:
    """Keep each order's first completion and each refund once, in the order given (the
    first completion of an order in ``events`` is the one kept). Give every event of the
    batch, new to the ledger or not: orders and refunds dedupe on their own keys, so a
    replay loads the orders of events applied before this table existed, and a repeat
    under another event id changes nothing.

    A completion among ``fresh`` (the event ids the ledger just found new, so that a
    redelivery is not counted twice) whose order is kept for another customer, currency or
    amount is returned by kind (customer, currency, amount), for the caller to count in
    ``cxloop_alerting_order_conflicts_total`` once its transaction committed (a batch
    retried or split is applied again): the first one stands.
    """
    completions: list[TouchpointEvent] = []
    completed: dict[str, TouchpointEvent] = {}
    refunded: dict[tuple[str, str], TouchpointEvent] = {}
    for event in events:
        if not isinstance(event, TouchpointEvent) or event.order_id is None:
            continue
        if event.type == ORDER_COMPLETED:
            completed.setdefault(event.order_id, event)
            if event.event_id in fresh:
                completions.append(event)
        elif event.type == ORDER_REFUNDED and event.refund_id is not None:
            refunded.setdefault((event.order_id, event.refund_id), event)
    if completed:
        await conn.execute(
            _ORDERS,
            {
                "order_id": list(completed),
                "customer_id": [e.customer_id for e in completed.values()],
                "currency": [e.currency for e in completed.values()],
                "amount_minor": [_minor(e) for e in completed.values()],
                "completed_at": [e.occurred_at for e in completed.values()],
            },
        )
    if refunded:
        await conn.execute(
            _REFUNDS,
            {
                "order_id": [order for order, _ in refunded],
                "refund_id": [refund for _, refund in refunded],
                "customer_id": [e.customer_id for e in refunded.values()],
                "currency": [e.currency for e in refunded.values()],
                "amount_minor": [_minor(e) for e in refunded.values()],
            },
        )
    return await _conflicts(conn, completions) if completions else []


async def _conflicts(conn: AsyncConnection, completions: list[TouchpointEvent]) -> list[str]:
    """Return the kind of each completion that differs from its order as kept (read after
    the insert, so an order another transaction committed meanwhile is seen): by customer
    first, then currency, then amount. Never an id in a label or a log."""
    ids = sorted({e.order_id for e in completions if e.order_id is not None})
    kept = {r.order_id: r for r in await conn.execute(_STORED_ORDERS, {"order_id": ids})}
    kinds: list[str] = []
    for event in completions:
        row = kept.get(event.order_id)
        if row is None:
            continue
        if row.customer_id != event.customer_id:
            kind = "customer"
        elif row.currency != event.currency:
            kind = "currency"
        elif row.amount_minor != _minor(event):
            kind = "amount"
        else:
            continue
        kinds.append(kind)
    return kinds


def _minor(event: TouchpointEvent) -> int:
    try:
        return event.amount_minor()
    except ValueError:
        # Validated on arrival; a currency table that changed since is the event's fault.
        raise PermanentError("the amount does not fit its currency", field="amount") from None


# Per (customer, answer time) asked: per currency, the net revenue and count of the orders
# completed in the WINDOW_DAYS up to the answer (an answer dated ahead of now counts as
# given now). A refund counts only in its order's currency and customer, and never takes
# an order below zero. Sums are numeric: a bigint would overflow (22003) for a customer of
# ten thousand orders near shared.money.MAX_MINOR, and dead-letter their answer.
_VALUES = sa.text(f"""
SELECT q.n, o.currency,
    sum(o.amount_minor - least(coalesce(r.refunded, 0), o.amount_minor)) AS revenue_minor,
    count(*) AS orders
FROM unnest(CAST(:customer_id AS text[]), CAST(:occurred_at AS timestamptz[]))
    WITH ORDINALITY AS q(customer_id, occurred_at, n)
CROSS JOIN LATERAL (SELECT least(q.occurred_at, now()) AS answered) AS a
JOIN alerting_orders AS o ON o.customer_id = q.customer_id
    AND o.completed_at >= a.answered - interval '{WINDOW_DAYS} days'
    AND o.completed_at <= a.answered
LEFT JOIN LATERAL (
    SELECT sum(f.amount_minor) AS refunded FROM alerting_refunds AS f
    WHERE f.order_id = o.order_id AND f.currency = o.currency
        AND f.customer_id = o.customer_id
) AS r ON true
GROUP BY q.n, o.currency
""")


async def customer_values(
    conn: AsyncConnection, asked: Sequence[tuple[str, datetime]]
) -> list[list[tuple[str, int, int]]]:
    """For each ``(customer_id, answer time)``, the ``(currency, revenue_minor, orders)`` of
    the customer's orders in the 365 days up to that answer (see ``services.alerting.value``)."""
    found: list[list[tuple[str, int, int]]] = [[] for _ in asked]
    if not asked:
        return found
    rows = await conn.execute(
        _VALUES,
        {"customer_id": [c for c, _ in asked], "occurred_at": [at for _, at in asked]},
    )
    for row in rows:
        found[int(row.n) - 1].append((row.currency, int(row.revenue_minor), int(row.orders)))
    return found


# Rows per purge statement: each chunk is its own short transaction.
PURGE_CHUNK = 5000
# Old orders, a chunk at a time in no order (read from the completed_at index, never
# sorted: any old rows will do, the next chunk takes the rest), skipping rows a transaction
# holds (an erasure pseudonymising them, a consumer inserting): the purge never waits on a
# row lock, so it cannot deadlock with an erasure, and what it skipped goes at the next purge.
_PURGE_ORDERS = sa.text("""
DELETE FROM alerting_orders WHERE order_id IN (
    SELECT order_id FROM alerting_orders WHERE completed_at < now() - CAST(:older_than AS interval)
    LIMIT :chunk FOR UPDATE SKIP LOCKED
)
""")
_PURGE_REFUNDS = sa.text("""
DELETE FROM alerting_refunds AS d USING (
    SELECT f.order_id, f.refund_id FROM alerting_refunds AS f
    WHERE f.recorded_at < now() - CAST(:older_than AS interval)
        AND NOT EXISTS (SELECT FROM alerting_orders AS o WHERE o.order_id = f.order_id)
    ORDER BY f.order_id, f.refund_id LIMIT :chunk FOR UPDATE OF f SKIP LOCKED
) AS old
WHERE d.order_id = old.order_id AND d.refund_id = old.refund_id
""")


async def purge_orders(
    conn: AsyncConnection, older_than: timedelta, chunk: int = PURGE_CHUNK
) -> tuple[int, int]:
    """Delete up to ``chunk`` orders completed more than ``older_than`` ago, then up to
    ``chunk`` refunds recorded that long ago whose order is not kept; return how many of
    each went (a full chunk: call again, in a new transaction)."""
    params = {"older_than": older_than, "chunk": chunk}
    orders_gone = await conn.execute(_PURGE_ORDERS, params)
    refunds_gone = await conn.execute(_PURGE_REFUNDS, params)
    return int(orders_gone.rowcount), int(refunds_gone.rowcount)


async def touches_of(conn: AsyncConnection, customer_id: str) -> list[dict[str, Any]]:
    """Return a customer's kept touches, newest first."""
    query = (
        sa.select(touches)
        .where(touches.c.customer_id == customer_id)
        .order_by(touches.c.occurred_at.desc(), touches.c.event_id.desc())
        .limit(TOUCHES_KEPT)
    )
    return [dict(r._mapping) for r in await conn.execute(query)]


async def get_alert(conn: AsyncConnection, alert_id: uuid.UUID) -> dict[str, Any] | None:
    """Return one alert, or None."""
    row = (await conn.execute(sa.select(alerts).where(alerts.c.id == alert_id))).first()
    return None if row is None else dict(row._mapping)


history_of = lifecycle.history_of


async def notifications_of(conn: AsyncConnection, alert_id: uuid.UUID) -> list[dict[str, Any]]:
    """Return an alert's notifications, oldest first (404 when there is no such alert)."""
    if await get_alert(conn, alert_id) is None:
        raise lifecycle.NotFound(str(alert_id))
    rows = await conn.execute(
        sa.select(notifications)
        .where(notifications.c.alert_id == alert_id)
        .order_by(notifications.c.created_at, notifications.c.id)
    )
    return [dict(r._mapping) for r in rows]


_SILENCE_COLUMNS = (
    silences.c.id,
    silences.c.matchers,
    silences.c.starts_at,
    silences.c.ends_at,
    silences.c.actor,
    silences.c.actor_id,
    silences.c.created_by,
    silences.c.comment,
    silences.c.expired_at,
    silences.c.expired_by,
    silences.c.expired_by_id,
    (silences.c.ends_at > sa.func.clock_timestamp()).label("active"),
)


async def create_silence(
    conn: AsyncConnection,
    matchers: dict[str, str],
    ends_at: datetime,
    actor: str,
    created_by: str,
    comment: str,
    *,
    actor_id: str | None = None,
) -> dict[str, Any]:
    """Start a silence now, until ``ends_at``, for the key named ``actor`` (id ``actor_id``)."""
    row = (
        await conn.execute(
            silences.insert()
            .values(
                id=uuid.uuid4(),
                matchers=matchers,
                ends_at=ends_at,
                actor=actor,
                actor_id=actor_id,
                created_by=created_by,
                comment=comment,
            )
            .returning(*_SILENCE_COLUMNS)
        )
    ).one()
    return dict(row._mapping)


async def list_silences(
    conn: AsyncConnection, *, active_only: bool, ended_since: datetime | None = None, limit: int
) -> list[dict[str, Any]]:
    """Return up to ``limit`` silences, newest first: those in force (with ``active_only``),
    those in force or ended since ``ended_since``, or all."""
    query = sa.select(*_SILENCE_COLUMNS).order_by(silences.c.created_at.desc(), silences.c.id)
    in_force = silences.c.ends_at > sa.func.clock_timestamp()
    if active_only:
        query = query.where(in_force)
    elif ended_since is not None:
        query = query.where(sa.or_(in_force, silences.c.ends_at >= ended_since))
    return [dict(r._mapping) for r in await conn.execute(query.limit(limit))]


async def expire_silence(
    conn: AsyncConnection, silence_id: uuid.UUID, actor: str, *, actor_id: str | None = None
) -> tuple[dict[str, Any] | None, bool]:
    """End a silence now, recording the key that ended it and when; return it (None if
    unknown) and whether this call ended it (an ended one, by its time or by someone, stays
    as it was). "Now" is the clock's, not the transaction's start."""
    now = sa.select(sa.func.clock_timestamp().label("at")).subquery()
    row = (
        await conn.execute(
            silences.update()
            .where(
                silences.c.id == silence_id,
                silences.c.expired_at.is_(None),
                silences.c.ends_at > now.c.at,
            )
            .values(ends_at=now.c.at, expired_at=now.c.at, expired_by=actor, expired_by_id=actor_id)
            .returning(*_SILENCE_COLUMNS)
        )
    ).first()
    if row is not None:
        return dict(row._mapping), True
    query = sa.select(*_SILENCE_COLUMNS).where(silences.c.id == silence_id)
    row = (await conn.execute(query)).first()
    return (None if row is None else dict(row._mapping)), False


# What an erased customer's silence says instead of its comment.
ERASED_COMMENT = "(erased)"


async def erase_customer(conn: AsyncConnection, customer_id: str, pseudonym: str) -> int:
    """Erase a customer from alerting; return how many of their alerts were pseudonymised.

    Their id becomes ``pseudonym`` in SLA deadlines, alerts, their orders and refunds (kept,
    so that a repeat of an order under its pseudonym still counts once) and their recent
    touches (which lose their comments and reasons, as alerts do); their alerts lose the
    comment, the reasons, the resolution note and every note in their history, and their id
    becomes the pseudonym in dedupe keys and notification group keys too. A silence that
    matches their id (the console ticks ``customer_id`` by default) matches the pseudonym
    instead, so it still holds back their alerts, and its comment, which may name them,
    becomes ``ERASED_COMMENT``. Deadlines go first: a deadline firing meanwhile holds its
    row, so its alert exists by the time the alerts are updated.
    """
    await conn.execute(
        deadlines.update()
        .where(deadlines.c.customer_id == customer_id)
        .values(customer_id=pseudonym)
    )
    await conn.execute(
        touches.update()
        .where(touches.c.customer_id == customer_id)
        .values(customer_id=pseudonym, comment=None, reasons=[])
    )
    for table in (orders, refunds):
        await conn.execute(
            table.update().where(table.c.customer_id == customer_id).values(customer_id=pseudonym)
        )
    await conn.execute(
        silences.update()
        .where(silences.c.matchers["customer_id"].astext == customer_id)
        .values(
            matchers=silences.c.matchers.op("||")(
                sa.func.jsonb_build_object("customer_id", pseudonym)
            ),
            comment=ERASED_COMMENT,
        )
    )
    rows = await conn.execute(
        alerts.update()
        .where(alerts.c.customer_id == customer_id)
        .values(
            customer_id=pseudonym,
            comment=None,
            reasons=[],
            note=None,
            dedupe_key=sa.func.replace(alerts.c.dedupe_key, f":{customer_id}:", f":{pseudonym}:"),
        )
        .returning(alerts.c.id)
    )
    alert_ids = [row.id for row in rows]
    if alert_ids:
        # One array parameter: a customer may have more alerts than a statement has bind
        # parameters (32,767).
        ids = sa.bindparam("alert_ids", alert_ids, type_=pg.ARRAY(pg.UUID(as_uuid=True)))
        await conn.execute(
            history.update()
            .where(history.c.alert_id == sa.any_(ids), history.c.note.is_not(None))
            .values(note=None)
        )
        # A route that groups by customer_id names them in its notifications' group key.
        grouped, renamed = f"customer_id={customer_id}", f"customer_id={pseudonym}"
        await conn.execute(
            notifications.update()
            .where(
                notifications.c.alert_id == sa.any_(ids),
                sa.func.strpos(notifications.c.group_key, grouped) > 0,
            )
            .values(group_key=sa.func.replace(notifications.c.group_key, grouped, renamed))
        )
    return len(alert_ids)
