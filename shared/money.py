"""Money on the wire and in the database: ISO 4217 currencies, decimal amounts, minor units.

An amount travels as a decimal string ("1234.50", "1500") and is stored as an integer count
of the currency's minor unit (cents for USD, yen for JPY, fils for KWD), so no float ever
rounds a price. The number of minor-unit digits of each currency is ISO 4217's, from the
``iso4217`` package (it ships ISO's own table): 0 for JPY and KRW, 2 for USD and EUR, 3 for
KWD and BHD. Precious metals, special drawing rights and test codes (XAU, XDR, XTS, ...)
have no minor unit in ISO 4217 and are not currencies a customer pays in, so they are
refused; fund codes that ISO gives a minor unit (BOV, CLF, USN, ...) are accepted as ISO
lists them.

Amounts in different currencies are never added together anywhere in cxloop.
"""

from __future__ import annotations

import re
from decimal import Decimal, localcontext
from functools import cache
from typing import Annotated, Final

from iso4217 import Currency
from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

# The largest amount cxloop accepts, in minor units: far above any single order, and its
# sums over millions of orders stay well inside a Postgres bigint.
MAX_MINOR: Final = 10**15

# More than any amount parse_amount lets through (40 characters) and any exponent (4).
_EXACT_DIGITS: Final = 64

_PLAIN_DECIMAL = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]+)?")


@cache
def _exponents() -> dict[str, int]:
    return {c.code: c.exponent for c in Currency if c.exponent is not None}


def currencies() -> frozenset[str]:
    """Return every ISO 4217 code cxloop accepts (those with a minor unit)."""
    return frozenset(_exponents())


def exponent(currency: str) -> int:
    """Return the number of minor-unit digits of ``currency``; ``ValueError`` if unknown."""
    try:
        return _exponents()[currency]
    except KeyError:
        raise ValueError(
            f"{currency!r} is not an ISO 4217 currency with a minor unit (e.g. JPY, USD, EUR)"
        ) from None


def check_currency(value: object) -> str:
    """Return ``value`` as an upper-case ISO 4217 code, or raise ``ValueError`` for a person.

    Lower case is accepted because payment systems (Stripe) send it.
    """
    if not isinstance(value, str):
        raise ValueError("currency must be a three-letter ISO 4217 code such as JPY or USD")
    code = value.strip().upper()
    if not re.fullmatch(r"[A-Z]{3}", code):
        raise ValueError("currency must be a three-letter ISO 4217 code such as JPY or USD")
    exponent(code)
    return code


def parse_amount(value: object) -> Decimal:
    """Return ``value`` as a non-negative ``Decimal``, or raise ``ValueError`` for a person.

    Accepted: a string in plain decimal notation ("12.50", "1500") or a JSON integer.
    Refused: a JSON number with a fraction or an exponent (a float, which may already have
    rounded the price), exponent notation in a string ("1e3"), signs, spaces inside, and
    more digits than any real amount has.
    """
    if isinstance(value, bool):
        raise ValueError('amount must be a decimal string such as "12.50"')
    if isinstance(value, int):
        text = str(value)
    elif isinstance(value, Decimal):
        text = format(value, "f") if value.is_finite() else "nan"
    elif isinstance(value, str):
        text = value.strip()
    elif isinstance(value, float):
        raise ValueError(
            'amount must be a decimal string such as "12.50", not a JSON number with a '
            "fraction or exponent (floats round prices)"
        )
    else:
        raise ValueError('amount must be a decimal string such as "12.50"')
    if text.startswith("-"):
        raise ValueError("amount must not be negative")
    if len(text) > 40 or not _PLAIN_DECIMAL.fullmatch(text):
        raise ValueError(
            'amount must be written in plain decimal notation such as "12.50" or "1500" '
            "(no sign, exponent, separators or spaces)"
        )
    return Decimal(text)


def to_minor(amount: Decimal, currency: str) -> int:
    """Return ``amount`` of ``currency`` in minor units; ``ValueError`` if it does not fit.

    An amount with more decimals than the currency has ("100.5" JPY, "1.234" USD) is
    refused, never rounded; trailing zeros beyond them ("1500.00" JPY) are fine.
    """
    digits = exponent(currency)
    # Exact whatever the length: the default context (28 digits) would round a long
    # amount ("1.000000000000000000000000000001" USD) to one that fits instead of refusing.
    with localcontext(prec=_EXACT_DIGITS):
        minor = amount.scaleb(digits)
        whole = minor.to_integral_value()
    if minor != whole:
        unit = "no decimals" if digits == 0 else f"at most {digits} decimals"
        raise ValueError(f"amount has more decimals than {currency} allows ({unit})")
    result = int(whole)
    if result > MAX_MINOR:
        largest = from_minor(MAX_MINOR, currency)
        raise ValueError(f"amount is larger than cxloop accepts ({largest})")
    return result


def from_minor(minor: int, currency: str) -> Decimal:
    """Return ``minor`` units of ``currency`` as a ``Decimal`` with the currency's decimals."""
    digits = exponent(currency)
    return Decimal(minor).scaleb(-digits).quantize(Decimal(1).scaleb(-digits))


def _serialize(value: Decimal) -> str:
    return format(value, "f")


Amount = Annotated[
    Decimal,
    BeforeValidator(parse_amount),
    PlainSerializer(_serialize, return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^(0|[1-9][0-9]*)(\.[0-9]+)?$",
            "description": 'A decimal amount in plain notation, e.g. "1500" (JPY) or '
            '"12.50" (USD); no more decimals than the currency has.',
            "examples": ["1500", "12.50"],
        }
    ),
]
"""A non-negative decimal amount: a string on the wire, a ``Decimal`` in Python."""

CurrencyCode = Annotated[
    str,
    BeforeValidator(check_currency),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": "^[A-Za-z]{3}$",
            "description": "ISO 4217 code, e.g. JPY or USD (upper-cased on arrival).",
            "examples": ["JPY", "USD"],
        }
    ),
]
"""An ISO 4217 currency code with a minor unit, upper case."""


def json_amount(minor: int, currency: str) -> str:
    """Return ``minor`` units of ``currency`` as the decimal string the APIs answer with."""
    return _serialize(from_minor(minor, currency))


__all__ = [
    "MAX_MINOR",
    "Amount",
    "CurrencyCode",
    "check_currency",
    "currencies",
    "exponent",
    "from_minor",
    "json_amount",
    "parse_amount",
    "to_minor",
]
