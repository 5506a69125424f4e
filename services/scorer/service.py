"""What the scorer answers, between the routes and the SQL: every `/v1` route and every
dashboard page calls these functions, so the two can never disagree.

They take plain typed arguments (an engine, a :class:`Range`, segment filters, a metric,
``min_n`` ...) and return the response schemas. The maths is ``shared.scoring``'s; the SQL
is ``queries``'.
"""

from __future__ import annotations

import asyncio
import base64
import math
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from typing import Any, Final

from sqlalchemy.ext.asyncio import AsyncEngine

from services.scorer import queries
from services.scorer.models import ORDER_DIMENSIONS
from services.scorer.schemas import (
    LIFETIME_CAP_YEARS,
    VALUE_FORMULAS,
    CategoryDrivers,
    ClvInputs,
    ClvYear,
    CurrencyValue,
    CustomerOut,
    CustomerResponse,
    CustomerTicket,
    Dimension,
    DriversOut,
    Erasure,
    GroupScore,
    GroupValue,
    HeadlineOut,
    HeadlineScore,
    Interval,
    LatestResponses,
    Lifetime,
    NpsCategory,
    NpsCategoryValue,
    Point,
    Previous,
    ReasonShare,
    ResponsesPage,
    RetentionOut,
    RetentionPoint,
    RevenueAtRisk,
    ScoreChange,
    ScoreOut,
    ServiceTimesGroup,
    ServiceTimesOut,
    StoredResponse,
    TimeseriesOut,
    TimeStats,
    ValueDimension,
    ValueOut,
    ValueWindow,
    Window,
)
from shared import erasure, money, scoring
from shared.db import autocommit_connection
from shared.events import SCALES, Metric, utcnow
from shared.http import FieldErrors
from shared.privacy import Hasher
from shared.scoring import Counts, summarise
from shared.timing import Timings

Filters = Mapping[str, str]
"""Segment filters: a dimension (``queries.DIMENSIONS``) and the one value it must have."""

CUSTOMER_LIMIT: Final = 50
LIVE_LIMIT: Final = 50
# How far before its cursor a live call looks again: a batch's rows are stored at the time
# its transaction began, so one that began earlier than another but committed later would
# otherwise fall behind a cursor already past it.
LIVE_SETTLE: Final = timedelta(seconds=10)
DEFAULT_WINDOW: Final = Window.MONTH
# A custom range covers at most this, and lies between EARLIEST and a day past now: the
# calendar ends at year 9999 and begins at year 1, so a bound near either end would make a
# range's arithmetic (its previous period, its UTC days) overflow.
LONGEST_RANGE: Final = timedelta(days=400)
EARLIEST: Final = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_AHEAD: Final = timedelta(days=1)
# Hours are offered up to a month: past that a timeseries of hours is thousands of points.
HOURLY_UP_TO: Final = timedelta(days=31)
# Without a cursor, the live answers are looked for among those stored this long before.
LIVE_FIRST_LOOKBACK: Final = timedelta(days=1)
_BOUNDS: Final = "must lie between 2000-01-01 and a day from now (UTC)"


def check_moment(field: str, moment: datetime, now: datetime | None = None) -> datetime:
    """Return ``moment`` if it has a UTC offset and lies in [EARLIEST, now + a day], else
    raise a 422 naming ``field``."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise FieldErrors([{"field": field, "detail": "needs a UTC offset"}])
    # Comparing aware datetimes never overflows; converting them (astimezone) can.
    if not EARLIEST <= moment <= (now or utcnow()) + LATEST_AHEAD:
        raise FieldErrors([{"field": field, "detail": _BOUNDS}])
    return moment


@dataclass(frozen=True)
class Range:
    """A time range [since, until), and the rolling window it came from (None if custom)."""

    since: datetime
    until: datetime
    window: Window | ValueWindow | None = None

    def previous(self) -> Range:
        """The range of equal length that ends where this one starts."""
        return Range(self.since - (self.until - self.since), self.since, self.window)


def resolve_range(
    window: Window | ValueWindow | None,
    from_: datetime | None,
    to: datetime | None,
    now: datetime | None = None,
    *,
    growing: bool = False,
) -> Range:
    """Return the range a caller asked for: `from`/`to` if given, else the rolling `window`
    (default 30d) back to the top of its hour. Bad combinations, a bound before 2000 or
    more than a day ahead, and a range longer than ``LONGEST_RANGE`` are a 422 naming the
    field."""
    now = now or utcnow()
    if from_ is not None:
        check_moment("from", from_, now)
        until = check_moment("to", to, now) if to is not None else now
        if from_ >= until:
            raise FieldErrors([{"field": "from", "detail": "must be before `to`"}])
        # A page's open-ended range (no `to`) grows while it stays open: its live polls
        # (``growing``) are not refused for what was allowed when the page was drawn.
        if until - from_ > LONGEST_RANGE and not (growing and to is None):
            raise FieldErrors(
                [
                    {
                        "field": "from",
                        "detail": f"the range may cover {LONGEST_RANGE.days} days at most",
                    }
                ]
            )
        return Range(from_, until)
    if to is not None:
        raise FieldErrors([{"field": "to", "detail": "needs `from` as well"}])
    window = window or DEFAULT_WINDOW
    return Range(scoring.window_start(window, now), now, window)


def check_scale(metric: Metric, scale: int | None) -> None:
    """Refuse a CES query without a scale, and a scale the metric does not have."""
    if metric is Metric.CES and scale is None:
        raise FieldErrors([{"field": "scale", "detail": "is required for ces: 5 or 7"}])
    if scale is not None and scale not in SCALES[metric]:
        raise FieldErrors(
            [{"field": "scale", "detail": f"{scale} is not valid for {metric.value}"}]
        )


async def _score_rows(
    engine: AsyncEngine,
    span: Range,
    filters: Filters,
    metric: Metric,
    scale: int | None,
    *,
    group_by: str | None = None,
    interval: str | None = None,
) -> list[queries.Group]:
    check_scale(metric, scale)
    async with autocommit_connection(engine) as conn:
        return await queries.score_counts(
            conn,
            metric=metric.value,
            since=span.since,
            until=span.until,
            scale=scale,
            filters=filters,
            group_by=group_by,
            interval=interval,
        )


def _score_out(
    span: Range,
    filters: Filters,
    metric: Metric,
    scale: int | None,
    min_n: int,
    group_by: Dimension | None,
    rows: Sequence[queries.Group],
) -> ScoreOut:
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
            "window": span.window,
            "from": span.since,
            "to": span.until,
            "filters": dict(filters),
            "group_by": group_by,
            "groups": groups,
            **summarise(metric, total, scale, min_n),
        }
    )


async def scores(
    engine: AsyncEngine,
    span: Range,
    filters: Filters,
    metric: Metric,
    scale: int | None,
    min_n: int,
    group_by: Dimension | None = None,
) -> ScoreOut:
    """The score of ``metric`` over ``span``, and one per value of ``group_by`` if given."""
    if group_by is not None:
        (out,) = (
            await breakdowns(engine, span, filters, metric, scale, [group_by], min_n)
        ).values()
        return out
    rows = await _score_rows(engine, span, filters, metric, scale)
    return _score_out(span, filters, metric, scale, min_n, None, rows)


async def breakdowns(
    engine: AsyncEngine,
    span: Range,
    filters: Filters,
    metric: Metric,
    scale: int | None,
    dimensions: Sequence[Dimension],
    min_n: int,
) -> dict[Dimension, ScoreOut]:
    """The score of ``metric`` per value of each of ``dimensions`` (in ``groups``), each
    with its ``n``, margin and ``insufficient`` flag, and the total: one read of the range
    for every dimension (GROUPING SETS)."""
    check_scale(metric, scale)
    async with autocommit_connection(engine) as conn:
        found = await queries.grouped_counts(
            conn,
            metrics=[metric.value],
            since=span.since,
            until=span.until,
            scale=scale,
            filters=filters,
            sets=[(d.value,) for d in dimensions],
        )
    return {
        d: _score_out(
            span,
            filters,
            metric,
            scale,
            min_n,
            d,
            [queries.Group(r.keys[d.value], None, r.counts) for r in rows],
        )
        for d, rows in zip(dimensions, found, strict=True)
    }


async def trends(
    engine: AsyncEngine,
    span: Range,
    filters: Filters,
    series: Sequence[tuple[Metric, int | None]],
    min_n: int,
    interval: Interval = Interval.DAY,
) -> list[TimeseriesOut]:
    """:func:`trend` of each (metric, scale) of ``series``, from one statement: the counts
    by metric, scale and interval, summed over scales where a series has none (counts add
    up, so the sum is exact)."""
    for metric, scale in series:
        check_scale(metric, scale)
    check_hourly(span, interval)
    if not series:
        return []
    async with autocommit_connection(engine) as conn:
        (rows,) = await queries.grouped_counts(
            conn,
            metrics=sorted({m.value for m, _ in series}),
            since=span.since,
            until=span.until,
            scale=None,
            filters=filters,
            sets=[("metric", "scale", "start")],
            interval=interval.value,
        )
    out = []
    for metric, scale in series:
        by_start: dict[datetime, Counts] = {}
        for row in rows:
            if row.keys["metric"] == metric.value and scale in (None, row.keys["scale"]):
                by_start.setdefault(row.keys["start"], Counts()).add(row.counts)
        points = [
            Point(start=start, **summarise(metric, counts, scale, min_n))
            for start, counts in sorted(by_start.items())
        ]
        out.append(
            TimeseriesOut.model_validate(
                {
                    "metric": metric.value,
                    "interval": interval,
                    "from": span.since,
                    "to": span.until,
                    "filters": dict(filters),
                    "points": points,
                }
            )
        )
    return out


async def trend(
    engine: AsyncEngine,
    span: Range,
    filters: Filters,
    metric: Metric,
    scale: int | None,
    min_n: int,
    interval: Interval = Interval.DAY,
) -> TimeseriesOut:
    """One score of ``metric`` per interval (UTC), each with its ``n`` and margin; intervals
    without answers are left out. Hours only over ``HOURLY_UP_TO`` at most."""
    (out,) = await trends(engine, span, filters, [(metric, scale)], min_n, interval)
    return out


def check_hourly(span: Range, interval: Interval) -> None:
    """Refuse (422 naming ``interval``) hours over more than ``HOURLY_UP_TO``."""
    if interval is Interval.HOUR and span.until - span.since > HOURLY_UP_TO:
        raise FieldErrors(
            [
                {
                    "field": "interval",
                    "detail": f"hour covers at most {HOURLY_UP_TO.days} days: use day or a "
                    "shorter range",
                }
            ]
        )


def _headline_score(
    metric: Metric, scale: int | None, now: Counts, before: Counts, min_n: int
) -> HeadlineScore:
    current, previous = scoring.estimate(metric, now), scoring.estimate(metric, before)
    change = scoring.change(current, previous, min_n)
    return HeadlineScore(
        metric=metric.value,
        scale=scale,
        n=current.n,
        score=current.value,
        margin=current.margin,
        insufficient=current.n < min_n,
        previous=Previous(
            n=previous.n,
            score=previous.value,
            margin=previous.margin,
            insufficient=previous.n < min_n,
        ),
        change=ScoreChange(
            delta=change.delta, margin=change.margin, significant=change.significant
        ),
    )


async def headline(engine: AsyncEngine, span: Range, filters: Filters, min_n: int) -> HeadlineOut:
    """NPS, CSAT and CES over ``span``, each against the period of equal length before it.

    NPS and CSAT are always there (n = 0 when nobody answered). CES scales are never mixed:
    there is one entry per scale answered in either period, the most answered first.
    """
    before = span.previous()
    async with engine.connect() as conn:
        now_counts, before_counts = await queries.counts_by_metric(
            conn,
            ranges=[(span.since, span.until), (before.since, before.until)],
            metrics=[m.value for m in Metric],
            filters=filters,
        )

    def total(counts: dict[tuple[str, int], Counts], metric: Metric, scale: int | None) -> Counts:
        summed = Counts()
        for (m, s), c in counts.items():
            if m == metric and (scale is None or s == scale):
                summed.add(c)
        return summed

    entries = [
        _headline_score(m, None, total(now_counts, m, None), total(before_counts, m, None), min_n)
        for m in (Metric.NPS, Metric.CSAT)
    ]
    ces_scales = {s for m, s in (*now_counts, *before_counts) if m == Metric.CES}
    ces = [
        _headline_score(
            Metric.CES,
            s,
            total(now_counts, Metric.CES, s),
            total(before_counts, Metric.CES, s),
            min_n,
        )
        for s in sorted(ces_scales)
    ]
    ces.sort(key=lambda e: (-e.n, -e.previous.n))
    return HeadlineOut.model_validate(
        {
            "from": span.since,
            "to": span.until,
            "previous_from": before.since,
            "previous_to": before.until,
            "window": span.window,
            "filters": dict(filters),
            "scores": [*entries, *ces],
        }
    )


def _time_stats(row: Mapping[str, Any], prefix: str) -> TimeStats:
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


async def service_times(
    engine: AsyncEngine,
    span: Range,
    filters: Filters,
    group_by: str | None,
    sla_first_response: Mapping[str, float],
    sla_resolution: Mapping[str, float],
) -> ServiceTimesOut:
    """First-response and resolution times of tickets created in ``span``, and SLA breaches;
    ``filters`` and ``group_by`` are over channel and priority."""
    (out,) = (
        await service_times_by(
            engine, span, filters, [group_by], sla_first_response, sla_resolution
        )
    ).values()
    return out


async def service_times_by(
    engine: AsyncEngine,
    span: Range,
    filters: Filters,
    group_bys: Sequence[str | None],
    sla_first_response: Mapping[str, float],
    sla_resolution: Mapping[str, float],
) -> dict[str | None, ServiceTimesOut]:
    """:func:`service_times` by each of ``group_bys``, from one statement."""
    async with engine.connect() as conn:
        found = await queries.service_times(
            conn,
            since=span.since,
            until=span.until,
            now=utcnow(),
            filters=filters,
            group_bys=group_bys,
            sla_first_response=sla_first_response,
            sla_resolution=sla_resolution,
        )
    return {
        group_by: ServiceTimesOut.model_validate(
            {
                "from": span.since,
                "to": span.until,
                "filters": dict(filters),
                "group_by": group_by,
                "groups": [
                    ServiceTimesGroup(
                        group=row["grp"],
                        tickets=int(row["tickets"]),
                        first_response=_time_stats(row, "fr"),
                        resolution=_time_stats(row, "res"),
                    )
                    for row in rows
                ],
            }
        )
        for group_by, rows in zip(group_bys, found, strict=True)
    }


async def drivers(
    engine: AsyncEngine,
    span: Range,
    filters: Filters,
    nps: Awaitable[ScoreOut] | None = None,
) -> DriversOut:
    """The reasons given with NPS answers in ``span``, by category, with their shares.

    ``nps``: the NPS over the same span and filters (:func:`scores`), when the caller is
    computing it anyway; its counts size the categories. Read here otherwise. Each
    statement in autocommit: a lock on the reasons held into the score read could meet a
    rebuild taking the two the other way round."""
    async with autocommit_connection(engine) as conn:
        rows = await queries.reason_counts(
            conn, since=span.since, until=span.until, filters=filters
        )
        if nps is None:
            (total,) = await queries.score_counts(
                conn,
                metric="nps",
                since=span.since,
                until=span.until,
                scale=None,
                filters=filters,
            )
            sizes = {
                "promoter": total.counts.promoters,
                "passive": total.counts.passives,
                "detractor": total.counts.detractors,
            }
    if nps is not None:
        given = await nps
        sizes = {
            "promoter": given.promoters or 0,
            "passive": given.passives or 0,
            "detractor": given.detractors or 0,
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
            "from": span.since,
            "to": span.until,
            "filters": dict(filters),
            "categories": categories,
            "top_detractor_reasons": categories["detractor"].reasons[:5],
        }
    )


async def retention(
    engine: AsyncEngine, period: str, since: date | None, until: date | None
) -> RetentionOut:
    """Retention by ``period`` (week or month); default the last 12 periods."""
    until = until or utcnow().date() + timedelta(days=1)
    since = since or until - (timedelta(weeks=12) if period == "week" else timedelta(days=366))
    async with engine.connect() as conn:
        rows = await queries.retention(conn, period=period, since=since, until=until)
    return RetentionOut(
        period=period,
        points=[
            RetentionPoint(period_start=p, active=a, retained=r, rate=scoring.share(r, a))
            for p, a, r in rows
        ],
    )


TIME_GROUPS: Final[tuple[str | None, ...]] = (None, "priority", "channel")
"""The service-time groupings the dashboard shows: all tickets, by priority, by channel."""


@dataclass(frozen=True)
class Dashboard:
    """What the dashboard shows, each part from the function its ``/v1`` route calls."""

    headline: HeadlineOut
    metric: Metric
    """What ``breakdowns`` are of: the metric asked for, NPS when CES was never answered."""
    scale: int | None
    nps: ScoreOut
    breakdowns: dict[Dimension, ScoreOut]
    trends: list[tuple[tuple[Metric, int | None], TimeseriesOut]]
    drivers: DriversOut
    times: dict[str | None, ServiceTimesOut]
    retention: RetentionOut
    latest: LatestResponses | None
    value: ValueOut
    """Customer value over the range, with the order dimensions among ``filters`` only."""


def ces_scale(headline: HeadlineOut) -> int | None:
    """The CES scale answered most (the headline lists it first), if any."""
    return next((s.scale for s in headline.scores if s.metric == "ces"), None)


async def dashboard(
    engine: AsyncEngine,
    span: Range,
    filters: Filters,
    *,
    metric: Metric | None,
    breakdown_by: Sequence[Dimension],
    interval: Interval,
    retention_period: str,
    with_latest: bool,
    min_n: int,
    sla_first_response: Mapping[str, float],
    sla_resolution: Mapping[str, float],
    timings: Timings | None = None,
    value_of: Callable[[], Awaitable[ValueOut]] | None = None,
) -> Dashboard:
    """Every panel of the dashboard at once, each panel one statement on its own
    connection: the tiles (``headline``, both periods), then the trends of the metrics
    they list; breakdowns of ``metric`` by every one of ``breakdown_by``; drivers; service
    times by ``TIME_GROUPS`` (tickets filtered by channel only); retention; the latest
    answers if ``with_latest``; customer value (orders filtered by the order dimensions
    only), from ``value_of`` when given (the scorer's snapshot of a rolling window).
    ``timings`` gets each panel's wall time, by name."""
    timings = timings or Timings()
    ticket_filters = {k: filters[k] for k in ("channel",) if k in filters}
    order_filters = {k: filters[k] for k in ORDER_DIMENSIONS if k in filters}

    async def every_trend() -> dict[tuple[Metric, int | None], TimeseriesOut]:
        # Every series the tiles can list, read alongside them (one statement either way).
        series: list[tuple[Metric, int | None]] = [(Metric.NPS, None), (Metric.CSAT, None)]
        series += [(Metric.CES, s) for s in SCALES[Metric.CES]]
        got = await timings.run(
            "trends", trends(engine, span, filters, series, min_n, interval=interval)
        )
        return dict(zip(series, got, strict=True))

    async def broken_down() -> tuple[Metric, int | None, dict[Dimension, ScoreOut]]:
        chosen, scale = metric or Metric.NPS, None
        if chosen is Metric.CES:
            # Broken down on the CES scale answered most: the tiles know which.
            scale = ces_scale(await head)
            if scale is None:  # nobody answered CES in either period
                chosen = Metric.NPS
        got = await timings.run(
            "breakdowns",
            breakdowns(engine, span, filters, chosen, scale, breakdown_by, min_n),
        )
        return chosen, scale, got

    async def nps_split() -> ScoreOut | None:
        if metric in (None, Metric.NPS):
            return None  # the breakdowns' total is NPS's
        return await timings.run("nps", scores(engine, span, filters, Metric.NPS, None, min_n))

    async def nps() -> ScoreOut:
        _, _, by_dimension = await by
        return await split or by_dimension[breakdown_by[0]]

    async def newest() -> LatestResponses | None:
        if not with_latest:
            return None
        return await timings.run("latest", latest_responses(engine, None, filters))

    try:
        async with asyncio.TaskGroup() as group:
            head = group.create_task(timings.run("tiles", headline(engine, span, filters, min_n)))
            every = group.create_task(every_trend())
            by = group.create_task(broken_down())
            split = group.create_task(nps_split())
            total = group.create_task(nps())
            why = group.create_task(timings.run("drivers", drivers(engine, span, filters, total)))
            times = group.create_task(
                timings.run(
                    "service-times",
                    service_times_by(
                        engine,
                        span,
                        ticket_filters,
                        TIME_GROUPS,
                        sla_first_response,
                        sla_resolution,
                    ),
                )
            )
            kept = group.create_task(
                timings.run("retention", retention(engine, retention_period, None, None))
            )
            latest = group.create_task(newest())
            worth = group.create_task(
                timings.run(
                    "value",
                    value_of() if value_of else value(engine, span, order_filters, min_n),
                )
            )
    except BaseExceptionGroup as failed:
        # The first panel's own error, unwrapped: a refused parameter stays a 422 and the
        # database down stays the 503 page (the handlers know these, not a group).
        raise failed.exceptions[0] from None
    chosen, scale, by_dimension = by.result()
    series = [(Metric(s.metric), s.scale) for s in head.result().scores]
    return Dashboard(
        headline=head.result(),
        metric=chosen,
        scale=scale,
        nps=total.result(),
        breakdowns=by_dimension,
        trends=[(key, every.result()[key]) for key in series],
        drivers=why.result(),
        times=times.result(),
        retention=kept.result(),
        latest=latest.result(),
        value=worth.result(),
    )


def _encode(*parts: str) -> str:
    return base64.urlsafe_b64encode("|".join(parts).encode()).decode()


def _decode(cursor: str, parts: int) -> list[str]:
    try:
        values = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
    except (ValueError, UnicodeDecodeError):
        values = []
    if len(values) != parts:
        raise FieldErrors([{"field": "cursor", "detail": "is not a cursor this API gave"}])
    return values


def _page_cursor(row: Mapping[str, Any]) -> str:
    return _encode(row["occurred_at"].isoformat(), str(row["event_id"]))


# A cursor's time is an answer's own (which may be far in the past or the future, as its
# sender's clock said): only what Postgres and the look-back can hold is refused.
_CURSOR_EARLIEST: Final = datetime(1, 1, 2, tzinfo=UTC)
_CURSOR_LATEST: Final = datetime(9999, 12, 30, tzinfo=UTC)


def _cursor_moment(text: str) -> datetime:
    """A cursor's time: with its UTC offset, and one Postgres can hold."""
    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError("naive")
        if not _CURSOR_EARLIEST <= moment <= _CURSOR_LATEST:
            raise ValueError("out of range")
        return moment
    except (ValueError, OverflowError):
        raise FieldErrors(
            [{"field": "cursor", "detail": "is not a cursor this API gave"}]
        ) from None


def _after(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    if cursor is None:
        return None
    moment, event_id = _decode(cursor, 2)
    try:
        return _cursor_moment(moment), uuid.UUID(event_id)
    except ValueError:
        raise FieldErrors(
            [{"field": "cursor", "detail": "is not a cursor this API gave"}]
        ) from None


async def responses_page(
    engine: AsyncEngine,
    filters: Mapping[str, Any],
    since: datetime | None,
    until: datetime | None,
    cursor: str | None,
    limit: int,
) -> ResponsesPage:
    """Raw responses, newest first, ``limit`` at a time after ``cursor``."""
    after = _after(cursor)
    if since is not None:
        check_moment("from", since)
    if until is not None:
        check_moment("to", until)
    async with engine.connect() as conn:
        rows = await queries.list_responses(
            conn, filters=filters, since=since, until=until, after=after, limit=limit + 1
        )
    page = rows[:limit]
    return ResponsesPage(
        items=[StoredResponse.model_validate(r) for r in page],
        next_cursor=_page_cursor(page[-1]) if len(rows) > limit else None,
    )


async def latest_responses(
    engine: AsyncEngine,
    since_cursor: str | None,
    filters: Filters,
    limit: int = LIVE_LIMIT,
) -> LatestResponses:
    """Responses stored since ``since_cursor`` (without one, the newest ``limit`` stored in
    the last ``LIVE_FIRST_LOOKBACK``), newest stored first, for live updates. The call looks
    ``LIVE_SETTLE`` back before the cursor, so an item may repeat one returned before:
    recognise it by ``event_id``.

    The cursor returned is the newest item's ``stored_at`` or, with none, the database's
    time of the read: the next call then looks only ``LIVE_SETTLE`` back from there, as it
    would after an answer stored at that moment, so a filter that matches nothing never
    scans the whole table."""
    if since_cursor is None:
        stored_since = None
    else:
        (moment,) = _decode(since_cursor, 1)
        stored_since = _cursor_moment(moment) - LIVE_SETTLE
    async with engine.connect() as conn:
        rows, read_at = await queries.latest_responses(
            conn,
            stored_since=stored_since,
            look_back=LIVE_FIRST_LOOKBACK,
            filters=filters,
            limit=limit + 1,
        )
    page = rows[:limit]
    cursor = _encode((page[0]["stored_at"] if page else read_at).isoformat())
    return LatestResponses(
        items=[StoredResponse.model_validate(r) for r in page],
        cursor=cursor,
        truncated=len(rows) > limit,
    )


async def customer(
    engine: AsyncEngine, customer_id: str, limit: int = CUSTOMER_LIMIT, cursor: str | None = None
) -> CustomerOut:
    """A customer's answers and tickets, newest first, at most ``limit`` of each; answers
    after ``cursor`` (:func:`customer_cursor`) if given. An unknown (or erased) customer has
    none."""
    after = _after(cursor)
    async with engine.connect() as conn:
        answers = await queries.customer_responses(conn, customer_id, limit=limit + 1, after=after)
        tickets = await queries.customer_tickets(conn, customer_id, limit=limit + 1)
    return CustomerOut(
        customer_id=customer_id,
        responses=[CustomerResponse.model_validate(r) for r in answers[:limit]],
        more_responses=len(answers) > limit,
        tickets=[CustomerTicket.model_validate(t) for t in tickets[:limit]],
        more_tickets=len(tickets) > limit,
    )


def customer_cursor(found: CustomerOut) -> str | None:
    """The cursor of the customer's answers after those in ``found``, if there are more."""
    if not found.more_responses or not found.responses:
        return None
    last = found.responses[-1]
    return _page_cursor({"occurred_at": last.occurred_at, "event_id": last.event_id})


async def erase_customer(engine: AsyncEngine, hasher: Hasher, customer_id: str) -> Erasure:
    """Erase a customer from the scorer: delete their responses, pseudonymise the rest."""
    async with engine.begin() as conn:
        await erasure.lock(conn, "scorer", exclusive=True)
        pseudonym = await erasure.pseudonym_for(conn, hasher, "scorer", customer_id)
        result = await queries.erase_customer(conn, customer_id, pseudonym)
    return Erasure(**result)


NPS_CATEGORIES: Final[tuple[NpsCategory, ...]] = ("promoter", "passive", "detractor", "unrated")
_MONTH_YEARS: Final = Fraction(1, 12)
LIFETIME_MONTHS: Final = 12
"""Month pairs (m, m + 1) the lifetime pools: the last 12 complete ones before ``to``."""


def clv_year(until: datetime) -> Range:
    """The year CLV's inputs and revenue at risk are measured over: the 365 days before
    ``until``, from the top of that hour, as the 365d window ending at ``until``."""
    return Range(scoring.window_start(ValueWindow.YEAR, until), until)


def _amount(minor: Fraction | int, currency: str) -> str:
    """An amount in ``currency``'s notation, rounded half to even to its minor unit."""
    return money.json_amount(round(minor), currency)


def _months(until: datetime) -> list[date]:
    """The months m whose pair (m, m + 1) the lifetime pools: m + 1 at latest the last
    complete month before the month of ``until``."""
    last = _month_start(until)
    return [_add_months(last, k) for k in range(-LIFETIME_MONTHS - 1, -1)]


def _add_months(month: date, k: int) -> date:
    index = month.year * 12 + month.month - 1 + k
    return date(index // 12, index % 12 + 1, 1)


def _lifetime(
    months: Sequence[date], rows: Sequence[tuple[date, int, int]]
) -> tuple[Lifetime, Fraction | None]:
    active = sum(a for _, a, _ in rows)
    retained = sum(r for _, _, r in rows)
    years: Fraction | None = None
    capped = False
    if active:
        rate = Fraction(retained, active)
        if rate >= 1 or _MONTH_YEARS / (1 - rate) >= LIFETIME_CAP_YEARS:
            years, capped = Fraction(LIFETIME_CAP_YEARS), True
        else:
            years = _MONTH_YEARS / (1 - rate)
    lifetime = Lifetime(
        period="month",
        months=list(months),
        active=active,
        retained=retained,
        retention_rate=scoring.share(retained, active),
        expected_lifetime_years=None if years is None else float(years),
        cap_years=float(LIFETIME_CAP_YEARS),
        capped=capped,
    )
    return lifetime, years


@dataclass(frozen=True)
class _Spread:
    """Customers' revenue: how many, its sum, and the 95% margin of its mean (None below
    two customers)."""

    n: int
    total: int
    margin: Fraction | None

    @property
    def mean(self) -> Fraction | None:
        return Fraction(self.total, self.n) if self.n else None


def _spread(rows: Sequence[queries.CustomerTotals]) -> _Spread:
    n = sum(r.customers for r in rows)
    total = sum(r.revenue for r in rows)
    squares = sum(r.revenue_sq for r in rows)
    margin = None
    if n >= 2:
        variance = max(Fraction(0), (squares - Fraction(total * total, n)) / (n - 1))
        margin = Fraction(scoring.Z_95 * math.sqrt(variance / n))
    return _Spread(n, total, margin)


def _category(
    name: NpsCategory,
    rows: Sequence[queries.CustomerTotals],
    year_rows: Sequence[queries.CustomerTotals],
    currency: str,
    lifetime: Fraction | None,
    min_n: int,
) -> NpsCategoryValue:
    mine, year = _spread(rows), _spread(year_rows)
    repeaters = sum(r.repeaters for r in rows)
    interval = scoring.wilson_interval(repeaters, mine.n)
    per_customer, year_per_customer = mine.mean, year.mean
    return NpsCategoryValue(
        category=name,
        n=mine.n,
        insufficient=mine.n < min_n,
        orders=sum(r.orders for r in rows),
        revenue=_amount(mine.total, currency),
        revenue_minor=mine.total,
        revenue_per_customer=None if per_customer is None else _amount(per_customer, currency),
        revenue_per_customer_margin=None if mine.margin is None else _amount(mine.margin, currency),
        repeat_customers=repeaters,
        repurchase_rate=scoring.share(repeaters, mine.n),
        repurchase_rate_low=None if interval is None else interval[0],
        repurchase_rate_high=None if interval is None else interval[1],
        repurchase_rate_margin=None if interval is None else (interval[1] - interval[0]) / 2,
        clv_customers=year.n,
        clv_insufficient=year.n < min_n,
        clv_revenue_per_customer=None
        if year_per_customer is None
        else _amount(year_per_customer, currency),
        clv=None
        if year_per_customer is None or lifetime is None
        else _amount(year_per_customer * lifetime, currency),
        clv_margin=None
        if year.margin is None or lifetime is None
        else _amount(year.margin * lifetime, currency),
    )


def _figures(
    rows: Sequence[queries.CustomerTotals],
    year_rows: Sequence[queries.CustomerTotals],
    currency: str,
    lifetime: Fraction | None,
    min_n: int,
) -> dict[str, Any]:
    orders = sum(r.orders for r in rows)
    revenue = sum(r.revenue for r in rows)
    customers = sum(r.customers for r in rows)
    aov = Fraction(revenue, orders) if orders else None
    year_orders = sum(r.orders for r in year_rows)
    year_revenue = sum(r.revenue for r in year_rows)
    year_customers = sum(r.customers for r in year_rows)
    year_aov = Fraction(year_revenue, year_orders) if year_orders else None
    # Per year: the CLV year is one year long, whatever the range's length.
    frequency = Fraction(year_orders, year_customers) if year_customers else None
    clv = formula = None
    if year_aov is not None and frequency is not None and lifetime is not None:
        clv = year_aov * frequency * lifetime
        formula = (
            f"{_amount(year_aov, currency)} {currency} × {float(frequency):.4g} orders/year × "
            f"{float(lifetime):.4g} years ≈ {_amount(clv, currency)} {currency}"
        )
    return {
        "orders": orders,
        "revenue": _amount(revenue, currency),
        "revenue_minor": revenue,
        "customers": customers,
        "insufficient": customers < min_n,
        "average_order_value": None if aov is None else _amount(aov, currency),
        "clv_inputs": ClvInputs(
            orders=year_orders,
            revenue=_amount(year_revenue, currency),
            revenue_minor=year_revenue,
            customers=year_customers,
            average_order_value=None if year_aov is None else _amount(year_aov, currency),
            purchase_frequency=None if frequency is None else float(frequency),
        ),
        "clv": None if clv is None else _amount(clv, currency),
        "clv_formula": formula,
        "by_nps": [
            _category(
                name,
                [r for r in rows if r.category == name],
                [r for r in year_rows if r.category == name],
                currency,
                lifetime,
                min_n,
            )
            for name in NPS_CATEGORIES
        ],
    }


def _month_start(moment: datetime) -> date:
    return moment.astimezone(UTC).date().replace(day=1)


@dataclass(frozen=True)
class YearTotals:
    """The per-customer totals of a CLV year (``clv_year(until)``), with the filters and
    ``group_by`` they were read with: every answer ending at ``until`` with those can reuse
    them (the snapshots of one instant do)."""

    until: datetime
    filters: Mapping[str, str]
    group_by: ValueDimension | None
    rows: list[queries.CustomerTotals]


async def value(
    engine: AsyncEngine,
    span: Range,
    filters: Filters,
    min_n: int,
    group_by: ValueDimension | None = None,
    *,
    as_of: datetime | None = None,
    snapshot: bool = False,
) -> ValueOut:
    """Customer value over ``span`` per currency: orders, net revenue, customers and
    average order value in the range; CLV from the CLV year (``clv_year``): its average
    order value and orders per customer, times the expected lifetime (from the monthly
    retention of the 12 complete month pairs before ``span.until``); each split by NPS
    category at the end of the range, and one set per value of ``group_by``; and revenue at
    risk (detractors' CLV year). ``filters`` are over order dimensions
    (``models.ORDER_DIMENSIONS``). ``as_of`` (default now) and ``snapshot`` only label the
    answer."""
    found, _ = await value_and_year(
        engine, span, filters, min_n, group_by, as_of=as_of, snapshot=snapshot
    )
    return found


async def value_and_year(
    engine: AsyncEngine,
    span: Range,
    filters: Filters,
    min_n: int,
    group_by: ValueDimension | None = None,
    *,
    as_of: datetime | None = None,
    snapshot: bool = False,
    year: YearTotals | None = None,
) -> tuple[ValueOut, YearTotals]:
    """:func:`value`, and the CLV year's totals it used: ``year`` if given (they must end at
    ``span.until`` with these filters and ``group_by``), else read, or the range's own when
    the range is the CLV year. Three statements at most, run concurrently."""
    as_of = as_of or utcnow()
    year_span = clv_year(span.until)
    assert year is None or (year.until, year.filters, year.group_by) == (
        span.until,
        filters,
        group_by,
    )
    months = _months(span.until)

    async def totals(since: datetime) -> list[queries.CustomerTotals]:
        async with engine.connect() as conn:
            return await queries.customer_totals(
                conn,
                since=since,
                until=span.until,
                filters=filters,
                group_by=None if group_by is None else group_by.value,
            )

    async def in_year() -> list[queries.CustomerTotals]:
        if year is not None:
            return year.rows
        if span.since == year_span.since:
            return await in_range
        return await totals(year_span.since)

    async def kept() -> list[tuple[date, int, int]]:
        async with engine.connect() as conn:
            return await queries.retention(
                conn, period="month", since=months[0], until=_add_months(months[-1], 1)
            )

    in_range = asyncio.ensure_future(totals(span.since))
    rows, year_rows, retained = await asyncio.gather(in_range, in_year(), kept())
    lifetime, lifetime_years = _lifetime(months, retained)
    currencies = []
    for currency in sorted({r.currency for r in rows} | {r.currency for r in year_rows}):
        mine = [r for r in rows if r.currency == currency]
        mine_year = [r for r in year_rows if r.currency == currency]
        whole = [r for r in mine if r.whole]
        whole_year = [r for r in mine_year if r.whole]
        groups = None
        if group_by is not None:
            names = sorted({r.group or "" for r in mine if not r.whole})
            groups = [
                GroupValue(
                    group=name,
                    **_figures(
                        [r for r in mine if not r.whole and (r.group or "") == name],
                        [r for r in mine_year if not r.whole and (r.group or "") == name],
                        currency,
                        lifetime_years,
                        min_n,
                    ),
                )
                for name in names
            ]
        detractors = [r for r in whole_year if r.category == "detractor"]
        risk = sum(r.revenue for r in detractors)
        currencies.append(
            CurrencyValue(
                currency=currency,
                revenue_at_risk=RevenueAtRisk(
                    from_=year_span.since,
                    to=span.until,
                    customers=sum(r.customers for r in detractors),
                    revenue=_amount(risk, currency),
                    revenue_minor=risk,
                ),
                groups=groups,
                **_figures(whole, whole_year, currency, lifetime_years, min_n),
            )
        )
    found = ValueOut(
        from_=span.since,
        to=span.until,
        window=None if span.window is None else ValueWindow(span.window),
        as_of=as_of,
        snapshot=snapshot,
        filters=dict(filters),
        group_by=group_by,
        clv_year=ClvYear(from_=year_span.since, to=span.until),
        min_n=min_n,
        formulas=VALUE_FORMULAS,
        lifetime=lifetime,
        currencies=currencies,
    )
    return found, YearTotals(span.until, dict(filters), group_by, year_rows)
