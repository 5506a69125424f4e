"""The order ledger's rules, without a database: services/collector/orders.py's decide()."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.collector.orders import (
    LedgerBusy,
    Order,
    OrderFact,
    OrderLedger,
    Verdict,
    decide,
    decide_stored,
)
from shared.privacy import Hasher


def completed(amount: int = 1000, **changes: Any) -> OrderFact:
    fact = OrderFact("order.completed", "O1", "c1", "JPY", amount, uuid.uuid4())
    return replace(fact, **changes)


def refunded(amount: int, refund_id: str = "R1", **changes: Any) -> OrderFact:
    return completed(amount, type="order.refunded", refund_id=refund_id, **changes)


def verdicts(orders: dict[str, Order | None], *facts: OrderFact) -> list[Verdict]:
    return [d.verdict for d in decide(orders, facts)]


class TestOrders:
    def test_an_order_id_is_one_order(self) -> None:
        first = completed()
        orders: dict[str, Order | None] = {}
        decisions = decide(orders, [first, completed(), completed(amount=999)])
        assert [d.verdict for d in decisions] == [Verdict.NEW, Verdict.DUPLICATE, Verdict.CONFLICT]
        assert decisions[1].event_id == first.event_id
        assert decisions[2].field == "order_id"


class TestRefunds:
    def test_refunds_add_up_to_the_order_at_most(self) -> None:
        orders: dict[str, Order | None] = {}
        got = decide(
            orders,
            [
                completed(),
                refunded(600),
                refunded(401, "R2"),
                refunded(400, "R3"),
                refunded(1, "R4"),
            ],
        )
        assert [d.verdict for d in got] == [
            Verdict.NEW,
            Verdict.NEW,
            Verdict.REFUSED,
            Verdict.NEW,
            Verdict.REFUSED,
        ]
        assert got[2].field == "amount"
        assert "400 JPY" in str(got[2].detail)
        assert "0 JPY" in str(got[4].detail)

    def test_a_refund_id_is_one_refund(self) -> None:
        orders: dict[str, Order | None] = {}
        got = decide(orders, [completed(), refunded(100), refunded(100), refunded(200)])
        assert [d.verdict for d in got][1:] == [Verdict.NEW, Verdict.DUPLICATE, Verdict.CONFLICT]
        assert got[3].field == "refund_id"

    def test_currency_and_customer_must_be_the_orders(self) -> None:
        orders: dict[str, Order | None] = {}
        got = decide(
            orders, [completed(), refunded(1, currency="USD"), refunded(1, customer_id="c2")]
        )
        assert [(d.verdict, d.field) for d in got][1:] == [
            (Verdict.REFUSED, "currency"),
            (Verdict.REFUSED, "customer_id"),
        ]

    def test_a_refund_first_is_accepted_and_the_order_then_caps_the_rest(self) -> None:
        orders: dict[str, Order | None] = {}
        assert verdicts(orders, refunded(700), completed(), refunded(301, "R2")) == [
            Verdict.NEW,
            Verdict.NEW,
            Verdict.REFUSED,
        ]

    def test_a_refund_that_states_its_order_is_capped_by_it_alone(self) -> None:
        orders: dict[str, Order | None] = {}
        assert verdicts(
            orders,
            refunded(600, order_amount_minor=1000),
            refunded(500, "R2", order_amount_minor=1000),
            completed(amount=999),
        ) == [Verdict.NEW, Verdict.REFUSED, Verdict.CONFLICT]

    def test_an_order_less_than_its_refunds_so_far_is_refused(self) -> None:
        orders: dict[str, Order | None] = {}
        got = decide(orders, [refunded(700), refunded(200, "R2"), completed(amount=899)])
        assert [d.verdict for d in got] == [Verdict.NEW, Verdict.NEW, Verdict.REFUSED]
        assert got[2].field == "amount"
        assert "900 JPY" in str(got[2].detail)
        assert verdicts(orders, completed(amount=900)) == [Verdict.NEW]

    def test_a_resent_refund_for_another_customer_or_currency_is_no_duplicate(self) -> None:
        orders: dict[str, Order | None] = {}
        got = decide(
            orders,
            [
                completed(),
                refunded(100),
                refunded(100, currency="USD"),
                refunded(100, customer_id="c2"),
                refunded(100),
            ],
        )
        assert [(d.verdict, d.field) for d in got][2:] == [
            (Verdict.REFUSED, "currency"),
            (Verdict.REFUSED, "customer_id"),
            (Verdict.DUPLICATE, None),
        ]

    def test_a_refund_of_nothing_is_refused(self) -> None:
        orders: dict[str, Order | None] = {}
        got = decide(orders, [refunded(0)])
        assert [(d.verdict, d.field) for d in got] == [(Verdict.REFUSED, "amount")]
        assert orders == {}

    def test_a_refused_refund_of_an_unknown_order_leaves_no_order(self) -> None:
        orders: dict[str, Order | None] = {}
        assert verdicts(orders, refunded(1001, order_amount_minor=1000)) == [Verdict.REFUSED]
        assert orders == {}


class TestBusy:
    async def test_no_pooled_connection_in_time_is_busy_not_a_crash(self) -> None:
        class ExhaustedPool:
            async def connect(self) -> None:
                raise sa.exc.TimeoutError("QueuePool limit of size 10 overflow 10 reached")

        ledger = OrderLedger(cast(AsyncEngine, ExhaustedPool()), Hasher(b"k" * 16))
        with pytest.raises(LedgerBusy):
            await ledger.begin([completed()])


class TestDecidedAgainstWhatWasStored:
    def test_a_refund_is_judged_without_the_earlier_ones_not_stored(self) -> None:
        orders: dict[str, Order | None] = {"O1": Order("c1", "JPY", 1000)}
        facts = [refunded(700, "R1"), refunded(400, "R2"), refunded(400, "R3")]
        decisions = decide_stored(orders, facts, [False, False, True])
        assert [d.verdict for d in decisions] == [Verdict.NEW, Verdict.NEW, Verdict.NEW]
        order = orders["O1"]
        assert order is not None
        assert (order.refunded_minor, sorted(order.refunds)) == (400, ["R3"])
        decisions = decide_stored(orders, [refunded(700, "R4")], [False])
        assert decisions[0].reason == "over_refund"
