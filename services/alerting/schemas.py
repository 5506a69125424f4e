"""The alerting service's HTTP bodies."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field


class AlertStatus(StrEnum):
    """Where an alert is in its lifecycle."""

    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class Alert(BaseModel):
    """A follow-up owed to a customer."""

    model_config = ConfigDict(from_attributes=True)

    id: UUID
    rule: str
    severity: str
    status: AlertStatus
    dedupe_key: str
    customer_id: str
    channel: str
    touchpoint: str | None
    ticket_id: str | None
    metric: str | None
    score: int | None
    comment: str | None
    reasons: list[str]
    event_id: UUID = Field(description="The response that opened the alert.")
    occurrences: int = Field(description="Triggers folded into this alert, the first included.")
    opened_at: datetime
    last_seen_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    resolved_at: datetime | None
    resolved_by: str | None
    note: str | None


class AlertList(BaseModel):
    """A page of alerts, newest first."""

    items: list[Alert]
