"""GET /v1/value equals a plain recomputation over the distinct events, whatever Kafka does.

Hypothesis draws orders (some completed twice, with another amount or time), refunds (some
before their order, some resent under a new event id, some in another currency, some more
than the order) and NPS answers, duplicates and reorders them, and produces them to the
real touchpoints and responses topics. The scorer consumes them with its own consume loop
(two batches in flight), then the group's offsets are rewound and it reads them again, as
after a crash between the database commit and the offset commit (``test_scorer_properties``
does the same for scores). ``/v1/value`` and ``customer_revenue`` must then say what the
events say, recomputed here from the events alone, without the scorer's code.

Events fall on a few instants only, so that two completions of one order, two versions of
a refund or two NPS answers of a customer often share their time and the event id decides;
the instants straddle the range's start, the CLV year's start (the top of the hour 365 days
before ``to``), month starts, ``to`` itself, and fall before the year and after ``to``.
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
from shared.settings import AuthSettings, DatabaseSettings, KafkaSettings
from tests.harness.backends import PostgresServer
from tests.helpers import serving
from tests.integration.redelivery import deliver_twice, fresh_scorer

UNTIL = datetime(2026, 10, 5, 7, 30, tzinfo=UTC)
SINCE = UNTIL - timedelta(days=40)
# The top of the hour 365 days before UNTIL, written out rather than computed by the scorer.
YEAR_START = datetime(2025, 10, 5, 7, tzinfo=UTC)
# The months m whose pair (m, m + 1) the lifetime pools: September 2025 to August 2026.
MONTHS = [date(2025, m, 1) for m in range(9, 13)] + [date(2026, m, 1) for m in range(1, 9)]
TIMES = [
    datetime(2025, 8, 30, 12, tzinfo=UTC),  # before the CLV year, and before its months
    YEAR_START - timedelta(minutes=1),
    YEAR_START,
    datetime(2026, 1, 31, 23, 59, tzinfo=UTC),
    datetime(2026, 2, 1, tzinfo=UTC),
    SINCE - timedelta(minutes=1),
    SINCE,
    datetime(2026, 9, 15, 12, tzinfo=UTC),  # the month before to's: its pair is not over
    UNTIL - timedelta(minutes=1),
    UNTIL,
    datetime(2026, 10, 20, tzinfo=UTC),  # after to
]
DIGITS = {"JPY": 0, "USD": 2}


def _at(draw: st.DrawFn) -> datetime:
    return draw(st.sampled_from(TIMES))


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


def _earliest(events: list[TouchpointEvent]) -> TouchpointEvent:
    return min(events, key=lambda e: (e.occurred_at, e.event_id))


def facts(stream: list[Any]) -> tuple[dict[str, TouchpointEvent], dict[str, int]]:
    """Each order's counted completion (the earliest by time, then event id) and its net."""
    completions: dict[str, list[TouchpointEvent]] = defaultdict(list)
    versions: dict[tuple[str, str], list[TouchpointEvent]] = defaultdict(list)
    for e in stream:
        if isinstance(e, TouchpointEvent) and e.type == "order.completed":
            completions[e.order_id or ""].append(e)
        elif isinstance(e, TouchpointEvent):
            versions[(e.order_id or "", e.refund_id or "")].append(e)
    first = {order_id: _earliest(events) for order_id, events in completions.items()}
    refunds = {key: _earliest(events) for key, events in versions.items()}
    net: dict[str, int] = {}
    for order_id, order in first.items():
        cur = order.currency or ""
        amount = minor(order.amount, cur)
        back = sum(
            minor(r.amount, cur)
            for (o, _), r in refunds.items()
            if o == order_id and r.currency == cur
        )
        net[order_id] = amount - min(back, amount)
    return first, net


def expected_revenue(stream: list[Any]) -> dict[tuple[str, str], tuple[Any, ...]]:
    """customer_revenue: (customer, currency) → (orders, net, first and last purchase)."""
    first, net = facts(stream)
    rows: dict[tuple[str, str], tuple[Any, ...]] = {}
    for order_id, order in first.items():
        key = (order.customer_id, order.currency or "")
        count, total, earliest, latest = rows.get(key, (0, 0, order.occurred_at, order.occurred_at))
        rows[key] = (
            count + 1,
            total + net[order_id],
            min(earliest, order.occurred_at),
            max(latest, order.occurred_at),
        )
    return rows


def expected(stream: list[Any]) -> dict[str, Any]:
    """What /v1/value over [SINCE, UNTIL) must say, from the distinct events alone."""
    first, net = facts(stream)

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

    # currency → customer → nets, in the range and in the CLV year
    per: dict[str, dict[str, list[int]]] = defaultdict(dict)
    year: dict[str, dict[str, list[int]]] = defaultdict(dict)
    for order_id, order in first.items():
        cur, who = order.currency or "", order.customer_id
        if SINCE <= order.occurred_at < UNTIL:
            per[cur].setdefault(who, []).append(net[order_id])
        if YEAR_START <= order.occurred_at < UNTIL:
            year[cur].setdefault(who, []).append(net[order_id])

    months: dict[date, set[str]] = defaultdict(set)
    for e in stream:
        months[e.occurred_at.date().replace(day=1)].add(e.customer_id)
    active = retained = 0
    for month in MONTHS:
        following = (month + timedelta(days=32)).replace(day=1)
        active += len(months.get(month, set()))
        retained += len(months.get(month, set()) & months.get(following, set()))
    lifetime = None
    if active == retained > 0:
        lifetime = Fraction(10)  # everyone stayed: the cap
    elif active:
        lifetime = min(Fraction(1, 12) / (1 - Fraction(retained, active)), Fraction(10))

    def spend(customers: dict[str, list[int]]) -> tuple[int, int, int]:
        """(customers, orders, revenue)."""
        return (
            len(customers),
            sum(len(v) for v in customers.values()),
            sum(sum(v) for v in customers.values()),
        )

    out: dict[str, Any] = {"lifetime": (MONTHS, active, retained), "currencies": {}}
    for cur in sorted(set(per) | set(year)):
        customers, orders, revenue = spend(per.get(cur, {}))
        y_customers, y_orders, y_revenue = spend(year.get(cur, {}))
        y_aov = Fraction(y_revenue, y_orders) if y_orders else None
        frequency = Fraction(y_orders, y_customers) if y_customers else None
        clv = None
        if y_aov is not None and frequency is not None and lifetime is not None:
            clv = text(y_aov * frequency * lifetime, cur)
        by_nps = {}
        for name in ("promoter", "passive", "detractor", "unrated"):
            mine = {c: v for c, v in per.get(cur, {}).items() if category(c) == name}
            theirs = {c: v for c, v in year.get(cur, {}).items() if category(c) == name}
            n, n_orders, total = spend(mine)
            y_n, _, y_total = spend(theirs)
            y_mean = Fraction(y_total, y_n) if y_n else None
            by_nps[name] = (
                n,
                n_orders,
                total,
                sum(len(v) >= 2 for v in mine.values()),
                text(Fraction(total, n), cur) if n else None,
                y_n,
                None if y_mean is None else text(y_mean, cur),
                None if y_mean is None or lifetime is None else text(y_mean * lifetime, cur),
            )
        at_risk = {c: v for c, v in year.get(cur, {}).items() if category(c) == "detractor"}
        out["currencies"][cur] = {
            "figures": (orders, revenue, customers),
            "aov": text(Fraction(revenue, orders), cur) if orders else None,
            "clv_inputs": (
                y_orders,
                y_revenue,
                y_customers,
                None if y_aov is None else text(y_aov, cur),
                None if frequency is None else float(frequency),
            ),
            "clv": clv,
            "by_nps": by_nps,
            "risk": (len(at_risk), sum(sum(v) for v in at_risk.values())),
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
    assert body["clv_year"] == {"from": iso(YEAR_START), "to": iso(UNTIL)}
    return {
        "lifetime": (
            [date.fromisoformat(m) for m in life["months"]],
            life["active"],
            life["retained"],
        ),
        "currencies": {
            c["currency"]: {
                "figures": (c["orders"], c["revenue_minor"], c["customers"]),
                "aov": c["average_order_value"],
                "clv_inputs": (
                    c["clv_inputs"]["orders"],
                    c["clv_inputs"]["revenue_minor"],
                    c["clv_inputs"]["customers"],
                    c["clv_inputs"]["average_order_value"],
                    c["clv_inputs"]["purchase_frequency"],
                ),
                "clv": c["clv"],
                "by_nps": {
                    k["category"]: (
                        k["n"],
                        k["orders"],
                        k["revenue_minor"],
                        k["repeat_customers"],
                        k["revenue_per_customer"],
                        k["clv_customers"],
                        k["clv_revenue_per_customer"],
                        k["clv"],
                    )
                    for k in c["by_nps"]
                },
                "risk": (c["revenue_at_risk"]["customers"], c["revenue_at_risk"]["revenue_minor"]),
            }
            for c in body["currencies"]
        },
    }


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def customer_revenue(url: str) -> dict[tuple[str, str], tuple[Any, ...]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(sa.text("SELECT * FROM customer_revenue"))
            return {
                (r.customer_id, r.currency): (
                    r.orders,
                    int(r.revenue_minor),
                    r.first_purchase_at,
                    r.last_purchase_at,
                )
                for r in rows
            }
    finally:
        await engine.dispose()


@pytest.mark.apache_kafka
class TestValueIsExact:
    @settings(
        max_examples=16,
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
        scorer, start = await fresh_scorer(kafka_settings, batch_size)
        api_key = "test-" + uuid.uuid4().hex
        auth = AuthSettings(api_key=api_key)

        await deliver_twice(kafka_settings, url, scorer, auth, start, stream, rng)

        app = create_scorer(kafka_settings, DatabaseSettings(url=url), auth, scorer)
        async with serving(app, api_key, "scorer") as client:
            r = await client.get(
                "/v1/value", params={"from": SINCE.isoformat(), "to": UNTIL.isoformat()}
            )
        assert r.status_code == 200, r.text
        assert got(r.json()) == expected(stream)
        assert await latest_nps(url) == expected_latest(stream)
        assert await customer_revenue(url) == expected_revenue(stream)
