"""SLA timers: deadlines kept in Postgres, fired by a loop when they pass with no event.

Ticket events set the deadlines (``ticket.created``), meet them (``ticket.first_response``
or ``ticket.agent_replied``, ``ticket.resolved``) or re-arm them (``ticket.reopened``), in
any order. :func:`fire_due` opens a slow-ticket alert for every deadline that has passed
unmet; it locks the rows it takes with ``FOR UPDATE SKIP LOCKED``, so several alerting
instances share the work and never fire the same deadline twice. Deadlines survive
restarts because they are rows, not timers in memory.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.alerting import lifecycle, metrics, outbox
from services.alerting.config import AlertingConfig
from services.alerting.models import UNRESOLVED, alerts, deadlines
from services.alerting.rules import Severity
from shared.errors import PermanentError
from shared.events import TouchpointEvent
from shared.kafka import sleep_unless_stopped
from shared.settings import SlaSettings

log = logging.getLogger(__name__)

RULES = {"first_response": "slow_first_response", "resolution": "slow_resolution"}
FIRST_RESPONSE = frozenset({"ticket.first_response", "ticket.agent_replied"})
_NAMESPACE = uuid.UUID("4b0d8b8e-5b7e-5f3e-a1c4-2d6e9f8a7b10")


def _deadline(
    sla: SlaSettings, kind: str, priority: str | None, channel: str, start: datetime
) -> datetime | None:
    return _later(start, sla.minutes(kind, priority, channel))


def _later(start: datetime, minutes: float | None) -> datetime | None:
    """``minutes`` after the event's time; a deadline past year 9999 is the event's fault."""
    if minutes is None:
        return None
    try:
        return start + timedelta(minutes=minutes)
    except OverflowError:
        raise PermanentError(
            "is too late: its SLA deadline is past the year 9999", field="occurred_at"
        ) from None


async def _start(conn: AsyncConnection, e: TouchpointEvent, kind: str, sla: SlaSettings) -> None:
    priority = e.priority.value if e.priority else None
    row = insert(deadlines).values(
        source=e.source,
        ticket_id=e.ticket_id,
        kind=kind,
        customer_id=e.customer_id,
        channel=e.channel.value,
        priority=priority,
        started_at=e.occurred_at,
        deadline=_deadline(sla, kind, priority, e.channel.value, e.occurred_at),
    )
    earlier = sa.or_(
        deadlines.c.started_at.is_(None), row.excluded.started_at < deadlines.c.started_at
    )
    await conn.execute(
        row.on_conflict_do_update(
            constraint="sla_deadlines_pkey",
            set_={
                "priority": row.excluded.priority,
                "customer_id": row.excluded.customer_id,
                "channel": row.excluded.channel,
                "deadline": sa.case((earlier, row.excluded.deadline), else_=deadlines.c.deadline),
                "started_at": sa.func.least(deadlines.c.started_at, row.excluded.started_at),
            },
        )
    )


async def _meet(conn: AsyncConnection, e: TouchpointEvent, kind: str) -> None:
    row = insert(deadlines).values(
        source=e.source,
        ticket_id=e.ticket_id,
        kind=kind,
        customer_id=e.customer_id,
        channel=e.channel.value,
        satisfied_at=e.occurred_at,
    )
    await conn.execute(
        row.on_conflict_do_update(
            constraint="sla_deadlines_pkey",
            set_={
                "satisfied_at": sa.func.least(deadlines.c.satisfied_at, row.excluded.satisfied_at)
            },
        )
    )


async def _reopen(conn: AsyncConnection, e: TouchpointEvent, sla: SlaSettings) -> None:
    minutes = sla.minutes("resolution", e.priority.value if e.priority else None, e.channel.value)
    await conn.execute(
        deadlines.update()
        .where(
            deadlines.c.source == e.source,
            deadlines.c.ticket_id == e.ticket_id,
            deadlines.c.kind == "resolution",
            deadlines.c.satisfied_at < e.occurred_at,
        )
        .values(
            satisfied_at=None,
            fired_at=None,
            started_at=e.occurred_at,
            deadline=_later(e.occurred_at, minutes),
        )
    )


async def track(
    conn: AsyncConnection,
    events: Sequence[TouchpointEvent],
    sla: SlaSettings,
    config: AlertingConfig | None = None,
) -> None:
    """Apply ticket events to the deadlines; a resolution closes the ticket's slow alerts."""
    for e in sorted(events, key=lambda event: event.occurred_at):
        if e.ticket_id is None:
            continue
        if e.type == "ticket.created":
            await _start(conn, e, "first_response", sla)
            await _start(conn, e, "resolution", sla)
        elif e.type in FIRST_RESPONSE:
            await _meet(conn, e, "first_response")
        elif e.type == "ticket.resolved":
            await _meet(conn, e, "resolution")
            await _auto_resolve(conn, e.source, e.ticket_id, config)
        elif e.type == "ticket.reopened":
            await _reopen(conn, e, sla)


async def _auto_resolve(
    conn: AsyncConnection, source: str, ticket_id: str, config: AlertingConfig | None
) -> None:
    rows = await conn.execute(
        sa.select(alerts.c.id).where(
            alerts.c.ticket_source == source,
            alerts.c.ticket_id == ticket_id,
            alerts.c.rule.in_(RULES.values()),
            alerts.c.status != "resolved",
        )
    )
    for (alert_id,) in rows.all():
        await lifecycle.resolve(
            conn,
            alert_id,
            "cxloop",
            "the ticket was resolved",
            action="auto_resolved",
            config=config,
        )


async def _open(conn: AsyncConnection, due: Any, config: AlertingConfig | None) -> None:
    rule = RULES[due.kind]
    severity = Severity.CRITICAL if due.priority == "urgent" else Severity.WARNING
    key = f"{rule}:{due.customer_id}:{due.source}:{due.ticket_id}"
    stmt = insert(alerts).values(
        id=uuid.uuid4(),
        dedupe_key=key,
        rule=rule,
        severity=severity.value,
        status="open",
        customer_id=due.customer_id,
        channel=due.channel,
        touchpoint="support_ticket",
        ticket_id=due.ticket_id,
        ticket_source=due.source,
        reasons=[],
        event_id=uuid.uuid5(_NAMESPACE, key),
        occurrences=1,
        opened_at=sa.func.now(),
        last_seen_at=sa.func.now(),
    )
    upsert = stmt.on_conflict_do_nothing(
        index_elements=[alerts.c.dedupe_key], index_where=UNRESOLVED
    ).returning(alerts.c.id)
    alert_id = (await conn.execute(upsert)).scalar()
    if alert_id is not None:
        await lifecycle.record(conn, alert_id, "cxloop", "opened", f"{due.kind} deadline passed")
        metrics.OPENED.labels(rule=rule, severity=severity.value).inc()
        if config is not None:
            row = (await conn.execute(sa.select(alerts).where(alerts.c.id == alert_id))).one()
            await outbox.enqueue(conn, config, dict(row._mapping), "trigger")


async def fire_due(
    engine: AsyncEngine, config: AlertingConfig | None = None, limit: int = 100
) -> int:
    """Open an alert for each passed, unmet deadline not yet fired; return how many fired."""
    async with engine.begin() as conn:
        due = (
            await conn.execute(
                sa.select(deadlines)
                .where(
                    deadlines.c.deadline <= sa.func.now(),
                    deadlines.c.satisfied_at.is_(None),
                    deadlines.c.fired_at.is_(None),
                )
                .order_by(deadlines.c.deadline)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        ).all()
        for row in due:
            await _open(conn, row, config)
            await conn.execute(
                deadlines.update()
                .where(
                    deadlines.c.source == row.source,
                    deadlines.c.ticket_id == row.ticket_id,
                    deadlines.c.kind == row.kind,
                )
                .values(fired_at=sa.func.now())
            )
    return len(due)


async def escalate_due(engine: AsyncEngine, config: AlertingConfig) -> int:
    """Tell the escalation receiver of every alert nobody acknowledged in time, once."""
    if config.escalation is None:
        return 0
    after = sa.literal(timedelta(minutes=config.escalation.after_minutes), sa.Interval)
    async with engine.begin() as conn:
        due = (
            await conn.execute(
                sa.select(alerts)
                .where(
                    alerts.c.status == "open",
                    alerts.c.escalated_at.is_(None),
                    alerts.c.opened_at <= sa.func.now() - after,
                )
                .limit(100)
                .with_for_update(skip_locked=True)
            )
        ).all()
        for row in due:
            alert = dict(row._mapping)
            await outbox.enqueue(conn, config, alert, "trigger", [config.escalation.receiver])
            await conn.execute(
                alerts.update().where(alerts.c.id == row.id).values(escalated_at=sa.func.now())
            )
            await lifecycle.record(
                conn, row.id, "cxloop", "escalated", f"to {config.escalation.receiver}"
            )
    return len(due)


async def run(
    engine: AsyncEngine, stop: asyncio.Event, every: float, config: AlertingConfig | None = None
) -> None:
    """Fire due deadlines every ``every`` seconds until ``stop`` is set."""
    while not stop.is_set():
        fired = 0
        try:
            fired = await fire_due(engine, config)
            if config is not None:
                fired += await escalate_due(engine, config)
        except Exception as exc:
            log.warning("SLA timer pass failed (%s); retrying", type(exc).__name__)
        if fired:
            log.info("fired %d SLA deadline(s)", fired)
            continue
        await sleep_unless_stopped(stop, every)
