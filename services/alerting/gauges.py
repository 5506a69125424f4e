"""The open-alert gauge, recomputed in the background (the count lives in Postgres), and
the hourly purge of customer touches and orders past their retention."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.alerting import metrics, repository
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


log = logging.getLogger(__name__)
PURGE_EVERY = 3600.0  # seconds between purges of old touches and orders


async def purge(engine: AsyncEngine, retention: timedelta) -> int:
    """Delete customer touches that occurred longer than ``retention`` ago."""
    async with engine.begin() as conn:
        return await repository.purge_touches(conn, retention)


async def purge_orders(
    engine: AsyncEngine, retention: timedelta, chunk: int = repository.PURGE_CHUNK
) -> int:
    """Delete orders completed longer than ``retention`` ago (and their old refunds), a
    chunk per transaction; return how many orders went. Rows locked meanwhile (an erasure)
    are skipped until the next purge."""
    gone = 0
    while True:
        async with engine.begin() as conn:
            orders, refunds = await repository.purge_orders(conn, retention, chunk)
        gone += orders
        if orders < chunk and refunds < chunk:
            return gone


async def keep_fresh(
    engine: AsyncEngine,
    stop: asyncio.Event,
    every: float = 15.0,
    *,
    touch_retention: timedelta | None = None,
    order_retention: timedelta | None = None,
) -> None:
    """Refresh the gauge every ``every`` seconds, and purge old touches and orders every
    hour (the first time at once), until ``stop`` is set."""
    purged_at: float | None = None
    while not stop.is_set():
        with contextlib.suppress(Exception):
            await refresh(engine)
        if purged_at is None or time.monotonic() - purged_at >= PURGE_EVERY:
            purged_at = time.monotonic()
            if touch_retention is not None:
                try:
                    await purge(engine, touch_retention)
                except Exception as exc:
                    log.warning("purging old customer touches failed: %s", exc)
            if order_retention is not None:
                try:
                    await purge_orders(engine, order_retention)
                except Exception as exc:
                    log.warning("purging old customer orders failed: %s", exc)
        await sleep_unless_stopped(stop, every)
