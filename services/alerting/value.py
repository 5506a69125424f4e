"""What a customer is worth when an alert about them opens: pure functions, no I/O.

The window is the 365 days before the answer that opened the alert, up to the moment the
alert opens: anchored on the answer's ``occurred_at`` (not on the time it was applied), so
that a late answer or a replay looks back over the same year. Orders and answers travel on
different topics, so an order that arrives after the alert opened is not in its value: the
value is what alerting knew then, and it is not recomputed when later answers fold in.

Per currency (amounts in different currencies are never added): the net revenue (each
order's amount less its refunds, never below zero) and the number of orders completed in
the window, refunded ones included. A currency whose revenue reaches its configured
``high_value`` threshold makes the customer high-value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from babel.numbers import format_currency

from shared.money import from_minor

WINDOW_DAYS = 365


@dataclass(frozen=True)
class CurrencyValue:
    """A customer's orders in one currency over the window."""

    currency: str
    revenue_minor: int
    orders: int
    threshold_minor: int | None = None

    @property
    def high_value(self) -> bool:
        """Whether the revenue reaches the currency's threshold (none: never)."""
        return self.threshold_minor is not None and self.revenue_minor >= self.threshold_minor

    def stored(self) -> dict[str, Any]:
        """The JSON object kept in ``alerts.value``."""
        return {
            "currency": self.currency,
            "revenue_minor": self.revenue_minor,
            "orders": self.orders,
            "threshold_minor": self.threshold_minor,
            "high_value": self.high_value,
        }

    @classmethod
    def from_stored(cls, data: Mapping[str, Any]) -> CurrencyValue:
        """The value of one currency as ``alerts.value`` keeps it."""
        threshold = data.get("threshold_minor")
        return cls(
            currency=str(data["currency"]),
            revenue_minor=int(data["revenue_minor"]),
            orders=int(data["orders"]),
            threshold_minor=None if threshold is None else int(threshold),
        )


def assess(
    totals: Iterable[tuple[str, int, int]], thresholds: Mapping[str, int]
) -> tuple[CurrencyValue, ...]:
    """Return the value of each ``(currency, revenue_minor, orders)``, by currency code,
    each with its threshold (in minor units) if one is configured."""
    return tuple(
        CurrencyValue(currency, revenue, orders, thresholds.get(currency))
        for currency, revenue, orders in sorted(totals)
    )


def money(minor: int, currency: str, locale: str = "en") -> str:
    """``minor`` units of ``currency`` as a person reads them in ``locale`` (¥120,000)."""
    return format_currency(from_minor(minor, currency), currency, locale=locale)


def reason(values: Sequence[CurrencyValue]) -> str | None:
    """Why the alert is critical for the customer's value (None when it is not)."""
    parts = [
        f"{money(v.revenue_minor, v.currency)} in the last 12 months "
        f"(threshold {money(v.threshold_minor, v.currency)})"
        for v in values
        if v.high_value and v.threshold_minor is not None
    ]
    return "high-value customer: " + "; ".join(parts) if parts else None


def describe(values: Sequence[CurrencyValue]) -> str:
    """One line for on-call: "¥120,000 in 12 months, 8 orders" per currency."""
    return "; ".join(
        f"{money(v.revenue_minor, v.currency)} in 12 months, "
        f"{v.orders} order{'' if v.orders == 1 else 's'}"
        for v in values
    )


def of_alert(alert: Mapping[str, Any]) -> list[CurrencyValue]:
    """The value an alert's row (or notification's copy of it) carries."""
    return [CurrencyValue.from_stored(v) for v in alert.get("value") or []]
