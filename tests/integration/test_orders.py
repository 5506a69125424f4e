"""Orders through the generic API: validation naming each field, and the order ledger."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import create_async_engine

from services.collector.app import create_app as create_collector
from services.collector.orders import LedgerSession, OrderFact, OrderLedger
from services.collector.service import Ingest
from shared.events import TouchpointEvent
from shared.privacy import Hasher
from shared.settings import AuthSettings, CollectorSettings, DatabaseSettings, KafkaSettings
from shared.topics import Topic
from tests.builders import order_payload, refund_payload
from tests.conftest import CollectorFactory
from tests.helpers import read_topic, serving


@pytest.fixture
async def collector(collector_app: CollectorFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with collector_app() as client:
        yield client


async def orders_on_topic(settings: KafkaSettings, count: int) -> list[TouchpointEvent]:
    records = await read_topic(settings, Topic.TOUCHPOINTS, count + 1, timeout=3)
    return [TouchpointEvent.model_validate_json(r.value) for r in records]


def without(body: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != name}


BAD_ORDERS = [
    pytest.param({"amount": 12.5, "currency": "USD"}, "amount", "floats", id="json-float"),
    pytest.param({"amount": "1e3"}, "amount", "plain decimal", id="exponent"),
    pytest.param({"amount": "-5"}, "amount", "negative", id="negative"),
    pytest.param({"amount": "100.5"}, "amount", "JPY allows (no decimals)", id="yen-decimals"),
    pytest.param(
        {"amount": "1.234", "currency": "USD"}, "amount", "at most 2 decimals", id="cents"
    ),
    pytest.param({"currency": "XAU"}, "currency", "ISO 4217", id="gold"),
    pytest.param({"currency": "ABC"}, "currency", "ISO 4217", id="unknown"),
    pytest.param({"currency": None}, "currency", "required for order.completed", id="missing"),
    pytest.param({"order_id": None}, "order_id", "required for order.completed", id="no-order"),
    pytest.param({"amount": None}, "amount", "required for order.completed", id="no-amount"),
    pytest.param({"refund_id": "R1"}, "refund_id", "only for order.refunded", id="refund-id"),
]


class TestValidation:
    @pytest.mark.parametrize(("change", "field", "words"), BAD_ORDERS)
    async def test_a_bad_order_is_422_naming_the_field(
        self, collector: httpx.AsyncClient, change: dict[str, Any], field: str, words: str
    ) -> None:
        body = order_payload(**change)
        body = {k: v for k, v in body.items() if v is not None}
        r = await collector.post("/v1/events", json=body)
        assert r.status_code == 422, r.text
        assert r.json()["field"] == field
        assert words in r.json()["detail"]
        r = await collector.post("/v1/events/batch", json={"items": [order_payload(), body]})
        assert r.status_code == 200, r.text
        first, second = r.json()["results"]
        assert first["status"] == "accepted"
        assert second["status"] == "rejected"
        assert [e["field"] for e in second["errors"]] == [field]

    async def test_a_refund_needs_its_refund_id_and_orders_need_no_ticket(
        self, collector: httpx.AsyncClient
    ) -> None:
        refund = without(refund_payload(order_payload()), "refund_id")
        r = await collector.post("/v1/events", json=refund)
        assert (r.status_code, r.json()["field"]) == (422, "refund_id")

    async def test_a_ticket_event_without_ticket_id_names_it(
        self, collector: httpx.AsyncClient
    ) -> None:
        body = {"type": "ticket.created", "customer_id": "c1", "channel": "email"}
        r = await collector.post("/v1/events", json=body)
        assert (r.status_code, r.json()["field"]) == (422, "ticket_id")
        r = await collector.post("/v1/events/batch", json={"items": [body]})
        assert r.json()["results"][0]["errors"][0]["field"] == "ticket_id"

    @pytest.mark.parametrize("name", ["order_id", "currency", "amount"])
    async def test_order_fields_on_other_types_are_refused(
        self, collector: httpx.AsyncClient, name: str
    ) -> None:
        body = {"type": "purchase", "customer_id": "c1", "channel": "web"}
        body[name] = order_payload()[name]
        r = await collector.post("/v1/events", json=body)
        assert (r.status_code, r.json()["field"]) == (422, name)

    async def test_the_deprecated_purchase_still_works(self, collector: httpx.AsyncClient) -> None:
        body = {"type": "purchase", "customer_id": "c1", "channel": "web"}
        assert (await collector.post("/v1/events", json=body)).status_code == 202


class TestLedger:
    async def test_an_order_reaches_kafka_with_its_money(
        self, collector: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        body = order_payload(currency="usd", amount="19.9", segments={"location": "osaka"})
        r = await collector.post("/v1/events", json=body)
        assert r.status_code == 202, r.text
        (event,) = await orders_on_topic(kafka_settings, 1)
        assert (event.type, event.order_id, event.currency) == (
            "order.completed",
            body["order_id"],
            "USD",
        )
        assert event.model_dump(mode="json")["amount"] == "19.90"
        assert event.segments.location == "osaka"

    async def test_a_resent_order_is_a_duplicate_under_any_event_id(
        self, collector: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        body = order_payload()
        first = await collector.post("/v1/events", json=body)
        again = await collector.post("/v1/events", json={**body, "event_id": str(uuid.uuid4())})
        keyed = await collector.post(
            "/v1/events", json={**body, "amount": "12800.00"}, headers={"Idempotency-Key": "k1"}
        )
        assert first.json()["status"] == "accepted"
        for r in (again, keyed):
            assert r.status_code == 202, r.text
            assert r.json() == {"event_id": first.json()["event_id"], "status": "duplicate"}
        assert len(await orders_on_topic(kafka_settings, 1)) == 1

    @pytest.mark.parametrize(
        "change", [{"amount": "12801"}, {"currency": "USD"}, {"customer_id": "someone-else"}]
    )
    async def test_the_same_order_id_for_another_order_is_409(
        self, collector: httpx.AsyncClient, change: dict[str, str]
    ) -> None:
        body = order_payload()
        assert (await collector.post("/v1/events", json=body)).status_code == 202
        r = await collector.post("/v1/events", json={**body, **change})
        assert r.status_code == 409, r.text
        assert r.json()["field"] == "order_id"

    async def test_refunds_are_capped_by_what_remains(
        self, collector: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        order = order_payload(currency="USD", amount="50.00")
        assert (await collector.post("/v1/events", json=order)).status_code == 202
        first = refund_payload(order, amount="30")
        assert (await collector.post("/v1/events", json=first)).status_code == 202
        r = await collector.post("/v1/events", json=refund_payload(order, amount="20.01"))
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "amount"
        assert "20.00 USD" in r.json()["detail"]
        assert "50.00 USD" in r.json()["detail"]
        r = await collector.post("/v1/events", json={**first, "event_id": str(uuid.uuid4())})
        assert r.json()["status"] == "duplicate"
        r = await collector.post("/v1/events", json={**first, "amount": "31"})
        assert (r.status_code, r.json()["field"]) == (409, "refund_id")
        assert (
            await collector.post("/v1/events", json=refund_payload(order, amount="20"))
        ).status_code == 202
        events = await orders_on_topic(kafka_settings, 3)
        assert [e.type for e in events].count("order.refunded") == 2

    async def test_a_refund_in_another_currency_or_for_another_customer_is_422(
        self, collector: httpx.AsyncClient
    ) -> None:
        order = order_payload()
        await collector.post("/v1/events", json=order)
        r = await collector.post("/v1/events", json=refund_payload(order, currency="USD"))
        assert (r.status_code, r.json()["field"]) == (422, "currency")
        r = await collector.post("/v1/events", json=refund_payload(order, customer_id="x"))
        assert (r.status_code, r.json()["field"]) == (422, "customer_id")

    async def test_a_refund_of_an_unknown_order_is_accepted_and_caps_the_order_later(
        self, collector: httpx.AsyncClient
    ) -> None:
        order = order_payload(amount="5000")
        r = await collector.post("/v1/events", json=refund_payload(order, amount="3000"))
        assert r.status_code == 202, r.text
        assert (await collector.post("/v1/events", json=order)).status_code == 202
        r = await collector.post("/v1/events", json=refund_payload(order, amount="2001"))
        assert (r.status_code, r.json()["field"]) == (422, "amount")
        assert "2000 JPY" in r.json()["detail"]

    async def test_a_batch_holds_an_order_and_its_refunds_in_order(
        self, collector: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        order = order_payload(amount="1000")
        items = [
            order,
            refund_payload(order, amount="600"),
            refund_payload(order, amount="500"),
            refund_payload(order, amount="400"),
            order_payload(customer_id=order["customer_id"], order_id=order["order_id"]),
        ]
        r = await collector.post("/v1/events/batch", json={"items": items})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["status"] for x in results] == [
            "accepted",
            "accepted",
            "rejected",
            "accepted",
            "conflict",
        ]
        assert results[2]["errors"][0]["field"] == "amount"
        assert results[4]["errors"][0]["field"] == "order_id"
        r = await collector.post("/v1/events/batch", json={"items": items[:2]})
        assert [x["status"] for x in r.json()["results"]] == ["duplicate", "duplicate"]
        events = await orders_on_topic(kafka_settings, 3)
        assert [e.type for e in events] == ["order.completed", "order.refunded", "order.refunded"]


class TestConcurrency:
    async def test_two_concurrent_refunds_never_exceed_the_order(
        self, collector: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        order = order_payload(amount="1000")
        assert (await collector.post("/v1/events", json=order)).status_code == 202
        for _ in range(5):
            rounds = [refund_payload(order, amount="150") for _ in range(8)]
            answers = await asyncio.gather(*(collector.post("/v1/events", json=r) for r in rounds))
            assert {a.status_code for a in answers} <= {202, 422}
        events = await orders_on_topic(kafka_settings, 7)
        refunded = sum(int(e.amount or 0) for e in events if e.type == "order.refunded")
        assert refunded == 900  # six of 150; a seventh would pass 1000


class TestBrokerDown:
    async def test_a_failed_produce_reserves_nothing(
        self,
        collector: httpx.AsyncClient,
        database_url: str,
        kafka_settings: KafkaSettings,
        auth: AuthSettings,
        api_key: str,
    ) -> None:
        order = order_payload(amount="1000")
        assert (await collector.post("/v1/events", json=order)).status_code == 202
        # A collector on the same database whose broker never answers.
        nowhere = kafka_settings.model_copy(update={"bootstrap_servers": "127.0.0.1:9"})
        app = create_collector(
            kafka=nowhere,
            database=DatabaseSettings(url=database_url),
            auth=auth,
            settings=CollectorSettings(broker_wait_seconds=0),
        )
        async with serving(app, api_key, "collector") as down:
            r = await down.post("/v1/events", json=refund_payload(order, amount="1000"))
            assert r.status_code == 503, r.text
        engine = create_async_engine(database_url)
        try:
            async with engine.connect() as conn:
                refunded = await conn.scalar(
                    sa.text("SELECT refunded_minor FROM collector_orders WHERE order_id = :o"),
                    {"o": order["order_id"]},
                )
                refunds = await conn.scalar(sa.text("SELECT count(*) FROM collector_order_refunds"))
        finally:
            await engine.dispose()
        assert (refunded, refunds) == (0, 0)
        r = await collector.post("/v1/events", json=refund_payload(order, amount="1000"))
        assert r.status_code == 202, r.text


def missed_total() -> float:
    return REGISTRY.get_sample_value("cxloop_collector_order_ledger_missed_total") or 0.0


async def scalar(database_url: str, sql: str, **params: Any) -> Any:
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            return await conn.scalar(sa.text(sql), params)
    finally:
        await engine.dispose()


class TestLedgerHoles:
    async def test_an_order_for_less_than_its_refunds_so_far_is_422(
        self, collector: httpx.AsyncClient
    ) -> None:
        order = order_payload(amount="5000")
        for amount in ("2000", "1000"):
            r = await collector.post("/v1/events", json=refund_payload(order, amount=amount))
            assert r.status_code == 202, r.text
        r = await collector.post("/v1/events", json={**order, "amount": "2999"})
        assert (r.status_code, r.json()["field"]) == (422, "amount")
        assert "3000 JPY" in r.json()["detail"]
        assert (await collector.post("/v1/events", json=order)).status_code == 202

    async def test_a_refund_of_zero_is_422(self, collector: httpx.AsyncClient) -> None:
        order = order_payload()
        r = await collector.post("/v1/events", json=refund_payload(order, amount="0"))
        assert (r.status_code, r.json()["field"]) == (422, "amount")

    async def test_a_resent_refund_naming_another_currency_or_customer_is_no_duplicate(
        self, collector: httpx.AsyncClient
    ) -> None:
        order = order_payload(currency="USD", amount="50")
        assert (await collector.post("/v1/events", json=order)).status_code == 202
        refund = refund_payload(order, amount="10")
        assert (await collector.post("/v1/events", json=refund)).status_code == 202
        r = await collector.post("/v1/events", json={**refund, "currency": "EUR"})
        assert (r.status_code, r.json()["field"]) == (422, "currency")
        r = await collector.post("/v1/events", json={**refund, "customer_id": "someone-else"})
        assert (r.status_code, r.json()["field"]) == (422, "customer_id")


class TestKeysOfRefusedOrders:
    async def test_a_corrected_resend_under_the_same_key_is_new(
        self, collector: httpx.AsyncClient
    ) -> None:
        order = order_payload(amount="1000")
        assert (await collector.post("/v1/events", json=order)).status_code == 202
        key = {"Idempotency-Key": "refund-1"}
        too_much = refund_payload(order, amount="1001")
        r = await collector.post("/v1/events", json=too_much, headers=key)
        assert r.status_code == 422, r.text
        r = await collector.post("/v1/events", json={**too_much, "amount": "1000"}, headers=key)
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "accepted"

    async def test_a_keyed_batch_keeps_its_refused_and_duplicate_items_as_long_as_itself(
        self, collector: httpx.AsyncClient, database_url: str
    ) -> None:
        known = order_payload(amount="1000")
        assert (await collector.post("/v1/events", json=known)).status_code == 202
        order = order_payload(amount="1000")
        items = [order, refund_payload(order, amount="1001"), known]
        key = {"Idempotency-Key": "batch-1"}
        r = await collector.post("/v1/events/batch", json={"items": items}, headers=key)
        assert [x["status"] for x in r.json()["results"]] == ["accepted", "rejected", "duplicate"]
        # A purge just before the batch's window ends leaves every item the batch held.
        purged = await scalar(
            database_url,
            "WITH b AS (SELECT expires_at FROM collector_idempotency WHERE key LIKE 'api:key:%'),"
            " d AS (DELETE FROM collector_idempotency"
            " WHERE expires_at < (SELECT expires_at FROM b) RETURNING 1)"
            " SELECT count(*) FROM d",
        )
        assert purged == 0
        r = await collector.post("/v1/events/batch", json={"items": items}, headers=key)
        assert [x["status"] for x in r.json()["results"]] == ["duplicate", "rejected", "duplicate"]

    async def test_a_repeat_of_an_order_the_broker_missed_is_unavailable(
        self,
        database_url: str,
        kafka_settings: KafkaSettings,
        auth: AuthSettings,
        api_key: str,
    ) -> None:
        order = order_payload()
        nowhere = kafka_settings.model_copy(update={"bootstrap_servers": "127.0.0.1:9"})
        app = create_collector(
            kafka=nowhere,
            database=DatabaseSettings(url=database_url),
            auth=auth,
            settings=CollectorSettings(broker_wait_seconds=0),
        )
        async with serving(app, api_key, "collector") as down:
            r = await down.post("/v1/events/batch", json={"items": [order, dict(order)]})
        assert r.status_code == 503, r.text
        assert [x["status"] for x in r.json()["results"]] == ["unavailable", "unavailable"]
        assert "broker" in r.json()["detail"]


class TestAfterTheAck:
    async def test_a_ledger_that_fails_to_record_still_answers_2xx(
        self,
        collector: httpx.AsyncClient,
        kafka_settings: KafkaSettings,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        async def broken(self: LedgerSession, facts: Any) -> None:
            raise sa.exc.IntegrityError("INSERT …", {}, Exception("order_id=ORD-secret"))

        monkeypatch.setattr(LedgerSession, "commit", broken)
        before = missed_total()
        order = order_payload(order_id="ORD-secret")
        r = await collector.post("/v1/events", json=order)
        assert r.status_code == 202, r.text
        assert missed_total() == before + 1
        assert "ORD-secret" not in caplog.text
        assert len(await orders_on_topic(kafka_settings, 1)) == 1

    async def test_a_commit_that_fails_once_is_retried_in_a_fresh_transaction(
        self, collector: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        commit = LedgerSession.commit
        calls: list[int] = []

        async def once_broken(self: LedgerSession, facts: Any) -> None:
            calls.append(len(facts))
            if len(calls) == 1:
                raise sa.exc.OperationalError("COMMIT", {}, ConnectionResetError())
            await commit(self, facts)

        monkeypatch.setattr(LedgerSession, "commit", once_broken)
        before = missed_total()
        order = order_payload()
        first = await collector.post("/v1/events", json=order)
        assert first.status_code == 202, first.text
        assert (calls, missed_total()) == ([1, 1], before)
        monkeypatch.undo()
        again = await collector.post("/v1/events", json=order)
        assert again.json() == {"event_id": first.json()["event_id"], "status": "duplicate"}

    async def test_a_failed_commit_of_nothing_acked_is_not_logged(
        self,
        collector: httpx.AsyncClient,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        async def broken(self: LedgerSession, facts: Any) -> None:
            raise sa.exc.OperationalError("COMMIT", {}, ConnectionResetError())

        monkeypatch.setattr(LedgerSession, "commit", broken)
        r = await collector.post("/v1/events", json=refund_payload(order_payload(), amount="0"))
        assert r.status_code == 422, r.text
        assert "order ledger" not in caplog.text


class TestBusyOrDown:
    async def test_an_order_locked_past_the_timeout_is_503_naming_the_ledger(
        self, collector: httpx.AsyncClient, database_url: str
    ) -> None:
        order = order_payload(amount="1000")
        assert (await collector.post("/v1/events", json=order)).status_code == 202
        engine = create_async_engine(database_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    sa.text("SELECT 1 FROM collector_orders WHERE order_id = :o FOR UPDATE"),
                    {"o": order["order_id"]},
                )
                async with asyncio.timeout(15):
                    r = await collector.post("/v1/events", json=refund_payload(order))
        finally:
            await engine.dispose()
        assert r.status_code == 503, r.text
        assert r.headers["Retry-After"]
        assert "order ledger is busy" in r.json()["detail"]
        assert (await collector.post("/v1/events", json=refund_payload(order))).status_code == 202

    async def test_an_unreachable_ledger_is_named_in_the_503(
        self, collector: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        async def down(self: OrderLedger, facts: Any) -> None:
            raise sa.exc.OperationalError("SELECT 1", {}, ConnectionRefusedError())

        monkeypatch.setattr(OrderLedger, "begin", down)
        r = await collector.post("/v1/events", json=order_payload())
        assert r.status_code == 503, r.text
        assert "order ledger (Postgres) could not be reached" in r.json()["detail"]
        assert "broker" not in r.json()["detail"]
        r = await collector.post("/v1/events/batch", json={"items": [order_payload()]})
        assert r.status_code == 503, r.text
        assert "order ledger (Postgres)" in r.json()["detail"]
        assert r.json()["results"][0]["errors"][0]["field"] == "order_id"

    async def test_a_batch_of_500_orders_holds_no_lock_per_order(
        self, collector: httpx.AsyncClient, database_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        produce = Ingest._produce
        held: list[int] = []

        async def counting(self: Ingest, events: Any) -> list[bool]:
            held.append(
                await scalar(
                    database_url,
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                    " AND database = (SELECT oid FROM pg_database"
                    " WHERE datname = current_database())",
                )
            )
            return await produce(self, events)

        monkeypatch.setattr(Ingest, "_produce", counting)
        items = [order_payload() for _ in range(500)]
        r = await collector.post("/v1/events/batch", json={"items": items})
        assert r.status_code == 200, r.text
        assert r.json()["accepted"] == 500
        assert held
        assert max(held) <= 1  # the erasure lock alone

    async def test_concurrent_first_orders_of_one_id_are_one_order(
        self, collector: httpx.AsyncClient
    ) -> None:
        order = order_payload()
        bodies = [{**order, "amount": str(1000 + n)} for n in range(6)]
        answers = await asyncio.gather(*(collector.post("/v1/events", json=b) for b in bodies))
        assert sorted(a.status_code for a in answers) == [202] + [409] * 5


def broker_misses(monkeypatch: pytest.MonkeyPatch, missed: Callable[[Any], bool]) -> None:
    """Make the broker miss the events ``missed`` picks and acknowledge the others."""
    produce = Ingest._produce

    async def partly(self: Ingest, events: Any) -> list[bool]:
        acks = iter(await produce(self, [e for e in events if not missed(e)]))
        return [False if missed(e) else next(acks) for e in events]

    monkeypatch.setattr(Ingest, "_produce", partly)


class TestRefusalsThatRestedOnAMiss:
    async def test_a_refund_refused_after_one_the_broker_missed_is_unavailable(
        self, collector: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        order = order_payload(amount="1000")
        assert (await collector.post("/v1/events", json=order)).status_code == 202
        first = refund_payload(order, amount="700")
        second = refund_payload(order, amount="400")
        broker_misses(monkeypatch, lambda e: e.refund_id == first["refund_id"])
        r = await collector.post("/v1/events/batch", json={"items": [first, second]})
        assert r.status_code == 503, r.text
        assert [x["status"] for x in r.json()["results"]] == ["unavailable", "unavailable"]
        monkeypatch.undo()
        r = await collector.post("/v1/events", json=second)
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "accepted"

    async def test_a_refusal_that_stands_without_the_miss_stays_422(
        self, collector: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        order = order_payload(amount="1000")
        assert (await collector.post("/v1/events", json=order)).status_code == 202
        first = refund_payload(order, amount="700")
        second = refund_payload(order, amount="1001")
        broker_misses(monkeypatch, lambda e: e.refund_id == first["refund_id"])
        r = await collector.post("/v1/events/batch", json={"items": [first, second]})
        assert [x["status"] for x in r.json()["results"]] == ["unavailable", "rejected"]


class TestTheSameKeyTwiceInABatch:
    async def test_a_repeat_of_an_item_the_broker_missed_is_unavailable(
        self, collector: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        body = {
            "type": "ticket.created",
            "ticket_id": "T-1",
            "customer_id": "c1",
            "channel": "email",
            "event_id": str(uuid.uuid4()),
        }
        broker_misses(monkeypatch, lambda e: True)
        r = await collector.post("/v1/events/batch", json={"items": [body, dict(body)]})
        assert r.status_code == 503, r.text
        results = r.json()["results"]
        assert [x["status"] for x in results] == ["unavailable", "unavailable"]
        assert results[1]["errors"][0]["field"] == "event_id"

    async def test_a_repeat_of_an_item_the_ledger_refused_is_refused_alike(
        self, collector: httpx.AsyncClient
    ) -> None:
        order = order_payload(amount="1000")
        assert (await collector.post("/v1/events", json=order)).status_code == 202
        too_much = refund_payload(order, amount="1001", event_id=str(uuid.uuid4()))
        r = await collector.post("/v1/events/batch", json={"items": [too_much, dict(too_much)]})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["status"] for x in results] == ["rejected", "rejected"]
        assert [x["errors"][0]["field"] for x in results] == ["amount", "amount"]
        r = await collector.post("/v1/events", json={**too_much, "amount": "1000"})
        assert r.status_code == 202, r.text


class TestAFullPool:
    async def test_no_free_connection_is_503_busy_within_the_lock_timeout(
        self,
        database_url: str,
        kafka_settings: KafkaSettings,
        auth: AuthSettings,
        api_key: str,
    ) -> None:
        app = create_collector(
            kafka=kafka_settings,
            database=DatabaseSettings(url=database_url, pool_size=1),
            auth=auth,
        )
        async with serving(app, api_key, "collector") as client, AsyncExitStack() as held:
            engine = app.state.engine
            for _ in range(engine.pool.size() + engine.pool._max_overflow):
                await held.enter_async_context(engine.connect())
            async with asyncio.timeout(10):
                r = await client.post("/v1/events", json=order_payload())
        assert r.status_code == 503, r.text
        assert "order ledger is busy" in r.json()["detail"]


class TestBoundedTransactions:
    async def test_a_ledger_transaction_bounds_its_locks_statements_and_idle_time(
        self, database_url: str
    ) -> None:
        engine = create_async_engine(database_url)
        try:
            ledger = OrderLedger(engine, Hasher(b"k" * 16), produce_timeout=3)
            fact = OrderFact("order.completed", "ORD-bounded", "c1", "JPY", 100, uuid.uuid4())
            session = await ledger.begin([fact])
            try:
                row = (
                    await session._conn.execute(
                        sa.text(
                            "SELECT current_setting('lock_timeout'),"
                            " current_setting('statement_timeout'),"
                            " current_setting('idle_in_transaction_session_timeout')"
                        )
                    )
                ).one()
            finally:
                await session.close()
        finally:
            await engine.dispose()
        assert tuple(row) == ("2s", "5s", "13s")  # idle: the produce's timeout and 10 s


async def rows_of(database_url: str, order_id: str) -> int:
    sql = "SELECT count(*) FROM collector_orders WHERE order_id = :o"
    return int(await scalar(database_url, sql, o=order_id))


class TestNoPlaceholderLeft:
    async def test_after_a_refused_refund_of_an_unknown_order(
        self, collector: httpx.AsyncClient, database_url: str
    ) -> None:
        order = order_payload()
        r = await collector.post("/v1/events", json=refund_payload(order, amount="0"))
        assert r.status_code == 422, r.text
        assert await rows_of(database_url, order["order_id"]) == 0
        other = {**order, "customer_id": "someone-else"}
        assert (await collector.post("/v1/events", json=other)).status_code == 202

    async def test_after_a_broker_miss(
        self,
        collector: httpx.AsyncClient,
        database_url: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        order = order_payload()
        broker_misses(monkeypatch, lambda e: True)
        r = await collector.post("/v1/events", json=refund_payload(order))
        assert r.status_code == 503, r.text
        monkeypatch.undo()
        assert await rows_of(database_url, order["order_id"]) == 0
        other = {**order, "customer_id": "someone-else"}
        assert (await collector.post("/v1/events", json=other)).status_code == 202
