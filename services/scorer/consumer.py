"""The scorer's batch handler: one transaction per batch, deduplicated by event id."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncEngine

from services.scorer import metrics, queries, repository
from shared import erasure
from shared.events import ResponseSubmitted, TouchpointEvent, utcnow
from shared.kafka import Decoded
from shared.privacy import Hasher
from shared.settings import PrivacySettings, load


class BatchHandler:
    """Stores and counts a batch of responses and touchpoint events; redeliveries change nothing.

    A ``customer.erased`` in the batch erases the customer between the events before it and
    those after it, and an erased customer's later events are stored pseudonymised.
    """

    def __init__(self, engine: AsyncEngine, hasher: Hasher | None = None) -> None:
        self._engine = engine
        self._hasher = hasher or Hasher(load(PrivacySettings).key())

    async def __call__(self, batch: Sequence[Decoded]) -> None:
        events = [d.event for d in batch]
        applied: list[repository.Applied] = []
        async with self._engine.begin() as conn:

            async def apply(segment: list[ResponseSubmitted | TouchpointEvent]) -> None:
                applied.append(await repository.apply_batch(conn, segment))

            async def erase(customer_id: str, pseudonym: str) -> None:
                await queries.erase_customer(conn, customer_id, pseudonym)
                if any(a.activity for a in applied):
                    await repository.rename_new_activity(conn, customer_id, pseudonym)

            await erasure.apply_in_order(conn, self._hasher, "scorer", events, apply, erase)
            if any(a.activity for a in applied):
                # Last: the retention lock, if taken, is held only for the commit.
                await repository.count_retention(conn)
        committed_at = utcnow()
        responses = [e for a in applied for e in a.responses]
        touchpoints = sum(len(a.touchpoints) for a in applied)
        customer_events = sum(isinstance(e, ResponseSubmitted | TouchpointEvent) for e in events)
        metrics.DUPLICATES.inc(customer_events - len(responses) - touchpoints)
        metrics.TOUCHPOINTS_APPLIED.inc(touchpoints)
        for metric, n in Counter(e.metric.value for e in responses).items():
            metrics.APPLIED.labels(metric=metric).inc(n)
        for event in responses:
            metrics.EVENT_TO_AGGREGATE_SECONDS.observe(
                max(0.0, (committed_at - event.received_at).total_seconds())
            )
