"""The scoring maths, free of I/O: bucket keys, additive counts and the scores they give."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Final, NamedTuple

from shared.errors import PermanentError
from shared.events import Metric, NpsCategory, ResponseSubmitted, TouchpointEvent, nps_category

BUCKET: Final = timedelta(hours=1)
# A CES answer is "easy" at or above this score on its scale: the top three of 7, top two of 5.
EASY_FROM: Final[dict[int, int]] = {5: 4, 7: 5}
SATISFIED_FROM: Final = 4
Z_95: Final = 1.96


def in_utc(moment: datetime) -> datetime:
    """Return ``moment`` in UTC; a time past either end of the calendar in UTC (valid in its
    own zone, as ``0001-01-01T00:30+01:00`` is) is the event's fault: ``PermanentError``."""
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise PermanentError("is outside the years 1 to 9999 in UTC", field="occurred_at") from None


def bucket_start(moment: datetime) -> datetime:
    """Return the start of the UTC hour holding ``moment`` (a +05:30 zone still lands right)."""
    return in_utc(moment).replace(minute=0, second=0, microsecond=0)


class BucketKey(NamedTuple):
    """Where a response is counted: its hour, metric, scale and every segment dimension."""

    bucket_start: datetime
    metric: str
    scale: int
    channel: str
    survey_type: str
    touchpoint: str
    location: str
    product: str
    business_unit: str


@dataclass(slots=True)
class Counts:
    """Additive counts: two buckets' counts sum to the counts of their union."""

    n: int = 0
    score_sum: int = 0
    promoters: int = 0
    passives: int = 0
    detractors: int = 0
    satisfied: int = 0
    easy: int = 0

    def add(self, other: Counts) -> None:
        # Spelt out rather than looped over fields(): this runs once per event folded.
        self.n += other.n
        self.score_sum += other.score_sum
        self.promoters += other.promoters
        self.passives += other.passives
        self.detractors += other.detractors
        self.satisfied += other.satisfied
        self.easy += other.easy


def counts_of(event: ResponseSubmitted) -> Counts:
    """Return the counts one response contributes."""
    return _count_into(Counts(), event)


def _count_into(c: Counts, event: ResponseSubmitted) -> Counts:
    # Adds in place rather than summing a Counts per answer: this runs once per event folded.
    score = event.score
    c.n += 1
    c.score_sum += score
    if event.metric is Metric.NPS:
        category = nps_category(score)
        if category is NpsCategory.PROMOTER:
            c.promoters += 1
        elif category is NpsCategory.PASSIVE:
            c.passives += 1
        else:
            c.detractors += 1
    elif event.metric is Metric.CSAT:
        c.satisfied += score >= SATISFIED_FROM
    else:
        c.easy += score >= EASY_FROM[event.scale]
    return c


def key_of(event: ResponseSubmitted) -> BucketKey:
    """Return the bucket a response is counted in: the hour of ``occurred_at``, not of arrival."""
    s = event.segments
    return BucketKey(
        bucket_start=bucket_start(event.occurred_at),
        metric=event.metric.value,
        scale=event.scale,
        channel=event.channel.value,
        survey_type=event.survey_type.value,
        touchpoint=event.touchpoint,
        location=s.location or "",
        product=s.product or "",
        business_unit=s.business_unit or "",
    )


def fold(events: list[ResponseSubmitted]) -> dict[BucketKey, Counts]:
    """Sum the counts of ``events`` per bucket, so one batch writes each bucket once."""
    folded: dict[BucketKey, Counts] = {}
    for event in events:
        key = key_of(event)
        counts = folded.get(key)
        if counts is None:
            counts = folded[key] = Counts()
        _count_into(counts, event)
    return folded


def share(part: int, n: int) -> float | None:
    """Return ``part / n`` as a percentage, or None when there is nothing to divide."""
    return 100.0 * part / n if n else None


def nps(c: Counts) -> float | None:
    """Return %promoters − %detractors, from −100 to +100."""
    return 100.0 * (c.promoters - c.detractors) / c.n if c.n else None


def nps_margin_of_error(c: Counts) -> float | None:
    """Return the 95% margin of error of the NPS, in points: ±1.96·100·sqrt((p+d−(p−d)²)/n)."""
    if not c.n:
        return None
    p, d = c.promoters / c.n, c.detractors / c.n
    return Z_95 * 100.0 * math.sqrt(max(0.0, p + d - (p - d) ** 2) / c.n)


def mean(c: Counts) -> float | None:
    """Return the mean score."""
    return c.score_sum / c.n if c.n else None


class ReasonKey(NamedTuple):
    """Where an NPS+ reason is counted: its hour, NPS category, code and segments."""

    bucket_start: datetime
    category: str
    reason: str
    channel: str
    survey_type: str
    touchpoint: str
    location: str
    product: str
    business_unit: str


def fold_reasons(events: list[ResponseSubmitted]) -> dict[ReasonKey, int]:
    """Count the reason codes of NPS answers by category and segment."""
    counts: dict[ReasonKey, int] = {}
    for event in events:
        if event.metric is not Metric.NPS:
            continue
        key = key_of(event)
        for reason in set(event.reasons):
            reason_key = ReasonKey(
                bucket_start=key.bucket_start,
                category=nps_category(event.score).value,
                reason=reason,
                channel=key.channel,
                survey_type=key.survey_type,
                touchpoint=key.touchpoint,
                location=key.location,
                product=key.product,
                business_unit=key.business_unit,
            )
            counts[reason_key] = counts.get(reason_key, 0) + 1
    return counts


FIRST_RESPONSE_TYPES: Final = frozenset({"ticket.first_response", "ticket.agent_replied"})


@dataclass
class TicketFacts:
    """What a batch knows of one ticket, folded so that any order gives the same facts."""

    source: str
    ticket_id: str
    customer_id: str
    channel: str
    first_seen_at: datetime
    priority: str | None = None
    priority_at: datetime | None = None
    created_at: datetime | None = None
    first_response_at: datetime | None = None
    resolved_at: datetime | None = None
    reopened_at: datetime | None = None
    reopens: int = 0


def _earliest(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or b < a else a


def _latest(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or b > a else a


def fold_tickets(events: list[TouchpointEvent]) -> dict[tuple[str, str], TicketFacts]:
    """Fold ticket events per (source, ticket): earliest creation and first response,
    latest resolution and reopening, the latest priority, and the number of reopenings."""
    tickets: dict[tuple[str, str], TicketFacts] = {}
    for event in events:
        if event.ticket_id is None:
            continue
        at = in_utc(event.occurred_at)
        facts = tickets.setdefault(
            (event.source, event.ticket_id),
            TicketFacts(event.source, event.ticket_id, event.customer_id, event.channel.value, at),
        )
        facts.first_seen_at = _earliest(facts.first_seen_at, at)
        if event.priority is not None and (facts.priority_at is None or at >= facts.priority_at):
            facts.priority, facts.priority_at = event.priority.value, at
        if event.type == "ticket.created":
            if facts.created_at is None or at < facts.created_at:
                facts.channel = event.channel.value
            facts.created_at = _earliest(facts.created_at, at)
        elif event.type in FIRST_RESPONSE_TYPES:
            facts.first_response_at = _earliest(facts.first_response_at, at)
        elif event.type == "ticket.resolved":
            facts.resolved_at = _latest(facts.resolved_at, at)
        elif event.type == "ticket.reopened":
            facts.reopened_at = _latest(facts.reopened_at, at)
            facts.reopens += 1
    return tickets


def period_starts(moment: datetime) -> tuple[date, date]:
    """Return the (ISO week, month) a moment falls in, as their first days in UTC."""
    day = in_utc(moment).date()
    return day - timedelta(days=day.weekday()), day.replace(day=1)


def activity(events: list[ResponseSubmitted | TouchpointEvent]) -> set[tuple[str, date, str]]:
    """Return the distinct (period, period start, customer) activity the events show."""
    seen: set[tuple[str, date, str]] = set()
    for event in events:
        week, month = period_starts(event.occurred_at)
        seen.add(("week", week, event.customer_id))
        seen.add(("month", month, event.customer_id))
    return seen
