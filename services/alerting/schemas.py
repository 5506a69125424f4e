"""The alerting service's HTTP bodies."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any
from uuid import UUID

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from services.alerting.config import BOOLEAN_LABELS, boolean_label
from services.alerting.value import CurrencyValue


class AlertStatus(StrEnum):
    """Where an alert is in its lifecycle."""

    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


ACTOR = (
    "Who acted: the name of the API key used (`cxloop` for the service itself; `unknown` "
    "for actions from before keys were recorded)."
)
ACTOR_ID = (
    "The id of the API key used (`operator` for the environment's keys; none for the "
    "service itself or before keys were recorded): key names need not be unique."
)


class CustomerValue(BaseModel):
    """The customer's orders in one currency over the 12 months (365 days) up to the answer
    that opened the alert, as they stood when it opened."""

    currency: str = Field(description="ISO 4217 code.")
    revenue: str = Field(
        description="Net revenue (orders less their refunds), a decimal string such as "
        '"120000" (JPY) or "1250.00" (USD).'
    )
    orders: int = Field(description="Orders completed in the window, refunded ones included.")
    threshold: str | None = Field(
        default=None, description="The configured `high_value` threshold of the currency."
    )
    high_value: bool = Field(description="Whether the revenue reaches the threshold.")

    @model_validator(mode="before")
    @classmethod
    def _from_stored(cls, data: Any) -> Any:
        # alerts.value keeps minor units and exponents; the API answers with decimal strings.
        if isinstance(data, dict) and "revenue_minor" in data:
            return CurrencyValue.from_stored(data).public()
        return data


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
    acknowledged_by: str | None = Field(
        description="The display name given on acknowledging, or the key's name: not "
        "verified. The key that acted is `acknowledged_actor`."
    )
    acknowledged_actor: str | None = Field(default=None, description=ACTOR)
    acknowledged_actor_id: str | None = Field(default=None, description=ACTOR_ID)
    resolved_at: datetime | None
    resolved_by: str | None = Field(
        description="The display name given on resolving, or the key's name: not verified. "
        "The key that acted is `resolved_actor`."
    )
    resolved_actor: str | None = Field(default=None, description=ACTOR)
    resolved_actor_id: str | None = Field(default=None, description=ACTOR_ID)
    note: str | None = Field(description="The follow-up note given on resolving.")
    assignee: str | None = None
    ticket_source: str | None = None
    location: str | None = None
    product: str | None = None
    business_unit: str | None = None
    survey_type: str | None = None
    value: list[CustomerValue] | None = Field(
        default=None,
        description="Detractor, low-CSAT and high-effort alerts: the customer's value per "
        "currency in the 12 months (365 days) up to the answer, as it stood when the alert "
        "opened (empty without orders in the window); null when it was not computed (an "
        "alert opened before alerts carried a value, or not about one answer).",
    )
    high_value: bool = Field(
        default=False,
        description="A currency's revenue reached its `high_value` threshold: the alert was "
        'made critical (a routing label, `high_value: "true"`).',
    )
    value_reason: str | None = Field(
        default=None, description="Why the alert is critical for the customer's value."
    )


class AlertList(BaseModel):
    """A page of alerts, in the order asked for (newest first by default)."""

    items: list[Alert]
    next_cursor: str | None = Field(
        default=None,
        description="Pass as `cursor` for the next page; none when this page is the last.",
    )


class QueueStatus(StrEnum):
    """Which alerts a queue shows: one status, every unresolved one, or all."""

    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
    UNRESOLVED = "unresolved"
    ALL = "all"


class QueueSort(StrEnum):
    """The order of a queue; each ends on the alert's id, so pages never overlap."""

    SEVERITY = "severity"
    """Critical, then warning, then info (then any other), each oldest first."""
    OLDEST = "oldest"
    NEWEST = "newest"


class QueueFilters(BaseModel):
    """Which alerts a queue holds: every field given must match (status: open by default)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    status: QueueStatus = QueueStatus.OPEN
    rule: str | None = None
    severity: str | None = None
    channel: str | None = None
    location: str | None = None
    assignee: str | None = None
    unassigned: bool = Field(default=False, description="Only alerts nobody is assigned.")
    customer_id: str | None = None
    ticket_id: str | None = None

    @model_validator(mode="after")
    def _one_assignee(self) -> QueueFilters:
        if self.unassigned and self.assignee is not None:
            raise ValueError("give either assignee or unassigned, not both")
        return self


class FacetValue(BaseModel):
    """How many alerts have one value of a field."""

    value: str | None = Field(
        description="The field's value; null for alerts without one (e.g. unassigned)."
    )
    count: int


class Facet(BaseModel):
    """The most frequent values of one field, most frequent first."""

    values: list[FacetValue]
    more: bool = Field(description="More values exist than are listed.")


class QueueCounts(BaseModel):
    """Per filter field, how many alerts each value has under the other filters given."""

    rule: Facet
    channel: Facet
    location: Facet
    assignee: Facet
    status: Facet


Person = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
# A matcher's value may be any alert field's, a customer id among them (256 on the wire).
MATCHER_MAX_LENGTH = 256
NOTE_MAX_LENGTH = 10_000  # characters of a note, comment or silence's reason
Note = Annotated[str, StringConstraints(min_length=1, max_length=NOTE_MAX_LENGTH)]
DISPLAY_NAME = (
    "Optional: the name to show for who acted (e.g. a person sharing a team's key). It is "
    "shown as given; the API key that acted is recorded apart, as `actor`."
)


class AckIn(BaseModel):
    """Take the alert, optionally with a display name and a note."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"by": "sato"}]})

    by: Person | None = Field(default=None, description=DISPLAY_NAME)
    note: Note | None = None


class ResolveIn(BaseModel):
    """How the loop was closed: the follow-up note is required."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"by": "sato", "note": "Called the customer; refunded the delivery fee."}]
        },
    )

    by: Person | None = Field(default=None, description=DISPLAY_NAME)
    note: Note


class AssignIn(BaseModel):
    """Give the alert to someone."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"to": "tanaka", "by": "sato"}]}
    )

    to: Person
    by: Person | None = Field(default=None, description=DISPLAY_NAME)


class CommentIn(BaseModel):
    """Add to the alert's history."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"by": "sato", "text": "Left a voicemail."}]},
    )

    by: Person | None = Field(default=None, description=DISPLAY_NAME)
    text: Note


class HistoryEntry(BaseModel):
    """One thing that happened to an alert."""

    at: datetime
    actor: str = Field(description=ACTOR)
    actor_id: str | None = Field(default=None, description=ACTOR_ID)
    display_name: str | None = Field(
        default=None, description="The name the caller gave as `by`, if any: not verified."
    )
    action: str
    note: str | None


class History(BaseModel):
    """An alert's history, oldest first."""

    items: list[HistoryEntry]


class NotificationOut(BaseModel):
    """One announcement of an alert change to one receiver."""

    id: UUID = Field(description="Stable across attempts: the receiver's idempotency key.")
    receiver: str
    action: str
    status: str
    attempts: int
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


class Notifications(BaseModel):
    """An alert's notifications, oldest first."""

    items: list[NotificationOut]


class SilenceIn(BaseModel):
    """Hold back notifications of alerts whose labels all equal ``matchers``, until it ends."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "matchers": {"rule": "detractor", "channel": "sms"},
                    "duration_minutes": 120,
                    "created_by": "sato",
                    "comment": "SMS gateway incident; we are calling everyone back",
                }
            ]
        },
    )

    matchers: dict[
        Annotated[str, StringConstraints(pattern=r"^[a-z_]+$")],
        Annotated[str, StringConstraints(min_length=1, max_length=MATCHER_MAX_LENGTH)],
    ] = Field(min_length=1, description="Alert fields and the values they must equal.")
    duration_minutes: float | None = Field(default=None, gt=0, le=60 * 24 * 90)
    ends_at: AwareDatetime | None = None
    created_by: Person | None = Field(default=None, description=DISPLAY_NAME)
    comment: Note

    @field_validator("matchers", mode="before")
    @classmethod
    def _booleans_as_labels(cls, matchers: Any) -> Any:
        # high_value is a boolean field: "true"/"false" in any case, or a JSON boolean.
        if isinstance(matchers, dict):
            return {
                k: boolean_label(k, v) if k in BOOLEAN_LABELS else v for k, v in matchers.items()
            }
        return matchers

    @model_validator(mode="after")
    def _one_end(self) -> SilenceIn:
        if (self.duration_minutes is None) == (self.ends_at is None):
            raise ValueError("give exactly one of duration_minutes and ends_at")
        return self


class Silence(BaseModel):
    """A silence; expired ones stay listed for the record."""

    id: UUID
    matchers: dict[str, str]
    starts_at: datetime
    ends_at: datetime
    actor: str = Field(
        description="Who created it: the name of the API key used (`unknown` for silences "
        "from before keys were recorded)."
    )
    actor_id: str | None = Field(default=None, description=ACTOR_ID)
    created_by: str = Field(description="The display name given, or the key's name.")
    comment: str
    active: bool
    expired_at: datetime | None = Field(
        default=None, description="When `DELETE /v1/silences/{id}` ended it, if it did."
    )
    expired_by: str | None = Field(
        default=None, description="The name of the API key that ended it, if one did."
    )
    expired_by_id: str | None = Field(default=None, description=ACTOR_ID)


class SilenceList(BaseModel):
    """Silences, newest first."""

    items: list[Silence]
    more: bool = Field(
        default=False, description="Whether older silences exist than the ones listed."
    )


class AlertErasure(BaseModel):
    """How many alerts lost the customer's comments and id."""

    alerts_pseudonymised: int


class Link(BaseModel):
    """A link an alert's page shows: its ticket, its runbook."""

    href: str
    text: str


class CustomerTouch(BaseModel):
    """One of a customer's recent answers (``kind`` answer) or ticket events (``ticket``)."""

    model_config = ConfigDict(from_attributes=True)

    kind: str = Field(description="answer or ticket")
    event_id: UUID
    occurred_at: datetime
    channel: str
    source: str = Field(description="The adapter that accepted it: the ticket system for tickets.")
    touchpoint: str | None = None
    metric: str | None = None
    score: int | None = None
    comment: str | None = None
    reasons: list[str] = Field(default_factory=list)
    ticket_id: str | None = None
    event_type: str | None = Field(default=None, description="e.g. ticket.created")
    status: str | None = None
    priority: str | None = None
    ticket_url: str | None = Field(
        default=None, description="The ticket in its system, from the configured link template."
    )


class CustomerTouches(BaseModel):
    """A customer's last answers and ticket events, newest first (at most 20 are kept)."""

    customer_id: str
    items: list[CustomerTouch]
