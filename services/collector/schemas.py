"""HTTP request and response bodies of the collector (apart from the wire events)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Final, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError

from shared.events import (
    ORDER_REFUNDED,
    ORDER_TYPES,
    Channel,
    Comment,
    Identifier,
    Label,
    Metric,
    ReasonCode,
    Segments,
    SurveyType,
    TicketPriority,
    TouchpointType,
    check_score,
    resolve_scale,
)
from shared.money import Amount, CurrencyCode, to_minor

StrictInt = Annotated[int, Strict()]


def _not_derived(value: UUID) -> UUID:
    if value.version == 8:
        # The collector derives version-8 ids from keys; a client sending one first could
        # take the id of another caller's key or of a vendor's message.
        raise ValueError("must not be a version 8 UUID (the collector derives those); use uuid4")
    return value


ClientEventId = Annotated[UUID, AfterValidator(_not_derived)]


class SegmentsIn(Segments):
    """Segment attributes; unknown keys are refused so a typo is not silently dropped."""

    model_config = ConfigDict(extra="forbid")


class ResponseIn(BaseModel):
    """One answer to one survey question.

    Unknown fields are refused with 422, naming the field: a misspelt ``comment`` or
    ``segments`` would otherwise be dropped without anyone noticing.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "metric": "nps",
                    "score": 9,
                    "channel": "web",
                    "survey_type": "transactional",
                    "touchpoint": "checkout",
                    "customer_id": "cust-42",
                    "comment": "配送が早くて助かりました",
                    "reasons": ["delivery_speed"],
                    "segments": {"location": "tokyo-shibuya", "product": "app"},
                    "occurred_at": "2026-11-22T10:15:00+09:00",
                }
            ]
        },
    )

    event_id: ClientEventId | None = Field(
        default=None,
        description="Your idempotency key: resending the same event_id never counts twice. "
        "A random UUID (version 4); version 8 is refused. "
        "Generated when absent (then a retry after a timeout may count twice).",
    )
    metric: Metric
    scale: StrictInt | None = Field(
        default=None,
        validate_default=True,
        description="Top of the scale. Required for ces (5 or 7); implied otherwise.",
    )
    score: StrictInt = Field(description="0–10 for nps, 1–5 for csat, 1–scale for ces.")
    channel: Channel
    survey_type: SurveyType
    touchpoint: Label
    customer_id: Identifier
    submission_id: UUID | None = Field(
        default=None, description="Shared by the answers of one survey (say NPS and CES)."
    )
    ticket_id: Identifier | None = None
    comment: Comment | None = None
    reasons: list[ReasonCode] = Field(default_factory=list, max_length=32)
    segments: SegmentsIn = Field(default_factory=SegmentsIn)
    locale: Annotated[str, Field(max_length=35)] | None = None
    occurred_at: AwareDatetime | None = Field(
        default=None,
        description="When the customer answered, with a UTC offset. Defaults to the time received.",
    )

    @field_validator("scale")
    @classmethod
    def _scale_fits_metric(cls, value: int | None, info: ValidationInfo) -> int | None:
        metric = info.data.get("metric")
        return value if metric is None else resolve_scale(metric, value)

    @field_validator("score")
    @classmethod
    def _score_in_range(cls, value: int, info: ValidationInfo) -> int:
        metric = info.data.get("metric")
        if metric is not None and "scale" in info.data:
            check_score(metric, info.data["scale"], value)
        return value


def _unpadded(value: object) -> object:
    # The published patterns allow no spaces; money's parsers would strip them.
    if isinstance(value, str) and value != value.strip():
        raise ValueError("must not start or end with spaces")
    return value


AmountIn = Annotated[
    Amount,
    BeforeValidator(_unpadded),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^(0|[1-9][0-9]*)(\.[0-9]+)?$"},
                {"type": "integer", "minimum": 0},
            ],
            "description": 'A decimal string in plain notation, e.g. "1500" (JPY) or "12.50" '
            "(USD), with no more decimals than the currency has; or a JSON integer, which is "
            "in MAJOR units like the string: 12 in USD is twelve dollars, not twelve cents "
            "(unlike Stripe's integers). A JSON number with a fraction or exponent (a float) "
            "is refused.",
            "examples": ["1500", "12.50"],
        }
    ),
]
CurrencyIn = Annotated[CurrencyCode, BeforeValidator(_unpadded)]

_ORDER_FIELDS: Final = {
    "order_id": ORDER_TYPES,
    "currency": ORDER_TYPES,
    "amount": ORDER_TYPES,
    "refund_id": (ORDER_REFUNDED,),
}


class EventIn(BaseModel):
    """One touchpoint event: a ticket changed, an order was paid or refunded, or a custom type.

    Unknown fields are refused with 422, as for responses; put extra data in ``attributes``.
    ``order.completed`` needs ``order_id``, ``currency`` and ``amount``; ``order.refunded``
    also ``refund_id``. ``purchase`` (no amount) is deprecated: it counts as activity only
    and is retired with schema_version 2; send ``order.completed``.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "type": "ticket.created",
                    "ticket_id": "T-1042",
                    "customer_id": "cust-42",
                    "channel": "email",
                    "priority": "high",
                    "occurred_at": "2026-11-22T09:00:00+09:00",
                },
                {
                    "type": "order.completed",
                    "order_id": "ORD-7731",
                    "customer_id": "cust-42",
                    "channel": "web",
                    "currency": "JPY",
                    "amount": "12800",
                    "segments": {"location": "tokyo-shibuya", "product": "app"},
                    "occurred_at": "2026-11-22T09:30:00+09:00",
                },
                {
                    "type": "order.refunded",
                    "order_id": "ORD-7731",
                    "refund_id": "RF-1",
                    "customer_id": "cust-42",
                    "channel": "web",
                    "currency": "JPY",
                    "amount": "3200",
                },
            ]
        },
    )

    event_id: ClientEventId | None = Field(
        default=None, description="Your idempotency key, as for responses (not version 8)."
    )
    type: TouchpointType = Field(
        description="ticket.created, ticket.first_response, ticket.status_changed, "
        "ticket.resolved, ticket.reopened, order.completed, order.refunded, or a custom "
        "dotted lower-case type. `purchase` is deprecated (activity only; retired with "
        "schema_version 2): send order.completed."
    )
    ticket_id: Identifier | None = Field(
        default=None, validate_default=True, description="Required for ticket.* types."
    )
    customer_id: Identifier
    channel: Channel
    priority: TicketPriority | None = None
    status: Label | None = None
    segments: SegmentsIn = Field(default_factory=SegmentsIn)
    attributes: dict[Label, Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=dict, max_length=64
    )
    occurred_at: AwareDatetime | None = Field(
        default=None, description="When it happened, with a UTC offset. Defaults to now."
    )
    order_id: Identifier | None = Field(
        default=None,
        validate_default=True,
        description="order.* types: the order. One order id is one order: resent, it is a "
        "duplicate; with another customer, currency or amount, a conflict (409).",
    )
    refund_id: Identifier | None = Field(
        default=None,
        validate_default=True,
        description="order.refunded: the refund, one of its order (resent, a duplicate).",
    )
    currency: CurrencyIn | None = Field(
        default=None,
        validate_default=True,
        description="order.* types: ISO 4217 code, e.g. JPY or USD (upper-cased on arrival).",
    )
    amount: AmountIn | None = Field(
        default=None,
        validate_default=True,
        description="order.completed: the order's value; order.refunded: this refund's, more "
        "than 0 and at most what remains of the order. In MAJOR units, a JSON integer too "
        '(12 USD is twelve dollars; cents are "0.12"). No more decimals than the currency '
        "has (none for JPY).",
    )

    @field_validator("ticket_id")
    @classmethod
    def _tickets_have_ids(cls, value: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("type")
        if value is None and kind is not None and kind.startswith("ticket."):
            raise PydanticCustomError("missing", "ticket_id is required for {type}", {"type": kind})
        return value

    @field_validator("order_id", "refund_id", "currency", "amount")
    @classmethod
    def _orders_are_whole(cls, value: object, info: ValidationInfo) -> object:
        kind, name = info.data.get("type"), info.field_name
        assert name is not None
        if kind is None:
            return value
        wanted_by = _ORDER_FIELDS[name]
        if value is None and kind in wanted_by:
            raise PydanticCustomError(
                "missing", "{field} is required for {type}", {"field": name, "type": kind}
            )
        if value is not None and kind not in wanted_by:
            raise PydanticCustomError(
                "extra_forbidden",
                "{field} is only for {types}",
                {"field": name, "type": kind, "types": " and ".join(wanted_by)},
            )
        if name == "amount" and isinstance(value, Decimal):
            currency = info.data.get("currency")
            if currency is not None:
                to_minor(value, currency)
        return value


class Submitted(BaseModel):
    """What became of one item: `accepted` (the broker holds it) or `duplicate` (it already did)."""

    event_id: UUID
    status: Literal["accepted", "duplicate"]


class Ignored(BaseModel):
    """A well-signed vendor event acknowledged (200) without producing anything, and why:
    the vendor would retry any other answer, and a retry would be ignored the same way."""

    status: Literal["ignored"] = "ignored"
    reason: str = Field(
        description="A short label, also on cxloop_collector_stripe_events_total: "
        "unsupported, malformed, livemode, connect_account, not_captured, not_succeeded, "
        "no_customer, currency, amount, no_refund, refund_amount_unknown, or the order "
        "ledger's (order_conflict, refund_conflict, over_refund, under_refunds, zero_refund, "
        "currency_mismatch, customer_mismatch)."
    )
    detail: str


class ItemResult(BaseModel):
    """One batch item's result; `rejected` items name every bad field."""

    index: int
    question: str | None = Field(default=None, description="The IVR question, for calls.")
    status: Literal["accepted", "duplicate", "rejected", "unavailable", "conflict"] = Field(
        description="`conflict`: the batch's Idempotency-Key (or the item's event_id) was "
        "first used for a different request that did not hold this item, or its order_id or "
        "refund_id already names another order or refund (errors name the field); nothing "
        "was produced. `rejected` also covers a refund the order ledger refuses (more than "
        "remains of its order, another currency or customer)."
    )
    event_id: UUID | None = None
    errors: list[dict[str, str]] | None = None


class BatchResult(BaseModel):
    """Per-item results, in the order the items were sent, and their totals."""

    results: list[ItemResult]
    accepted: int
    duplicate: int
    rejected: int
    unavailable: int
    conflict: int = 0


Phone = Annotated[str, StringConstraints(pattern=r"^\+[1-9][0-9]{6,14}$")]


class InvitationIn(BaseModel):
    """A survey invitation about to be sent: SMS replies from `phone` answer it."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "customer_id": "cust-42",
                    "phone": "+819012345678",
                    "metric": "nps",
                    "touchpoint": "support_call",
                    "ticket_id": "T-1042",
                    "locale": "ja-JP",
                    "expires_in_hours": 72,
                }
            ]
        },
    )

    customer_id: Identifier
    phone: Phone | None = Field(default=None, description="E.164, e.g. +819012345678.")
    metric: Metric
    scale: StrictInt | None = Field(default=None, validate_default=True)
    survey_type: SurveyType = SurveyType.TRANSACTIONAL
    touchpoint: Label
    ticket_id: Identifier | None = None
    channel: Channel = Channel.SMS
    locale: Annotated[str, Field(max_length=35)] | None = None
    segments: SegmentsIn = Field(default_factory=SegmentsIn)
    expires_in_hours: float = Field(default=72, gt=0, le=24 * 30)
    expires_at: AwareDatetime | None = None

    @field_validator("scale")
    @classmethod
    def _scale_fits_metric(cls, value: int | None, info: ValidationInfo) -> int | None:
        metric = info.data.get("metric")
        return value if metric is None else resolve_scale(metric, value)


class InvitationOut(BaseModel):
    """`open`: send the survey. `suppressed`: skip it, for the reason given."""

    id: UUID
    status: Literal["open", "suppressed"]
    reason: Literal["opted_out", "surveyed_recently"] | None
    expires_at: datetime


class ErasureAccepted(BaseModel):
    """An erasure on its way to every service; follow it at `GET /v1/erasures/{id}`."""

    id: UUID
    status: Literal["accepted"] = "accepted"
    requested_at: datetime


class ServiceErasure(BaseModel):
    """One service's part of an erasure."""

    service: str
    status: Literal["pending", "complete"]
    completed_at: datetime | None


class ErasureStatus(BaseModel):
    """Each service's completion of an erasure; `complete` once every one has applied it."""

    id: UUID
    requested_at: datetime
    complete: bool
    services: list[ServiceErasure]
