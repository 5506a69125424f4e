"""The alerting batch handler: rules applied once per event, in one transaction per batch."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.alerting import metrics, repository, rules, timers, value
from services.alerting.config import AlertingConfig
from shared import erasure
from shared.events import ResponseSubmitted, TouchpointEvent
from shared.kafka import Decoded
from shared.privacy import Hasher
from shared.settings import PrivacySettings, SlaSettings, load


class AlertHandler:
    """Opens or folds an alert for every new response a rule flags, and tracks SLA deadlines.

    A ``customer.erased`` in the batch erases the customer between the events before it and
    those after it, and an erased customer's later events are applied pseudonymised, and
    without their reasons (the scorer keeps those in its aggregates; alerting's alerts and
    touches would show them beside the customer).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        sla: SlaSettings,
        config: AlertingConfig | None = None,
        queued: asyncio.Event | None = None,
        hasher: Hasher | None = None,
    ) -> None:
        self._engine = engine
        self._hasher = hasher or Hasher(load(PrivacySettings).key())
        self._sla = sla
        self._config = config
        self._queued = queued

    async def __call__(self, batch: Sequence[Decoded]) -> None:
        outcomes: list[tuple[rules.AlertDraft, bool]] = []
        conflicts: list[str] = []  # counted once committed, as the alerts are
        customers = {
            e.event_id: e.customer_id
            for e in (d.event for d in batch)
            if isinstance(e, ResponseSubmitted | TouchpointEvent)
        }
        async with self._engine.begin() as conn:

            async def apply(events: list[ResponseSubmitted | TouchpointEvent]) -> None:
                # An erased customer's later answer (its id replaced by the pseudonym) loses
                # its reasons too, as erasing their alerts and touches cleared them.
                kept = [
                    e.model_copy(update={"reasons": []})
                    if isinstance(e, ResponseSubmitted)
                    and customers.get(e.event_id) != e.customer_id
                    else e
                    for e in events
                ]
                outcomes.extend(await self._apply(conn, kept, conflicts))

            async def erase(customer_id: str, pseudonym: str) -> None:
                await repository.erase_customer(conn, customer_id, pseudonym)

            await erasure.apply_in_order(
                conn, self._hasher, "alerting", [d.event for d in batch], apply, erase
            )
        if self._queued is not None and any(opened for _, opened in outcomes):
            # Committed: the outbox of this process may send now rather than at its next poll.
            self._queued.set()
        for draft, opened in outcomes:
            if opened:
                metrics.OPENED.labels(rule=draft.rule, severity=draft.severity.value).inc()
            else:
                metrics.FOLDED.labels(rule=draft.rule).inc()
        for kind in conflicts:
            metrics.ORDER_CONFLICTS.labels(kind=kind).inc()

    async def _apply(
        self,
        conn: AsyncConnection,
        events: list[ResponseSubmitted | TouchpointEvent],
        conflicts: list[str],
    ) -> list[tuple[rules.AlertDraft, bool]]:
        fresh = await repository.first_seen(conn, events)
        await repository.record_touches(conn, fresh)
        # Before the answers: a batch's orders are in the value of its answers' alerts. Every
        # order event of the batch (pseudonymised already where the customer is erased), not
        # only the ledger's new ones: orders and refunds dedupe on their own keys, so a replay
        # loads the orders applied before alerting kept them.
        conflicts += await repository.record_orders(conn, events, {e.event_id for e in fresh})
        flagged = []
        for event in fresh:
            if isinstance(event, ResponseSubmitted):
                draft = rules.evaluate(event, self._config.rules if self._config else None)
                if draft is not None:
                    flagged.append((draft, event))
        flagged = await self._valued(conn, flagged)
        new_alert = await repository.open_or_fold(conn, flagged, self._config)
        await timers.track(
            conn, [e for e in fresh if isinstance(e, TouchpointEvent)], self._sla, self._config
        )
        return [(draft, new) for (draft, _), new in zip(flagged, new_alert, strict=True)]

    async def _valued(
        self, conn: AsyncConnection, flagged: list[tuple[rules.AlertDraft, ResponseSubmitted]]
    ) -> list[tuple[rules.AlertDraft, ResponseSubmitted]]:
        """Each draft with its customer's value over the 365 days up to the answer (critical
        when a currency reaches its ``high_value`` threshold)."""
        totals = await repository.customer_values(
            conn, [(event.customer_id, event.occurred_at) for _, event in flagged]
        )
        thresholds = self._config.thresholds() if self._config else {}
        return [
            (rules.with_value(draft, value.assess(found, thresholds)), event)
            for (draft, event), found in zip(flagged, totals, strict=True)
        ]
