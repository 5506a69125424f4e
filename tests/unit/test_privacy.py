"""The keyed hashes of personal identifiers."""

from __future__ import annotations

import hashlib
import hmac

from shared.privacy import Hasher


class TestDigest:
    def test_is_hmac_sha256_of_domain_and_value_call_after_call(self) -> None:
        key = b"k" * 32
        hasher = Hasher(key)
        values = ["c1", "c1", "顧客-2", "", "c1"]
        for value in values:
            expected = hmac.new(key, f"customer:{value}".encode(), hashlib.sha256).digest()
            assert hasher.digest("customer", value) == expected

    def test_depends_on_the_key(self) -> None:
        assert Hasher(b"a" * 32).digest("customer", "c1") != Hasher(b"b" * 32).digest(
            "customer", "c1"
        )
