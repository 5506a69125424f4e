"""The scorer's query API: scores, time series, service times, drivers, retention,
drill-down, a customer's history, live responses and erasure. Each route parses its
parameters and calls one function of ``service``, which the dashboard calls too."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import AwareDatetime

from services.scorer import service
from services.scorer.schemas import (
    CustomerOut,
    Dimension,
    DriversOut,
    Erasure,
    HeadlineOut,
    Interval,
    LatestResponses,
    ResponsesPage,
    RetentionOut,
    ScoreOut,
    ServiceTimesOut,
    TimeseriesOut,
    ValueDimension,
    ValueOut,
    ValueWindow,
    Window,
)
from services.scorer.snapshots import ValueSnapshots
from shared.apikeys import Scope
from shared.events import Channel, Metric, SurveyType, TicketPriority
from shared.http import EngineDep, FieldErrors, require
from shared.privacy import Hasher
from shared.settings import ScorerSettings

router = APIRouter(prefix="/v1", tags=["scores"])

READ = [require(Scope.SCORES_READ)]
READ_RESPONSES = [require(Scope.RESPONSES_READ)]
CUSTOMER_ID_MAX = 256  # as the events' customer_id

FromParam = Annotated[
    AwareDatetime | None,
    Query(
        alias="from", description="Start of a custom range (with a UTC offset); overrides window."
    ),
]
ToParam = Annotated[AwareDatetime | None, Query(description="End of a custom range; default now.")]
ScaleParam = Annotated[
    int | None, Query(description="Required for ces: 5 or 7 (the scales are never mixed).")
]
CustomerIdParam = Annotated[
    str, Path(min_length=1, max_length=CUSTOMER_ID_MAX, description="The customer's id.")
]


def _settings(request: Request) -> ScorerSettings:
    settings: ScorerSettings = request.app.state.scorer_settings
    return settings


def _filters(**values: Any) -> dict[str, str]:
    return {k: str(v) for k, v in values.items() if v is not None}


# The parameter dependencies are coroutines: FastAPI runs a plain function or class in a
# worker thread, a hop per dependency per request.
async def time_range(
    window: Window | None = None, from_: FromParam = None, to: ToParam = None
) -> service.Range:
    """The time range every score endpoint takes: a rolling `window`, or `from`/`to`."""
    return service.resolve_range(window, from_, to)


RangeDep = Annotated[service.Range, Depends(time_range)]


async def value_range(
    window: ValueWindow | None = None, from_: FromParam = None, to: ToParam = None
) -> service.Range:
    """The time range of customer value: a rolling `window` (a year too), or `from`/`to`."""
    return service.resolve_range(window, from_, to)


ValueRangeDep = Annotated[service.Range, Depends(value_range)]


async def segment_filters(
    channel: Channel | None = None,
    survey_type: SurveyType | None = None,
    touchpoint: str | None = None,
    location: str | None = None,
    product: str | None = None,
    business_unit: str | None = None,
) -> dict[str, str]:
    """The segment filters every score endpoint takes (query parameters)."""
    return _filters(
        channel=channel,
        survey_type=survey_type,
        touchpoint=touchpoint,
        location=location,
        product=product,
        business_unit=business_unit,
    )


SegmentsDep = Annotated[dict[str, str], Depends(segment_filters)]


# An order dimension's value: what orders carry is at most 128 characters (shared.events).
OrderValueParam = Annotated[str | None, Query(max_length=128)]


async def order_filters(
    channel: Channel | None = None,
    location: OrderValueParam = None,
    product: OrderValueParam = None,
    business_unit: OrderValueParam = None,
    touchpoint: Annotated[
        str | None, Query(description="Refused: an order has no touchpoint.")
    ] = None,
    survey_type: Annotated[
        str | None, Query(description="Refused: an order has no survey type.")
    ] = None,
) -> dict[str, str]:
    """The filters of order figures: an order's channel and segments. Orders have no
    touchpoint or survey type, so filtering by one is a 422 naming it, never ignored."""
    for name, given in (("touchpoint", touchpoint), ("survey_type", survey_type)):
        if given is not None:
            raise FieldErrors(
                [{"field": name, "detail": f"orders have no {name}: filter by channel, "
                  "location, product or business_unit"}]
            )  # fmt: skip
    return _filters(
        channel=channel, location=location, product=product, business_unit=business_unit
    )


OrderFiltersDep = Annotated[dict[str, str], Depends(order_filters)]


@router.get(
    "/scores",
    response_model=ScoreOut,
    response_model_by_alias=True,
    summary="A score over a window or range, with its sample size",
    dependencies=READ,
)
async def get_score(
    request: Request,
    engine: EngineDep,
    span: RangeDep,
    segments: SegmentsDep,
    metric: Metric,
    scale: ScaleParam = None,
    group_by: Dimension | None = None,
) -> ScoreOut:
    """Return the score of `metric`, counting responses by when they occurred.

    Buckets are hourly: a rolling window starts at the top of the hour `window` ago
    (default 30d); `from`/`to` give a custom range instead. `group_by` adds one score per
    value of a dimension. Every score carries `n`, and `insufficient` below the minimum.
    """
    min_n = _settings(request).min_n
    return await service.scores(engine, span, segments, metric, scale, min_n, group_by=group_by)


@router.get(
    "/scores/timeseries",
    response_model=TimeseriesOut,
    response_model_by_alias=True,
    summary="A score per hour, day, week or month",
    dependencies=READ,
)
async def get_timeseries(
    request: Request,
    engine: EngineDep,
    span: RangeDep,
    segments: SegmentsDep,
    metric: Metric,
    interval: Interval = Interval.DAY,
    scale: ScaleParam = None,
) -> TimeseriesOut:
    """Return one score per interval (UTC) with its `n`; empty intervals are left out.
    `interval=hour` covers at most 31 days; a custom range, 400 days from 2000-01-01 on."""
    min_n = _settings(request).min_n
    return await service.trend(engine, span, segments, metric, scale, min_n, interval=interval)


@router.get(
    "/headline",
    response_model=HeadlineOut,
    response_model_by_alias=True,
    summary="NPS, CSAT and CES, each against the previous period",
    dependencies=READ,
)
async def get_headline(
    request: Request, engine: EngineDep, span: RangeDep, segments: SegmentsDep
) -> HeadlineOut:
    """Return NPS, CSAT and CES (one entry per CES scale answered) over the range, each
    with `n`, its margin of error and `insufficient`, against the period of equal length
    just before: `change.delta` is significant when it lies beyond both periods' combined
    margin of error (1.96·sqrt(se₁² + se₂²)) and both have at least the minimum `n`."""
    return await service.headline(engine, span, segments, _settings(request).min_n)


@router.get(
    "/service-times",
    response_model=ServiceTimesOut,
    response_model_by_alias=True,
    summary="First-response and resolution times against SLAs",
    dependencies=READ,
)
async def get_service_times(
    request: Request,
    engine: EngineDep,
    span: RangeDep,
    group_by: Annotated[str | None, Query(pattern="^(channel|priority)$")] = None,
    channel: Channel | None = None,
    priority: TicketPriority | None = None,
) -> ServiceTimesOut:
    """Mean, median and p90 of first-response and resolution times of tickets created in the
    range, and the SLA breach rate (CXLOOP_SLA_*). A reopened ticket counts as
    resolved only once resolved again; events may arrive in any order."""
    sla = request.app.state.sla
    return await service.service_times(
        engine,
        span,
        _filters(channel=channel, priority=priority),
        group_by,
        sla_first_response=sla.first_response_minutes,
        sla_resolution=sla.resolution_minutes,
    )


@router.get(
    "/drivers",
    response_model=DriversOut,
    response_model_by_alias=True,
    summary="NPS+ drivers: reason codes by NPS category",
    dependencies=READ,
)
async def get_drivers(engine: EngineDep, span: RangeDep, segments: SegmentsDep) -> DriversOut:
    """Count the reasons given with NPS answers, by category, with each reason's share of
    that category's answers; and the detractors' top reasons."""
    return await service.drivers(engine, span, segments)


@router.get(
    "/retention",
    response_model=RetentionOut,
    summary="Retention rate by week or month",
    dependencies=READ,
)
async def get_retention(
    engine: EngineDep,
    period: Annotated[str, Query(pattern="^(week|month)$")] = "month",
    from_: Annotated[date | None, Query(alias="from")] = None,
    to: Annotated[date | None, Query()] = None,
) -> RetentionOut:
    """The share of customers active in each period (any response or touchpoint event) who
    were active again in the next. Weeks start on Monday, UTC. Default: the last 12 periods."""
    return await service.retention(engine, period, from_, to)


@router.get(
    "/value",
    response_model=ValueOut,
    response_model_by_alias=True,
    summary="Customer value per currency: AOV, frequency, lifetime, CLV, by NPS category",
    dependencies=READ,
)
async def get_value(
    request: Request,
    engine: EngineDep,
    span: ValueRangeDep,
    orders: OrderFiltersDep,
    group_by: ValueDimension | None = None,
) -> ValueOut:
    """Per currency (amounts in different currencies are never added), over the orders
    completed in the range: orders, net revenue (refunds deducted from their order, never
    below zero), customers and average order value; CLV = AOV × orders per customer ×
    expected lifetime, with AOV and orders per customer measured over the CLV year (the
    365 days before `to`, `clv_year`) whatever the range's length, and the lifetime from
    the monthly retention of the 12 complete month pairs before `to` (capped at 10 years),
    with its formula and inputs; each split by the customers' NPS category (their latest
    NPS answer before `to`: promoter, passive, detractor, unrated) with revenue per
    customer (± its 95% margin), repurchase rate (its 95% Wilson interval) and CLV, `n` and
    `insufficient` below the minimum; and revenue at risk: detractors' net revenue of the
    CLV year. Filters and `group_by` are the orders' channel, location, product and
    business unit. Amounts are decimal strings in the currency's notation (none for JPY),
    with `_minor` integers where exact.

    `window` 30d, 90d or 365d without filters or `group_by` answers from the scorer's
    snapshot (`snapshot: true`, computed at `as_of`, every
    CXLOOP_SCORER_VALUE_REFRESH_SECONDS); anything else is computed for the request."""
    snapshots: ValueSnapshots = request.app.state.value_snapshots
    window = span.window  # None: from/to
    if window is not None and group_by is None and not orders and snapshots.covers(window):
        return await snapshots.value(engine, ValueWindow(window))
    min_n = _settings(request).min_n
    return await service.value(engine, span, orders, min_n, group_by)


@router.get(
    "/responses",
    response_model=ResponsesPage,
    tags=["responses"],
    summary="Drill down into raw responses",
    dependencies=READ_RESPONSES,
)
async def list_responses(
    engine: EngineDep,
    metric: Metric | None = None,
    channel: Channel | None = None,
    touchpoint: str | None = None,
    location: str | None = None,
    customer_id: str | None = None,
    ticket_id: str | None = None,
    score: Annotated[int | None, Query(ge=0, le=10, description="Answers of this score.")] = None,
    from_: FromParam = None,
    to: ToParam = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> ResponsesPage:
    """Raw responses with their comments and reasons, newest first, `limit` at a time.

    They carry personal data, so this needs the `responses:read` scope.
    """
    filters = {
        k: (v.value if hasattr(v, "value") else v)
        for k, v in {
            "metric": metric,
            "channel": channel,
            "touchpoint": touchpoint,
            "location": location,
            "customer_id": customer_id,
            "ticket_id": ticket_id,
            "score": score,
        }.items()
        if v is not None
    }
    return await service.responses_page(engine, filters, from_, to, cursor, limit)


@router.get(
    "/responses/latest",
    response_model=LatestResponses,
    tags=["responses"],
    summary="Responses stored since a cursor, for live updates",
    dependencies=READ_RESPONSES,
)
async def latest_responses(
    engine: EngineDep,
    segments: SegmentsDep,
    cursor: Annotated[
        str | None, Query(max_length=200, description="The `cursor` of the previous call.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = service.LIVE_LIMIT,
) -> LatestResponses:
    """Responses stored since `cursor` (without one, the latest stored in the last day),
    newest first, at most `limit`. Each call looks a few seconds back before its cursor, so
    that no response is missed when batches commit out of order: an item may repeat,
    recognise it by `event_id`. They carry personal data, so this needs the
    `responses:read` scope."""
    return await service.latest_responses(engine, cursor, segments, limit)


@router.get(
    "/customers/{customer_id}",
    response_model=CustomerOut,
    tags=["customers"],
    summary="A customer's latest answers and tickets",
    dependencies=READ_RESPONSES,
)
async def get_customer(engine: EngineDep, customer_id: CustomerIdParam) -> CustomerOut:
    """The customer's answers (score, comment, reasons, channel, touchpoint, time) and
    tickets (status, priority, first-response and resolution times), newest first, at most
    50 of each. An unknown or erased customer has none. They carry personal data, so this
    needs the `responses:read` scope."""
    return await service.customer(engine, customer_id)


@router.delete(
    "/customers/{customer_id}",
    response_model=Erasure,
    tags=["customers"],
    summary="Erase a customer's personal data",
    dependencies=[require(Scope.CUSTOMERS_ERASE)],
)
async def erase_customer(request: Request, engine: EngineDep, customer_id: str) -> Erasure:
    """Delete the customer's raw responses (comments included) and replace their id in ticket
    and activity records with a pseudonym. Aggregates keep their counts, and a redelivered
    event is still recognised, so nothing is counted again; a later event for the customer is
    stored under the pseudonym. This erases the scorer alone: the collector's
    `DELETE /v1/customers/{id}` erases the customer from every service."""
    if not customer_id.strip():
        raise HTTPException(422, "customer_id is empty")
    hasher: Hasher = request.app.state.hasher
    return await service.erase_customer(engine, hasher, customer_id)
