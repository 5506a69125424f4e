"""Keyed hashes of personal identifiers: phone numbers, IVR callers, erased customer ids.

Every one is an HMAC-SHA256 under ``CXLOOP_PRIVACY_HASH_KEY``, never a plain SHA-256: a
phone number has so few possible values that anyone could reverse an unkeyed hash of it by
trying them all. Each kind of identifier has its own domain (``phone:``, ``caller:``,
``customer:``), so equal strings of two kinds never share a hash.

An IVR caller's id is the HMAC of the first 24 hex digits of the SHA-256 of their number:
those digits are what cxloop kept before keyed hashing, so migration 0013 re-keys the stored
``caller:`` ids in place and a caller keeps one id across the upgrade.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.errors import ConfigError

CALLER_PREFIX: Final = "caller:"
# The table that keeps the key's check value (one row), created by migration 0013.
KEY_CHECK_TABLE: Final = "privacy_key_check"


class Hasher:
    """HMAC-SHA256 of personal identifiers under one secret key."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        # Keyed once: each digest copies this state rather than keying a new HMAC.
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)

    def digest(self, domain: str, value: str) -> bytes:
        """Return the HMAC of ``value`` in ``domain``."""
        # The same HMAC as hmac.new(key, ...) at about 60% of its cost (measured): the
        # scorer hashes every customer of every batch.
        mac = self._keyed.copy()
        mac.update(f"{domain}:{value}".encode())
        return mac.digest()

    def phone(self, phone: str) -> str:
        """Return the stored form of a phone number (64 hex digits)."""
        return self.digest("phone", phone).hex()

    def customer(self, customer_id: str) -> bytes:
        """Return the stored form of an erased customer's id."""
        return self.digest("customer", customer_id)

    def caller(self, address: str) -> str:
        """Return a stable customer id for a caller known only by their number."""
        unkeyed = hashlib.sha256(address.encode()).hexdigest()[:24]
        return self.rekey_caller(unkeyed)

    def check_value(self) -> bytes:
        """Return the key's check value: the HMAC of a fixed label, safe to store."""
        return self.digest("check", "cxloop privacy key")

    def rekey_caller(self, unkeyed: str) -> str:
        """Return the keyed caller id of the 24 hex digits stored before keyed hashing."""
        return CALLER_PREFIX + self.digest("caller", unkeyed).hex()[:24]


async def verify_key(engine: AsyncEngine, hasher: Hasher) -> None:
    """Refuse a key other than the one this database was written with (``ConfigError``).

    The first service to start on a database that has no check value stores its own. Under
    another key an erased customer's later events would carry their id again (it no longer
    matches the stored hash), and SMS opt-outs and invitations would no longer match.
    """
    check = hasher.check_value()
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO privacy_key_check (id, check_value) VALUES (true, :check) "
                "ON CONFLICT (id) DO NOTHING"
            ),
            {"check": check},
        )
        stored = await conn.scalar(sa.text("SELECT check_value FROM privacy_key_check"))
    if stored is None or not hmac.compare_digest(bytes(stored), check):
        raise ConfigError(
            "invalid configuration: CXLOOP_PRIVACY_HASH_KEY is not the key this database was "
            "written with; set the original key (the key must never change: under another "
            "one erased customers' later events are stored under their id again, and SMS "
            "opt-outs are lost)"
        )
