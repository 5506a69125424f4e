"""HTTP request and response bodies of the collector (apart from the wire events)."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationInfo,
    field_validator,
)

from shared.events import (
    Channel,
    Comment,
    Identifier,
    Label,
    Metric,
    ReasonCode,
    Segments,
    SurveyType,
    check_score,
    resolve_scale,
)

StrictInt = Annotated[int, Strict()]


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

    event_id: UUID | None = Field(
        default=None,
        description="Your idempotency key: resending the same event_id never counts twice. "
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


class Accepted(BaseModel):
    """The broker has acknowledged the event; it will be scored and alerted on."""

    event_id: UUID
