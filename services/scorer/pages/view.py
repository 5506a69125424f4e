"""What the dashboard's templates show, made from the service's answers: numbers formatted
in the viewer's language, tiles, chart series, answer cards, bar geometry.

Pure functions of the schemas (no I/O), so the page, the live JSON and the tests agree.
Every number a template shows keeps its exact value in a ``<data value>`` attribute too
(``Number``): cxloop.js re-formats it with ``Intl`` and the tests read it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from babel.dates import format_skeleton
from markupsafe import Markup, escape

from services.scorer.pages.query import customer_url
from services.scorer.schemas import (
    CustomerResponse,
    HeadlineOut,
    HeadlineScore,
    Interval,
    ScoreOut,
    StoredResponse,
    TimeseriesOut,
)
from services.scorer.service import Dashboard, ces_scale
from shared.events import Metric, nps_category
from shared.scoring import EASY_FROM, SATISFIED_FROM
from shared.settings import DEFAULT_REASON_CODES
from shared.web.i18n import Lang, format_money, format_number

Translate = Callable[..., str]

# Decimals shown for a score, its margin and its change, per metric.
SCORE_DECIMALS: Final[Mapping[str, int]] = {"nps": 0, "csat": 1, "ces": 2}
AXIS_DECIMALS: Final[Mapping[str, int]] = {"nps": 0, "csat": 0, "ces": 1}
DELTA_DECIMALS: Final[Mapping[str, int]] = {"nps": 1, "csat": 1, "ces": 2}
MARGIN_DECIMALS: Final[Mapping[str, int]] = {"nps": 1, "csat": 1, "ces": 2}
KNOWN_REASONS: Final = frozenset(DEFAULT_REASON_CODES)
KNOWN_CHANNELS: Final = frozenset(
    ("web", "sms", "call_center", "email", "in_app", "chat", "social", "in_person", "other")
)
KNOWN_SURVEY_TYPES: Final = frozenset(("relationship", "transactional", "in_the_moment"))
# Languages a comment may be marked as (lang=""), so CJK text gets the right glyphs.
_COMMENT_LANGS: Final = frozenset(
    ("ja", "en", "zh", "ko", "fr", "de", "es", "pt", "it", "nl", "th", "vi", "id", "ar", "he")
)


@dataclass(frozen=True)
class Number:
    """A number for a template: its exact value (``None``: nothing to show) and its text."""

    value: float | int | None
    text: str
    decimals: int = 0
    signed: bool = False

    @property
    def known(self) -> bool:
        return self.value is not None


def number_html(
    n: Number, field: str | None = None, id: str | None = None, cls: str = ""
) -> Markup:
    """``<data class="num" value="…">text</data>``: the exact value for cxloop.js (Intl) and
    the tests, the server's text for a page without scripts. A function rather than a
    template macro: a dashboard shows hundreds of numbers."""
    attrs = [f'class="num {escape(cls)}"' if cls else 'class="num"']
    if n.value is not None:
        attrs.append(f'value="{n.value!r}"')
    attrs.append(f'data-decimals="{n.decimals}"')
    if n.signed:
        attrs.append("data-signed")
    if field:
        attrs.append(f'data-field="{escape(field)}"')
    if id:
        attrs.append(f'id="{escape(id)}"')
    # Every part interpolated is escaped above or a number.
    return Markup(f"<data {' '.join(attrs)}>{escape(n.text)}</data>")  # noqa: S704


class Formats:
    """Numbers and durations in one language, as the server writes them before cxloop.js
    re-formats them with ``Intl`` (the same CLDR rules, so the text does not jump)."""

    def __init__(self, lang: Lang, t: Translate) -> None:
        self.lang = lang
        self.t = t

    def number(
        self, value: float | int | None, decimals: int = 0, *, signed: bool = False
    ) -> Number:
        if value is None:
            return Number(None, "—", decimals, signed)
        return Number(
            value, format_number(value, self.lang, decimals, signed=signed), decimals, signed
        )

    def count(self, value: int | None) -> Number:
        return self.number(value, 0)

    def score(self, metric: str, value: float | None) -> Number:
        return self.number(value, SCORE_DECIMALS[metric], signed=metric == "nps")

    def margin(self, metric: str, value: float | None) -> Number:
        return self.number(value, MARGIN_DECIMALS[metric])

    def delta(self, metric: str, value: float | None) -> Number:
        return self.number(value, DELTA_DECIMALS[metric], signed=True)

    def share(self, value: float | None, decimals: int = 0) -> Number:
        """A percentage given 0–100 (the API's shares and rates)."""
        return self.number(value, decimals)

    def money(self, amount: str | None, currency: str) -> str:
        """An amount from the API (a decimal string) in the currency's format: "¥120,000".
        Plain text, not a ``<data>`` number: cxloop.js would drop the currency sign."""
        return "—" if amount is None else format_money(amount, currency, self.lang)

    def month(self, day: date) -> str:
        """A calendar month: "Dec 2026", "2026年12月"."""
        return str(format_skeleton("yMMM", day, locale=self.lang))

    def duration(self, seconds: float | None) -> str:
        if seconds is None:
            return "—"
        whole = max(0, round(seconds))
        if whole < 60:
            return self.t("dash.duration.seconds", s=format_number(whole, self.lang))
        minutes = round(whole / 60)
        if minutes < 60:
            return self.t("dash.duration.minutes", m=format_number(minutes, self.lang))
        hours, minutes = divmod(minutes, 60)
        if hours < 48:
            return self.t(
                "dash.duration.hours",
                h=format_number(hours, self.lang),
                m=format_number(minutes, self.lang),
            )
        days, hours = divmod(hours, 24)
        return self.t(
            "dash.duration.days",
            d=format_number(days, self.lang),
            h=format_number(hours, self.lang),
        )


def in_utc(moment: datetime) -> datetime:
    """``moment`` in UTC (a range's bound keeps the zone it was given in)."""
    return moment.astimezone(UTC)


def segment_label(t: Translate, dimension: str, value: str | None) -> str:
    """A segment's name: channels and survey types translated, free text (touchpoints,
    locations, products) as given; an absent value says so."""
    if not value:
        return t("dash.segment.none")
    if dimension == "channel" and value in KNOWN_CHANNELS:
        return t("dash.channel." + value)
    if dimension == "survey_type" and value in KNOWN_SURVEY_TYPES:
        return t("dash.survey_type." + value)
    return value


def reason_label(t: Translate, reason: str) -> str:
    return t("dash.reason." + reason) if reason in KNOWN_REASONS else reason


def metric_label(t: Translate, metric: str, scale: int | None = None) -> str:
    if metric == "ces" and scale is not None:
        return t("dash.metric.ces_scale", scale=str(scale))
    return t("dash.metric." + metric)


# ---- Tiles -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """The NPS split: each category's count and share, and where its bar segment starts."""

    promoters: int
    passives: int
    detractors: int
    promoter_share: float
    passive_share: float
    detractor_share: float

    @property
    def passive_x(self) -> float:
        return self.promoter_share

    @property
    def detractor_x(self) -> float:
        return self.promoter_share + self.passive_share


def split_of(nps: ScoreOut | Mapping[str, Any]) -> Split | None:
    """The split of an NPS score (``None`` without answers)."""
    body = nps.model_dump() if isinstance(nps, ScoreOut) else nps
    if not body.get("n"):
        return None
    return Split(
        promoters=int(body["promoters"] or 0),
        passives=int(body["passives"] or 0),
        detractors=int(body["detractors"] or 0),
        promoter_share=float(body["promoter_share"] or 0.0),
        passive_share=float(body["passive_share"] or 0.0),
        detractor_share=float(body["detractor_share"] or 0.0),
    )


@dataclass(frozen=True)
class Tile:
    """One headline tile: a metric's score over the range against the previous period."""

    key: str  # "nps", "csat", "ces7"
    metric: str
    scale: int | None
    score: HeadlineScore
    split: Split | None


def tile_key(entry: HeadlineScore) -> str:
    return entry.metric + (str(entry.scale) if entry.scale is not None else "")


def tiles(headline: HeadlineOut, nps: ScoreOut | None) -> list[Tile]:
    return [
        Tile(
            key=tile_key(entry),
            metric=entry.metric,
            scale=entry.scale,
            score=entry,
            split=split_of(nps) if entry.metric == "nps" and nps is not None else None,
        )
        for entry in headline.scores
    ]


def live_scores(headline: HeadlineOut, nps: ScoreOut) -> list[dict[str, Any]]:
    """The tiles' numbers for the live JSON (dashboard.js updates the tiles with them)."""
    split = split_of(nps)
    out = []
    for entry in headline.scores:
        item: dict[str, Any] = {
            "key": tile_key(entry),
            "score": entry.score,
            "margin": entry.margin,
            "n": entry.n,
            "insufficient": entry.insufficient,
            "delta": entry.change.delta,
            "significant": entry.change.significant,
            "previous_n": entry.previous.n,
        }
        if entry.metric == "nps" and split is not None:
            item["split"] = {
                "promoters": split.promoters,
                "passives": split.passives,
                "detractors": split.detractors,
                "promoter_share": split.promoter_share,
                "passive_share": split.passive_share,
                "detractor_share": split.detractor_share,
            }
        out.append(item)
    return out


def dashboard(got: Dashboard) -> dict[str, Any]:
    """The dashboard template's context from the service's answers."""
    return {
        "headline": got.headline,
        "tiles": tiles(got.headline, got.nps),
        "nps": got.nps,
        "metric": got.metric,
        "scale": got.scale,
        "metric_options": [
            Metric.NPS,
            Metric.CSAT,
            *([Metric.CES] if ces_scale(got.headline) else []),
        ],
        "breakdowns": got.breakdowns,
        "trends": got.trends,
        "drivers": got.drivers,
        "times_all": got.times[None],
        "times_priority": got.times["priority"],
        "times_channel": got.times["channel"],
        "retention": got.retention,
        "latest": got.latest,
        "value": got.value,
        "answered": any(s.n or s.previous.n for s in got.headline.scores),
    }


# ---- Answers ---------------------------------------------------------------------------------


def category(metric: str, scale: int, score: int) -> str:
    """How an answer reads: promoter/passive/detractor for NPS; for CSAT and CES
    good (satisfied, easy), neutral or poor."""
    if metric == "nps":
        return nps_category(score).value
    good_from = SATISFIED_FROM if metric == "csat" else EASY_FROM.get(scale, scale)
    if score >= good_from:
        return "promoter"
    return "passive" if score == good_from - 1 else "detractor"


def comment_lang(locale: str | None) -> str | None:
    if not locale:
        return None
    primary = locale.replace("_", "-").split("-", 1)[0].lower()
    return primary if primary in _COMMENT_LANGS else None


def answer(
    t: Translate, item: StoredResponse | CustomerResponse, *, with_customer: bool = True
) -> dict[str, Any]:
    """An answer card's content (the template and dashboard.js draw the same fields)."""
    where = [segment_label(t, "channel", item.channel), item.touchpoint]
    location = getattr(item, "location", None)
    if location:
        where.append(location)
    locale = getattr(item, "locale", None)
    card: dict[str, Any] = {
        "event_id": str(item.event_id),
        "category": category(item.metric, item.scale, item.score),
        "score_text": t(
            "dash.answer.score",
            metric=metric_label(t, item.metric),
            score=str(item.score),
            scale=str(item.scale),
        ),
        "where": " · ".join(where),
        "occurred_at": item.occurred_at.astimezone(UTC).isoformat(),
        "occurred_text": item.occurred_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "comment": item.comment,
        "lang": comment_lang(locale),
        "reasons": [reason_label(t, r) for r in item.reasons],
        "ticket_id": item.ticket_id,
    }
    customer_id = getattr(item, "customer_id", None)
    if with_customer and customer_id is not None:
        card["customer_url"] = customer_url(customer_id)
        card["customer_text"] = t("dash.answer.customer", id=customer_id)
    return card


# ---- Charts ----------------------------------------------------------------------------------


def _floor(moment: datetime, interval: Interval) -> datetime:
    if interval is Interval.HOUR:
        return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if interval is Interval.WEEK:
        return day - timedelta(days=day.weekday())
    return day


def _starts(since: datetime, until: datetime, interval: Interval) -> Iterable[datetime]:
    step = {Interval.HOUR: timedelta(hours=1), Interval.WEEK: timedelta(weeks=1)}.get(
        interval, timedelta(days=1)
    )
    start = _floor(since, interval)
    while start < until:
        yield start
        start += step


def bounds(metric: str, scale: int | None) -> tuple[float, float]:
    """The lowest and highest score ``metric`` can take."""
    if metric == "nps":
        return -100.0, 100.0
    if metric == "csat":
        return 0.0, 100.0
    return 1.0, float(scale or 7)


def chart(
    series: TimeseriesOut,
    since: datetime,
    until: datetime,
    scale: int | None,
    labels: Mapping[str, str],
) -> dict[str, Any]:
    """A trend as uPlot's columns: every interval of the range (empty ones null), the score,
    the margin band's edges (within the score's bounds) and the answers per interval, with
    the points on too few answers repeated in ``few``. Times are UTC seconds."""
    interval = series.interval
    low, high = bounds(series.metric, scale)
    by_start = {_floor(p.start, interval): p for p in series.points}
    columns: dict[str, list[Any]] = {"t": [], "score": [], "lo": [], "hi": [], "n": [], "few": []}
    for start in _starts(since, until, interval):
        point = by_start.get(start)
        columns["t"].append(int(start.timestamp()))
        score = point.score if point else None
        margin = point.margin if point else None
        columns["score"].append(score)
        if score is not None and margin is not None:
            columns["lo"].append(max(low, score - margin))
            columns["hi"].append(min(high, score + margin))
        else:
            columns["lo"].append(None)
            columns["hi"].append(None)
        columns["n"].append(point.n if point else 0)
        columns["few"].append(bool(point and point.insufficient))
    return {
        "metric": series.metric,
        "interval": interval.value,
        "decimals": SCORE_DECIMALS[series.metric],
        "axis_decimals": AXIS_DECIMALS[series.metric],
        "min": low,
        "max": high,
        "labels": dict(labels),
        **columns,
    }


def summary(t: Translate, formats: Formats, metric: str, series: TimeseriesOut) -> str:
    """A trend in one sentence: the text alternative of its chart."""
    points = [p for p in series.points if p.score is not None]
    if not points:
        return t("dash.trend.alt_empty")
    low = min(points, key=lambda p: p.score or 0.0)
    high = max(points, key=lambda p: p.score or 0.0)
    last = points[-1]
    return t(
        "dash.trend.alt",
        count=formats.count(len(points)).text,
        low=formats.score(metric, low.score).text,
        high=formats.score(metric, high.score).text,
        last=formats.score(metric, last.score).text,
        n=formats.count(last.n).text,
    )


def sort_groups(groups: Sequence[Any] | None) -> list[Any]:
    """Breakdown rows, the most answered first."""
    return sorted(groups or (), key=lambda g: (-g.n, g.group))
