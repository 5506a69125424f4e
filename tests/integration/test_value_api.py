"""GET /v1/value: the README's worked example, currencies apart, groups, minimum n, 422s."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.scorer.app import create_app
from services.scorer.consumer import BatchHandler
from shared.kafka import Decoded
from shared.settings import AuthSettings, DatabaseSettings, KafkaSettings, ScorerSettings
from tests.builders import order_event, refund_event, response_event
from tests.helpers import serving

# 365.25 days: one year exactly.
RANGE = {"from": "2025-01-01T00:00:00Z", "to": "2026-01-01T06:00:00Z"}


def day(month: int, d: int) -> datetime:
    return datetime(2025, month, d, 12, tzinfo=UTC)


# The README's worked example ("Customer value").
EXAMPLE = [
    order_event("A1", "1000", customer_id="a", occurred_at=day(1, 10)),
    order_event("A2", "2000", customer_id="a", occurred_at=day(2, 10)),
    refund_event("A2", "R1", "400", customer_id="a", occurred_at=day(2, 20)),
    response_event(customer_id="a", score=10, occurred_at=day(2, 15)),
    order_event("B1", "3000", customer_id="b", occurred_at=day(1, 20), channel="sms"),
    response_event(customer_id="b", score=3, occurred_at=day(2, 1)),
    order_event("C1", "1500", customer_id="c", occurred_at=day(1, 5)),
    order_event("D1", "12.50", "USD", customer_id="d", occurred_at=day(1, 7)),
]


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def scorer(
    kafka_settings: KafkaSettings,
    database_url: str,
    auth: AuthSettings,
    api_key: str,
    scorer_settings: ScorerSettings,
) -> AsyncIterator[httpx.AsyncClient]:
    settings = scorer_settings.model_copy(update={"min_n": 3})
    app = create_app(kafka_settings, DatabaseSettings(url=database_url), auth, settings)
    async with serving(app, api_key, "scorer") as client:
        yield client


async def apply(engine: AsyncEngine, events: Sequence[Any]) -> None:
    await BatchHandler(engine)([Decoded(None, e) for e in events])


async def value(client: httpx.AsyncClient, **params: Any) -> Any:
    r = await client.get("/v1/value", params={**RANGE, **params})
    assert r.status_code == 200, r.text
    return r.json()


class TestWorkedExample:
    async def test_the_readme_numbers(self, scorer: httpx.AsyncClient, engine: AsyncEngine) -> None:
        await apply(engine, EXAMPLE)
        body = await value(scorer)
        assert body["years"] == 1.0
        life = body["lifetime"]
        assert life["months"] == ["2025-01-01", "2025-02-01"]
        assert (life["active"], life["retained"]) == (6, 2)
        assert life["expected_lifetime_years"] == pytest.approx(0.125)
        jpy, usd = body["currencies"]
        assert (jpy["currency"], usd["currency"]) == ("JPY", "USD")
        assert (jpy["orders"], jpy["revenue"], jpy["revenue_minor"], jpy["customers"]) == (
            4,
            "7100",
            7100,
            3,
        )
        assert jpy["average_order_value"] == "1775"
        assert jpy["purchase_frequency"] == pytest.approx(4 / 3)
        assert jpy["clv"] == "296"  # 7100 / 3 / 1 year × 0.125 years = 295.83
        assert jpy["clv_formula"] == "1775 JPY × 1.333 orders/year × 0.125 years = 296 JPY"
        assert jpy["insufficient"] is False
        cats = {c["category"]: c for c in jpy["by_nps"]}
        assert list(cats) == ["promoter", "passive", "detractor", "unrated"]
        a, b, c = cats["promoter"], cats["detractor"], cats["unrated"]
        assert (a["n"], a["revenue_per_customer"], a["repeat_customers"], a["clv"]) == (
            1,
            "2600",
            1,
            "325",
        )
        assert (a["repurchase_rate"], a["insufficient"]) == (100.0, True)
        assert a["revenue_per_customer_margin"] is None  # one customer: no spread
        assert (b["revenue_per_customer"], b["clv"], b["repurchase_rate"]) == ("3000", "375", 0.0)
        assert c["clv"] == "188"  # 187.5, half to even
        assert cats["passive"]["n"] == 0
        assert cats["passive"]["revenue_per_customer"] is None
        assert jpy["revenue_at_risk"]["customers"] == 1
        assert jpy["revenue_at_risk"]["revenue"] == "3000"
        # Dollars stay apart, in their own notation.
        assert (usd["revenue"], usd["average_order_value"], usd["clv"]) == (
            "12.50",
            "12.50",
            "1.56",
        )
        assert usd["revenue_at_risk"]["revenue"] == "0.00"

    async def test_margins_groups_and_filters(
        self, scorer: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        events: list[Any] = [
            order_event(f"o{i}", amount, customer_id=f"p{i}", occurred_at=day(3, 1 + i))
            for i, amount in enumerate(["100", "200", "300", "600"])
        ]
        events += [
            response_event(customer_id=f"p{i}", score=9, occurred_at=day(1, 1)) for i in range(4)
        ]
        events.append(
            order_event("s", "50", customer_id="p0", channel="sms", occurred_at=day(4, 1))
        )
        await apply(engine, events)
        body = await value(scorer, group_by="channel")
        (jpy,) = body["currencies"]
        promoters = jpy["by_nps"][0]
        # Revenue per customer: 150, 200, 300, 600 → mean 312.5, s = 201.56; × 1.96 / 2.
        assert promoters["revenue_per_customer"] == "312"
        assert promoters["revenue_per_customer_margin"] == "198"
        assert promoters["repurchase_rate"] == 25.0
        assert promoters["insufficient"] is False
        assert [g["group"] for g in jpy["groups"]] == ["sms", "web"]
        sms = jpy["groups"][0]
        assert (sms["orders"], sms["revenue"], sms["customers"]) == (1, "50", 1)
        web = await value(scorer, channel="web")
        assert web["currencies"][0]["revenue"] == "1200"
        assert web["filters"] == {"channel": "web"}


class TestRefused:
    @pytest.mark.parametrize(
        ("params", "field"),
        [
            ({"touchpoint": "checkout"}, "touchpoint"),
            ({"survey_type": "relationship"}, "survey_type"),
            ({"group_by": "touchpoint"}, "group_by"),
            ({"from": "2020-01-01T00:00:00Z", "to": "2021-02-05T00:00:00Z"}, "from"),
            ({"from": "1999-12-31T23:00:00Z"}, "from"),
        ],
    )
    async def test_bad_parameters_are_a_422_naming_the_field(
        self, scorer: httpx.AsyncClient, params: dict[str, str], field: str
    ) -> None:
        r = await scorer.get("/v1/value", params=params)
        assert r.status_code == 422, r.text
        assert r.json()["field"] == field

    async def test_nothing_sold_is_an_empty_answer(self, scorer: httpx.AsyncClient) -> None:
        body = await value(scorer)
        assert body["currencies"] == []
        assert body["lifetime"]["expected_lifetime_years"] is None


class TestGauges:
    async def test_revenue_at_risk_and_clv_by_category_for_the_configured_currencies(
        self, scorer: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        from services.scorer import gauges

        now = datetime.now(UTC)
        await apply(
            engine,
            [
                order_event("G1", "3000", customer_id="g", occurred_at=now - timedelta(days=40)),
                response_event(customer_id="g", score=2, occurred_at=now - timedelta(days=39)),
                order_event("G2", "9.99", "EUR", customer_id="h", occurred_at=now),
                order_event("G3", "70", "GBP", customer_id="h", occurred_at=now),
            ],
        )
        await gauges.refresh_value(engine, ["JPY", "EUR", "USD"])
        text = (await scorer.get("/metrics")).text
        assert 'cxloop_scorer_revenue_at_risk{currency="JPY"} 3000.0' in text
        assert 'cxloop_scorer_revenue_at_risk{currency="USD"} 0.0' in text
        assert 'cxloop_scorer_clv{currency="JPY",nps_category="detractor"}' in text
        assert 'cxloop_scorer_clv{currency="EUR",nps_category="unrated"}' in text
        assert 'currency="GBP"' not in text  # not configured: no series
