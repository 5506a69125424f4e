"""Versioned models of the events that travel on Kafka.

These are the wire contract between the collector and every consumer, including
consumers written in other languages: ``cxloop schemas`` writes their JSON Schemas.

Compatibility rules:

* A record's ``schema_version`` names the contract it follows. Adding an optional field
  keeps the version; removing, renaming or re-typing a field bumps it.
* Consumers ignore fields they do not know (tolerant reader), so producers may add
  optional fields before every consumer is upgraded.
* Timestamps are timezone-aware. A naive timestamp is rejected, because guessing its
  zone would put the event into the wrong time bucket.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Final, Literal
from uuid import UUID

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from shared.money import Amount, CurrencyCode, to_minor

SCHEMA_VERSION: Final = 1


class Metric(StrEnum):
    """The survey metrics cxloop scores."""

    NPS = "nps"
    CSAT = "csat"
    CES = "ces"


class Channel(StrEnum):
    """Where the customer interaction, and so the feedback, happened."""

    WEB = "web"
    SMS = "sms"
    CALL_CENTER = "call_center"
    EMAIL = "email"
    IN_APP = "in_app"
    CHAT = "chat"
    SOCIAL = "social"
    IN_PERSON = "in_person"
    OTHER = "other"


class SurveyType(StrEnum):
    """Why the survey was sent."""

    RELATIONSHIP = "relationship"
    TRANSACTIONAL = "transactional"
    IN_THE_MOMENT = "in_the_moment"


class NpsCategory(StrEnum):
    """The NPS bucket a 0–10 answer falls into."""

    PROMOTER = "promoter"
    PASSIVE = "passive"
    DETRACTOR = "detractor"


# Each metric's allowed scales (the top of the scale) and the scale it implies when none is given.
# CES has no implied scale: 1–5 and 1–7 answers are never mixed, so the sender must say which.
SCALES: Final[dict[Metric, tuple[int, ...]]] = {
    Metric.NPS: (10,),
    Metric.CSAT: (5,),
    Metric.CES: (5, 7),
}
_MIN_SCORE: Final[dict[Metric, int]] = {Metric.NPS: 0, Metric.CSAT: 1, Metric.CES: 1}


def score_range(metric: Metric, scale: int) -> tuple[int, int]:
    """Return the inclusive (lowest, highest) score of ``metric`` on ``scale``."""
    return _MIN_SCORE[metric], scale


def resolve_scale(metric: Metric, scale: int | None) -> int:
    """Return the scale of a response, or raise ``ValueError`` with a message for a person."""
    allowed = SCALES[metric]
    if scale is None:
        if len(allowed) > 1:
            options = " or ".join(f"1–{s}" for s in allowed)
            raise ValueError(f"scale is required for {metric.value}: {options} (say 5 or 7)")
        return allowed[0]
    if scale not in allowed:
        options = " or ".join(str(s) for s in allowed)
        raise ValueError(f"scale {scale} is not valid for {metric.value}: use {options}")
    return scale


def check_score(metric: Metric, scale: int, score: int) -> None:
    """Raise ``ValueError`` naming the range when ``score`` is outside ``metric``'s ``scale``."""
    low, high = score_range(metric, scale)
    if not low <= score <= high:
        raise ValueError(f"score {score} is outside {low}–{high} for {metric.value}")


# The least answers of a promoter and of a passive (the scorer's SQL folds use them too).
NPS_PROMOTER_FROM: Final = 9
NPS_PASSIVE_FROM: Final = 7


def nps_category(score: int) -> NpsCategory:
    """Return the NPS category of a 0–10 answer: 9–10 promoter, 7–8 passive, 0–6 detractor."""
    if score >= NPS_PROMOTER_FROM:
        return NpsCategory.PROMOTER
    if score >= NPS_PASSIVE_FROM:
        return NpsCategory.PASSIVE
    return NpsCategory.DETRACTOR


def utcnow() -> datetime:
    """Return the current time, timezone-aware in UTC."""
    return datetime.now(UTC)


# Postgres text cannot hold U+0000: an event carrying one would fail every consumer's insert
# for good, so the contract refuses it (and the consumers dead-letter such a record).
NO_NUL = r"^[^\x00]*$"
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=NO_NUL)]
Label = Annotated[
    str, StringConstraints(min_length=1, max_length=128, strip_whitespace=True, pattern=NO_NUL)
]
SourceName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]
ReasonCode = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
Comment = Annotated[str, StringConstraints(max_length=10_000, pattern=NO_NUL)]
TouchpointType = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")]


class Segments(BaseModel):
    """The segment attributes every score can be cut by, besides channel and touchpoint."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    location: Label | None = None
    product: Label | None = None
    business_unit: Label | None = None


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", use_enum_values=False)

    event_id: UUID = Field(description="Unique id of this event; consumers deduplicate by it.")
    schema_version: Literal[1] = Field(
        default=SCHEMA_VERSION, description="Version of this contract."
    )
    occurred_at: AwareDatetime = Field(
        description="When the customer answered or the ticket changed (timezone-aware)."
    )
    received_at: AwareDatetime = Field(description="When the collector accepted it.")
    source: SourceName = Field(description="The adapter that accepted it, e.g. api, twilio.")
    channel: Channel
    customer_id: Identifier = Field(description="Stable customer id; the partition key.")


class ResponseSubmitted(_Event):
    """A customer answered one survey question (NPS, CSAT or CES), with its NPS+ follow-up."""

    model_config = ConfigDict(title="ResponseSubmitted", json_schema_extra={"x-topic": "responses"})

    type: Literal["response.submitted"] = "response.submitted"
    metric: Metric
    scale: int = Field(description="Top of the scale: 10 for NPS, 5 for CSAT, 5 or 7 for CES.")
    score: int
    survey_type: SurveyType
    touchpoint: Label = Field(description="The journey step surveyed, e.g. checkout, support_call.")
    submission_id: UUID | None = Field(
        default=None, description="Shared by the answers of one survey, e.g. NPS and CES."
    )
    ticket_id: Identifier | None = None
    comment: Comment | None = None
    reasons: tuple[ReasonCode, ...] = Field(default=(), max_length=32)
    segments: Segments = Field(default_factory=Segments)
    locale: Annotated[str, StringConstraints(max_length=35, pattern=NO_NUL)] | None = None

    @field_validator("scale")
    @classmethod
    def _scale_fits_metric(cls, value: int, info: ValidationInfo) -> int:
        metric = info.data.get("metric")
        return value if metric is None else resolve_scale(metric, value)

    @field_validator("score")
    @classmethod
    def _score_in_range(cls, value: int, info: ValidationInfo) -> int:
        metric, scale = info.data.get("metric"), info.data.get("scale")
        if metric is not None and scale is not None:
            check_score(metric, scale, value)
        return value


class TicketPriority(StrEnum):
    """Ticket priorities, normalised across support systems."""

    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


KNOWN_TOUCHPOINT_TYPES: Final = (
    "ticket.created",
    "ticket.first_response",
    "ticket.status_changed",
    "ticket.resolved",
    "ticket.reopened",
    "order.completed",
    "order.refunded",
    "purchase",
)

ORDER_COMPLETED: Final = "order.completed"
ORDER_REFUNDED: Final = "order.refunded"
ORDER_TYPES: Final = (ORDER_COMPLETED, ORDER_REFUNDED)
# ``purchase`` (no amount) is deprecated: it still counts as customer activity, nothing
# more; send ``order.completed`` instead. It is retired with schema_version 2.
DEPRECATED_PURCHASE: Final = "purchase"


class TouchpointEvent(_Event):
    """Something happened in the customer's journey: a ticket changed, an order was paid.

    ``order.completed`` and ``order.refunded`` (added to schema_version 1 as optional fields,
    so earlier readers still read them, as custom types) carry ``order_id``, ``amount`` (a
    decimal string, never a float) and ``currency`` (ISO 4217, with no more decimals than
    the currency has: none for JPY). An ``order_id`` is one order: a second
    ``order.completed`` for it changes nothing. A refund also carries ``refund_id``: one
    refund, counted once, whatever event ids it is resent under. Both are keyed by the
    customer, so a customer's orders stay in order with their tickets and erasure.
    """

    model_config = ConfigDict(title="TouchpointEvent", json_schema_extra={"x-topic": "touchpoints"})

    type: TouchpointType = Field(
        description="One of " + ", ".join(KNOWN_TOUCHPOINT_TYPES) + ", or a custom dotted type."
    )
    ticket_id: Identifier | None = None
    priority: TicketPriority | None = None
    status: Label | None = None
    segments: Segments = Field(default_factory=Segments)
    attributes: dict[Label, Annotated[str, StringConstraints(max_length=1024, pattern=NO_NUL)]] = (
        Field(default_factory=dict, max_length=64)
    )
    order_id: Identifier | None = Field(
        default=None, description="The order (order.* types): one id is one order."
    )
    refund_id: Identifier | None = Field(
        default=None, description="The refund (order.refunded): one id is one refund."
    )
    currency: CurrencyCode | None = Field(default=None, description="ISO 4217 code.")
    amount: Amount | None = Field(
        default=None,
        description="order.completed: the order's value; order.refunded: this refund's value.",
    )

    @field_validator("amount")
    @classmethod
    def _amount_fits_currency(cls, value: Decimal | None, info: ValidationInfo) -> Decimal | None:
        currency = info.data.get("currency")
        if value is not None and currency is not None:
            to_minor(value, currency)
        return value

    @model_validator(mode="after")
    def _orders_are_whole(self) -> TouchpointEvent:
        if self.type not in ORDER_TYPES:
            return self
        required = ["order_id", "amount", "currency"]
        if self.type == ORDER_REFUNDED:
            required.append("refund_id")
        for name in required:
            if getattr(self, name) is None:
                raise PydanticCustomError(
                    "missing", "{field} is required for {type}", {"field": name, "type": self.type}
                )
        return self

    def amount_minor(self) -> int:
        """Return this order event's amount in the currency's minor units."""
        if self.amount is None or self.currency is None:
            raise ValueError(f"{self.type} carries no amount")
        return to_minor(self.amount, self.currency)


class CustomerErased(BaseModel):
    """A customer asked to be forgotten: every consumer erases or pseudonymises their data.

    Produced by the collector's ``DELETE /v1/customers/{id}`` on every topic that carries
    customer events, keyed by the customer id, so that on each partition it comes after
    every event of theirs produced before it. Its ``event_id`` is the erasure id that
    ``GET /v1/erasures/{id}`` reports on. A record of this type carries the ``cxloop-type``
    header ``customer.erased``; consumers read it whatever the topic's own model is.
    """

    model_config = ConfigDict(
        frozen=True,
        extra="ignore",
        title="CustomerErased",
        json_schema_extra={"x-topic": "responses, touchpoints"},
    )

    type: Literal["customer.erased"] = "customer.erased"
    event_id: UUID = Field(description="The erasure id (the same on every topic).")
    schema_version: Literal[1] = Field(
        default=SCHEMA_VERSION, description="Version of this contract."
    )
    requested_at: AwareDatetime = Field(description="When the collector accepted the erasure.")
    customer_id: Identifier = Field(description="The customer to erase; the partition key.")


CUSTOMER_ERASED: Final = "customer.erased"

EVENT_MODELS: Final[
    tuple[type[ResponseSubmitted] | type[TouchpointEvent] | type[CustomerErased], ...]
] = (
    ResponseSubmitted,
    TouchpointEvent,
    CustomerErased,
)


def json_schemas() -> dict[str, dict[str, Any]]:
    """Return the JSON Schema of every event model, keyed by a file name."""
    schemas: dict[str, dict[str, Any]] = {}
    for model in EVENT_MODELS:
        schema = model.model_json_schema(mode="serialization")
        name = f"{model.__name__}.v{SCHEMA_VERSION}"
        schema["$id"] = f"https://cxloop.dev/schemas/{name}.json"
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schemas[f"{name}.schema.json"] = schema
    return schemas
