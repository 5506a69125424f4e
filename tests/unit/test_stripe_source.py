"""Stripe events as order events, and the Stripe-Signature check, against Stripe's library."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import stripe as stripe_lib

from services.collector.sources import stripe
from shared.events import Channel
from tests.builders_vendors import stripe_charge, stripe_event, stripe_payment_intent

SECRET = "whsec_test_secret_for_cxloop"
NOW = datetime(2026, 11, 22, 1, 0, tzinfo=UTC)


def sign(body: bytes, secret: str = SECRET, at: datetime = NOW) -> str:
    header: str = stripe_lib.WebhookSignature.generate_signature_header(
        body.decode(), secret, timestamp=int(at.timestamp())
    )
    return header


def check(header: str, body: bytes, secrets: tuple[str, ...] = (SECRET,)) -> stripe.Check:
    return stripe.check_signature(secrets, header, body, NOW, 300)


class TestSignature:
    BODY = json.dumps(stripe_event("charge.succeeded", stripe_charge())).encode()

    def test_stripes_own_signature_is_valid(self) -> None:
        assert check(sign(self.BODY), self.BODY) is stripe.Check.VALID

    def test_any_of_several_secrets_and_signatures_will_do(self) -> None:
        other = sign(self.BODY, "whsec_old").split(",")[1]
        header = f"{sign(self.BODY)},{other},v0=deadbeef"
        assert check(header, self.BODY, ("whsec_old", "whsec_unrelated")) is stripe.Check.VALID

    def test_a_wrong_secret_or_changed_body_is_forged(self) -> None:
        assert check(sign(self.BODY, "whsec_wrong"), self.BODY) is stripe.Check.FORGED
        assert check(sign(self.BODY), self.BODY + b" ") is stripe.Check.FORGED

    def test_an_old_or_future_signature_is_stale(self) -> None:
        old = datetime(2026, 11, 22, 0, 54, 59, tzinfo=UTC)
        assert check(sign(self.BODY, at=old), self.BODY) is stripe.Check.STALE
        future = datetime(2026, 11, 22, 1, 5, 1, tzinfo=UTC)
        assert check(sign(self.BODY, at=future), self.BODY) is stripe.Check.STALE
        edge = datetime(2026, 11, 22, 0, 55, tzinfo=UTC)
        assert check(sign(self.BODY, at=edge), self.BODY) is stripe.Check.VALID

    @pytest.mark.parametrize(
        "header", ["", "v1=abc", "t=1795000000", "t=soon,v1=abc", "t=1,t=2,v1=a", "garbage"]
    )
    def test_a_malformed_header_is_refused(self, header: str) -> None:
        assert check(header, self.BODY) is stripe.Check.MALFORMED


def order(body: dict[str, object], prefix: str = "") -> stripe.StripeOrder:
    return stripe.order_of(body, customer_prefix=prefix, default_channel=Channel.WEB)


class TestAmounts:
    @pytest.mark.parametrize(
        ("currency", "stripe_amount", "amount"),
        [
            ("usd", 1999, "19.99"),
            ("jpy", 1500, "1500"),
            ("krw", 50000, "50000"),
            ("kwd", 5120, "5.120"),
            ("bhd", 1000, "1.000"),
            ("isk", 500, "5"),  # Stripe's two-decimal form; ISO has none
            ("huf", 150000, "1500.00"),
            ("twd", 2500, "25.00"),
            ("ugx", 5000, "5000"),
            ("clp", 990, "990"),
            ("mga", 3000, "3000.00"),  # zero-decimal at Stripe; two in ISO 4217
        ],
    )
    def test_stripe_units_become_iso_decimals(
        self, currency: str, stripe_amount: int, amount: str
    ) -> None:
        got = order(
            stripe_event("charge.succeeded", stripe_charge(currency=currency, amount=stripe_amount))
        )
        assert (got.currency, format(got.amount, "f")) == (currency.upper(), amount)

    def test_what_iso_cannot_hold_is_ignored(self) -> None:
        with pytest.raises(stripe.Ignored) as caught:
            order(stripe_event("charge.succeeded", stripe_charge(currency="isk", amount=510)))
        assert caught.value.reason == "amount"
        with pytest.raises(stripe.Ignored) as caught:
            order(stripe_event("charge.succeeded", stripe_charge(currency="xyz")))
        assert caught.value.reason == "currency"

    @pytest.mark.parametrize("amount", [-1, 12.5, "1999", True, None])
    def test_a_bad_amount_is_malformed(self, amount: object) -> None:
        with pytest.raises(stripe.Ignored) as caught:
            order(stripe_event("charge.succeeded", stripe_charge(amount=amount)))
        assert caught.value.reason == "malformed"


class TestMapping:
    def test_a_charge_and_its_payment_intent_are_one_order(self) -> None:
        charge = stripe_charge(metadata={"cxloop_customer_id": "cust-42"})
        by_charge = order(stripe_event("charge.succeeded", charge))
        by_intent = order(stripe_event("payment_intent.succeeded", stripe_payment_intent(charge)))
        assert by_charge.order_id == by_intent.order_id == charge["payment_intent"]
        assert by_charge.customer_id == by_intent.customer_id == "cust-42"
        assert by_charge.type == by_intent.type == "order.completed"
        assert by_charge.amount == Decimal("19.99")

    def test_a_charge_without_payment_intent_is_its_own_order(self) -> None:
        charge = stripe_charge(payment_intent=None)
        assert order(stripe_event("charge.succeeded", charge)).order_id == charge["id"]

    def test_the_stripe_customer_is_used_behind_the_prefix(self) -> None:
        charge = stripe_charge()
        got = order(stripe_event("charge.succeeded", charge), prefix="stripe:")
        assert got.customer_id == f"stripe:{charge['customer']}"

    def test_metadata_gives_segments_and_channel(self) -> None:
        metadata = {
            "cxloop_location": "tokyo-shibuya",
            "cxloop_product": "app",
            "cxloop_business_unit": "retail",
            "cxloop_channel": "in_app",
            "cxloop_unrelated": "x",
        }
        got = order(stripe_event("charge.succeeded", stripe_charge(metadata=metadata)))
        assert (got.segments.location, got.segments.product, got.segments.business_unit) == (
            "tokyo-shibuya",
            "app",
            "retail",
        )
        assert got.channel is Channel.IN_APP
        odd = order(
            stripe_event("charge.succeeded", stripe_charge(metadata={"cxloop_channel": "fax"}))
        )
        assert odd.channel is Channel.WEB

    def test_a_payment_with_no_customer_is_ignored(self) -> None:
        with pytest.raises(stripe.Ignored) as caught:
            order(stripe_event("charge.succeeded", stripe_charge(customer=None)))
        assert caught.value.reason == "no_customer"

    def test_other_types_are_ignored(self) -> None:
        with pytest.raises(stripe.Ignored) as caught:
            order(stripe_event("customer.created", {"id": "cus_1"}))
        assert caught.value.reason == "unsupported"

    def test_each_refund_is_the_growth_of_amount_refunded(self) -> None:
        charge = stripe_charge(amount=5000, amount_refunded=1500, refunded=False)
        first = stripe_event("charge.refunded", charge, previous_attributes={"refunded": False})
        got = order(first)
        assert (got.type, got.amount, got.refund_id) == (
            "order.refunded",
            Decimal("15.00"),
            first["id"],
        )
        assert (got.order_id, got.order_amount_minor) == (charge["payment_intent"], 5000)
        second = stripe_event(
            "charge.refunded",
            {**charge, "amount_refunded": 5000, "refunded": True},
            previous_attributes={"amount_refunded": 1500, "refunded": False},
        )
        assert order(second).amount == Decimal("35.00")

    def test_a_refund_that_refunds_nothing_is_ignored(self) -> None:
        charge = stripe_charge(amount_refunded=100)
        body = stripe_event("charge.refunded", charge, previous_attributes={"amount_refunded": 100})
        with pytest.raises(stripe.Ignored) as caught:
            order(body)
        assert caught.value.reason == "no_refund"

    def test_the_event_time_is_when_it_happened(self) -> None:
        got = order(stripe_event("charge.succeeded", stripe_charge(), created=1795000000))
        assert got.occurred_at == datetime.fromtimestamp(1795000000, UTC)
