"""The dashboard's URL: every filter, range and view choice lives in the query string, so a
page can be shared, bookmarked and walked back with the browser's back button.

``parse`` reads it into a :class:`View` or raises a 422 ``HTTPException`` naming the bad
parameter (the pages answer it with their error page). Links are built from the view's
:meth:`View.params`, so a drill-down carries the same range and filters.
"""

from __future__ import annotations

import functools
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Final, TypeVar
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

from fastapi import HTTPException

from services.scorer.schemas import Dimension, Interval, Window
from services.scorer.service import Range, resolve_range
from shared.events import Channel, Metric, SurveyType, utcnow
from shared.http import FieldErrors

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
_TZ_MAX: Final = 64
# In the system's zone list but no place's zone: a build default and the machine's own.
_NOT_ZONES: Final = frozenset({"Factory", "localtime"})

T = TypeVar("T")


class BadParameter(HTTPException):
    """A query parameter a page cannot use: its 422, naming the parameter."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(422, f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


def bad(field_name: str, detail: str) -> BadParameter:
    """The 422 a page answers for a query parameter it cannot use."""
    return BadParameter(field_name, detail)


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
    # A custom bound off the whole UTC hour was moved back to it (scores are hourly).
    shifted: bool = False

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


@functools.cache
def time_zones() -> frozenset[str]:
    """The IANA zone names the system knows (``posixrules``, ``right/…`` are not among them)."""
    return frozenset(zoneinfo.available_timezones() - _NOT_ZONES)


def _zone(query: Mapping[str, str]) -> tuple[str | None, ZoneInfo | None]:
    name = _one(query, "tz", _TZ_MAX)
    if name is None:
        return None, None
    if name not in time_zones():
        raise bad("tz", "is not a time zone (say Asia/Tokyo)")
    return name, ZoneInfo(name)


def _moment(name: str, value: str, zone: ZoneInfo | None, *, end: bool) -> datetime:
    """A date (the whole day in ``zone``, UTC without one) or a datetime with its offset."""
    try:
        day = date.fromisoformat(value)
    except ValueError:
        pass
    else:
        start = datetime.combine(day, time(), tzinfo=zone or UTC)
        try:
            return start + timedelta(days=1) if end else start
        except OverflowError:  # the last day of year 9999
            raise bad(name, "must lie between 2000-01-01 and a day from now (UTC)") from None
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


def _on_the_hour(moment: datetime) -> datetime:
    """``moment`` moved back to the start of its UTC hour, the scores' resolution."""
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _custom_range(
    since: datetime, until: datetime | None, now: datetime, *, growing: bool = False
) -> tuple[Range, bool]:
    """The range from the bounds given (``until`` None: now), each bound given moved back to
    its whole UTC hour: scores are counted by the hour, so a bound inside one (a day in
    Asia/Kolkata starts at :30 UTC) would count another range than the answers listed."""
    try:
        asked = resolve_range(None, since, until, now, growing=growing)
    except FieldErrors as exc:
        error = exc.errors[0]
        raise bad(error["field"], error["detail"]) from None
    start = _on_the_hour(asked.since)
    end = asked.until if until is None else _on_the_hour(asked.until)
    if end <= start:
        end = start + timedelta(hours=1)
    return Range(start, end), (start, end) != (asked.since, asked.until)


def parse_cursor(query: Mapping[str, str]) -> str | None:
    """The ``cursor`` parameter alone (a page with no range: a customer's)."""
    return _one(query, "cursor", CURSOR_MAX)


def parse(query: Mapping[str, str], now: datetime | None = None, *, growing: bool = False) -> View:
    """Read a dashboard URL's query. Unknown parameters (``lang``) are left alone."""
    now = now or utcnow()
    tz, zone = _zone(query)
    since_text, until_text = _one(query, "from", 40), _one(query, "to", 40)
    window: Window | None = None
    shifted = False
    if since_text is None and until_text is None:
        window = _choice(query, "window", WINDOWS, Window.MONTH)
        span = resolve_range(window, None, None, now)
    else:
        if since_text is None:
            raise bad("to", "needs from as well")
        since = _moment("from", since_text, zone, end=False)
        until = _moment("to", until_text, zone, end=True) if until_text else None
        span, shifted = _custom_range(since, until, now, growing=growing)
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
        shifted=shifted,
    )
