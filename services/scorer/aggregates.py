"""Folding events into bucket keys and additive counts, free of I/O (the scores those
counts give are in ``shared.scoring``).

A batch's responses are folded by SQL in Postgres (``repository._APPLY_STAGED``, and
``cxloop scorer rebuild`` from the raw rows); :func:`fold`, :func:`fold_reasons` and
:func:`activity` are the definitions that SQL is held equal to
(tests/integration/test_sql_fold.py). Ticket, order and touchpoint-activity facts are
folded here for the live path.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Final, NamedTuple

from shared.events import (
    ORDER_COMPLETED,
    ORDER_REFUNDED,
    Metric,
    NpsCategory,
    ResponseSubmitted,
    TouchpointEvent,
    nps_category,
)
from shared.scoring import EASY_FROM, SATISFIED_FROM, Counts, bucket_start, in_utc


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


def counts_of(event: ResponseSubmitted) -> Counts:
    """Return the counts one response contributes."""
    return _count_into(Counts(), event)


def _count_into(c: Counts, event: ResponseSubmitted) -> Counts:
    # Adds in place rather than summing a Counts per answer.
    score = event.score
    c.n += 1
    c.score_sum += score
    c.score_sq_sum += score * score
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
    """Sum the counts of ``events`` per bucket: the definition the SQL fold is held to."""
    folded: dict[BucketKey, Counts] = {}
    for event in events:
        key = key_of(event)
        counts = folded.get(key)
        if counts is None:
            counts = folded[key] = Counts()
        _count_into(counts, event)
    return folded


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


class Completion(NamedTuple):
    """An order as its ``order.completed`` says (a row of ``orders`` less its refunds)."""

    order_id: str
    customer_id: str
    currency: str
    amount_minor: int
    completed_at: datetime
    completed_event: uuid.UUID
    channel: str
    location: str
    product: str
    business_unit: str


class Refund(NamedTuple):
    """One refund of an order (a row of ``order_refunds``)."""

    order_id: str
    refund_id: str
    currency: str
    amount_minor: int
    occurred_at: datetime
    event_id: uuid.UUID


def fold_orders(
    events: list[TouchpointEvent],
) -> tuple[dict[str, Completion], dict[tuple[str, str], Refund]]:
    """Return each order's completion and each (order, refund)'s refund among ``events``.

    Of several events for one order (or one refund) the earliest by (occurred_at, event
    id) wins, here as in the database, so any arrival order gives the same facts.
    """
    completions: dict[str, Completion] = {}
    refunds: dict[tuple[str, str], Refund] = {}
    for event in events:
        if event.type == ORDER_COMPLETED and event.order_id is not None:
            s = event.segments
            completion = Completion(
                order_id=event.order_id,
                customer_id=event.customer_id,
                currency=event.currency or "",
                amount_minor=event.amount_minor(),
                completed_at=in_utc(event.occurred_at),
                completed_event=event.event_id,
                channel=event.channel.value,
                location=s.location or "",
                product=s.product or "",
                business_unit=s.business_unit or "",
            )
            known = completions.get(completion.order_id)
            if known is None or (completion.completed_at, completion.completed_event) < (
                known.completed_at,
                known.completed_event,
            ):
                completions[completion.order_id] = completion
        elif (
            event.type == ORDER_REFUNDED
            and event.order_id is not None
            and event.refund_id is not None
        ):
            refund = Refund(
                order_id=event.order_id,
                refund_id=event.refund_id,
                currency=event.currency or "",
                amount_minor=event.amount_minor(),
                occurred_at=in_utc(event.occurred_at),
                event_id=event.event_id,
            )
            key = (refund.order_id, refund.refund_id)
            seen = refunds.get(key)
            if seen is None or (refund.occurred_at, refund.event_id) < (
                seen.occurred_at,
                seen.event_id,
            ):
                refunds[key] = refund
    return completions, refunds


def nps_answers(events: list[ResponseSubmitted]) -> list[tuple[str, datetime, uuid.UUID, int]]:
    """Return the (customer, time, event id, score) of each NPS answer: the rows of
    ``customer_nps`` that the SQL stores from the staged responses."""
    return [
        (e.customer_id, in_utc(e.occurred_at), e.event_id, e.score)
        for e in events
        if e.metric is Metric.NPS
    ]
