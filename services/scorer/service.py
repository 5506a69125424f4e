"""What the scorer answers, between the routes and the SQL: every `/v1` route and every
dashboard page calls these functions, so the two can never disagree.

They take plain typed arguments (an engine, a :class:`Range`, segment filters, a metric,
``min_n`` ...) and return the response schemas. The maths is ``shared.scoring``'s; the SQL
is ``queries``'.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from sqlalchemy.ext.asyncio import AsyncEngine

from services.scorer import queries
from services.scorer.schemas import (
    CategoryDrivers,
    CustomerOut,
    CustomerResponse,
    CustomerTicket,
    Dimension,
    DriversOut,
    Erasure,
    GroupScore,
    HeadlineOut,
    HeadlineScore,
    Interval,
    LatestResponses,
    Point,
    Previous,
    ReasonShare,
    ResponsesPage,
    RetentionOut,
    RetentionPoint,
    ScoreChange,
    ScoreOut,
    ServiceTimesGroup,
    ServiceTimesOut,
    StoredResponse,
    TimeseriesOut,
    TimeStats,
    Window,
)
from shared import erasure, scoring
from shared.events import SCALES, Metric, utcnow
from shared.http import FieldErrors
from shared.privacy import Hasher
from shared.scoring import Counts, summarise

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
    window: Window | None = None

    def previous(self) -> Range:
        """The range of equal length that ends where this one starts."""
        return Range(self.since - (self.until - self.since), self.since, self.window)


def resolve_range(
    window: Window | None, from_: datetime | None, to: datetime | None, now: datetime | None = None
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
        if until - from_ > LONGEST_RANGE:
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
    async with engine.connect() as conn:
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
    rows = await _score_rows(
        engine, span, filters, metric, scale, group_by=group_by.value if group_by else None
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
            "window": span.window,
            "from": span.since,
            "to": span.until,
            "filters": dict(filters),
            "group_by": group_by,
            "groups": groups,
            **summarise(metric, total, scale, min_n),
        }
    )


async def breakdown(
    engine: AsyncEngine,
    span: Range,
    filters: Filters,
    metric: Metric,
    scale: int | None,
    dimension: Dimension,
    min_n: int,
) -> ScoreOut:
    """The score of ``metric`` per value of ``dimension`` (in ``groups``), each with its
    ``n``, margin and ``insufficient`` flag, and the total."""
    return await scores(engine, span, filters, metric, scale, min_n, group_by=dimension)


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
    rows = await _score_rows(engine, span, filters, metric, scale, interval=interval.value)
    points = [Point(start=r.start, **summarise(metric, r.counts, scale, min_n)) for r in rows]
    return TimeseriesOut.model_validate(
        {
            "metric": metric.value,
            "interval": interval,
            "from": span.since,
            "to": span.until,
            "filters": dict(filters),
            "points": points,
        }
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
        now_counts = await queries.counts_by_metric(
            conn, since=span.since, until=span.until, filters=filters
        )
        before_counts = await queries.counts_by_metric(
            conn, since=before.since, until=before.until, filters=filters
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
    async with engine.connect() as conn:
        rows = await queries.service_times(
            conn,
            since=span.since,
            until=span.until,
            now=utcnow(),
            filters=filters,
            group_by=group_by,
            sla_first_response=sla_first_response,
            sla_resolution=sla_resolution,
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
        {
            "from": span.since,
            "to": span.until,
            "filters": dict(filters),
            "group_by": group_by,
            "groups": groups,
        }
    )


async def drivers(engine: AsyncEngine, span: Range, filters: Filters) -> DriversOut:
    """The reasons given with NPS answers in ``span``, by category, with their shares."""
    async with engine.connect() as conn:
        (total,) = await queries.score_counts(
            conn, metric="nps", since=span.since, until=span.until, scale=None, filters=filters
        )
        rows = await queries.reason_counts(
            conn, since=span.since, until=span.until, filters=filters
        )
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


def _cursor_moment(text: str) -> datetime:
    """A cursor's time: with its UTC offset and within the years a range may cover."""
    try:
        moment = datetime.fromisoformat(text)
        return check_moment("cursor", moment)
    except (ValueError, FieldErrors):
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
