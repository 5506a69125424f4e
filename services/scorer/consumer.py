"""The scorer's batch handler: one transaction per batch, deduplicated by event id."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncEngine

from services.scorer import metrics, repository
from shared.events import ResponseSubmitted, utcnow
from shared.kafka import Decoded


class ResponseHandler:
    """Stores and counts a batch of responses; redelivered events change nothing."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def __call__(self, batch: Sequence[Decoded[ResponseSubmitted]]) -> None:
        events = [d.event for d in batch]
        async with self._engine.begin() as conn:
            fresh = await repository.apply_responses(conn, events)
        committed_at = utcnow()
        metrics.DUPLICATES.inc(len(events) - len(fresh))
        for event in fresh:
            metrics.APPLIED.labels(metric=event.metric.value).inc()
            metrics.EVENT_TO_AGGREGATE_SECONDS.observe(
                max(0.0, (committed_at - event.received_at).total_seconds())
            )
