"""Presented secrets and signature headers: refused, never compared, when unusable."""

from __future__ import annotations

import pytest

from shared.http.middleware import forwarded_pairs
from shared.signatures import MAX_PRESENTED, matches, single_header


class TestMatches:
    def test_equal_values_match(self) -> None:
        assert matches("c2lnbmF0dXJl", "c2lnbmF0dXJl")
        assert matches(b"key", b"key")

    @pytest.mark.parametrize(
        "presented", [None, "", "é", "Ω", "x" * (MAX_PRESENTED + 1), "c2lnbmF0dXJm"]
    )
    def test_anything_else_is_no_match_and_never_raises(self, presented: str | None) -> None:
        assert not matches("c2lnbmF0dXJl", presented)


class TestSingleHeader:
    NAME = "X-Twilio-Signature"

    def test_one_ascii_value_is_returned(self) -> None:
        assert single_header([(b"x-twilio-signature", b"abc=")], self.NAME) == "abc="

    @pytest.mark.parametrize(
        "headers",
        [
            [],
            [(b"x-twilio-signature", b"")],
            [(b"x-twilio-signature", b"  ")],
            [(b"x-twilio-signature", "é".encode("latin-1"))],
            [(b"x-twilio-signature", b"a" * (MAX_PRESENTED + 1))],
            [(b"x-twilio-signature", b"abc="), (b"X-Twilio-Signature", b"abc=")],
        ],
        ids=["absent", "empty", "blank", "non_ascii", "huge", "repeated"],
    )
    def test_an_unusable_header_is_none(self, headers: list[tuple[bytes, bytes]]) -> None:
        assert single_header(headers, self.NAME) is None


class TestForwarded:
    def test_hosts_and_protos_are_read_in_order_without_ports(self) -> None:
        value = 'for=192.0.2.60;proto=http;by=203.0.113.43, for="[2001:db8:cafe::17]:4711"'
        assert forwarded_pairs(value) == (["192.0.2.60", "2001:db8:cafe::17"], ["http"])

    def test_a_quoted_address_with_a_port_loses_the_port(self) -> None:
        assert forwarded_pairs('For="198.51.100.7:4711"') == (["198.51.100.7"], [])
