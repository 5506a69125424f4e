"""What a customer is worth when an alert about them opens: pure functions, no I/O.

"12 months" means the 365 days up to the answer that opened the alert: orders completed
from 365 days before the answer's ``occurred_at`` to that instant (an answer dated in the
future counts as given now), so that a late answer or a replay looks back over the same
year, and an order completed after the answer is never in it. Orders and answers travel on
different topics, so an order that arrives after the alert opened is not in its value
either: the value is what alerting knew then, and it is not recomputed when later answers
fold in.

Per currency (amounts in different currencies are never added): the net revenue (each
order's amount less its refunds, never below zero) and the number of orders completed in
the window, refunded ones included. A currency whose revenue reaches its configured
``high_value`` threshold makes the customer high-value.

Each currency is stored with its ISO 4217 exponent (its number of minor-unit digits), so
an alert shows and sends its amounts without the currency table: a currency the
``iso4217`` package drops later cannot break an old alert. Amounts are written with ISO's
digits, not CLDR's (Babel would write IQD 999.600 as IQD1,000).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from shared import money as iso
from shared.web import i18n

WINDOW_DAYS = 365
# The longest value_reason, stored and sent alike: whole currencies only, then "; …".
REASON_CHARS = 1000


def amount(minor: int, exponent: int) -> Decimal:
    """``minor`` units as a ``Decimal`` with exactly ``exponent`` decimals."""
    return Decimal(minor).scaleb(-exponent).quantize(Decimal(1).scaleb(-exponent))


def decimal_string(minor: int, exponent: int) -> str:
    """``minor`` units as the APIs write an amount: "120000" (JPY), "1250.00" (USD)."""
    return format(amount(minor, exponent), "f")


def format_money(value: Decimal, currency: str, locale: str = "en") -> str:
    """``value`` of ``currency`` as a person reads it in ``locale`` (¥120,000, IQD999.600),
    with as many decimals as ``value`` has (ISO's digits, when it comes from
    :func:`amount`), whatever CLDR says of the currency."""
    place = value.as_tuple().exponent
    digits = -place if isinstance(place, int) and place < 0 else 0
    return i18n.format_money(value, currency, locale, digits)


def money(minor: int, currency: str, exponent: int, locale: str = "en") -> str:
    """``minor`` units of ``currency`` as a person reads them in ``locale`` (¥120,000)."""
    return format_money(amount(minor, exponent), currency, locale)


@dataclass(frozen=True)
class CurrencyValue:
    """A customer's orders in one currency over the window."""

    currency: str
    revenue_minor: int
    orders: int
    exponent: int
    threshold_minor: int | None = None

    @property
    def high_value(self) -> bool:
        """Whether the revenue reaches the currency's threshold (none: never)."""
        return self.threshold_minor is not None and self.revenue_minor >= self.threshold_minor

    def revenue(self) -> str:
        """The revenue as a decimal string."""
        return decimal_string(self.revenue_minor, self.exponent)

    def threshold(self) -> str | None:
        """The threshold as a decimal string (None: no threshold)."""
        minor = self.threshold_minor
        return None if minor is None else decimal_string(minor, self.exponent)

    def stored(self) -> dict[str, Any]:
        """The JSON object kept in ``alerts.value``."""
        return {
            "currency": self.currency,
            "exponent": self.exponent,
            "revenue_minor": self.revenue_minor,
            "orders": self.orders,
            "threshold_minor": self.threshold_minor,
            "high_value": self.high_value,
        }

    def public(self) -> dict[str, Any]:
        """The JSON object the API and notifications show (decimal strings)."""
        return {
            "currency": self.currency,
            "revenue": self.revenue(),
            "orders": self.orders,
            "threshold": self.threshold(),
            "high_value": self.high_value,
        }

    @classmethod
    def from_stored(cls, data: Mapping[str, Any]) -> CurrencyValue:
        """The value of one currency as ``alerts.value`` keeps it (one stored without its
        ``exponent`` gets the currency's)."""
        threshold = data.get("threshold_minor")
        currency = str(data["currency"])
        stored_exponent = data.get("exponent")
        return cls(
            currency=currency,
            revenue_minor=int(data["revenue_minor"]),
            orders=int(data["orders"]),
            exponent=iso.exponent(currency) if stored_exponent is None else int(stored_exponent),
            threshold_minor=None if threshold is None else int(threshold),
        )


def assess(
    totals: Iterable[tuple[str, int, int]], thresholds: Mapping[str, int]
) -> tuple[CurrencyValue, ...]:
    """Return the value of each ``(currency, revenue_minor, orders)``, by currency code,
    each with its exponent and its threshold (in minor units) if one is configured. A
    currency the table no longer has (its orders were validated when it had it) is left out:
    its minor units cannot be read."""
    known = iso.currencies()
    return tuple(
        CurrencyValue(currency, revenue, orders, iso.exponent(currency), thresholds.get(currency))
        for currency, revenue, orders in sorted(totals)
        if currency in known
    )


def reason(values: Sequence[CurrencyValue]) -> str | None:
    """Why the alert is critical for the customer's value (None when it is not): one part
    per currency at its threshold, at most ``REASON_CHARS`` long (whole parts, then "…")."""
    parts = [
        f"{money(v.revenue_minor, v.currency, v.exponent)} in the 12 months up to the answer "
        f"(threshold {money(v.threshold_minor, v.currency, v.exponent)})"
        for v in values
        if v.high_value and v.threshold_minor is not None
    ]
    if not parts:
        return None
    text = "high-value customer: " + parts[0]
    for part in parts[1:]:
        if len(text) + len(part) + 5 > REASON_CHARS:
            return text + "; …"
        text += "; " + part
    return text[: REASON_CHARS - 1] + "…" if len(text) > REASON_CHARS else text


def describe(values: Sequence[CurrencyValue]) -> str:
    """One line for on-call: "¥120,000 in 12 months, 8 orders" per currency."""
    return "; ".join(
        f"{money(v.revenue_minor, v.currency, v.exponent)} in 12 months, "
        f"{v.orders} order{'' if v.orders == 1 else 's'}"
        for v in values
    )


def of_alert(alert: Mapping[str, Any]) -> list[CurrencyValue] | None:
    """The value an alert's row (or notification's copy of it) carries; None for an alert
    whose value was never computed (opened before alerts had one, or not about an answer)."""
    stored = alert.get("value")
    return None if stored is None else [CurrencyValue.from_stored(v) for v in stored]
