"""Stripe webhooks end to end to the touchpoint topic, signed by Stripe's own library."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import stripe as stripe_lib
from sqlalchemy.ext.asyncio import create_async_engine

from shared.events import TouchpointEvent
from shared.settings import KafkaSettings, SourceSettings
from shared.topics import Topic
from tests.builders_vendors import stripe_charge, stripe_event, stripe_payment_intent
from tests.conftest import CollectorFactory
from tests.helpers import read_topic

SECRET = "whsec_cxloop_test_0123456789abcdef"
OLD_SECRET = "whsec_cxloop_rotated_out_fedcba9876"
PATH = "/v1/sources/stripe"


@pytest.fixture
async def collector(collector_app: CollectorFactory) -> AsyncIterator[httpx.AsyncClient]:
    # The builders make test-mode events, as Stripe's test mode does.
    sources = SourceSettings(
        stripe_webhook_secrets=f"{SECRET}, {OLD_SECRET}", stripe_livemode="test"
    )
    async with collector_app(sources=sources) as client:
        yield client


async def send(
    client: httpx.AsyncClient,
    body: dict[str, Any],
    *,
    secret: str = SECRET,
    timestamp: int | None = None,
    header: str | None = None,
) -> httpx.Response:
    payload = json.dumps(body)
    if header is None:
        header = stripe_lib.WebhookSignature.generate_signature_header(
            payload, secret, timestamp=timestamp or int(time.time())
        )
    headers = {"Content-Type": "application/json; charset=utf-8", "Authorization": ""}
    if header:
        headers["Stripe-Signature"] = header
    return await client.post(PATH, content=payload.encode(), headers=headers)


async def touchpoints(settings: KafkaSettings, count: int) -> list[TouchpointEvent]:
    records = await read_topic(settings, Topic.TOUCHPOINTS, count + 1, timeout=3)
    return [TouchpointEvent.model_validate_json(r.value) for r in records]


class TestSignature:
    async def test_stripes_signature_is_accepted_with_either_secret(
        self, collector: httpx.AsyncClient
    ) -> None:
        for secret in (SECRET, OLD_SECRET):
            body = stripe_event("charge.succeeded", stripe_charge())
            r = await send(collector, body, secret=secret)
            assert r.status_code == 202, r.text

    @pytest.mark.parametrize(
        ("kwargs", "words"),
        [
            ({"secret": "whsec_somebody_else"}, "does not match"),
            ({"timestamp": int(time.time()) - 301}, "replay"),
            ({"header": ""}, "missing"),
            ({"header": "t=1795000000,v1=" + "0" * 64}, "does not match"),
            ({"header": "v1=abc"}, "does not match"),
        ],
        ids=["wrong-secret", "stale", "missing", "forged", "malformed"],
    )
    async def test_a_bad_signature_is_400_and_produces_nothing(
        self,
        collector: httpx.AsyncClient,
        kafka_settings: KafkaSettings,
        kwargs: dict[str, Any],
        words: str,
    ) -> None:
        r = await send(collector, stripe_event("charge.succeeded", stripe_charge()), **kwargs)
        assert r.status_code == 400, r.text
        assert words in r.json()["detail"]
        assert await touchpoints(kafka_settings, 0) == []

    async def test_a_changed_body_is_forged(self, collector: httpx.AsyncClient) -> None:
        body = stripe_event("charge.succeeded", stripe_charge())
        header = stripe_lib.WebhookSignature.generate_signature_header(
            json.dumps(body), SECRET, timestamp=int(time.time())
        )
        body["data"]["object"]["amount"] = 1
        r = await send(collector, body, header=header)
        assert r.status_code == 400

    async def test_unconfigured_it_is_503_naming_the_variable(
        self, collector_app: CollectorFactory
    ) -> None:
        async with collector_app() as client:
            r = await send(client, stripe_event("charge.succeeded", stripe_charge()))
        assert r.status_code == 503
        assert "CXLOOP_SOURCES_STRIPE_WEBHOOK_SECRETS" in r.json()["detail"]


class TestOrders:
    async def test_a_payment_becomes_one_order_with_its_money(
        self, collector: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        usd = stripe_charge(metadata={"cxloop_customer_id": "cust-42", "cxloop_location": "nyc"})
        yen = stripe_charge(currency="jpy", amount=1500)
        first = stripe_event("charge.succeeded", usd)
        for body in (
            first,
            first,  # Stripe's retry of the same event
            stripe_event("payment_intent.succeeded", stripe_payment_intent(usd)),
            stripe_event("charge.succeeded", yen),
        ):
            r = await send(collector, body)
            assert r.status_code == 202, r.text
        events = {e.order_id: e for e in await touchpoints(kafka_settings, 2)}
        assert len(events) == 2
        dollars, yens = events[usd["payment_intent"]], events[yen["payment_intent"]]
        assert (dollars.type, dollars.customer_id, dollars.source) == (
            "order.completed",
            "cust-42",
            "stripe",
        )
        assert dollars.model_dump(mode="json")["amount"] == "19.99"
        assert (dollars.currency, dollars.segments.location) == ("USD", "nyc")
        assert yens.model_dump(mode="json")["amount"] == "1500"
        assert (yens.currency, yens.customer_id) == ("JPY", f"stripe:{yen['customer']}")

    async def test_refunds_are_counted_once_and_capped_by_the_charge(
        self, collector: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        charge = stripe_charge(amount=5000, amount_refunded=2000)
        # The refund arrives before the charge.succeeded it follows.
        partial = stripe_event(
            "charge.refunded", charge, previous_attributes={"amount_refunded": 0, "refunded": False}
        )
        rest = stripe_event(
            "charge.refunded",
            {**charge, "amount_refunded": 5000, "refunded": True},
            previous_attributes={"amount_refunded": 2000, "refunded": False},
        )
        for body in (partial, partial, stripe_event("charge.succeeded", charge), rest):
            r = await send(collector, body)
            assert r.status_code == 202, r.text
        again = await send(collector, partial)
        assert again.json()["status"] == "duplicate"
        events = await touchpoints(kafka_settings, 3)
        refunds = [e for e in events if e.type == "order.refunded"]
        assert sorted(e.model_dump(mode="json")["amount"] for e in refunds) == ["20.00", "30.00"]
        assert {e.refund_id for e in refunds} == {partial["id"], rest["id"]}
        # Another event claiming a refund past the charge is acknowledged, not produced.
        over = stripe_event(
            "charge.refunded",
            {**charge, "amount_refunded": 6000},
            previous_attributes={"amount_refunded": 5000},
        )
        r = await send(collector, over)
        assert (r.status_code, r.json()["status"], r.json()["reason"]) == (
            200,
            "ignored",
            "over_refund",
        )

    @pytest.mark.parametrize(
        ("body", "reason"),
        [
            (stripe_event("customer.created", {"id": "cus_1"}), "unsupported"),
            (stripe_event("charge.succeeded", stripe_charge(customer=None)), "no_customer"),
            (stripe_event("charge.succeeded", stripe_charge(currency="isk", amount=510)), "amount"),
        ],
        ids=["other-type", "no-customer", "fractional-krona"],
    )
    async def test_what_cannot_be_an_order_is_acknowledged_and_ignored(
        self,
        collector: httpx.AsyncClient,
        kafka_settings: KafkaSettings,
        body: dict[str, Any],
        reason: str,
    ) -> None:
        r = await send(collector, body)
        assert r.status_code == 200, r.text
        assert (r.json()["status"], r.json()["reason"]) == ("ignored", reason)
        assert await touchpoints(kafka_settings, 0) == []


class TestScope:
    async def test_a_refund_whose_amount_the_event_does_not_say_is_ignored(
        self, collector: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        charge = stripe_charge(amount=5000, amount_refunded=2000)
        body = stripe_event("charge.refunded", charge, previous_attributes={"refunded": False})
        r = await send(collector, body)
        assert (r.status_code, r.json()["reason"]) == (200, "refund_amount_unknown")
        assert await touchpoints(kafka_settings, 0) == []

    async def test_an_uncaptured_charge_is_ignored_and_its_intent_counts_at_capture(
        self, collector: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        charge = stripe_charge(amount=5000, amount_captured=0, captured=False)
        r = await send(collector, stripe_event("charge.succeeded", charge))
        assert (r.status_code, r.json()["reason"]) == (200, "not_captured")
        intent = stripe_payment_intent(charge, amount_received=4000)
        r = await send(collector, stripe_event("payment_intent.succeeded", intent))
        assert r.status_code == 202, r.text
        (event,) = await touchpoints(kafka_settings, 1)
        assert event.model_dump(mode="json")["amount"] == "40.00"

    async def test_live_mode_by_default_ignores_test_events_and_connect_accounts(
        self, collector_app: CollectorFactory, kafka_settings: KafkaSettings
    ) -> None:
        sources = SourceSettings(
            stripe_webhook_secrets=SECRET, stripe_connect_accounts="acct_allowed"
        )
        async with collector_app(sources=sources) as client:
            r = await send(client, stripe_event("charge.succeeded", stripe_charge()))
            assert (r.status_code, r.json()["reason"]) == (200, "livemode")
            other = stripe_event("charge.succeeded", stripe_charge(), livemode=True, account="x")
            r = await send(client, other)
            assert (r.status_code, r.json()["reason"]) == (200, "connect_account")
            for body in (
                stripe_event("charge.succeeded", stripe_charge(), livemode=True),
                stripe_event(
                    "charge.succeeded", stripe_charge(), livemode=True, account="acct_allowed"
                ),
            ):
                r = await send(client, body)
                assert r.status_code == 202, r.text
        assert len(await touchpoints(kafka_settings, 2)) == 2

    async def test_an_event_larger_than_an_api_body_is_taken(
        self, collector: httpx.AsyncClient
    ) -> None:
        # Stripe's events may exceed CXLOOP_COLLECTOR_MAX_BODY_BYTES (64 KiB): long metadata,
        # a charge's refunds, expanded objects.
        padding = {f"note_{n}": "x" * 490 for n in range(50)}
        charge = stripe_charge(metadata=padding, description="y" * 120_000)
        body = stripe_event("charge.succeeded", charge)
        assert len(json.dumps(body)) > 128 * 1024
        r = await send(collector, body)
        assert r.status_code == 202, r.text
        huge = stripe_event("charge.succeeded", stripe_charge(description="z" * 600_000))
        assert (await send(collector, huge)).status_code == 413


class TestErasure:
    async def test_erasure_pseudonymises_the_ledger_and_later_orders_stay_capped(
        self, collector: httpx.AsyncClient, database_url: str
    ) -> None:
        charge = stripe_charge(amount=1000, metadata={"cxloop_customer_id": "cust-gone"})
        assert (await send(collector, stripe_event("charge.succeeded", charge))).status_code == 202
        r = await collector.delete("/v1/customers/cust-gone")
        assert r.status_code == 202, r.text
        engine = create_async_engine(database_url)
        try:
            async with engine.connect() as conn:
                stored = await conn.scalar(sa.text("SELECT customer_id FROM collector_orders"))
        finally:
            await engine.dispose()
        assert stored.startswith("erased:")
        # A late retry of the payment is still the same order; a refund is still capped.
        r = await send(
            collector, stripe_event("payment_intent.succeeded", stripe_payment_intent(charge))
        )
        assert r.json()["status"] == "duplicate"
        first_refund = {"amount_refunded": 0}
        over = stripe_event(
            "charge.refunded",
            {**charge, "amount_refunded": 1001},
            previous_attributes=first_refund,
        )
        r = await send(collector, over)
        assert r.json()["reason"] == "over_refund"
        refund = stripe_event(
            "charge.refunded",
            {**charge, "amount_refunded": 1000},
            previous_attributes=first_refund,
        )
        assert (await send(collector, refund)).status_code == 202
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.text("SELECT customer_id FROM collector_orders"))).all()
        await engine.dispose()
        assert [r.customer_id for r in rows] == [stored]
