"""Which responses need a person to follow up: pure functions, no I/O.

Thresholds come from the ``rules`` section of the alerting config, and may differ by
segment (channel, survey type, touchpoint, location, product, business unit):

::

    rules:
      detractor: {alert_at_or_below: 6, critical_at_or_below: 3,
                  overrides: [{match: {channel: sms}, critical_at_or_below: 4}]}
      low_csat: {alert_at_or_below: 2, critical_at_or_below: 1}
      high_effort: {alert_at_or_below: 2}
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from services.alerting.value import CurrencyValue, reason
from shared.events import Metric, ResponseSubmitted
from shared.settings import HttpUrlText


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
    value: tuple[CurrencyValue, ...] = ()
    value_reason: str | None = None

    @property
    def high_value(self) -> bool:
        """Whether the customer's value made the alert critical."""
        return self.value_reason is not None


def with_value(draft: AlertDraft, value: tuple[CurrencyValue, ...]) -> AlertDraft:
    """Return ``draft`` carrying the customer's value: critical, and saying why, when a
    currency's revenue reaches its ``high_value`` threshold; its own severity otherwise."""
    why = reason(value)
    severity = Severity.CRITICAL if why is not None else draft.severity
    return replace(draft, severity=severity, value=value, value_reason=why)


class Override(BaseModel):
    """Different thresholds for responses whose segment fields all equal ``match``."""

    model_config = ConfigDict(extra="forbid")

    match: dict[str, str] = Field(min_length=1)
    enabled: bool | None = None
    alert_at_or_below: int | None = Field(default=None, ge=0, le=10)
    critical_at_or_below: int | None = Field(default=None, ge=0, le=10)


class ResponseRule(BaseModel):
    """Alert on a response scoring at or below a threshold; critical at or below another."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    alert_at_or_below: int = Field(ge=0, le=10)
    critical_at_or_below: int | None = Field(default=None, ge=0, le=10)
    overrides: list[Override] = Field(default_factory=list)
    runbook_url: HttpUrlText | None = Field(
        default=None, description="What to do about this rule's alerts (else the config's)."
    )

    def severity(self, event: ResponseSubmitted) -> Severity | None:
        """Return the severity ``event`` calls for under this rule, or None."""
        enabled, alert_at, critical_at = (
            self.enabled,
            self.alert_at_or_below,
            self.critical_at_or_below,
        )
        fields = {
            "channel": event.channel.value,
            "survey_type": event.survey_type.value,
            "touchpoint": event.touchpoint,
            **event.segments.model_dump(exclude_none=True),
        }
        for override in self.overrides:
            if all(fields.get(k) == v for k, v in override.match.items()):
                enabled = enabled if override.enabled is None else override.enabled
                alert_at = (
                    alert_at if override.alert_at_or_below is None else override.alert_at_or_below
                )
                critical_at = (
                    critical_at
                    if override.critical_at_or_below is None
                    else override.critical_at_or_below
                )
                break
        if not enabled or event.score > alert_at:
            return None
        return (
            Severity.CRITICAL
            if critical_at is not None and event.score <= critical_at
            else Severity.WARNING
        )


class Rules(BaseModel):
    """The response rules: detractors (NPS), low CSAT and high effort (CES, either scale)."""

    model_config = ConfigDict(extra="forbid")

    detractor: ResponseRule = ResponseRule(alert_at_or_below=6, critical_at_or_below=3)
    low_csat: ResponseRule = ResponseRule(alert_at_or_below=2, critical_at_or_below=1)
    high_effort: ResponseRule = ResponseRule(alert_at_or_below=2)


_RULE_OF = {Metric.NPS: "detractor", Metric.CSAT: "low_csat", Metric.CES: "high_effort"}


def _key(rule: str, event: ResponseSubmitted) -> str:
    # One open alert per rule, customer and ticket: a customer who answers badly twice about
    # the same ticket is one follow-up, not two pages.
    return f"{rule}:{event.customer_id}:{event.ticket_id or '-'}"


def evaluate(event: ResponseSubmitted, rules: Rules | None = None) -> AlertDraft | None:
    """Return the alert ``event`` calls for, or None.

    By default a detractor (NPS 0–6, critical 0–3), a dissatisfied CSAT (1–2, critical 1)
    and a high-effort CES (1–2, the bottom two of either scale) call for a follow-up.
    """
    rules = rules or Rules()
    name = _RULE_OF[event.metric]
    severity = getattr(rules, name).severity(event)
    return None if severity is None else AlertDraft(name, severity, _key(name, event))


class DropRule(BaseModel):
    """When a segment's score counts as dropped."""

    model_config = ConfigDict(extra="forbid")

    metric: Literal["nps", "csat"] = "nps"
    window: Literal["24h", "7d", "30d"] = "7d"
    by: (
        Literal["channel", "survey_type", "touchpoint", "location", "product", "business_unit"]
        | None
    ) = None
    below: float | None = Field(default=None, description="Fire when the score is under this.")
    drop_points: float | None = Field(default=None, gt=0, description="…or falls this much.")
    min_n: int = Field(default=30, ge=1)
    severity: Literal["critical", "warning", "info"] = "warning"
    runbook_url: HttpUrlText | None = Field(
        default=None, description="What to do about this drop's alerts (else the config's)."
    )

    def key_prefix(self) -> str:
        """The start of the dedupe key of this rule's alerts."""
        return f"score_drop:{self.metric}:{self.window}:{self.by + '=' if self.by else 'all'}"
