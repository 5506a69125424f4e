"""`cxloop simulate`'s purchases: loyal customers must be worth more, or the value view is flat."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal

from services import simulate
from shared.events import TouchpointEvent
from shared.money import to_minor

NOW = datetime(2026, 12, 2, tzinfo=UTC)


def _orders(n: int) -> list[dict[str, object]]:
    rng = random.Random(7)
    return [simulate.order_for(rng, NOW) for _ in range(n)]


class TestSimulatedOrders:
    def test_every_order_is_a_valid_wire_event_in_its_currency(self) -> None:
        for body in _orders(500):
            event = TouchpointEvent.model_validate(
                {**body, "received_at": NOW.isoformat(), "source": "api"}
            )
            assert event.currency in {"JPY", "USD"}
            assert to_minor(Decimal(str(body["amount"])), str(body["currency"])) > 0

    def test_loyal_customers_buy_more_often_and_spend_more(self) -> None:
        spend: dict[str, list[Decimal]] = defaultdict(list)
        for body in _orders(6000):
            if body["currency"] != "JPY":
                continue
            customer = int(str(body["customer_id"]).removeprefix("cust-"))
            lean = simulate.loyalty(customer)
            band = "loyal" if lean > 1 else "unhappy" if lean < -1.5 else "middle"
            spend[band].append(Decimal(str(body["amount"])))
        customers: dict[str, int] = defaultdict(int)
        for c in range(1, simulate.CUSTOMERS + 1):
            lean = simulate.loyalty(c)
            customers["loyal" if lean > 1 else "unhappy" if lean < -1.5 else "middle"] += 1

        def per_customer(band: str) -> Decimal:
            return Decimal(sum(spend[band], Decimal(0))) / customers[band]

        def mean(band: str) -> Decimal:
            return Decimal(sum(spend[band], Decimal(0))) / len(spend[band])

        assert per_customer("loyal") > 4 * per_customer("unhappy")
        assert mean("loyal") > mean("unhappy")

    def test_a_customers_answers_lean_the_same_way_every_time(self) -> None:
        rng = random.Random(3)
        loyal = max(range(1, simulate.CUSTOMERS + 1), key=simulate.loyalty)
        unhappy = min(range(1, simulate.CUSTOMERS + 1), key=simulate.loyalty)
        high = [simulate._nps(rng, "web", "osaka-umeda", loyal) for _ in range(200)]
        low = [simulate._nps(rng, "web", "osaka-umeda", unhappy) for _ in range(200)]
        assert sum(s >= 9 for s in high) > 150
        assert sum(s <= 6 for s in low) > 150
