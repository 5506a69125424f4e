"""The dashboard's URL: every filter, range and view choice lives in the query string, so a
page can be shared, bookmarked and walked back with the browser's back button.

``parse`` reads it into a :class:`View` or raises a 422 ``HTTPException`` naming the bad
parameter (the pages answer it with their error page). Links are built from the view's
:meth:`View.params`, so a drill-down carries the same range and filters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from typing import Final, TypeVar
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import HTTPException

from services.scorer.schemas import Dimension, Interval, Window
from services.scorer.service import Range, resolve_range
from shared.events import Channel, Metric, SurveyType, utcnow

WINDOWS: Final = (Window.DAY, Window.WEEK, Window.MONTH, Window.QUARTER)
INTERVALS: Final = (Interval.HOUR, Interval.DAY, Interval.WEEK)
# Hours are offered up to a week: past that a chart of hours is a smear.
HOURS_UP_TO: Final = timedelta(days=7)
PERIODS: Final = ("month", "week")
# The segment filters, in the order the filter bar shows them.
FILTERS: Final = (
    Dimension.CHANNEL,
    Dimension.TOUCHPOINT,
    Dimension.LOCATION,
    Dimension.PRODUCT,
    Dimension.BUSINESS_UNIT,
    Dimension.SURVEY_TYPE,
)
# The breakdown tables: a segment in one of them is a link that filters the whole page.
BREAKDOWNS: Final = (
    Dimension.CHANNEL,
    Dimension.TOUCHPOINT,
    Dimension.LOCATION,
    Dimension.PRODUCT,
    Dimension.BUSINESS_UNIT,
)
_CHOICES: Final[Mapping[Dimension, frozenset[str]]] = {
    Dimension.CHANNEL: frozenset(c.value for c in Channel),
    Dimension.SURVEY_TYPE: frozenset(s.value for s in SurveyType),
}
VALUE_MAX: Final = 200  # a segment value longer than this is no segment anyone has
CUSTOMER_ID_MAX: Final = 256  # as the events' customer_id
CURSOR_MAX: Final = 200
LONGEST_RANGE: Final = timedelta(days=400)
_TZ_MAX: Final = 64

T = TypeVar("T")


def bad(field_name: str, detail: str) -> HTTPException:
    """The 422 a page answers for a query parameter it cannot use."""
    return HTTPException(422, f"{field_name}: {detail}")


@dataclass(frozen=True)
class View:
    """What a dashboard URL asks for: a range, segment filters and the view's choices."""

    span: Range
    window: Window | None
    since_date: str | None  # the custom range as given (shown back in the form)
    until_date: str | None
    tz: str | None
    filters: Mapping[str, str] = field(default_factory=dict)
    interval: Interval = Interval.DAY
    metric: Metric | None = None  # the breakdowns' metric, or the answers' metric filter
    period: str = "month"
    customer_id: str | None = None
    cursor: str | None = None

    @property
    def custom(self) -> bool:
        return self.window is None

    @property
    def intervals(self) -> tuple[Interval, ...]:
        """The trend resolutions offered for this range (hours only up to a week)."""
        if self.span.until - self.span.since > HOURS_UP_TO:
            return tuple(i for i in INTERVALS if i is not Interval.HOUR)
        return INTERVALS

    def range_params(self) -> dict[str, str]:
        """The range as query parameters: ``window``, or ``from``/``to`` (and ``tz``)."""
        if self.window is not None:
            return {"window": self.window.value}
        params = {"from": self.since_date or "", "to": self.until_date or ""}
        if self.tz:
            params["tz"] = self.tz
        return {k: v for k, v in params.items() if v}

    def params(self, **changes: str | None) -> dict[str, str]:
        """The range and filters (what a drill-down keeps), with ``changes`` (None drops)."""
        params = {**self.range_params(), **self.filters}
        for key, value in changes.items():
            if value is None:
                params.pop(key, None)
            else:
                params[key] = value
        return params

    def url(self, path: str, **changes: str | None) -> str:
        """``path`` with this view's range and filters, changed by ``changes``."""
        query = urlencode(self.params(**changes))
        return path + ("?" + query if query else "")

    def with_filter(self, dimension: str, value: str | None) -> View:
        filters = dict(self.filters)
        if value is None:
            filters.pop(dimension, None)
        else:
            filters[dimension] = value
        return replace(self, filters=filters)


def customer_url(customer_id: str) -> str:
    """The customer's page; their id is path-escaped (any character, ``/`` included)."""
    return "/dashboard/customers/" + quote(customer_id, safe="")


def _one(query: Mapping[str, str], name: str, limit: int = VALUE_MAX) -> str | None:
    value = query.get(name)
    if value is None or not value.strip():
        return None
    if len(value) > limit:
        raise bad(name, f"is longer than {limit} characters")
    return value


def _zone(query: Mapping[str, str]) -> tuple[str | None, ZoneInfo | None]:
    name = _one(query, "tz", _TZ_MAX)
    if name is None:
        return None, None
    try:
        return name, ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise bad("tz", "is not a time zone (say Asia/Tokyo)") from None


def _moment(name: str, value: str, zone: ZoneInfo | None, *, end: bool) -> datetime:
    """A date (the whole day in ``zone``, UTC without one) or a datetime with its offset."""
    try:
        day = date.fromisoformat(value)
    except ValueError:
        pass
    else:
        start = datetime.combine(day, time(), tzinfo=zone or ZoneInfo("UTC"))
        return start + timedelta(days=1) if end else start
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise bad(name, "is not a date (YYYY-MM-DD)") from None
    if moment.tzinfo is None:
        if zone is None:
            raise bad(name, "needs a UTC offset, or tz")
        moment = moment.replace(tzinfo=zone)
    return moment


def _choice(query: Mapping[str, str], name: str, options: tuple[T, ...], default: T) -> T:
    value = _one(query, name)
    if value is None:
        return default
    for option in options:
        if str(option) == value:
            return option
    allowed = ", ".join(str(o) for o in options)
    raise bad(name, f"must be one of {allowed}")


def _interval(query: Mapping[str, str], span: Range) -> Interval:
    """The trend's resolution: as asked, hours for a day or less (so a new answer shows at
    once), days otherwise; hours never over more than a week."""
    short = span.until - span.since <= timedelta(days=1, hours=1)
    chosen = _choice(query, "interval", INTERVALS, Interval.HOUR if short else Interval.DAY)
    if chosen is Interval.HOUR and span.until - span.since > HOURS_UP_TO:
        return Interval.DAY
    return chosen


def parse(query: Mapping[str, str], now: datetime | None = None) -> View:
    """Read a dashboard URL's query. Unknown parameters (``lang``) are left alone."""
    now = now or utcnow()
    tz, zone = _zone(query)
    since_text, until_text = _one(query, "from", 40), _one(query, "to", 40)
    window: Window | None = None
    if since_text is None and until_text is None:
        window = _choice(query, "window", WINDOWS, Window.MONTH)
        span = resolve_range(window, None, None, now)
    else:
        if since_text is None:
            raise bad("to", "needs from as well")
        since = _moment("from", since_text, zone, end=False)
        until = _moment("to", until_text, zone, end=True) if until_text else now
        if since >= until:
            raise bad("from", "must be before to")
        if until - since > LONGEST_RANGE:
            raise bad("from", f"the range may cover at most {LONGEST_RANGE.days} days")
        span = Range(since, until)
    filters: dict[str, str] = {}
    for dimension in FILTERS:
        value = _one(query, dimension.value)
        if value is None:
            continue
        choices = _CHOICES.get(dimension)
        if choices is not None and value not in choices:
            raise bad(dimension.value, f"must be one of {', '.join(sorted(choices))}")
        filters[dimension.value] = value
    metric_text = _one(query, "metric")
    metric = None
    if metric_text is not None:
        metric = _choice(query, "metric", tuple(Metric), Metric.NPS)
    return View(
        span=span,
        window=window,
        since_date=since_text,
        until_date=until_text,
        tz=tz,
        filters=filters,
        interval=_interval(query, span),
        metric=metric,
        period=_choice(query, "period", PERIODS, "month"),
        customer_id=_one(query, "customer_id", CUSTOMER_ID_MAX),
        cursor=_one(query, "cursor", CURSOR_MAX),
    )
