"""Idempotency keys: a repeat inside the window is answered `duplicate` and not produced again.

An idempotency key and the body it came with name one event for good: its event id is
derived from both (:class:`EventIds`), so even a repeat that does get produced (after the
window, or while Postgres is unreachable, or after a failed produce) carries the same event
id and the consumers drop it; the same key with a different body after the window is a
different event. The ids are an HMAC-SHA256 under the server's secret
(``CXLOOP_PRIVACY_HASH_KEY``), formatted as UUID version 8: nobody without the secret can
compute the id of someone else's key or vendor message and send it first, and no client may
send a version-8 id of its own (the schemas refuse it).

Whose key it is. An ``Idempotency-Key`` belongs to the caller that sent it (the API key's
id, see :func:`caller_key`), and so does the event id derived from it: two callers that
happen to pick the same key get two events. A client's own ``event_id`` is global, as it
is on the wire, and a vendor's message id is scoped to its source (one account per
collector), both as before.

What it was used for. Each claim carries a fingerprint of the request content it was first
used with; the same key with a different fingerprint is a :attr:`Verdict.CONFLICT` (the
routes answer 409), never a silent `duplicate`. A batch item is keyed by its own
fingerprint under the batch's key (:func:`item_key`), not by its position, so a batch
resent in another order maps each item to its own first result; an item that was not in
the batch first sent under that key conflicts.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, NamedTuple

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.coalesce import Coalescer
from shared.db import DATABASE_ERRORS, driver_connection, is_transient

log = logging.getLogger(__name__)

# The HMAC's domain: no other keyed hash under the same secret (shared.privacy) starts so.
_DOMAIN = b"event-id:"
_FINGERPRINT = b"fingerprint:"

metadata = sa.MetaData()
idempotency = sa.Table(
    "collector_idempotency",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("event_id", pg.UUID(as_uuid=True), nullable=False),
    sa.Column("produced", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    # NULL: the key alone names the event (vendor ids, and rows from before 0010).
    sa.Column("fingerprint", sa.LargeBinary),
)


# Fixed SQL over array parameters: one prepared statement whatever the batch size, where a
# multi-row VALUES would be compiled afresh for every request (measured: most of the
# collector's CPU per single answer). Sent straight to asyncpg (shared.db.driver_connection),
# hence the positional parameters: $1 keys, $2 event ids, $3 fingerprints, $4 the window.
# A row whose window has passed is claimed afresh: it takes the new event id and fingerprint
# and a new window, so that a second collector re-claiming it with another body finds it
# live. ON CONFLICT locks the row as it is now (after any concurrent claim committed) and
# updates it only if it has expired: the rows returned are exactly the fresh claims,
# `xmax = 0` the inserted ones among them. The rest are live claims, still locked by this
# statement, read by _CURRENT in the same transaction.
_CLAIM = """
INSERT INTO collector_idempotency AS t (key, event_id, fingerprint, produced, expires_at)
SELECT key, event_id, fingerprint, false, now() + CAST($4 AS interval)
FROM unnest(
    CAST($1 AS text[]), CAST($2 AS uuid[]), CAST($3 AS bytea[])
) AS c(key, event_id, fingerprint)
ON CONFLICT (key) DO UPDATE SET
    event_id = EXCLUDED.event_id,
    fingerprint = EXCLUDED.fingerprint,
    produced = false,
    created_at = now(),
    expires_at = EXCLUDED.expires_at
WHERE t.expires_at <= now()
RETURNING key, fingerprint, produced, true AS fresh, xmax = 0 AS inserted
"""

_CURRENT = """
SELECT key, fingerprint, produced, false AS fresh, false AS inserted
FROM collector_idempotency WHERE key = ANY(CAST($1 AS text[]))
"""

_UNCLAIM = "DELETE FROM collector_idempotency WHERE key = ANY(CAST($1 AS text[]))"

# A key's window starts when it is first produced and is not moved after that (a batch key
# is marked again by every resend that produced an item): no claim made with a batch key
# then expires before the batch's own. Keys marked with produced false are claims of items
# the broker missed, given the window of the batch they were sent with. $1 keys, $2 whether
# each was produced, $3 the window.
_MARK = """
UPDATE collector_idempotency AS t SET
    produced = t.produced OR m.produced,
    expires_at = CASE WHEN t.produced THEN t.expires_at
                      ELSE now() + CAST($3 AS interval) END
FROM unnest(CAST($1 AS text[]), CAST($2 AS boolean[])) AS m(key, produced)
WHERE t.key = m.key
"""


class _Found(NamedTuple):
    """A claimed key's row, as _CLAIM and _CURRENT return it."""

    key: str
    fingerprint: bytes | None
    produced: bool
    fresh: bool  # claimed by this statement (inserted, or its window had passed)
    inserted: bool


def caller_key(source: str, caller: str, key: str) -> str:
    """Return the stored key of ``key`` sent by ``caller`` (an API key's id)."""
    return f"{source}:key:{caller}:{key}"


def item_key(source: str, caller: str, key: str, fingerprint: bytes, occurrence: int) -> str:
    """Return the stored key of a batch item: its content under the batch's key.

    ``occurrence`` counts identical items before this one in the batch, so that two equal
    answers sent in one batch stay two events, and a reordered resend still matches them.
    """
    return f"{source}:item:{caller}:{fingerprint.hex()}:{occurrence}:{key}"


def uuid8(digest: bytes) -> uuid.UUID:
    """Return the UUID version 8 (RFC 9562) made of the first 16 bytes of ``digest``."""
    value = int.from_bytes(digest[:16], "big")
    value = (value & ~(0xF << 76)) | (0x8 << 76)  # version 8
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # the RFC variant
    return uuid.UUID(int=value)


class EventIds:
    """Derives the event ids that keys name: HMAC-SHA256 under a server secret, as UUIDv8.

    The secret must stay the same for good and on every collector: under another secret a
    repeat gets another event id, and a repeat after the window then counts twice.
    """

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _derive(self, *name: str | int) -> uuid.UUID:
        # A JSON array: no key text, whatever its characters, reads as another name.
        text = json.dumps(name, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return uuid8(hmac.new(self._secret, _DOMAIN + text, hashlib.sha256).digest())

    def fingerprint(self, kind: str, content: Any) -> bytes:
        """Return the keyed fingerprint of request content (see :func:`fingerprint`)."""
        return fingerprint(kind, content, self._secret)

    def for_key(self, source: str, caller: str, key: str, fingerprint: bytes) -> uuid.UUID:
        """Return the event id of an ``Idempotency-Key`` sent by ``caller`` with a body."""
        return self._derive("key", source, caller, fingerprint.hex(), key)

    def for_vendor(self, source: str, key: str) -> uuid.UUID:
        """Return the event id of a vendor's message id, scoped to its source."""
        return self._derive("vendor", source, key)

    def for_batch(self, source: str, caller: str, key: str) -> uuid.UUID:
        """Return the id a batch's own claim records (no event carries it)."""
        return self._derive("batch", source, caller, key)

    def for_item(
        self, source: str, caller: str, key: str, fingerprint: bytes, occurrence: int
    ) -> uuid.UUID:
        """Return the event id of a batch item (see :func:`item_key`)."""
        return self._derive("item", source, caller, fingerprint.hex(), occurrence, key)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        # One instant, one text: the same time sent in another offset is the same body.
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Decimal):
        # One amount, one text: "12.5" and "12.50" are the same body.
        return format(value.normalize(), "f")
    if isinstance(value, tuple | set | frozenset):
        return sorted(value) if isinstance(value, set | frozenset) else list(value)
    raise TypeError(f"cannot fingerprint a {type(value).__name__}")


def fingerprint(kind: str, content: Any, secret: bytes) -> bytes:
    """Return a stable keyed hash of request content: the same for equal JSON in any order.

    Datetimes count as the instant they name (in UTC), whatever offset they were sent in.
    An HMAC under ``secret`` (``CXLOOP_PRIVACY_HASH_KEY``), never a plain SHA-256: the
    content holds customer ids and comments, and fingerprints are only compared for equality.
    """
    return hmac.new(secret, _FINGERPRINT + canonical(kind, content), hashlib.sha256).digest()


def canonical(kind: str, content: Any) -> bytes:
    """Return the canonical JSON a fingerprint hashes: sorted keys, no spaces, UTF-8.

    The text is a contract (stored keys must keep matching their resends): it is what
    ``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` writes. orjson
    writes the same for what request content holds (strings, ints, bools, None, UUIDs,
    lists, tuples and dicts with string keys, and through ``_json_default`` datetimes,
    Decimals and sets) about ten times faster; it is a fingerprint per batch item.
    Content it refuses (a lone surrogate, an int past 64 bits, a key that is not a string)
    goes through json, as before. A float would be written differently (``1e+16`` against
    ``1e16``): the request models hold none, as tests/unit/test_event_ids.py checks.
    """
    try:
        return orjson.dumps(
            [kind, content],
            default=_json_default,
            option=orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME,
        )
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(
            [kind, content],
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            default=_json_default,
        ).encode("utf-8")


def batch_fingerprint(kind: str) -> bytes:
    """Return the fingerprint a batch's own claim carries: a key used for a batch of ``kind``.

    It holds nothing personal, so it needs no secret.
    """
    canonical = json.dumps(["batch", kind], separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).digest()


class Verdict(StrEnum):
    """What a claim found."""

    NEW = "new"  # produce it
    DUPLICATE = "duplicate"  # produced within the window: answer, do not produce
    CONFLICT = "conflict"  # the key was used for something else: refuse


@dataclass(frozen=True)
class Claim:
    """An idempotency key, the event id it names, and what it was used for.

    ``fingerprint`` is None when the key alone names the event (a vendor's message id).
    ``batch`` is the key of the batch claim an item belongs to; that claim must come just
    before the batch's items in the same call.
    """

    key: str
    event_id: uuid.UUID
    fingerprint: bytes | None = None
    batch: str | None = None


class IdempotencyStore:
    """Remembers which keys were produced, in Postgres, shared by every collector."""

    def __init__(self, engine: AsyncEngine, window: timedelta) -> None:
        self._engine = engine
        self._window = window
        self._claim = Coalescer(self._claim_all, max_items=5_000)
        self._mark = Coalescer(self._mark_all, max_items=5_000)

    async def claim(self, claims: Sequence[Claim]) -> list[Verdict]:
        """Record ``claims`` and return one verdict each.

        When Postgres is unreachable every claim is NEW: the event is produced again and the
        consumers recognise its event id, so availability is kept and nothing counts twice.
        A conflict then goes unnoticed: a key sent with another body names another event
        (the id derives from both, see :class:`EventIds`), which is stored as such.
        """
        if not claims:
            return []
        try:
            return await self._claim(claims)
        except DATABASE_ERRORS as exc:
            if not is_transient(exc):
                raise
            log.warning("idempotency store unreachable; producing without the duplicate check")
            return [Verdict.NEW] * len(claims)

    async def _claim_all(self, claims: list[Claim]) -> list[Verdict]:
        # Concurrent requests may carry the same key (a client retrying early): one row each,
        # and only the first of them in this run may count the row as freshly claimed.
        first: dict[str, int] = {}
        for i, c in enumerate(claims):
            first.setdefault(c.key, i)
        keys = sorted(first)  # one lock order across collectors
        event_ids = [claims[first[k]].event_id for k in keys]
        fingerprints = [claims[first[k]].fingerprint for k in keys]
        async with driver_connection(self._engine) as driver, driver.transaction():
            claimed = await driver.fetch(_CLAIM, keys, event_ids, fingerprints, self._window)
            rows = {row[0]: _Found(*row) for row in claimed}
            live = [k for k in keys if k not in rows]
            if live:
                rows |= {row[0]: _Found(*row) for row in await driver.fetch(_CURRENT, live)}
            verdicts: list[Verdict] = []
            batches: dict[str, tuple[bool, Verdict]] = {}  # the latest batch claim of each key
            unclaim: list[str] = []
            for i, c in enumerate(claims):
                row = rows[c.key]
                fresh = bool(row.fresh) and first[c.key] == i
                # Inserted: no claim of this key existed. One that had expired was made by
                # this caller under this key before, so it was in the batch.
                inserted = bool(row.inserted) and first[c.key] == i
                if c.fingerprint is not None and row.fingerprint not in (None, c.fingerprint):
                    verdict = Verdict.CONFLICT
                elif c.batch is not None and (
                    batches[c.batch][1] is Verdict.CONFLICT
                    or (inserted and not batches[c.batch][0])
                ):
                    # An item the batch first sent under this key did not hold.
                    verdict = Verdict.CONFLICT
                    if inserted:
                        unclaim.append(c.key)  # so that a resend conflicts again
                elif row.produced:
                    verdict = Verdict.DUPLICATE
                else:
                    verdict = Verdict.NEW
                if c.batch is None and c.fingerprint is not None:
                    batches[c.key] = (fresh, verdict)
                verdicts.append(verdict)
            if unclaim:
                await driver.execute(_UNCLAIM, unclaim)
        return verdicts

    async def was_produced(self, key: str) -> bool:
        """Return whether ``key`` was produced within the window (False if Postgres is down)."""
        query = sa.select(sa.literal(1)).where(
            idempotency.c.key == key,
            idempotency.c.produced,
            idempotency.c.expires_at > sa.func.now(),
        )
        try:
            async with self._engine.connect() as conn:
                return bool(await conn.scalar(query))
        except DATABASE_ERRORS as exc:
            if not is_transient(exc):
                raise
            return False

    async def unclaim(self, keys: Sequence[str]) -> None:
        """Release ``keys``, claimed by a request that was refused after its claim (the order
        ledger's 422 or 409), so that a corrected resend under them is a new request."""
        if not keys:
            return
        try:
            async with driver_connection(self._engine) as driver:
                await driver.execute(_UNCLAIM, sorted(set(keys)))
        except DATABASE_ERRORS as exc:
            # The resend of a corrected body then conflicts until the window passes.
            if not is_transient(exc):
                raise
            log.warning("could not release %d refused key(s)", len(keys))

    async def mark_produced(self, keys: Sequence[str], missed: Sequence[str] = ()) -> None:
        """Record that ``keys`` were acknowledged by the broker, starting their window.

        ``missed`` are claims sent with them that the broker did not acknowledge: they stay
        unproduced but get the same window, so that none expires before the batch key
        marked with them (an item claimed in it would then look foreign to the batch).
        """
        marks = [(key, True) for key in keys] + [(key, False) for key in missed]
        if not keys:
            return
        try:
            await self._mark(marks)
        except DATABASE_ERRORS as exc:
            # Only the duplicate answer is lost: a repeat is produced and dropped downstream.
            if not is_transient(exc):
                raise
            log.warning("could not record %d produced key(s)", len(keys))

    async def _mark_all(self, marks: list[tuple[str, bool]]) -> list[None]:
        produced: dict[str, bool] = {}
        for key, acked in marks:
            produced[key] = produced.get(key, False) or acked
        keys = sorted(produced)
        # One statement: it commits on its own.
        async with driver_connection(self._engine) as driver:
            await driver.execute(_MARK, keys, [produced[k] for k in keys], self._window)
        return [None] * len(marks)

    async def purge_expired(self) -> int:
        """Delete keys whose window has passed; return how many."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                idempotency.delete().where(idempotency.c.expires_at < sa.func.now())
            )
        return int(result.rowcount)
