"""GET /v1/value equals a plain recomputation over the distinct events, whatever Kafka does.

Hypothesis draws orders (some completed twice, with another amount or time), refunds (some
before their order, some resent under a new event id, some in another currency, some more
than the order) and NPS answers, duplicates and reorders them, and produces them to the
real touchpoints and responses topics. The scorer consumes them with its own consume loop
(two batches in flight), then the group's offsets are rewound and it reads them again, as
after a crash between the database commit and the offset commit (``test_scorer_properties``
does the same for scores). ``/v1/value`` must then say what the events say, recomputed
here from the events alone.
"""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import create_async_engine

from services.scorer.app import create_app as create_scorer
from shared.events import ResponseSubmitted, TouchpointEvent
from shared.settings import AuthSettings, DatabaseSettings, KafkaSettings, ScorerSettings
from shared.topics import Topic
from tests.harness.backends import PostgresServer
from tests.helpers import produce, serving
from tests.integration.test_scorer_properties import _commit, _consume_all, _offsets

BASE = datetime(2026, 8, 20, tzinfo=UTC)
SINCE, UNTIL = BASE + timedelta(days=5), BASE + timedelta(days=50, hours=7)
DIGITS = {"JPY": 0, "USD": 2}


def _at(draw: st.DrawFn) -> datetime:
    return BASE + timedelta(minutes=draw(st.integers(0, 60 * 24 * 60)))


def _amount(draw: st.DrawFn, currency: str) -> str:
    minor = draw(st.integers(0, 5000))
    return str(minor) if currency == "JPY" else f"{minor // 100}.{minor % 100:02d}"


def _touchpoint(draw: st.DrawFn, **fields: Any) -> TouchpointEvent:
    at = _at(draw)
    return TouchpointEvent.model_validate(
        {
            "event_id": uuid.UUID(int=draw(st.integers(1, 2**64))),
            "occurred_at": at,
            "received_at": at,
            "source": "api",
            "channel": draw(st.sampled_from(["web", "sms"])),
            "customer_id": f"c{draw(st.integers(0, 5))}",
            **fields,
        }
    )


@st.composite
def completed(draw: st.DrawFn) -> TouchpointEvent:
    currency = draw(st.sampled_from(["JPY", "USD"]))
    return _touchpoint(
        draw,
        type="order.completed",
        order_id=f"o{draw(st.integers(0, 9))}",
        currency=currency,
        amount=_amount(draw, currency),
    )


@st.composite
def refunded(draw: st.DrawFn) -> TouchpointEvent:
    currency = draw(st.sampled_from(["JPY", "USD"]))
    return _touchpoint(
        draw,
        type="order.refunded",
        order_id=f"o{draw(st.integers(0, 9))}",
        refund_id=f"r{draw(st.integers(0, 2))}",
        currency=currency,
        amount=_amount(draw, currency),
    )


@st.composite
def nps(draw: st.DrawFn) -> ResponseSubmitted:
    at = _at(draw)
    return ResponseSubmitted.model_validate(
        {
            "event_id": uuid.UUID(int=draw(st.integers(1, 2**64))),
            "occurred_at": at,
            "received_at": at,
            "source": "api",
            "channel": "web",
            "customer_id": f"c{draw(st.integers(0, 5))}",
            "metric": "nps",
            "scale": 10,
            "score": draw(st.integers(0, 10)),
            "survey_type": "relationship",
            "touchpoint": "checkout",
        }
    )


def minor(amount: Any, currency: str) -> int:
    return int(amount * 10 ** DIGITS[currency])


def text(value: Fraction | int, currency: str) -> str:
    units = round(value)
    if DIGITS[currency] == 0:
        return str(units)
    return f"{units // 100}.{units % 100:02d}"


def expected(stream: list[Any]) -> dict[str, Any]:
    """What /v1/value over [SINCE, UNTIL) must say, from the distinct events alone."""
    first: dict[str, TouchpointEvent] = {}
    refunds: dict[tuple[str, str], TouchpointEvent] = {}
    for e in stream:
        if isinstance(e, TouchpointEvent) and e.type == "order.completed":
            known = first.get(e.order_id or "")
            if known is None or (e.occurred_at, e.event_id) < (known.occurred_at, known.event_id):
                first[e.order_id or ""] = e
        elif isinstance(e, TouchpointEvent):
            key = (e.order_id or "", e.refund_id or "")
            seen = refunds.get(key)
            if seen is None or (e.occurred_at, e.event_id) < (seen.occurred_at, seen.event_id):
                refunds[key] = e
    net: dict[str, int] = {}
    for order_id, order in first.items():
        cur = order.currency or ""
        back = sum(
            minor(r.amount, cur)
            for (o, _), r in refunds.items()
            if o == order_id and r.currency == cur
        )
        net[order_id] = minor(order.amount, cur) - min(back, minor(order.amount, cur))

    def category(customer: str) -> str:
        answers = [
            e
            for e in stream
            if isinstance(e, ResponseSubmitted)
            and e.customer_id == customer
            and e.occurred_at < UNTIL
        ]
        if not answers:
            return "unrated"
        score = max(answers, key=lambda a: (a.occurred_at, a.event_id)).score
        return "promoter" if score >= 9 else "passive" if score >= 7 else "detractor"

    per: dict[str, dict[str, list[int]]] = defaultdict(dict)  # currency → customer → nets
    risk: dict[str, dict[str, int]] = defaultdict(dict)
    for order_id, order in first.items():
        cur, who = order.currency or "", order.customer_id
        if SINCE <= order.occurred_at < UNTIL:
            per[cur].setdefault(who, []).append(net[order_id])
        if UNTIL - timedelta(days=365) <= order.occurred_at < UNTIL and category(who) == (
            "detractor"
        ):
            risk[cur][who] = risk[cur].get(who, 0) + net[order_id]

    months: dict[date, set[str]] = defaultdict(set)
    for e in stream:
        months[e.occurred_at.date().replace(day=1)].add(e.customer_id)
    active = retained = 0
    start, end = SINCE.date().replace(day=1), UNTIL.date().replace(day=1)
    for month, members in months.items():
        if start <= month < end:
            following = (month + timedelta(days=32)).replace(day=1)
            active += len(members)
            retained += len(members & months.get(following, set()))
    lifetime = None
    if active:
        lifetime = min(Fraction(1, 12) / (1 - Fraction(retained, active)), Fraction(10))
    years = Fraction((UNTIL - SINCE) // timedelta(microseconds=1)) / Fraction(
        timedelta(days=365.25) // timedelta(microseconds=1)
    )

    out: dict[str, Any] = {"lifetime": (active, retained), "currencies": {}}
    for cur in sorted(set(per) | set(risk)):
        customers = per.get(cur, {})
        revenue = sum(sum(v) for v in customers.values())
        orders = sum(len(v) for v in customers.values())
        clv = None
        if customers and lifetime is not None:
            clv = text(Fraction(revenue, len(customers)) / years * lifetime, cur)
        by_nps = {}
        for name in ("promoter", "passive", "detractor", "unrated"):
            mine = {c: v for c, v in customers.items() if category(c) == name}
            total = sum(sum(v) for v in mine.values())
            by_nps[name] = (
                len(mine),
                sum(len(v) for v in mine.values()),
                total,
                sum(len(v) >= 2 for v in mine.values()),
                text(Fraction(total, len(mine)), cur) if mine else None,
            )
        out["currencies"][cur] = {
            "figures": (orders, revenue, len(customers)),
            "clv": clv,
            "by_nps": by_nps,
            "risk": (len(risk.get(cur, {})), sum(risk.get(cur, {}).values())),
        }
    return out


def expected_latest(stream: list[Any]) -> dict[str, tuple[datetime, uuid.UUID, int]]:
    """Each customer's latest NPS answer: the greatest (occurred_at, event id)."""
    latest: dict[str, tuple[datetime, uuid.UUID, int]] = {}
    for e in stream:
        if isinstance(e, ResponseSubmitted):
            answer = (e.occurred_at, e.event_id, e.score)
            if e.customer_id not in latest or answer[:2] > latest[e.customer_id][:2]:
                latest[e.customer_id] = answer
    return latest


async def latest_nps(url: str) -> dict[str, tuple[datetime, uuid.UUID, int]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(sa.text("SELECT * FROM customer_latest_nps"))
            return {r.customer_key: (r.occurred_at, r.event_id, r.score) for r in rows}
    finally:
        await engine.dispose()


def got(body: dict[str, Any]) -> dict[str, Any]:
    """The same facts, read from the answer."""
    life = body["lifetime"]
    return {
        "lifetime": (life["active"], life["retained"]),
        "currencies": {
            c["currency"]: {
                "figures": (c["orders"], c["revenue_minor"], c["customers"]),
                "clv": c["clv"],
                "by_nps": {
                    k["category"]: (
                        k["n"],
                        k["orders"],
                        k["revenue_minor"],
                        k["repeat_customers"],
                        k["revenue_per_customer"],
                    )
                    for k in c["by_nps"]
                },
                "risk": (c["revenue_at_risk"]["customers"], c["revenue_at_risk"]["revenue_minor"]),
            }
            for c in body["currencies"]
        },
    }


@pytest.mark.apache_kafka
class TestValueIsExact:
    @settings(
        max_examples=12,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        stream=st.lists(
            st.one_of(completed(), completed(), refunded(), nps()),
            min_size=1,
            max_size=50,
            unique_by=lambda e: e.event_id,
        ),
        batch_size=st.integers(1, 12),
        seed=st.integers(0, 2**32),
    )
    async def test_redelivery_duplicates_and_reordering_change_nothing(
        self,
        kafka_settings: KafkaSettings,
        postgres: PostgresServer,
        migrated_template: str,
        stream: list[Any],
        batch_size: int,
        seed: int,
    ) -> None:
        rng = random.Random(seed)
        url = await postgres.create_database(
            f"v_{uuid.uuid4().hex[:12]}", template=migrated_template
        )
        group = f"scorer_{uuid.uuid4().hex[:10]}"
        _, start = await _offsets(kafka_settings, group)
        await _commit(kafka_settings, group, start)
        scorer = ScorerSettings(
            group_id=group,
            batch_max_records=batch_size,
            batch_timeout_ms=50,
            session_timeout_ms=6000,
            heartbeat_interval_ms=500,
            commit_timeout_seconds=5,
        )
        assert scorer.batches_in_flight >= 2
        api_key = "test-" + uuid.uuid4().hex
        auth = AuthSettings(api_key=api_key)

        delivered = stream + rng.sample(stream, k=rng.randint(0, len(stream)))
        rng.shuffle(delivered)
        for topic, kind in (
            (Topic.RESPONSES, ResponseSubmitted),
            (Topic.TOUCHPOINTS, TouchpointEvent),
        ):
            events = [e for e in delivered if isinstance(e, kind)]
            if events:
                await produce(kafka_settings, topic, events)

        await _consume_all(kafka_settings, url, scorer, auth)
        committed, _ = await _offsets(kafka_settings, group)
        await _commit(
            kafka_settings,
            group,
            {tp: rng.randint(start[tp], end) for tp, end in committed.items()},
        )
        await _consume_all(kafka_settings, url, scorer, auth)

        app = create_scorer(kafka_settings, DatabaseSettings(url=url), auth, scorer)
        async with serving(app, api_key, "scorer") as client:
            r = await client.get(
                "/v1/value", params={"from": SINCE.isoformat(), "to": UNTIL.isoformat()}
            )
        assert r.status_code == 200, r.text
        assert got(r.json()) == expected(stream)
        assert await latest_nps(url) == expected_latest(stream)
