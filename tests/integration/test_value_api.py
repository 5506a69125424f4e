"""GET /v1/value: the README's worked example, currencies apart, groups, minimum n, 422s."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.scorer import gauges
from services.scorer.app import create_app
from services.scorer.consumer import BatchHandler
from services.scorer.schemas import VALUE_EXAMPLE, ValueOut, ValueWindow
from services.scorer.snapshots import ValueSnapshots
from shared.kafka import Decoded
from shared.settings import AuthSettings, DatabaseSettings, KafkaSettings, ScorerSettings
from tests.builders import order_event, refund_event, response_event
from tests.helpers import eventually, serving

# 365.25 days: one year exactly.
RANGE = {"from": "2025-01-01T00:00:00Z", "to": "2026-01-01T06:00:00Z"}
# The worked example's: January and February 2025.
EXAMPLE_RANGE = {"from": "2025-01-01T00:00:00Z", "to": "2025-03-01T00:00:00Z"}


def day(month: int, d: int, year: int = 2025) -> datetime:
    return datetime(year, month, d, 12, tzinfo=UTC)


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
    # Before the range, in the CLV year.
    order_event("C0", "840", customer_id="c", occurred_at=day(12, 20, 2024)),
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


Scorers = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def scorers(
    kafka_settings: KafkaSettings,
    database_url: str,
    auth: AuthSettings,
    api_key: str,
    scorer_settings: ScorerSettings,
) -> Scorers:
    """Start a scorer when the test says, with its settings changed by ``overrides``."""

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        settings = scorer_settings.model_copy(update={"min_n": 3, **overrides})
        app = create_app(kafka_settings, DatabaseSettings(url=database_url), auth, settings)
        async with serving(app, api_key, "scorer") as client:
            yield client

    return start


async def apply(engine: AsyncEngine, events: Sequence[Any]) -> None:
    await BatchHandler(engine)([Decoded(None, e) for e in events])


async def value(client: httpx.AsyncClient, **params: Any) -> Any:
    r = await client.get("/v1/value", params={**RANGE, **params})
    assert r.status_code == 200, r.text
    return r.json()


class TestWorkedExample:
    async def test_the_readme_numbers(self, scorer: httpx.AsyncClient, engine: AsyncEngine) -> None:
        await apply(engine, EXAMPLE)
        body = await value(scorer, **EXAMPLE_RANGE)
        assert body["clv_year"] == {"from": "2024-03-01T00:00:00Z", "to": "2025-03-01T00:00:00Z"}
        life = body["lifetime"]
        assert life["months"][0] == "2024-02-01"
        assert life["months"][-1] == "2025-01-01"
        assert len(life["months"]) == 12
        # December: c, again in January; January: a, b, c, d, of them a and b in February.
        assert (life["active"], life["retained"]) == (5, 3)
        assert life["expected_lifetime_years"] == pytest.approx(2.5 / 12)
        jpy, usd = body["currencies"]
        assert (jpy["currency"], usd["currency"]) == ("JPY", "USD")
        assert (jpy["orders"], jpy["revenue"], jpy["revenue_minor"], jpy["customers"]) == (
            4,
            "7100",
            7100,
            3,
        )
        assert jpy["average_order_value"] == "1775"
        inputs = jpy["clv_inputs"]
        assert (inputs["orders"], inputs["revenue"], inputs["customers"]) == (5, "7940", 3)
        assert inputs["average_order_value"] == "1588"
        assert inputs["purchase_frequency"] == pytest.approx(5 / 3)
        assert jpy["clv"] == "551"  # 7940 / 3 × 2.5 / 12 = 551.39
        assert jpy["clv_formula"] == "1588 JPY × 1.667 orders/year × 0.2083 years ≈ 551 JPY"
        assert jpy["insufficient"] is False
        cats = {c["category"]: c for c in jpy["by_nps"]}
        assert list(cats) == ["promoter", "passive", "detractor", "unrated"]
        a, b, c = cats["promoter"], cats["detractor"], cats["unrated"]
        assert (a["n"], a["revenue_per_customer"], a["repeat_customers"], a["clv"]) == (
            1,
            "2600",
            1,
            "542",
        )
        assert (a["repurchase_rate"], a["insufficient"]) == (100.0, True)
        # One customer: the Wilson interval, not "100% ± 0".
        assert a["repurchase_rate_low"] == pytest.approx(20.6543, abs=1e-3)
        assert a["repurchase_rate_high"] == 100.0
        assert a["repurchase_rate_margin"] == pytest.approx(39.6728, abs=1e-3)
        assert a["revenue_per_customer_margin"] is None  # one customer: no spread
        assert (b["revenue_per_customer"], b["clv"], b["repurchase_rate"]) == ("3000", "625", 0.0)
        assert b["repurchase_rate_high"] == pytest.approx(79.3457, abs=1e-3)
        # c's revenue over the CLV year, 840 + 1500, not only the range's 1500.
        assert (c["revenue_per_customer"], c["clv_revenue_per_customer"]) == ("1500", "2340")
        assert c["clv"] == "488"  # 487.5, half to even
        assert cats["passive"]["n"] == 0
        assert cats["passive"]["revenue_per_customer"] is None
        assert cats["passive"]["repurchase_rate_low"] is None
        assert jpy["revenue_at_risk"]["customers"] == 1
        assert jpy["revenue_at_risk"]["revenue"] == "3000"
        assert jpy["revenue_at_risk"]["from"] == body["clv_year"]["from"]
        # Dollars stay apart, in their own notation.
        assert (usd["revenue"], usd["average_order_value"], usd["clv"]) == (
            "12.50",
            "12.50",
            "2.60",
        )
        assert usd["revenue_at_risk"]["revenue"] == "0.00"
        # The OpenAPI example is this answer in yen.
        example = VALUE_EXAMPLE
        assert ValueOut.model_json_schema()["examples"] == [example]
        assert {**body, "as_of": example["as_of"], "currencies": [jpy]} == example

    async def test_clv_does_not_depend_on_the_range_s_length(
        self, scorer: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        await apply(engine, EXAMPLE)
        to = EXAMPLE_RANGE["to"]
        whole = await value(scorer, **EXAMPLE_RANGE)
        clvs = {
            ago: await value(scorer, **{"from": f"{start}", "to": to})
            for ago, start in (
                ("a year", "2024-03-01T00:00:00Z"),
                ("a month", "2025-02-01T00:00:00Z"),
                ("an hour", "2025-02-28T23:00:00Z"),
                ("a microsecond", "2025-02-28T23:59:59.999999Z"),
            )
        }
        for body in clvs.values():
            assert body["clv_year"] == whole["clv_year"]
            assert body["lifetime"] == whole["lifetime"]
            got = {c["currency"]: c for c in body["currencies"]}
            for c in whole["currencies"]:
                mine = got[c["currency"]]
                assert (mine["clv"], mine["clv_inputs"]) == (c["clv"], c["clv_inputs"])
                assert [k["clv"] for k in mine["by_nps"]] == [k["clv"] for k in c["by_nps"]]
        # An hour with no order still has the CLV of the year before it.
        assert [c["orders"] for c in clvs["an hour"]["currencies"]] == [0, 0]

    async def test_the_lifetime_never_reads_past_to(
        self, scorer: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        await apply(engine, EXAMPLE)
        before = await value(scorer, **EXAMPLE_RANGE)
        # March's activity (after `to`) and a new customer in February (whose pair with
        # March is not over) change nothing: only pairs ending by February count.
        await apply(
            engine,
            [
                order_event("L1", "100", customer_id="e", occurred_at=day(2, 27)),
                order_event("L2", "100", customer_id="d", occurred_at=day(3, 2)),
                response_event(customer_id="a", score=9, occurred_at=day(3, 3)),
            ],
        )
        after = await value(scorer, **EXAMPLE_RANGE)
        assert after["lifetime"] == before["lifetime"]

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
            ({"location": "x" * 129}, "location"),
            ({"business_unit": "x" * 129}, "business_unit"),
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


def recent(events_ago: Sequence[tuple[Any, timedelta]], now: datetime) -> list[Any]:
    """The events, each moved to ``now`` less its age."""
    return [e.model_copy(update={"occurred_at": now - ago}) for e, ago in events_ago]


# The worked example's customers, within the last 30 days (b's order 60 days ago: in 90d
# and 365d only; c's 200 days ago: in 365d only).
RECENT = [
    (EXAMPLE[0], timedelta(days=20)),
    (EXAMPLE[1], timedelta(days=10)),
    (EXAMPLE[2], timedelta(days=5)),
    (EXAMPLE[3], timedelta(days=8)),
    (EXAMPLE[4], timedelta(days=60)),
    (EXAMPLE[5], timedelta(days=50)),
    (EXAMPLE[6], timedelta(days=200)),
    (EXAMPLE[7], timedelta(days=3)),
]
LABELS = ("window", "snapshot", "as_of")


def figures(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in LABELS}


class TestSnapshots:
    async def test_a_snapshot_is_what_its_range_computed_live_gives(
        self, scorers: Scorers, engine: AsyncEngine
    ) -> None:
        await apply(engine, recent(RECENT, datetime.now(UTC)))
        async with scorers() as client:
            for window in ("30d", "90d", "365d"):
                r = await client.get("/v1/value", params={"window": window})
                assert r.status_code == 200, r.text
                snap = r.json()
                assert (snap["window"], snap["snapshot"]) == (window, True)
                assert snap["as_of"] == snap["to"]
                live = await value(client, **{"from": snap["from"], "to": snap["to"]})
                assert (live["window"], live["snapshot"]) == (None, False)
                assert figures(live) == figures(snap)
                assert snap["currencies"]
            # The first 365-day snapshot holds every order.
            assert [c["orders"] for c in snap["currencies"]] == [4, 1]
            # Filters, group_by, other windows and explicit ranges are computed live.
            for params in (
                {"window": "30d", "channel": "sms"},
                {"window": "30d", "group_by": "channel"},
                {"window": "7d"},
                {"from": snap["from"]},
            ):
                r = await client.get("/v1/value", params=params)
                assert r.status_code == 200, r.text
                assert r.json()["snapshot"] is False

    async def test_the_first_request_computes_a_window_and_keeps_it(
        self, engine: AsyncEngine
    ) -> None:
        await apply(engine, recent(RECENT, datetime.now(UTC)))
        snapshots = ValueSnapshots(min_n=3)
        first = await snapshots.value(engine, ValueWindow.QUARTER)
        assert first.snapshot
        assert first.window == ValueWindow.QUARTER
        assert [c.orders for c in first.currencies] == [3, 1]
        await apply(engine, [order_event("E1", "100", customer_id="e")])
        assert await snapshots.value(engine, ValueWindow.QUARTER) is first
        await snapshots.refresh(engine)
        again = await snapshots.value(engine, ValueWindow.QUARTER)
        assert again.as_of > first.as_of
        assert [c.orders for c in again.currencies] == [4, 1]

    async def test_the_scorer_refreshes_its_snapshots(
        self, scorers: Scorers, engine: AsyncEngine
    ) -> None:
        async with scorers(value_refresh_seconds=0.05) as client:
            before = await value_of(client, "30d")
            await apply(engine, [order_event("N1", "700", customer_id="n")])
            after = await eventually(
                lambda: value_of(client, "30d"),
                lambda body: body["as_of"] > before["as_of"] and body["currencies"] != [],
            )
        assert before["currencies"] == []
        assert after["snapshot"] is True
        assert after["currencies"][0]["revenue"] == "700"


async def value_of(client: httpx.AsyncClient, window: str) -> Any:
    r = await client.get("/v1/value", params={"window": window})
    assert r.status_code == 200, r.text
    return r.json()


class TestGauges:
    async def test_revenue_at_risk_and_clv_by_category_for_the_configured_currencies(
        self, scorer: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
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
        snapshots = ValueSnapshots(min_n=1)
        await gauges.refresh_value(engine, ["JPY", "EUR", "USD"], snapshots)
        text = (await scorer.get("/metrics")).text
        assert 'cxloop_scorer_revenue_at_risk{currency="JPY"} 3000.0' in text
        assert 'cxloop_scorer_revenue_at_risk{currency="USD"} 0.0' in text
        assert 'cxloop_scorer_clv{currency="JPY",nps_category="detractor"}' in text
        assert 'cxloop_scorer_clv{currency="EUR",nps_category="unrated"}' in text
        assert 'currency="GBP"' not in text  # not configured: no series
        # The gauges are the year's snapshot, not a computation of their own.
        year = await snapshots.value(engine, ValueWindow.YEAR)
        jpy = next(c for c in year.currencies if c.currency == "JPY")
        risk = float(Decimal(jpy.revenue_at_risk.revenue))
        assert f'cxloop_scorer_revenue_at_risk{{currency="JPY"}} {risk}' in text
        assert jpy.clv is not None
        assert (
            f'cxloop_scorer_clv{{currency="JPY",nps_category="all"}} {float(Decimal(jpy.clv))}'
            in text
        )
