"""An answer's alert carries what the customer bought in the year before it, and a customer
worth more than the configured threshold makes it critical (issue 13)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.alerting import gauges, repository, service, timers
from services.alerting.config import AlertingConfig
from services.alerting.consumer import AlertHandler
from services.alerting.models import alerts as alerts_table
from services.alerting.models import orders as orders_table
from services.alerting.models import refunds as refunds_table
from services.alerting.schemas import Alert, ResolveIn
from services.servers import free_port
from shared.events import CustomerErased, TouchpointEvent
from shared.kafka import Decoded
from shared.money import MAX_MINOR
from shared.privacy import Hasher
from shared.settings import KafkaSettings, SlaSettings
from shared.topics import Topic
from tests.builders import response_event
from tests.conftest import AlertingFactory
from tests.helpers import eventually, http_server, produce, stays
from tests.processes import TEST_HASH_KEY

NOW = datetime.now(UTC).replace(microsecond=0)
CONFIG = AlertingConfig.model_validate({"high_value": {"JPY": 100000, "usd": "1000"}})


def order(customer: str, order_id: str, amount: str, currency: str = "JPY", **fields: Any) -> Any:
    """An ``order.completed`` (or, with ``refund_id``, an ``order.refunded``)."""
    at = fields.pop("at", NOW - timedelta(days=3))
    refund = "refund_id" in fields
    return TouchpointEvent.model_validate(
        {
            "event_id": uuid.uuid4(),
            "occurred_at": at,
            "received_at": at,
            "source": "shop",
            "channel": "web",
            "customer_id": customer,
            "type": "order.refunded" if refund else "order.completed",
            "order_id": order_id,
            "amount": amount,
            "currency": currency,
            **fields,
        }
    )


def batch(*events: Any) -> list[Decoded]:
    return [Decoded(None, e) for e in events]


@pytest.fixture
def handler(engine: AsyncEngine) -> AlertHandler:
    return AlertHandler(engine, SlaSettings(), CONFIG, hasher=Hasher(TEST_HASH_KEY.encode()))


async def answer(
    engine: AsyncEngine, handler: AlertHandler, customer: str, score: int = 5, **fields: Any
) -> Alert:
    """Apply one answer that opens an alert (NPS 5: a warning by the default rules)."""
    await handler(batch(response_event(customer_id=customer, score=score, **fields)))
    (alert,) = (await service.alerts_for_customer(engine, customer)).items
    return alert


def value_of(alert: Alert) -> list[tuple[str, str, int, bool]]:
    assert alert.value is not None, "an answer's alert always has its value computed"
    return [(v.currency, v.revenue, v.orders, v.high_value) for v in alert.value]


class TestValueOnTheAlert:
    async def test_orders_then_an_answer(self, engine: AsyncEngine, handler: AlertHandler) -> None:
        await handler(
            batch(
                order("aoi", "o-1", "30000"),
                order("aoi", "o-2", "12000", at=NOW - timedelta(days=200)),
                order("aoi", "o-3", "99999", at=NOW - timedelta(days=400)),  # a year before
                order("ben", "o-4", "50000"),  # someone else's
            )
        )
        alert = await answer(engine, handler, "aoi")
        assert value_of(alert) == [("JPY", "42000", 2, False)]
        assert alert.value is not None
        assert alert.value[0].threshold == "100000"
        assert (alert.severity, alert.high_value, alert.value_reason) == ("warning", False, None)

    async def test_an_order_in_the_same_batch_counts_and_none_says_so(
        self, engine: AsyncEngine, handler: AlertHandler
    ) -> None:
        nobody = await answer(engine, handler, "carl")
        assert nobody.value == []
        await handler(
            batch(response_event(customer_id="dora", score=4), order("dora", "o-9", "500"))
        )
        (alert,) = (await service.alerts_for_customer(engine, "dora")).items
        assert value_of(alert) == [("JPY", "500", 1, False)]

    async def test_the_window_is_the_year_before_the_answer(
        self, engine: AsyncEngine, handler: AlertHandler
    ) -> None:
        await handler(
            batch(
                order("eri", "o-older", "50000", at=NOW - timedelta(days=396)),
                order("eri", "o-old", "7000", at=NOW - timedelta(days=390)),
                order("eri", "o-then", "2000", at=NOW - timedelta(days=30)),
                order("eri", "o-after", "3000", at=NOW - timedelta(days=20)),
            )
        )
        # An answer given a month ago looks back to 395 days ago, and no later than itself:
        # the order completed ten days after it is not in its 12 months.
        alert = await answer(engine, handler, "eri", occurred_at=NOW - timedelta(days=30))
        assert value_of(alert) == [("JPY", "9000", 2, False)]

    async def test_an_answer_dated_ahead_counts_as_given_now(
        self, engine: AsyncEngine, handler: AlertHandler
    ) -> None:
        await handler(batch(order("eve", "o-1", "4000", at=NOW - timedelta(days=350))))
        # Dated a month ahead (a wrong clock): its year is the one up to now, not up to then.
        alert = await answer(engine, handler, "eve", occurred_at=NOW + timedelta(days=30))
        assert value_of(alert) == [("JPY", "4000", 1, False)]

    async def test_refunds_reduce_it_whatever_their_order(
        self, engine: AsyncEngine, handler: AlertHandler
    ) -> None:
        early_refund = order("fumi", "o-1", "2000", refund_id="r-1")
        await handler(batch(early_refund))  # before its order
        await handler(
            batch(
                order("fumi", "o-1", "10000"),
                order("fumi", "o-1", "1000", refund_id="r-2"),
                order("fumi", "o-2", "5000"),
                order("fumi", "o-2", "4000", refund_id="r-3"),
                order("fumi", "o-2", "4000", refund_id="r-4"),  # more than the order: 0, not -3000
                order("fumi", "o-1", "1", "USD", refund_id="r-5"),  # not the order's currency
                order("gus", "o-1", "3000", refund_id="r-6"),  # not the order's customer
            )
        )
        alert = await answer(engine, handler, "fumi")
        assert value_of(alert) == [("JPY", "7000", 2, False)]

    async def test_a_sum_past_bigint_still_opens_the_alert(
        self, engine: AsyncEngine, handler: AlertHandler
    ) -> None:
        # Ten thousand orders at the largest amount accepted: 10**19 yen, past a bigint.
        async with engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "INSERT INTO alerting_orders (order_id, customer_id, currency, amount_minor,"
                    " completed_at) SELECT 'o-' || n, 'whale', 'JPY', :amount, now() - interval"
                    " '1 day' FROM generate_series(1, 10000) AS n"
                ),
                {"amount": MAX_MINOR},
            )
        alert = await answer(engine, handler, "whale")
        assert value_of(alert) == [("JPY", str(MAX_MINOR * 10_000), 10_000, True)]
        assert alert.severity == "critical"

    async def test_redelivered_and_repeated_orders_count_once(
        self, engine: AsyncEngine, handler: AlertHandler
    ) -> None:
        first = order("gen", "o-1", "60000")
        refund = order("gen", "o-1", "10000", refund_id="r-1")
        await handler(batch(first, refund))
        await handler(batch(first, refund))  # redelivered: the ledger knows both
        # The same order and refund again under new event ids (a webhook retried): the
        # order's first completion stands, and the refund counts once.
        await handler(
            batch(
                order("gen", "o-1", "90000"),
                order("gen", "o-1", "10000", refund_id="r-1"),
                order("gen", "o-2", "30000"),
                order("gen", "o-2", "99000"),  # in one batch too: the first one counts
            )
        )
        alert = await answer(engine, handler, "gen")
        assert value_of(alert) == [("JPY", "80000", 2, False)]
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.select(sa.func.count()).select_from(orders_table))).one()
        assert rows[0] == 2

    async def test_a_conflicting_completion_is_counted_and_the_first_stands(
        self, engine: AsyncEngine, handler: AlertHandler
    ) -> None:
        before = {kind: _conflicts(kind) for kind in ("customer", "currency", "amount")}
        first = order("hal", "o-1", "5000")
        await handler(batch(first, order("hal", "o-2", "100")))
        other_customer = order("ida", "o-1", "5000")
        repeats = [
            order("hal", "o-1", "5000"),  # the same order again: no conflict
            other_customer,
            order("hal", "o-1", "50.00", "USD"),
            order("hal", "o-1", "6000"),
            order("hal", "o-2", "200"),
        ]
        await handler(batch(*repeats))
        await handler(batch(other_customer))  # redelivered: counted once
        after = {kind: _conflicts(kind) - n for kind, n in before.items()}
        assert after == {"customer": 1, "currency": 1, "amount": 2}
        alert = await answer(engine, handler, "hal")
        assert value_of(alert) == [("JPY", "5100", 2, False)]

    async def test_a_conflict_in_a_batch_that_is_retried_is_counted_once(
        self, engine: AsyncEngine, handler: AlertHandler, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        await handler(batch(order("kim", "o-1", "5000")))
        before = _conflicts("amount")
        track = timers.track
        calls: list[int] = []

        async def fails_once(*args: Any, **kwargs: Any) -> None:
            calls.append(1)
            if len(calls) == 1:
                raise sa.exc.OperationalError("INSERT", {}, ConnectionResetError())
            await track(*args, **kwargs)

        monkeypatch.setattr(timers, "track", fails_once)
        retried = batch(order("kim", "o-1", "6000"))
        with pytest.raises(sa.exc.OperationalError):
            await handler(retried)  # rolled back: the consumer retries the batch
        assert _conflicts("amount") == before
        await handler(retried)
        assert _conflicts("amount") == before + 1

    async def test_a_replay_loads_orders_the_ledger_already_applied(
        self, engine: AsyncEngine, handler: AlertHandler
    ) -> None:
        completed = order("jo", "o-1", "8000")
        refund = order("jo", "o-1", "1000", refund_id="r-1")
        await handler(batch(completed, refund))
        # As when the events were applied before alerting kept orders (the ledger has them).
        async with engine.begin() as conn:
            await conn.execute(orders_table.delete())
            await conn.execute(refunds_table.delete())
        await handler(batch(completed, refund))  # the topic replayed
        alert = await answer(engine, handler, "jo")
        assert value_of(alert) == [("JPY", "7000", 1, False)]

    async def test_an_alert_opened_before_values_has_none(
        self, engine: AsyncEngine, handler: AlertHandler
    ) -> None:
        alert = await answer(engine, handler, "kit")
        assert alert.value == []  # computed: no orders
        async with engine.begin() as conn:
            await conn.execute(sa.update(alerts_table).values(value=None))  # as before 0021
        (old,) = (await service.alerts_for_customer(engine, "kit")).items
        assert old.value is None

    async def test_each_currency_is_listed_apart(
        self, engine: AsyncEngine, handler: AlertHandler
    ) -> None:
        await handler(
            batch(
                order("hana", "o-1", "1500"),
                order("hana", "o-2", "12.50", "USD"),
                order("hana", "o-3", "7.25", "usd"),
                order("hana", "o-4", "3.125", "KWD"),
            )
        )
        alert = await answer(engine, handler, "hana")
        assert value_of(alert) == [
            ("JPY", "1500", 1, False),
            ("KWD", "3.125", 1, False),
            ("USD", "19.75", 2, False),
        ]
        assert alert.value is not None
        assert alert.value[1].threshold is None  # no threshold for KWD

    async def test_a_fold_keeps_the_value_the_alert_opened_with(
        self, engine: AsyncEngine, handler: AlertHandler
    ) -> None:
        await handler(batch(order("ivo", "o-1", "100")))
        opened = await answer(engine, handler, "ivo")
        await handler(batch(order("ivo", "o-2", "200000")))
        await handler(batch(response_event(customer_id="ivo", score=5)))
        (folded,) = (await service.alerts_for_customer(engine, "ivo")).items
        assert folded.occurrences == 2
        assert folded.value == opened.value
        assert folded.severity == "warning"


class TestHighValue:
    async def test_at_the_threshold_the_alert_is_critical_and_says_why(
        self, engine: AsyncEngine, handler: AlertHandler
    ) -> None:
        await handler(
            batch(
                order("jun", "o-1", "70000"),
                order("jun", "o-2", "50000"),
                order("jun", "o-3", "400.00", "USD"),
            )
        )
        alert = await answer(engine, handler, "jun", score=6)
        assert alert.severity == "critical"
        assert alert.high_value is True
        assert value_of(alert) == [("JPY", "120000", 2, True), ("USD", "400.00", 1, False)]
        assert alert.value_reason == (
            "high-value customer: ¥120,000 in the 12 months up to the answer (threshold ¥100,000)"
        )
        by_api = await service.queue(engine)
        assert [a.high_value for a in by_api.items] == [True]

        await handler(batch(order("kai", "o-9", "1000"), order("kai", "o-9", "1", refund_id="r")))
        under = await answer(engine, handler, "kai", score=6)
        # 999.00 of 1,000.00 is not enough, whatever the rule asked for.
        assert (under.severity, under.high_value, under.value_reason) == ("warning", False, None)
        exactly = [order("lea", "o-10", "1000.00", "USD")]
        await handler(batch(*exactly))
        assert (await answer(engine, handler, "lea", score=6)).severity == "critical"

    async def test_without_thresholds_severity_is_the_rules(self, engine: AsyncEngine) -> None:
        plain = AlertHandler(engine, SlaSettings(), hasher=Hasher(TEST_HASH_KEY.encode()))
        await plain(batch(order("max", "o-1", "9999999")))
        alert = await answer(engine, plain, "max")
        assert (alert.severity, alert.high_value) == ("warning", False)
        assert value_of(alert) == [("JPY", "9999999", 1, False)]


class TestErasureAndRetention:
    async def test_the_purge_reads_old_orders_from_the_completed_at_index_unsorted(
        self, engine: AsyncEngine
    ) -> None:
        async with engine.begin() as conn:
            await conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
            rows = await conn.execute(
                sa.text(f"EXPLAIN {repository._PURGE_ORDERS.text}"),
                {"older_than": timedelta(days=400), "chunk": 5000},
            )
            plan = "\n".join(row[0] for row in rows)
        assert "alerting_orders_completed" in plan, plan
        assert "Sort" not in plan, plan

    async def test_erasure_pseudonymises_orders_and_repeats_still_count_once(
        self, engine: AsyncEngine, handler: AlertHandler
    ) -> None:
        erased = CustomerErased(event_id=uuid.uuid4(), requested_at=NOW, customer_id="nao")
        completed = order("nao", "o-1", "150000")
        await handler(batch(completed, order("nao", "o-1", "50000", refund_id="r-1")))
        before = await answer(engine, handler, "nao")
        await handler(batch(erased))
        async with engine.connect() as conn:
            owners = {
                table.name: set((await conn.execute(sa.select(table.c.customer_id))).scalars())
                for table in (orders_table, refunds_table)
            }
        assert owners["alerting_orders"] == owners["alerting_refunds"]
        (pseudonym,) = owners["alerting_orders"]
        assert pseudonym.startswith("erased:")
        (kept,) = (await service.alerts_for_customer(engine, pseudonym)).items
        assert kept.id == before.id
        assert kept.value == before.value
        # A later copy of the same order (applied pseudonymised) and a new answer.
        await handler(batch(order("nao", "o-1", "150000"), order("nao", "o-2", "1000")))
        await service.resolve(
            engine, CONFIG, kept.id, service.Actor("test"), ResolveIn(note="called")
        )
        await handler(batch(response_event(customer_id="nao", score=5)))
        fresh = next(
            a
            for a in (await service.alerts_for_customer(engine, pseudonym)).items
            if a.id != kept.id
        )
        assert value_of(fresh) == [("JPY", "101000", 2, True)]
        assert (await service.alerts_for_customer(engine, "nao")).items == []

    async def test_the_purge_reads_by_age_and_skips_rows_an_erasure_holds(
        self, engine: AsyncEngine, handler: AlertHandler
    ) -> None:
        async with engine.connect() as conn:
            indexes = set(
                (
                    await conn.execute(
                        sa.text(
                            "SELECT indexdef FROM pg_indexes WHERE tablename IN"
                            " ('alerting_orders', 'alerting_refunds')"
                        )
                    )
                ).scalars()
            )
        assert any(i.endswith("(completed_at)") for i in indexes), indexes
        assert any(i.endswith("(recorded_at)") for i in indexes), indexes
        old = NOW - timedelta(days=500)
        await handler(
            batch(
                *(order("pam", f"o-{n}", "100", at=old) for n in range(5)),
                order("rex", "o-rex", "100", at=old),
            )
        )
        # An erasure of rex in flight holds his row: the purge goes on without it.
        async with engine.connect() as erasing:
            await erasing.begin()
            held = orders_table.c.customer_id == "rex"
            await erasing.execute(orders_table.update().where(held).values(customer_id="erased:x"))
            gone = await asyncio.wait_for(
                gauges.purge_orders(engine, timedelta(days=400), chunk=2), timeout=60
            )
            assert gone == 5
            await erasing.commit()
        assert await _order_count(engine) == 1
        assert await gauges.purge_orders(engine, timedelta(days=400), chunk=2) == 1
        assert await _order_count(engine) == 0

    async def test_orders_past_retention_are_deleted(
        self, engine: AsyncEngine, handler: AlertHandler
    ) -> None:
        await handler(
            batch(
                order("olu", "o-old", "100", at=NOW - timedelta(days=500)),
                order("olu", "o-old", "10", refund_id="r-1"),
                order("olu", "o-new", "100"),
                order("olu", "o-new", "10", refund_id="r-2"),
            )
        )
        await gauges.purge_orders(engine, timedelta(days=400))
        async with engine.connect() as conn:
            kept = set((await conn.execute(sa.select(orders_table.c.order_id))).scalars())
            refunds = set((await conn.execute(sa.select(refunds_table.c.refund_id))).scalars())
        assert kept == {"o-new"}
        # The refund of the deleted order is recorded today: it goes once it is as old.
        assert refunds == {"r-1", "r-2"}
        async with engine.begin() as conn:
            await conn.execute(
                refunds_table.update().values(recorded_at=sa.func.now() - timedelta(days=401))
            )
        await gauges.purge_orders(engine, timedelta(days=400))
        async with engine.connect() as conn:
            refunds = set((await conn.execute(sa.select(refunds_table.c.refund_id))).scalars())
        assert refunds == {"r-2"}  # its order is kept


class Hook:
    """A webhook receiver recording each notification id it was sent, and the bodies."""

    def __init__(self) -> None:
        self.bodies: dict[str, dict[str, Any]] = {}

    async def handle(self, request: Request) -> Response:
        self.bodies[request.headers["webhook-id"]] = await request.json()
        return JSONResponse({"ok": True})


async def _count(hook: Hook) -> int:
    return len(hook.bodies)


class TestRoutingOnHighValue:
    async def test_a_route_matching_high_value_reaches_its_receiver(
        self, kafka_settings: KafkaSettings, alerting_with: AlertingFactory, engine: AsyncEngine
    ) -> None:
        vip, everyone = Hook(), Hook()
        app = Starlette(
            routes=[
                Route("/vip", vip.handle, methods=["POST"]),
                Route("/all", everyone.handle, methods=["POST"]),
            ]
        )
        async with http_server(app, free_port()) as url:
            config = AlertingConfig.model_validate(
                {
                    "receivers": [
                        {"name": "vip", "type": "webhook", "url": f"{url}/vip"},
                        {"name": "all", "type": "webhook", "url": f"{url}/all"},
                    ],
                    "routes": [
                        {"match": {"high_value": True}, "receiver": "vip"},
                        {"receiver": "all"},
                    ],
                    "high_value": {"JPY": 100000},
                }
            )
            async with alerting_with(config) as client:
                await produce(
                    kafka_settings,
                    Topic.TOUCHPOINTS,
                    [order("rich", f"o-{n}", "40000") for n in range(3)]
                    + [order("poor", "o-9", "40000")],
                )
                # Orders and answers travel on different topics: wait until the orders are in.
                await eventually(lambda: _order_count(engine), lambda n: n == 4, timeout=30)
                await produce(
                    kafka_settings,
                    Topic.RESPONSES,
                    [
                        response_event(customer_id="rich", score=5),
                        response_event(customer_id="poor", score=5),
                    ],
                )
                await eventually(lambda: _count(vip), lambda n: n == 1, timeout=30)
                await eventually(lambda: _count(everyone), lambda n: n == 1, timeout=30)
                await stays(lambda: _count(vip), lambda n: n == 1, seconds=1)
                (rich,) = vip.bodies.values()
                (poor,) = everyone.bodies.values()
                alert = rich["data"]["alert"]
                assert (alert["customer_id"], alert["severity"], alert["high_value"]) == (
                    "rich",
                    "critical",
                    True,
                )
                assert alert["value"] == [
                    {
                        "currency": "JPY",
                        "revenue": "120000",
                        "orders": 3,
                        "threshold": "100000",
                        "high_value": True,
                    }
                ]
                assert alert["value_reason"] == (
                    "high-value customer: ¥120,000 in the 12 months up to the answer "
                    "(threshold ¥100,000)"
                )
                assert "¥120,000 in 12 months, 3 orders" in rich["data"]["summary"]
                assert poor["data"]["alert"]["customer_id"] == "poor"
                assert poor["data"]["alert"]["severity"] == "warning"
                assert "¥40,000 in 12 months, 1 order" in poor["data"]["summary"]

                listed = (await client.get("/v1/alerts", params={"severity": "critical"})).json()
                assert [a["customer_id"] for a in listed["items"]] == ["rich"]
                assert listed["items"][0]["value"] == alert["value"]


def _conflicts(kind: str) -> float:
    name = "cxloop_alerting_order_conflicts_total"
    return REGISTRY.get_sample_value(name, {"kind": kind}) or 0.0


async def _order_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(orders_table)) or 0)
