"""The durable notification outbox: written with the alert change, delivered with retries.

Delivery takes due rows ``FOR UPDATE SKIP LOCKED`` (instances share the work), sends them
concurrently, and records the outcome in the same transaction. 2xx: delivered. A timeout,
a connection failure, 429 or 5xx: retried with exponential backoff, honouring Retry-After.
Any other 4xx: failed, visibly, never retried. Every attempt of a notification carries the
same id (webhook-id, PagerDuty dedup_key), so a receiver can drop the repeat that a crash
between its answer and our commit would cause.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.alerting import metrics, receivers
from services.alerting.config import AlertingConfig
from services.alerting.models import alerts, notifications, silences
from shared.kafka import backoff_delay

log = logging.getLogger(__name__)

# A receiver back from an outage hears from us within a minute: an alert is for people now.
MAX_DELAY = 60.0


async def active_silences(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Return the matchers of every silence in force now."""
    rows = await conn.execute(
        sa.select(silences.c.matchers).where(
            silences.c.starts_at <= sa.func.now(), silences.c.ends_at > sa.func.now()
        )
    )
    return [matchers for (matchers,) in rows]


def silenced(alert: dict[str, Any], active: Sequence[dict[str, Any]]) -> bool:
    """Return whether one of the ``active`` silences matches every one of its matchers."""
    return any(all(str(alert.get(k)) == str(v) for k, v in m.items()) for m in active)


async def enqueue(
    conn: AsyncConnection,
    config: AlertingConfig,
    alert: dict[str, Any],
    action: str,
    receivers_: list[str] | None = None,
    silences_: Sequence[dict[str, Any]] | None = None,
) -> int:
    """Queue ``action`` on ``alert`` for every receiver its routes name (or ``receivers_``),
    unless a silence matches it; return how many were queued.

    A new alert on a grouping route waits ``group_wait_seconds`` for company: every alert
    that joins the group meanwhile is delivered in the same request. ``silences_`` are the
    silences in force, when the caller already read them for a whole batch.
    """
    if receivers_ is not None:
        routes: list[tuple[str, str | None, float]] = [(r, None, 0.0) for r in receivers_]
    else:
        routes = [
            (route.receiver, key, route.group_wait_seconds) for route, key in config.matches(alert)
        ]
    if not routes:
        return 0
    if silenced(alert, silences_ if silences_ is not None else await active_silences(conn)):
        return 0
    for receiver, group_key, wait in routes:
        due: Any = sa.func.now()
        if group_key is not None and action == "trigger":
            pending = await conn.scalar(
                sa.select(sa.func.min(notifications.c.next_attempt_at)).where(
                    notifications.c.group_key == group_key,
                    notifications.c.status == "pending",
                    notifications.c.attempts == 0,
                )
            )
            due = pending or sa.func.now() + sa.literal(timedelta(seconds=wait), sa.Interval)
        else:
            group_key = None
        await conn.execute(
            notifications.insert().values(
                id=uuid.uuid4(),
                alert_id=alert["id"],
                receiver=receiver,
                action=action,
                group_key=group_key,
                next_attempt_at=due,
            )
        )
    return len(routes)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return float(value) if value.replace(".", "", 1).isdigit() else None


async def _attempt(
    client: httpx.AsyncClient, config: AlertingConfig, rows: list[Any]
) -> tuple[str, float | None, str | None]:
    """Return (outcome, delay before a retry, error) for one notification or one group."""
    first = rows[0]
    receiver = config.receiver(first.receiver)
    if receiver is None:
        return "failed", None, f"receiver {first.receiver!r} is no longer configured"
    group = [{c.name: getattr(row, c.name) for c in alerts.columns} for row in rows]
    request = receivers.build_group(
        receiver, config, str(first.notification_id), first.action, group
    )
    try:
        response = await client.post(request.url, content=request.body, headers=request.headers)
    except httpx.HTTPError as exc:
        return "retry", None, type(exc).__name__
    if response.is_success:
        return "delivered", None, None
    if response.status_code == 429 or response.status_code >= 500:
        return "retry", _retry_after(response), f"HTTP {response.status_code}"
    return "failed", None, f"HTTP {response.status_code}: {response.text[:200]}"


_UPDATE_COLUMNS = ("id", "status", "attempts", "last_error", "delay")

_RECORD_ATTEMPTS = sa.text("""
UPDATE notifications AS n SET
    status = u.status,
    attempts = u.attempts,
    last_error = u.last_error,
    delivered_at = CASE WHEN u.status = 'delivered' THEN now() ELSE n.delivered_at END,
    next_attempt_at = CASE WHEN u.delay IS NULL THEN n.next_attempt_at
                           ELSE now() + make_interval(secs => u.delay) END
FROM unnest(CAST(:id AS uuid[]), CAST(:status AS text[]), CAST(:attempts AS integer[]),
            CAST(:last_error AS text[]), CAST(:delay AS float8[]))
     AS u(id, status, attempts, last_error, delay)
WHERE n.id = u.id
""")


async def deliver_due(
    engine: AsyncEngine, client: httpx.AsyncClient, config: AlertingConfig
) -> int:
    """Attempt every due notification once; return how many were attempted."""
    async with engine.begin() as conn:
        due = (
            await conn.execute(
                sa.select(
                    notifications.c.id.label("notification_id"),
                    notifications.c.receiver,
                    notifications.c.action,
                    notifications.c.attempts,
                    notifications.c.group_key,
                    *alerts.columns,
                )
                .join(alerts, alerts.c.id == notifications.c.alert_id)
                .where(
                    notifications.c.status == "pending",
                    notifications.c.next_attempt_at <= sa.func.now(),
                )
                .order_by(notifications.c.next_attempt_at)
                .limit(500)
                .with_for_update(of=notifications, skip_locked=True)
            )
        ).all()
        batches: dict[object, list[Any]] = {}
        for row in due:
            batches.setdefault(row.group_key or row.notification_id, []).append(row)
        groups = [sorted(rows, key=lambda r: str(r.notification_id)) for rows in batches.values()]
        outcomes = await asyncio.gather(*(_attempt(client, config, rows) for rows in groups))
        updates: dict[str, list[Any]] = {k: [] for k in _UPDATE_COLUMNS}
        for row, (outcome, retry_after, error) in (
            (row, result) for rows, result in zip(groups, outcomes, strict=True) for row in rows
        ):
            metrics.NOTIFY_ATTEMPTS.labels(receiver=row.receiver, outcome=outcome).inc()
            delay = None
            if outcome == "failed":
                log.error("notification to %s failed for good: %s", row.receiver, error)
            elif outcome == "retry":
                delay = min(
                    MAX_DELAY,
                    max(retry_after or 0, backoff_delay(row.attempts, base=1.0, cap=MAX_DELAY)),
                )
            status = {"delivered": "delivered", "failed": "failed"}.get(outcome, "pending")
            for column, value in zip(
                _UPDATE_COLUMNS,
                (row.notification_id, status, row.attempts + 1, error, delay),
                strict=True,
            ):
                updates[column].append(value)
        if due:
            # One statement for the whole pass: its rows are locked since the SELECT.
            await conn.execute(_RECORD_ATTEMPTS, updates)
    return len(due)


async def run(
    engine: AsyncEngine,
    config: AlertingConfig,
    stop: asyncio.Event,
    every: float = 0.5,
    queued: asyncio.Event | None = None,
) -> None:
    """Deliver until ``stop`` is set: every ``every`` seconds, and at once when ``queued`` is set.

    ``queued`` is this process's shortcut; the poll finds what other instances queued.
    """
    queued = queued or asyncio.Event()
    async with httpx.AsyncClient(timeout=10.0) as client:
        while not stop.is_set():
            queued.clear()
            attempted = 0
            try:
                attempted = await deliver_due(engine, client, config)
            except Exception as exc:
                log.warning("delivery pass failed (%s); retrying", type(exc).__name__)
            if not attempted:
                await _first_of(stop, queued, timeout=every)


async def _first_of(stop: asyncio.Event, queued: asyncio.Event, timeout: float) -> None:
    waits = [asyncio.create_task(stop.wait()), asyncio.create_task(queued.wait())]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
