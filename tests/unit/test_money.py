"""shared/money.py: ISO 4217 currencies, decimal amounts and minor units, never a float."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import BaseModel, ValidationError

from shared.money import (
    MAX_MINOR,
    Amount,
    CurrencyCode,
    check_currency,
    currencies,
    exponent,
    from_minor,
    json_amount,
    parse_amount,
    to_minor,
)


class TestCurrencies:
    @pytest.mark.parametrize(
        ("code", "digits"), [("JPY", 0), ("KRW", 0), ("USD", 2), ("EUR", 2), ("KWD", 3)]
    )
    def test_minor_units_are_iso_4217s(self, code: str, digits: int) -> None:
        assert exponent(code) == digits

    @pytest.mark.parametrize("code", ["XAU", "XTS", "ABC", "usd"])
    def test_metals_test_codes_and_unknown_codes_are_not_currencies(self, code: str) -> None:
        assert code not in currencies()
        with pytest.raises(ValueError, match="ISO 4217"):
            exponent(code)

    def test_codes_are_upper_cased_and_checked(self) -> None:
        assert check_currency(" usd ") == "USD"
        for bad in ("US", "USDX", "U5D", 840, None):
            with pytest.raises(ValueError, match="three-letter"):
                check_currency(bad)
        with pytest.raises(ValueError, match="ISO 4217"):
            check_currency("XAU")


class TestAmounts:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [("12.50", "12.50"), ("1500", "1500"), ("0", "0"), (1500, "1500"), ("0.001", "0.001")],
    )
    def test_plain_decimals_and_integers_are_read_exactly(
        self, value: object, expected: str
    ) -> None:
        assert parse_amount(value) == Decimal(expected)

    @pytest.mark.parametrize(
        ("value", "words"),
        [
            (12.5, "floats round prices"),
            (1e3, "floats round prices"),
            ("1e3", "plain decimal"),
            ("1E3", "plain decimal"),
            ("-5", "negative"),
            ("+5", "plain decimal"),
            ("1,000", "plain decimal"),
            ("01", "plain decimal"),
            (".5", "plain decimal"),
            ("NaN", "plain decimal"),
            ("Infinity", "plain decimal"),
            ("1" * 41, "plain decimal"),
            (True, "decimal string"),
            (None, "decimal string"),
        ],
    )
    def test_anything_else_is_refused(self, value: object, words: str) -> None:
        with pytest.raises(ValueError, match=words):
            parse_amount(value)


class TestMinorUnits:
    @pytest.mark.parametrize(
        ("amount", "currency", "minor"),
        [
            ("19.99", "USD", 1999),
            ("1500", "JPY", 1500),
            ("1500.00", "JPY", 1500),
            ("5.12", "KWD", 5120),
        ],
    )
    def test_to_and_from_minor_units(self, amount: str, currency: str, minor: int) -> None:
        assert to_minor(Decimal(amount), currency) == minor
        assert from_minor(minor, currency) == Decimal(amount)

    @pytest.mark.parametrize(
        ("amount", "currency"),
        [
            ("100.5", "JPY"),
            ("1.234", "USD"),
            ("0.0001", "KWD"),
            # Past the default 28-digit context, which once rounded these to 1.00 and 12.50.
            ("1.000000000000000000000000000001", "USD"),
            ("12.500000000000000000000000000001", "USD"),
            ("123456789012345678901234567.5", "JPY"),
        ],
    )
    def test_more_decimals_than_the_currency_has_are_refused_not_rounded(
        self, amount: str, currency: str
    ) -> None:
        with pytest.raises(ValueError, match=f"more decimals than {currency}"):
            to_minor(Decimal(amount), currency)

    def test_an_amount_past_the_largest_is_refused(self) -> None:
        assert to_minor(Decimal(MAX_MINOR), "JPY") == MAX_MINOR
        with pytest.raises(ValueError, match="larger than"):
            to_minor(Decimal(MAX_MINOR + 1), "JPY")

    def test_answers_carry_the_currencys_decimals(self) -> None:
        assert (json_amount(1999, "USD"), json_amount(1500, "JPY"), json_amount(5, "KWD")) == (
            "19.99",
            "1500",
            "0.005",
        )


class Priced(BaseModel):
    currency: CurrencyCode
    amount: Amount


class TestPydanticTypes:
    def test_a_model_reads_strings_and_writes_strings(self) -> None:
        priced = Priced.model_validate({"currency": "jpy", "amount": "1500"})
        assert (priced.currency, priced.amount) == ("JPY", Decimal(1500))
        assert priced.model_dump(mode="json") == {"currency": "JPY", "amount": "1500"}

    def test_a_json_float_is_refused_naming_the_field(self) -> None:
        with pytest.raises(ValidationError) as caught:
            Priced.model_validate_json('{"currency": "USD", "amount": 12.5}')
        assert [e["loc"] for e in caught.value.errors()] == [("amount",)]
