"""The scorer's query API: scores, time series, service times, drivers, retention,
drill-down and erasure."""

from __future__ import annotations

import base64
import uuid
from datetime import date, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import AwareDatetime
from sqlalchemy.ext.asyncio import AsyncEngine

from services.scorer import queries
from services.scorer.schemas import (
    CategoryDrivers,
    Dimension,
    DriversOut,
    Erasure,
    GroupScore,
    Interval,
    Point,
    ReasonShare,
    ResponsesPage,
    RetentionOut,
    RetentionPoint,
    ScoreOut,
    ServiceTimesGroup,
    ServiceTimesOut,
    StoredResponse,
    TimeseriesOut,
    TimeStats,
    Window,
)
from shared import erasure, scoring
from shared.apikeys import Scope
from shared.events import SCALES, Channel, Metric, SurveyType, TicketPriority, utcnow
from shared.http import EngineDep, FieldErrors, require
from shared.privacy import Hasher
from shared.scoring import Counts, summarise
from shared.settings import ScorerSettings

router = APIRouter(prefix="/v1", tags=["scores"])

READ = [require(Scope.SCORES_READ)]

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


def _settings(request: Request) -> ScorerSettings:
    settings: ScorerSettings = request.app.state.scorer_settings
    return settings


def _range(
    window: Window | None, from_: datetime | None, to: datetime | None
) -> tuple[datetime, datetime, Window | None]:
    now = utcnow()
    if from_ is not None:
        until = to or now
        if from_ >= until:
            raise FieldErrors([{"field": "from", "detail": "must be before `to`"}])
        return from_, until, None
    if to is not None:
        raise FieldErrors([{"field": "to", "detail": "needs `from` as well"}])
    window = window or Window.MONTH
    return scoring.window_start(window, now), now, window


def _filters(**values: Any) -> dict[str, str]:
    return {k: str(v) for k, v in values.items() if v is not None}


def _check_scale(metric: Metric, scale: int | None) -> None:
    if metric is Metric.CES and scale is None:
        raise FieldErrors([{"field": "scale", "detail": "is required for ces: 5 or 7"}])
    if scale is not None and scale not in SCALES[metric]:
        raise FieldErrors(
            [{"field": "scale", "detail": f"{scale} is not valid for {metric.value}"}]
        )


class TimeRange:
    """The time range every score endpoint takes: a rolling `window`, or `from`/`to`."""

    def __init__(
        self, window: Window | None = None, from_: FromParam = None, to: ToParam = None
    ) -> None:
        self.since, self.until, self.window = _range(window, from_, to)


RangeDep = Annotated[TimeRange, Depends()]


class SegmentFilters:
    """The segment filters every score endpoint takes (query parameters)."""

    def __init__(
        self,
        channel: Channel | None = None,
        survey_type: SurveyType | None = None,
        touchpoint: str | None = None,
        location: str | None = None,
        product: str | None = None,
        business_unit: str | None = None,
    ) -> None:
        self.values = _filters(
            channel=channel,
            survey_type=survey_type,
            touchpoint=touchpoint,
            location=location,
            product=product,
            business_unit=business_unit,
        )


SegmentsDep = Annotated[SegmentFilters, Depends()]


async def _score_rows(
    engine: AsyncEngine,
    span: TimeRange,
    segments: SegmentFilters,
    metric: Metric,
    scale: int | None,
    *,
    group_by: str | None = None,
    interval: str | None = None,
) -> list[queries.Group]:
    """Check the scale, then sum the buckets of the range and segments (both endpoints)."""
    _check_scale(metric, scale)
    async with engine.connect() as conn:
        return await queries.score_counts(
            conn,
            metric=metric.value,
            since=span.since,
            until=span.until,
            scale=scale,
            filters=segments.values,
            group_by=group_by,
            interval=interval,
        )


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
    since, until, window = span.since, span.until, span.window
    filters = segments.values
    min_n = _settings(request).min_n
    rows = await _score_rows(
        engine, span, segments, metric, scale, group_by=group_by.value if group_by else None
    )
    # Counts add up, so the groups' sum is the total: one query, not two.
    total = Counts()
    for row in rows:
        total.add(row.counts)
    groups = None
    if group_by is not None:
        groups = [
            GroupScore(group=g.group or "", **summarise(metric, g.counts, scale, min_n))
            for g in rows
        ]
    return ScoreOut.model_validate(
        {
            "metric": metric.value,
            "window": window,
            "from": since,
            "to": until,
            "filters": filters,
            "group_by": group_by,
            "groups": groups,
            **summarise(metric, total, scale, min_n),
        }
    )


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
    """Return one score per interval (UTC) with its `n`; empty intervals are left out."""
    since, until = span.since, span.until
    filters = segments.values
    min_n = _settings(request).min_n
    rows = await _score_rows(engine, span, segments, metric, scale, interval=interval.value)
    points = [Point(start=r.start, **summarise(metric, r.counts, scale, min_n)) for r in rows]
    return TimeseriesOut.model_validate(
        {
            "metric": metric.value,
            "interval": interval,
            "from": since,
            "to": until,
            "filters": filters,
            "points": points,
        }
    )


def _time_stats(row: dict[str, Any], prefix: str) -> TimeStats:
    due = int(row[f"{prefix}_due"])
    breaches = int(row[f"{prefix}_breaches"])
    return TimeStats(
        n=int(row[f"{prefix}_n"]),
        mean_seconds=row[f"{prefix}_mean"],
        median_seconds=row[f"{prefix}_median"],
        p90_seconds=row[f"{prefix}_p90"],
        breaches=breaches,
        due=due,
        breach_rate=scoring.share(breaches, due),
    )


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
    since, until = span.since, span.until
    filters = _filters(channel=channel, priority=priority)
    async with engine.connect() as conn:
        rows = await queries.service_times(
            conn,
            since=since,
            until=until,
            now=utcnow(),
            filters=filters,
            group_by=group_by,
            sla_first_response=request.app.state.sla.first_response_minutes,
            sla_resolution=request.app.state.sla.resolution_minutes,
        )
    groups = [
        ServiceTimesGroup(
            group=row["grp"],
            tickets=int(row["tickets"]),
            first_response=_time_stats(row, "fr"),
            resolution=_time_stats(row, "res"),
        )
        for row in rows
    ]
    return ServiceTimesOut.model_validate(
        {"from": since, "to": until, "filters": filters, "group_by": group_by, "groups": groups}
    )


@router.get(
    "/drivers",
    response_model=DriversOut,
    response_model_by_alias=True,
    summary="NPS+ drivers: reason codes by NPS category",
    dependencies=READ,
)
async def get_drivers(
    engine: EngineDep,
    span: RangeDep,
    segments: SegmentsDep,
) -> DriversOut:
    """Count the reasons given with NPS answers, by category, with each reason's share of
    that category's answers; and the detractors' top reasons."""
    since, until = span.since, span.until
    filters = segments.values
    async with engine.connect() as conn:
        (total,) = await queries.score_counts(
            conn, metric="nps", since=since, until=until, scale=None, filters=filters
        )
        rows = await queries.reason_counts(conn, since=since, until=until, filters=filters)
    sizes = {
        "promoter": total.counts.promoters,
        "passive": total.counts.passives,
        "detractor": total.counts.detractors,
    }
    categories = {
        name: CategoryDrivers(
            responses=size,
            reasons=[
                ReasonShare(reason=r, count=n, share=scoring.share(n, size))
                for c, r, n in rows
                if c == name
            ],
        )
        for name, size in sizes.items()
    }
    return DriversOut.model_validate(
        {
            "from": since,
            "to": until,
            "filters": filters,
            "categories": categories,
            "top_detractor_reasons": categories["detractor"].reasons[:5],
        }
    )


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
    until = to or utcnow().date() + timedelta(days=1)
    since = from_ or until - (timedelta(weeks=12) if period == "week" else timedelta(days=366))
    async with engine.connect() as conn:
        rows = await queries.retention(conn, period=period, since=since, until=until)
    return RetentionOut(
        period=period,
        points=[
            RetentionPoint(period_start=p, active=a, retained=r, rate=scoring.share(r, a))
            for p, a, r in rows
        ],
    )


def _cursor(row: dict[str, Any]) -> str:
    raw = f"{row['occurred_at'].isoformat()}|{row['event_id']}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _after(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    if cursor is None:
        return None
    try:
        moment, event_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(moment), uuid.UUID(event_id)
    except (ValueError, UnicodeDecodeError):
        raise FieldErrors(
            [{"field": "cursor", "detail": "is not a cursor this API gave"}]
        ) from None


@router.get(
    "/responses",
    response_model=ResponsesPage,
    tags=["responses"],
    summary="Drill down into raw responses",
    dependencies=[require(Scope.RESPONSES_READ)],
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
    async with engine.connect() as conn:
        rows = await queries.list_responses(
            conn, filters=filters, since=from_, until=to, after=_after(cursor), limit=limit + 1
        )
    page = rows[:limit]
    return ResponsesPage(
        items=[StoredResponse.model_validate(r) for r in page],
        next_cursor=_cursor(page[-1]) if len(rows) > limit else None,
    )


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
    async with engine.begin() as conn:
        await erasure.lock(conn, "scorer", exclusive=True)
        pseudonym = await erasure.pseudonym_for(conn, hasher, "scorer", customer_id)
        result = await queries.erase_customer(conn, customer_id, pseudonym)
    return Erasure(**result)
