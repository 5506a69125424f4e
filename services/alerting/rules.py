"""Which responses need a person to follow up: pure functions, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shared.events import Metric, NpsCategory, ResponseSubmitted, nps_category


class Severity(StrEnum):
    """How urgently on-call should look."""

    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class AlertDraft:
    """An alert a rule asks for; the lifecycle decides whether it opens or folds."""

    rule: str
    severity: Severity
    dedupe_key: str


def _key(rule: str, event: ResponseSubmitted) -> str:
    # One open alert per rule, customer and ticket: a customer who answers badly twice about
    # the same ticket is one follow-up, not two pages.
    return f"{rule}:{event.customer_id}:{event.ticket_id or '-'}"


def evaluate(event: ResponseSubmitted) -> AlertDraft | None:
    """Return the alert ``event`` calls for, or None.

    A detractor (NPS 0–6), a dissatisfied CSAT (1–2) and a high-effort CES (the bottom two of
    its scale) each call for a follow-up; the lowest answers are critical.
    """
    if event.metric is Metric.NPS and nps_category(event.score) is NpsCategory.DETRACTOR:
        severity = Severity.CRITICAL if event.score <= 3 else Severity.WARNING
        return AlertDraft("detractor", severity, _key("detractor", event))
    if event.metric is Metric.CSAT and event.score <= 2:
        severity = Severity.CRITICAL if event.score == 1 else Severity.WARNING
        return AlertDraft("low_csat", severity, _key("low_csat", event))
    if event.metric is Metric.CES and event.score <= 2:
        return AlertDraft("high_effort", Severity.WARNING, _key("high_effort", event))
    return None
