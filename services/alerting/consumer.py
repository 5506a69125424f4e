"""The alerting batch handler: rules applied once per event, in one transaction per batch."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncEngine

from services.alerting import metrics, repository, rules
from shared.events import ResponseSubmitted
from shared.kafka import Decoded


class AlertHandler:
    """Opens or folds an alert for every new response a rule flags."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def __call__(self, batch: Sequence[Decoded]) -> None:
        outcomes: list[tuple[rules.AlertDraft, bool]] = []
        async with self._engine.begin() as conn:
            responses = [d.event for d in batch if isinstance(d.event, ResponseSubmitted)]
            for event in await repository.first_seen(conn, responses):
                draft = rules.evaluate(event)
                if draft is not None:
                    outcomes.append((draft, await repository.open_or_fold(conn, draft, event)))
        for draft, opened in outcomes:
            if opened:
                metrics.OPENED.labels(rule=draft.rule, severity=draft.severity.value).inc()
            else:
                metrics.FOLDED.labels(rule=draft.rule).inc()
