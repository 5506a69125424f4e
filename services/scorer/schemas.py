"""The scorer's HTTP bodies."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import StrEnum
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field


class Window(StrEnum):
    """Rolling windows, counted back from now to the start of that hour."""

    HOUR = "1h"
    DAY = "24h"
    WEEK = "7d"
    MONTH = "30d"
    QUARTER = "90d"


class ValueWindow(StrEnum):
    """The rolling windows of customer value: the score routes' and a year."""

    HOUR = "1h"
    DAY = "24h"
    WEEK = "7d"
    MONTH = "30d"
    QUARTER = "90d"
    YEAR = "365d"


class Interval(StrEnum):
    """Time-series resolution (UTC)."""

    HOUR = "hour"
    DAY = "day"
    WEEK = "week"
    MONTH = "month"


class Dimension(StrEnum):
    """What scores can be filtered and grouped by."""

    CHANNEL = "channel"
    SURVEY_TYPE = "survey_type"
    TOUCHPOINT = "touchpoint"
    LOCATION = "location"
    PRODUCT = "product"
    BUSINESS_UNIT = "business_unit"


class ScoreSummary(BaseModel):
    """A score with its sample size; fields beyond `n`, `score` and `insufficient` depend on
    the metric (NPS: categories and margin of error; CSAT: satisfied and mean; CES: easy)."""

    n: int = Field(description="Responses counted: every score carries its sample size.")
    score: float | None = Field(
        description="NPS (−100…+100), CSAT % of 4s and 5s, or mean CES; null when n = 0."
    )
    insufficient: bool = Field(description="n is below CXLOOP_SCORER_MIN_N: do not act on it.")
    promoters: int | None = None
    passives: int | None = None
    detractors: int | None = None
    promoter_share: float | None = None
    passive_share: float | None = None
    detractor_share: float | None = None
    margin_of_error: float | None = Field(default=None, description="NPS ± points at 95%.")
    margin: float | None = Field(
        default=None,
        description="± points of `score` at 95% (NPS; CSAT by the Wald interval; CES "
        "1.96·sd/√n, sd with n − 1); null when n = 0, and for CES when n < 2.",
    )
    satisfied: int | None = None
    mean: float | None = None
    easy: int | None = None
    easy_share: float | None = None
    scale: int | None = None


class GroupScore(ScoreSummary):
    """The score of one value of the `group_by` dimension ('' when the value was absent)."""

    group: str


class ScoreOut(ScoreSummary):
    """A score over a window or range, optionally broken down by a dimension."""

    model_config = ConfigDict(populate_by_name=True)

    metric: str
    window: Window | None = Field(description="The rolling window, or null for a custom range.")
    from_: datetime = Field(alias="from", description="Start of the first hourly bucket counted.")
    to: datetime = Field(description="End of the range (exclusive).")
    filters: dict[str, str]
    group_by: Dimension | None = None
    groups: list[GroupScore] | None = None


class Point(ScoreSummary):
    """The score of one interval."""

    start: datetime


class TimeseriesOut(BaseModel):
    """A score per interval; intervals with no responses are absent."""

    model_config = ConfigDict(populate_by_name=True)

    metric: str
    interval: Interval
    from_: datetime = Field(alias="from")
    to: datetime
    filters: dict[str, str]
    points: list[Point]


class TimeStats(BaseModel):
    """Durations in seconds, and the SLA breach rate among tickets already due."""

    n: int = Field(description="Tickets with this time known.")
    mean_seconds: float | None
    median_seconds: float | None
    p90_seconds: float | None
    breaches: int = Field(description="Past the SLA, answered late or not at all yet.")
    due: int = Field(description="Tickets whose SLA has been decided (met, or breached).")
    breach_rate: float | None = Field(description="breaches / due, as a percentage.")


class ServiceTimesGroup(BaseModel):
    """Service times of one channel or priority (or of all tickets)."""

    group: str | None
    tickets: int
    first_response: TimeStats
    resolution: TimeStats


class ServiceTimesOut(BaseModel):
    """First-response and resolution times of tickets created in the range."""

    model_config = ConfigDict(populate_by_name=True)

    from_: datetime = Field(alias="from")
    to: datetime
    filters: dict[str, str]
    group_by: str | None
    groups: list[ServiceTimesGroup]


class ReasonShare(BaseModel):
    """How often a reason code was given, and its share of the category's responses."""

    reason: str
    count: int
    share: float | None


class CategoryDrivers(BaseModel):
    """The reasons given by one NPS category."""

    responses: int
    reasons: list[ReasonShare]


class DriversOut(BaseModel):
    """NPS+ drivers: reason codes by NPS category, over the range and filters."""

    model_config = ConfigDict(populate_by_name=True)

    from_: datetime = Field(alias="from")
    to: datetime
    filters: dict[str, str]
    categories: dict[str, CategoryDrivers]
    top_detractor_reasons: list[ReasonShare]


class RetentionPoint(BaseModel):
    """Of the customers active in a period, how many were active again in the next."""

    period_start: date
    active: int
    retained: int
    rate: float | None = Field(description="retained / active, as a percentage.")


class RetentionOut(BaseModel):
    """Retention by period; the last period's rate is provisional until the next ends."""

    period: str
    points: list[RetentionPoint]


class StoredResponse(BaseModel):
    """One raw response, as stored."""

    event_id: uuid.UUID
    submission_id: uuid.UUID | None
    metric: str
    scale: int
    score: int
    survey_type: str
    channel: str
    touchpoint: str
    location: str | None
    product: str | None
    business_unit: str | None
    customer_id: str
    ticket_id: str | None
    comment: str | None
    reasons: list[str]
    locale: str | None
    source: str
    occurred_at: datetime
    received_at: datetime


class ResponsesPage(BaseModel):
    """A page of responses, newest first; pass `next_cursor` as `cursor` for the next."""

    items: list[StoredResponse]
    next_cursor: str | None


class Erasure(BaseModel):
    """What erasure removed or pseudonymised. Aggregates keep their counts."""

    responses_deleted: int
    tickets_pseudonymised: int
    activity_pseudonymised: int
    orders_pseudonymised: int = Field(
        description="Orders kept under the pseudonym: they still count in revenue and CLV."
    )


class Previous(BaseModel):
    """The same score over the period of equal length just before the range."""

    n: int
    score: float | None
    margin: float | None
    insufficient: bool


class ScoreChange(BaseModel):
    """Current minus previous, and whether it lies beyond the two periods' combined margin."""

    delta: float | None = Field(description="Points; null when either period has no score.")
    margin: float | None = Field(description="± points of the difference at 95%.")
    significant: bool = Field(
        description="|delta| > margin, with both periods at CXLOOP_SCORER_MIN_N or more."
    )


class HeadlineScore(BaseModel):
    """One metric's score over the range, with its change from the previous period."""

    metric: str
    scale: int | None = Field(description="The CES scale (5 or 7); null for NPS and CSAT.")
    n: int
    score: float | None
    margin: float | None
    insufficient: bool
    previous: Previous
    change: ScoreChange


class HeadlineOut(BaseModel):
    """NPS, CSAT and CES (one entry per CES scale answered, most answers first) over the
    range, each against the period of equal length just before it."""

    model_config = ConfigDict(populate_by_name=True)

    from_: datetime = Field(alias="from")
    to: datetime
    previous_from: datetime
    previous_to: datetime
    window: Window | None
    filters: dict[str, str]
    scores: list[HeadlineScore]


class CustomerResponse(BaseModel):
    """One of a customer's answers."""

    event_id: uuid.UUID
    metric: str
    scale: int
    score: int
    comment: str | None
    reasons: list[str]
    channel: str
    touchpoint: str
    ticket_id: str | None
    occurred_at: datetime


class CustomerTicket(BaseModel):
    """One of a customer's tickets, its facts folded from every event seen for it."""

    source: str
    ticket_id: str
    channel: str
    status: str = Field(description="open, resolved, or reopened (not resolved again since).")
    priority: str | None
    created_at: datetime | None
    first_response_at: datetime | None
    resolved_at: datetime | None
    reopens: int
    first_response_seconds: float | None
    resolution_seconds: float | None = Field(
        description="Creation to resolution; null while open or reopened."
    )


class CustomerOut(BaseModel):
    """A customer's latest answers and tickets, newest first, at most `limit` of each."""

    customer_id: str
    responses: list[CustomerResponse]
    more_responses: bool = Field(description="The customer has older answers than these.")
    tickets: list[CustomerTicket]
    more_tickets: bool = Field(description="The customer has older tickets than these.")


class LatestResponses(BaseModel):
    """Responses stored since a cursor, newest first; pass `cursor` back on the next call.

    Each call looks a few seconds back before its cursor, so that a response whose batch
    committed after a newer one's is not missed: an item may repeat one returned before
    (recognise it by `event_id`).
    """

    items: list[StoredResponse]
    cursor: str | None = Field(
        description="Pass as `cursor` next time: the newest item's storage time, or the time "
        "of this read when there is none."
    )
    truncated: bool = Field(description="More responses arrived than `limit`: older ones left out.")


class ValueDimension(StrEnum):
    """What orders can be filtered and grouped by (an order has no touchpoint or survey)."""

    CHANNEL = "channel"
    LOCATION = "location"
    PRODUCT = "product"
    BUSINESS_UNIT = "business_unit"


NpsCategory = Literal["promoter", "passive", "detractor", "unrated"]

LIFETIME_CAP_YEARS: Final = 10
"""Expected lifetime is capped here: at a retention near 100% 1 / (1 − r) has no bound."""

VALUE_FORMULAS: Final = {
    "revenue": "Σ over the orders completed in [from, to) (the first order.completed of each "
    "order_id, by occurred_at) of amount − min(its refunds in its currency, amount)",
    "orders": "orders completed in [from, to)",
    "customers": "customers with ≥ 1 order completed in [from, to)",
    "average_order_value": "revenue / orders (the range's)",
    "clv_year": "[the top of the hour 365 days before to, to): CLV's inputs are measured "
    "over it, with the same filters, whatever the range's length",
    "clv_inputs": "orders, revenue and customers as above, over clv_year; average_order_value "
    "= revenue / orders; purchase_frequency = orders / customers (orders per customer per "
    "year)",
    "retention_rate": "r = Σ retained / Σ active over lifetime.months: the 12 months m with "
    "m + 1 a complete month before the month of to; every customer's activity, whatever the "
    "filters or NPS category",
    "expected_lifetime_years": f"min(1 / (1 − r) × 1/12, {LIFETIME_CAP_YEARS})",
    "clv": "clv_inputs.average_order_value × clv_inputs.purchase_frequency × "
    "expected_lifetime_years (= clv_inputs.revenue / clv_inputs.customers × "
    "expected_lifetime_years)",
    "clv_formula": "the CLV with its inputs rounded for reading: ≈, not =",
    "nps_category": "the customer's latest NPS answer with occurred_at < to (ties by event "
    "id): 9–10 promoter, 7–8 passive, 0–6 detractor; none: unrated",
    "revenue_per_customer": "the category's revenue in the range / n",
    "revenue_per_customer_margin": "1.96 · s / √n, s the standard deviation of the "
    "customers' revenue in the range (n − 1)",
    "repurchase_rate": "customers with ≥ 2 orders in the range / n, as a percentage",
    "repurchase_rate_low, repurchase_rate_high": "the 95% Wilson score interval: (p + z²/2n ± "
    "z · √(p(1 − p)/n + z²/4n²)) / (1 + z²/n), z = 1.96",
    "repurchase_rate_margin": "(repurchase_rate_high − repurchase_rate_low) / 2, the Wilson "
    "half-width: the interval is not centred on repurchase_rate",
    "category_clv": "clv_revenue_per_customer × expected_lifetime_years, "
    "clv_revenue_per_customer = the category's revenue over clv_year / clv_customers (its "
    "customers with an order there)",
    "category_clv_margin": "1.96 · s / √clv_customers × expected_lifetime_years, s the "
    "standard deviation of those customers' revenue over clv_year (n − 1)",
    "revenue_at_risk": "Σ net revenue of the orders completed in clv_year of customers whose "
    "NPS category is detractor; customers: those with ≥ 1 such order",
}
"""How each figure of ``ValueOut`` is computed: every answer carries them (``formulas``)."""


class NpsCategoryValue(BaseModel):
    """The customers of one NPS category (their latest NPS answer before `to`; `unrated`:
    none) who completed an order in the range, in one currency; their CLV from the orders
    of the CLV year."""

    category: NpsCategory
    n: int = Field(description="Customers with an order in the range.")
    insufficient: bool = Field(description="n is below CXLOOP_SCORER_MIN_N: do not act on it.")
    orders: int
    revenue: str = Field(description="Net revenue of their orders in the range.")
    revenue_minor: int
    revenue_per_customer: str | None = Field(description="revenue / n; null when n = 0.")
    revenue_per_customer_margin: str | None = Field(
        description="± at 95%: 1.96·s/√n, s the sample standard deviation of the customers' "
        "revenue (n − 1); null below two customers."
    )
    repeat_customers: int = Field(description="Customers with two orders or more in the range.")
    repurchase_rate: float | None = Field(description="repeat_customers / n, as a percentage.")
    repurchase_rate_low: float | None = Field(
        description="The 95% Wilson score interval's lower bound, as a percentage."
    )
    repurchase_rate_high: float | None = Field(
        description="The 95% Wilson score interval's upper bound, as a percentage."
    )
    repurchase_rate_margin: float | None = Field(
        description="Half the Wilson interval's width, in points: (high − low) / 2. The "
        "interval is not centred on the rate (at 0% or 100% it lies on one side): prefer "
        "repurchase_rate_low and repurchase_rate_high."
    )
    clv_customers: int = Field(
        description="Customers of this category (at `to`) with an order in the CLV year."
    )
    clv_insufficient: bool = Field(
        description="clv_customers is below CXLOOP_SCORER_MIN_N: do not act on the CLV "
        "(`insufficient` is about the range's customers, `n`)."
    )
    clv_revenue_per_customer: str | None = Field(
        description="Their net revenue over the CLV year / clv_customers; null when none."
    )
    clv: str | None = Field(
        description="clv_revenue_per_customer × expected_lifetime_years; null when either is."
    )
    clv_margin: str | None = Field(
        description="± at 95%: 1.96·s/√clv_customers of the CLV year's revenue per customer, "
        "× expected_lifetime_years; null below two customers."
    )


class ClvInputs(BaseModel):
    """What the CLV is measured from: the orders of the CLV year (`clv_year`), with the same
    filters (and group), whatever the range's length."""

    orders: int = Field(description="Orders completed in the CLV year.")
    revenue: str = Field(description="Their net revenue.")
    revenue_minor: int
    customers: int = Field(description="Customers with at least one of these orders.")
    average_order_value: str | None = Field(description="revenue / orders.")
    purchase_frequency: float | None = Field(
        description="Orders per customer per year: orders / customers (the CLV year is one)."
    )


class ValueFigures(BaseModel):
    """Orders, revenue and customer value in one currency (amounts in its notation)."""

    orders: int = Field(description="Orders completed in the range.")
    revenue: str = Field(description="Their net revenue: amounts less refunds (never < 0).")
    revenue_minor: int = Field(description="The same in minor units (cents, yen).")
    customers: int = Field(description="Customers with at least one of these orders.")
    insufficient: bool = Field(description="customers is below CXLOOP_SCORER_MIN_N.")
    average_order_value: str | None = Field(description="revenue / orders, in the range.")
    clv_inputs: ClvInputs
    clv: str | None = Field(
        description="clv_inputs.average_order_value × clv_inputs.purchase_frequency × "
        "expected_lifetime_years; null when the lifetime or the CLV year's orders are unknown."
    )
    clv_formula: str | None = Field(
        description="The CLV with its inputs written out, rounded for reading (≈)."
    )
    by_nps: list[NpsCategoryValue] = Field(
        description="Promoters, passives, detractors and unrated customers, in that order."
    )


class GroupValue(ValueFigures):
    """The figures of one value of `group_by` ('' when orders did not say)."""

    group: str


class RevenueAtRisk(BaseModel):
    """Net revenue of the CLV year (the 365 days before `to`) from customers whose latest
    NPS answer before `to` is a detractor's (0–6), and how many such customers ordered in it."""

    model_config = ConfigDict(populate_by_name=True)

    from_: datetime = Field(alias="from")
    to: datetime
    customers: int = Field(description="Detractors with at least one order in these 365 days.")
    revenue: str
    revenue_minor: int


class CurrencyValue(ValueFigures):
    """Everything in one currency: amounts in different currencies are never added."""

    currency: str
    revenue_at_risk: RevenueAtRisk
    groups: list[GroupValue] | None = None


class ClvYear(BaseModel):
    """The year CLV's inputs are measured over: the 365 days before `to`, from the top of
    that hour (as the 365d window)."""

    model_config = ConfigDict(populate_by_name=True)

    from_: datetime = Field(alias="from")
    to: datetime


class Lifetime(BaseModel):
    """Expected customer lifetime from the measured monthly retention (every customer's
    activity: answers, tickets, orders; as `GET /v1/retention?period=month` counts it).
    Filters, `group_by` and NPS categories do not change it: one r for every figure (a
    known limitation)."""

    period: str = Field(description="month: the retention period.")
    months: list[date] = Field(
        description="The 12 months m pooled, from 13 months before the month of `to` to 2 "
        "months before it: m + 1 is then a complete month before `to`, so activity after "
        "`to` never counts and the same `to` always gives the same lifetime."
    )
    active: int = Field(description="Σ over the months of the customers active in m.")
    retained: int = Field(description="Σ of those active again in m + 1.")
    retention_rate: float | None = Field(description="retained / active, as a percentage.")
    expected_lifetime_years: float | None = Field(
        description="1 / (1 − r) months, at most cap_years; null when no customer was active "
        "in those months."
    )
    cap_years: float
    capped: bool


# The worked example of the README ("Customer value"), in yen: test_value_api checks that
# GET /v1/value answers exactly this.
VALUE_EXAMPLE: Final[dict[str, Any]] = {
    "from": "2025-01-01T00:00:00Z",
    "to": "2025-03-01T00:00:00Z",
    "window": None,
    "as_of": "2025-03-01T09:30:00Z",
    "snapshot": False,
    "filters": {},
    "group_by": None,
    "clv_year": {"from": "2024-03-01T00:00:00Z", "to": "2025-03-01T00:00:00Z"},
    "min_n": 3,
    "formulas": dict(VALUE_FORMULAS),
    "lifetime": {
        "period": "month",
        "months": [
            "2024-02-01",
            "2024-03-01",
            "2024-04-01",
            "2024-05-01",
            "2024-06-01",
            "2024-07-01",
            "2024-08-01",
            "2024-09-01",
            "2024-10-01",
            "2024-11-01",
            "2024-12-01",
            "2025-01-01",
        ],
        "active": 5,
        "retained": 3,
        "retention_rate": 60.0,
        "expected_lifetime_years": 0.20833333333333334,
        "cap_years": 10.0,
        "capped": False,
    },
    "currencies": [
        {
            "orders": 4,
            "revenue": "7100",
            "revenue_minor": 7100,
            "customers": 3,
            "insufficient": False,
            "average_order_value": "1775",
            "clv_inputs": {
                "orders": 5,
                "revenue": "7940",
                "revenue_minor": 7940,
                "customers": 3,
                "average_order_value": "1588",
                "purchase_frequency": 1.6666666666666667,
            },
            "clv": "551",
            "clv_formula": "1588 JPY × 1.667 orders/year × 0.2083 years ≈ 551 JPY",
            "by_nps": [
                {
                    "category": "promoter",
                    "n": 1,
                    "insufficient": True,
                    "orders": 2,
                    "revenue": "2600",
                    "revenue_minor": 2600,
                    "revenue_per_customer": "2600",
                    "revenue_per_customer_margin": None,
                    "repeat_customers": 1,
                    "repurchase_rate": 100.0,
                    "repurchase_rate_low": 20.654329147389294,
                    "repurchase_rate_high": 100.0,
                    "repurchase_rate_margin": 39.672835426305355,
                    "clv_customers": 1,
                    "clv_insufficient": True,
                    "clv_revenue_per_customer": "2600",
                    "clv": "542",
                    "clv_margin": None,
                },
                {
                    "category": "passive",
                    "n": 0,
                    "insufficient": True,
                    "orders": 0,
                    "revenue": "0",
                    "revenue_minor": 0,
                    "revenue_per_customer": None,
                    "revenue_per_customer_margin": None,
                    "repeat_customers": 0,
                    "repurchase_rate": None,
                    "repurchase_rate_low": None,
                    "repurchase_rate_high": None,
                    "repurchase_rate_margin": None,
                    "clv_customers": 0,
                    "clv_insufficient": True,
                    "clv_revenue_per_customer": None,
                    "clv": None,
                    "clv_margin": None,
                },
                {
                    "category": "detractor",
                    "n": 1,
                    "insufficient": True,
                    "orders": 1,
                    "revenue": "3000",
                    "revenue_minor": 3000,
                    "revenue_per_customer": "3000",
                    "revenue_per_customer_margin": None,
                    "repeat_customers": 0,
                    "repurchase_rate": 0.0,
                    "repurchase_rate_low": 0.0,
                    "repurchase_rate_high": 79.34567085261071,
                    "repurchase_rate_margin": 39.672835426305355,
                    "clv_customers": 1,
                    "clv_insufficient": True,
                    "clv_revenue_per_customer": "3000",
                    "clv": "625",
                    "clv_margin": None,
                },
                {
                    "category": "unrated",
                    "n": 1,
                    "insufficient": True,
                    "orders": 1,
                    "revenue": "1500",
                    "revenue_minor": 1500,
                    "revenue_per_customer": "1500",
                    "revenue_per_customer_margin": None,
                    "repeat_customers": 0,
                    "repurchase_rate": 0.0,
                    "repurchase_rate_low": 0.0,
                    "repurchase_rate_high": 79.34567085261071,
                    "repurchase_rate_margin": 39.672835426305355,
                    "clv_customers": 1,
                    "clv_insufficient": True,
                    "clv_revenue_per_customer": "2340",
                    "clv": "488",
                    "clv_margin": None,
                },
            ],
            "currency": "JPY",
            "revenue_at_risk": {
                "from": "2024-03-01T00:00:00Z",
                "to": "2025-03-01T00:00:00Z",
                "customers": 1,
                "revenue": "3000",
                "revenue_minor": 3000,
            },
            "groups": None,
        }
    ],
}


class ValueOut(BaseModel):
    """Customer value over a range, per currency, with its NPS split and revenue at risk."""

    model_config = ConfigDict(
        populate_by_name=True,
        json_schema_extra={"examples": [VALUE_EXAMPLE]},
    )

    from_: datetime = Field(alias="from")
    to: datetime
    window: ValueWindow | None
    as_of: datetime = Field(
        description="When these figures were computed: a snapshot's time, else the request's."
    )
    snapshot: bool = Field(
        description="True when served from the scorer's snapshot of a rolling window (no "
        "filters, no group_by), refreshed every CXLOOP_SCORER_VALUE_REFRESH_SECONDS; its "
        "`from` and `to` are the snapshot's own."
    )
    filters: dict[str, str]
    group_by: ValueDimension | None
    clv_year: ClvYear = Field(description="The year CLV's inputs and revenue at risk cover.")
    min_n: int = Field(description="CXLOOP_SCORER_MIN_N: fewer customers are insufficient.")
    formulas: dict[str, str] = Field(description="How each figure is computed.")
    lifetime: Lifetime
    currencies: list[CurrencyValue] = Field(
        description="One entry per currency with orders in the range or in the CLV year."
    )
