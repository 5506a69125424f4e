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

    def test_only_the_first_signatures_are_considered(self) -> None:
        good = sign(self.BODY).split(",")
        padding = ",".join(f"v1={n:064x}" for n in range(stripe.MAX_SIGNATURES))
        assert check(f"{good[0]},{padding},{good[1]}", self.BODY) is stripe.Check.FORGED
        assert check(f"{good[0]},{good[1]},{padding}", self.BODY) is stripe.Check.VALID

    def test_the_hmac_is_computed_once_per_secret(self, monkeypatch: pytest.MonkeyPatch) -> None:
        calls = []
        real = stripe.expected_signature

        def counting(secret: str, timestamp: int, body: bytes) -> str:
            calls.append(secret)
            return real(secret, timestamp, body)

        monkeypatch.setattr(stripe, "expected_signature", counting)
        t = sign(self.BODY).split(",")[0]
        header = ",".join([t] + [f"v1={n:064x}" for n in range(stripe.MAX_SIGNATURES)])
        assert check(header, self.BODY, (SECRET, "whsec_other")) is stripe.Check.FORGED
        assert sorted(calls) == sorted([SECRET, "whsec_other"])


def order(
    body: dict[str, object],
    prefix: str = "",
    livemode: str = "test",
    accounts: tuple[str, ...] = (),
) -> stripe.StripeOrder:
    return stripe.order_of(
        body,
        customer_prefix=prefix,
        default_channel=Channel.WEB,
        livemode=livemode,
        accounts=accounts,
    )


def ignored(body: dict[str, object], **kwargs: object) -> str:
    with pytest.raises(stripe.Ignored) as caught:
        order(body, **kwargs)  # type: ignore[arg-type]
    return caught.value.reason


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
        first = stripe_event(
            "charge.refunded", charge, previous_attributes={"amount_refunded": 0, "refunded": False}
        )
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

    def test_without_previous_amount_the_refunds_list_says_this_refund(self) -> None:
        refunds = {
            "object": "list",
            "has_more": False,
            "data": [
                {"id": "re_2", "amount": 700, "created": 1795000200},
                {"id": "re_1", "amount": 800, "created": 1795000100},
            ],
        }
        charge = stripe_charge(amount=5000, amount_refunded=1500, refunds=refunds)
        body = stripe_event("charge.refunded", charge, previous_attributes={"refunded": False})
        assert order(body).amount == Decimal("7.00")

    @pytest.mark.parametrize(
        "refunds",
        [
            None,
            {"object": "list", "has_more": True, "data": [{"amount": 700, "created": 1}]},
            {
                "object": "list",
                "has_more": True,
                "data": [{"amount": 700, "created": 2}, {"amount": 800, "created": 1}],
            },
            {"object": "list", "has_more": False, "data": [{"amount": 700, "created": 1}]},
            {
                "object": "list",
                "has_more": False,
                "data": [{"amount": 700, "created": 1}, {"amount": 800, "created": 1}],
            },
        ],
        ids=["no-list", "partial-list", "partial-list-adding-up", "not-adding-up", "two-newest"],
    )
    def test_a_refund_whose_amount_the_event_does_not_say_is_ignored(self, refunds: object) -> None:
        charge = stripe_charge(amount=5000, amount_refunded=1500)
        if refunds is not None:
            charge["refunds"] = refunds
        body = stripe_event("charge.refunded", charge, previous_attributes={"refunded": False})
        assert ignored(body) == "refund_amount_unknown"

    def test_a_charge_counts_what_was_captured_and_an_intent_what_was_received(self) -> None:
        charge = stripe_charge(amount=5000, amount_captured=3000)
        assert order(stripe_event("charge.succeeded", charge)).amount == Decimal("30.00")
        intent = stripe_payment_intent(charge, amount_received=3000)
        assert order(stripe_event("payment_intent.succeeded", intent)).amount == Decimal("30.00")
        refund = stripe_event(
            "charge.refunded",
            {**charge, "amount_refunded": 1000},
            previous_attributes={"amount_refunded": 0},
        )
        assert order(refund).order_amount_minor == 3000

    @pytest.mark.parametrize(
        ("changes", "reason"),
        [
            ({"captured": False}, "not_captured"),
            ({"status": "pending"}, "not_succeeded"),
            ({"status": "failed"}, "not_succeeded"),
        ],
    )
    def test_a_charge_not_captured_or_not_succeeded_is_ignored(
        self, changes: dict[str, object], reason: str
    ) -> None:
        for kind in ("charge.succeeded", "charge.refunded"):
            charge = stripe_charge(amount_refunded=100, **changes)
            body = stripe_event(kind, charge, previous_attributes={"amount_refunded": 0})
            assert ignored(body) == reason
        intent = stripe_payment_intent(stripe_charge(), status="processing")
        assert ignored(stripe_event("payment_intent.succeeded", intent)) == "not_succeeded"

    def test_events_of_the_other_mode_are_ignored(self) -> None:
        live = stripe_event("charge.succeeded", stripe_charge(), livemode=True)
        test = stripe_event("charge.succeeded", stripe_charge())
        assert order(live, livemode="live").type == "order.completed"
        assert order(test, livemode="test").type == "order.completed"
        assert ignored(live, livemode="test") == "livemode"
        assert ignored(test, livemode="live") == "livemode"

    def test_connect_events_need_their_account_allowed(self) -> None:
        body = stripe_event("charge.succeeded", stripe_charge(), account="acct_1")
        assert ignored(body) == "connect_account"
        assert ignored(body, accounts=("acct_2",)) == "connect_account"
        assert order(body, accounts=("acct_1",)).type == "order.completed"

    def test_the_event_time_is_when_it_happened(self) -> None:
        got = order(stripe_event("charge.succeeded", stripe_charge(), created=1795000000))
        assert got.occurred_at == datetime.fromtimestamp(1795000000, UTC)
