"""The open-alert gauge, recomputed in the background (the count lives in Postgres)."""

from __future__ import annotations

import asyncio
import contextlib

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.alerting import metrics
from services.alerting.models import alerts, notifications
from shared.kafka import sleep_unless_stopped


async def refresh(engine: AsyncEngine) -> None:
    """Set ``cxloop_alerting_open_alerts`` from the alerts table."""
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                sa.select(alerts.c.rule, alerts.c.status, sa.func.count())
                .where(alerts.c.status != "resolved")
                .group_by(alerts.c.rule, alerts.c.status)
            )
        ).all()
        depth = (
            await conn.execute(
                sa.select(notifications.c.status, sa.func.count())
                .where(notifications.c.status != "delivered")
                .group_by(notifications.c.status)
            )
        ).all()
    metrics.OPEN.clear()
    for rule, status, count in rows:
        metrics.OPEN.labels(rule=rule, status=status).set(count)
    metrics.OUTBOX_DEPTH.clear()
    for status, count in depth:
        metrics.OUTBOX_DEPTH.labels(status=status).set(count)


async def keep_fresh(engine: AsyncEngine, stop: asyncio.Event, every: float = 15.0) -> None:
    """Refresh the gauge every ``every`` seconds until ``stop`` is set."""
    while not stop.is_set():
        with contextlib.suppress(Exception):
            await refresh(engine)
        await sleep_unless_stopped(stop, every)
