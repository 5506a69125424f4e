"""The scorer's batch handler: one transaction per batch, deduplicated by event id."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncEngine

from services.scorer import metrics, repository
from shared.events import ResponseSubmitted, TouchpointEvent, utcnow
from shared.kafka import Decoded


class BatchHandler:
    """Stores and counts a batch of responses and touchpoint events; redeliveries change nothing."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def __call__(self, batch: Sequence[Decoded]) -> None:
        events = [
            d.event for d in batch if isinstance(d.event, ResponseSubmitted | TouchpointEvent)
        ]
        async with self._engine.begin() as conn:
            applied = await repository.apply_batch(conn, events)
        committed_at = utcnow()
        metrics.DUPLICATES.inc(len(events) - len(applied.responses) - len(applied.touchpoints))
        metrics.TOUCHPOINTS_APPLIED.inc(len(applied.touchpoints))
        for metric, n in Counter(e.metric.value for e in applied.responses).items():
            metrics.APPLIED.labels(metric=metric).inc(n)
        for event in applied.responses:
            metrics.EVENT_TO_AGGREGATE_SECONDS.observe(
                max(0.0, (committed_at - event.received_at).total_seconds())
            )
