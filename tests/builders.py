"""Small builders of test data: override only what a test is about."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from typing import Any

from shared.events import ResponseSubmitted, TouchpointEvent


def _envelope() -> dict[str, Any]:
    """What every wire event carries: a new id, now, the API as source, a new customer."""
    now = datetime.now(UTC)
    return {
        "event_id": uuid.uuid4(),
        "occurred_at": now,
        "received_at": now,
        "source": "api",
        "channel": "web",
        "customer_id": f"cust-{uuid.uuid4().hex[:8]}",
    }


def ticket_event(**overrides: Any) -> TouchpointEvent:
    """A ``ticket.created`` touchpoint event as the collector would produce it."""
    fields = {**_envelope(), "type": "ticket.created", "ticket_id": f"t-{uuid.uuid4().hex[:8]}"}
    return TouchpointEvent.model_validate(fields | overrides)


def response_payload(**overrides: Any) -> dict[str, Any]:
    """An HTTP body for ``POST /v1/responses``: an NPS 9 from the web widget."""
    body: dict[str, Any] = {
        "metric": "nps",
        "score": 9,
        "channel": "web",
        "survey_type": "transactional",
        "touchpoint": "checkout",
        "customer_id": f"cust-{uuid.uuid4().hex[:8]}",
    }
    body.update(overrides)
    return body


def response_event(**overrides: Any) -> ResponseSubmitted:
    """A wire event as the collector would produce it."""
    fields: dict[str, Any] = {
        **_envelope(),
        "metric": "nps",
        "scale": 10,
        "score": 9,
        "survey_type": "transactional",
        "touchpoint": "checkout",
    }
    return ResponseSubmitted.model_validate(fields | overrides)


# Times at the edges of an hour, a day, an ISO week, a month and a year in UTC, given in
# zones far from it: where a fold that took the local hour or day would be caught.
EDGE_TIMES = (
    "2026-12-31T23:30:00-08:00",  # 2027-01-01 07:30 UTC: a new year, month and day
    "2027-01-01T08:59:59.999999+09:00",  # 2026-12-31 23:59:59.999999 UTC
    "2026-12-28T00:00:00+00:00",  # a Monday, the first instant of an ISO week
    "2026-12-28T05:00:00+14:00",  # 2026-12-27 15:00 UTC: the Sunday before
    "2027-01-03T23:59:59-12:00",  # 2027-01-04 11:59:59 UTC: the next ISO week's Monday
    "2026-11-30T18:44:59+05:45",  # 2026-11-30 12:59:59 UTC
    "2026-12-27T20:00:00+00:00",  # a Sunday evening in UTC: Monday already east of +04:00
)


def mixed_answers(n: int = 300, seed: int = 7) -> list[ResponseSubmitted]:
    """Answers of every metric and scale, in many segments (some in Japanese), in zones
    far from UTC and at the edges of its periods, with reasons named twice in one answer."""
    rng = random.Random(seed)
    metrics = [("nps", 10, 0), ("csat", 5, 1), ("ces", 5, 1), ("ces", 7, 1)]
    events = []
    for i in range(n):
        metric, scale, low = rng.choice(metrics)
        if i % 5 == 0:
            occurred_at = rng.choice(EDGE_TIMES)
        else:
            occurred_at = (
                f"2026-11-{rng.randint(1, 30):02d}T{rng.randint(0, 23):02d}:"
                f"{rng.randint(0, 59):02d}:00{rng.choice(['+00:00', '+05:30', '-08:00'])}"
            )
        events.append(
            response_event(
                metric=metric,
                scale=scale,
                score=rng.randint(low, scale),
                customer_id=rng.choice([f"c{i % 17}", "顧客-東京-1"]),
                channel=rng.choice(["web", "sms"]),
                occurred_at=occurred_at,
                # Repeats too: a reason named twice in one answer counts once.
                reasons=rng.choices(
                    ["price", "wait_time", "app", "delivery.late"], k=rng.randint(0, 4)
                ),
                survey_type=rng.choice(["relationship", "transactional", "in_the_moment"]),
                touchpoint=rng.choice(["checkout", "support", "delivery"]),
                # Each dimension with values of its own, so a swap of two cannot pass.
                segments={
                    "location": rng.choice(["tokyo", "大阪", None]),
                    "product": rng.choice(["p-basic", "p-pro", None]),
                    "business_unit": rng.choice(["bu-retail", "bu-online", None]),
                },
            )
        )
    return events


def order_payload(**overrides: Any) -> dict[str, Any]:
    """An HTTP body for ``POST /v1/events``: a paid order of 12,800 yen."""
    body: dict[str, Any] = {
        "type": "order.completed",
        "order_id": f"ORD-{uuid.uuid4().hex[:8]}",
        "customer_id": f"cust-{uuid.uuid4().hex[:8]}",
        "channel": "web",
        "currency": "JPY",
        "amount": "12800",
    }
    body.update(overrides)
    return body


def refund_payload(order: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """An HTTP body for ``POST /v1/events``: a refund of part of ``order``."""
    body: dict[str, Any] = {
        "type": "order.refunded",
        "order_id": order["order_id"],
        "refund_id": f"RF-{uuid.uuid4().hex[:8]}",
        "customer_id": order["customer_id"],
        "channel": order["channel"],
        "currency": order["currency"],
        "amount": "1000",
    }
    body.update(overrides)
    return body


def order_event(
    order_id: str, amount: str, currency: str = "JPY", **overrides: Any
) -> TouchpointEvent:
    """An ``order.completed`` as the collector would produce it (customer ``c1``, now)."""
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "event_id": uuid.uuid4(),
        "occurred_at": now,
        "received_at": now,
        "source": "api",
        "channel": "web",
        "customer_id": "c1",
        "type": "order.completed",
        "order_id": order_id,
        "amount": amount,
        "currency": currency,
    }
    fields.update(overrides)
    if "received_at" not in overrides:
        fields["received_at"] = fields["occurred_at"]
    return TouchpointEvent.model_validate(fields)


def refund_event(
    order_id: str, refund_id: str, amount: str, currency: str = "JPY", **overrides: Any
) -> TouchpointEvent:
    """An ``order.refunded`` of ``order_id``."""
    return order_event(
        order_id,
        amount,
        currency,
        **{"type": "order.refunded", "refund_id": refund_id, **overrides},
    )


def alert(**overrides: Any) -> dict[str, Any]:
    """An alert as the outbox reads it from its row, for building notifications."""
    base: dict[str, Any] = {
        "id": uuid.UUID("6f1c1d5e-7b7a-4c39-9f3a-0d2b8b7d1a10"),
        "rule": "detractor",
        "severity": "critical",
        "status": "open",
        "customer_id": "c-1",
        "channel": "sms",
        "touchpoint": "support_call",
        "ticket_id": "T-5",
        "metric": "nps",
        "score": 2,
        "comment": None,
        "reasons": ["price"],
        "occurrences": 1,
        "opened_at": datetime(2026, 11, 22, 1, 0, tzinfo=UTC),
        "acknowledged_by": None,
        "resolved_by": None,
        "note": None,
        "assignee": None,
    }
    return base | overrides
