"""Idempotency keys: a repeat inside the window is answered `duplicate` and not produced again.

An idempotency key names one event for good: its event id is derived from the key, so even
a repeat that does get produced (after the window, or while Postgres is unreachable, or
after a failed produce) carries the same event id and the consumers drop it.

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
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.coalesce import Coalescer
from shared.db import is_transient

log = logging.getLogger(__name__)

_NAMESPACE = uuid.UUID("0f3c2f0e-8a3b-5d2e-9c41-6b7e2d1a9f00")
# Batch items name their events in a namespace of their own, so that no single request's
# key, whatever its text, derives the event id of a batch item.
_ITEM_NAMESPACE = uuid.UUID("5b1f6d7a-2c4e-5e8f-a1b3-9d0c7e6f4a21")

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
# collector's CPU per single answer). A row whose window has passed is claimed afresh: it
# takes the new fingerprint, and `fresh` says so (its expires_at is left for _MARK to move).
# `xmax = 0` is true of a row this statement inserted.
_CLAIM = sa.text("""
INSERT INTO collector_idempotency AS t (key, event_id, fingerprint, produced, expires_at)
SELECT key, event_id, fingerprint, false, now() + CAST(:window AS interval)
FROM unnest(
    CAST(:keys AS text[]), CAST(:event_ids AS uuid[]), CAST(:fingerprints AS bytea[])
) AS c(key, event_id, fingerprint)
ON CONFLICT (key) DO UPDATE SET
    fingerprint = CASE WHEN t.expires_at > now() THEN t.fingerprint ELSE EXCLUDED.fingerprint END,
    produced = t.produced AND t.expires_at > now()
RETURNING key, fingerprint, produced, xmax = 0 OR expires_at <= now() AS fresh
""")

_UNCLAIM = sa.text("DELETE FROM collector_idempotency WHERE key = ANY(CAST(:keys AS text[]))")

_MARK = sa.text("""
UPDATE collector_idempotency SET produced = true, expires_at = now() + CAST(:window AS interval)
WHERE key = ANY(CAST(:keys AS text[]))
""")


def event_id_for(source: str, key: str, caller: str | None = None) -> uuid.UUID:
    """Return the event id an idempotency key names, the same on every collector.

    ``caller`` (see :func:`caller_key`) scopes the key to whoever sent it; vendor ids are
    scoped by their ``source`` alone.
    """
    name = f"{source}:{key}" if caller is None else f"{source}:{caller}:{key}"
    return uuid.uuid5(_NAMESPACE, name)


def caller_key(source: str, caller: str, key: str) -> str:
    """Return the stored key of ``key`` sent by ``caller`` (an API key's id)."""
    return f"{source}:key:{caller}:{key}"


def item_key(source: str, caller: str, key: str, fingerprint: bytes, occurrence: int) -> str:
    """Return the stored key of a batch item: its content under the batch's key.

    ``occurrence`` counts identical items before this one in the batch, so that two equal
    answers sent in one batch stay two events, and a reordered resend still matches them.
    """
    return f"{source}:item:{caller}:{fingerprint.hex()}:{occurrence}:{key}"


def item_event_id(
    source: str, caller: str, key: str, fingerprint: bytes, occurrence: int
) -> uuid.UUID:
    """Return the event id of a batch item (see :func:`item_key`)."""
    return uuid.uuid5(_ITEM_NAMESPACE, f"{source}:{caller}:{fingerprint.hex()}:{occurrence}:{key}")


def fingerprint(kind: str, content: Any) -> bytes:
    """Return a stable hash of request content: the same for equal JSON in any key order."""
    canonical = json.dumps(
        [kind, content], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).digest()


def batch_fingerprint(kind: str) -> bytes:
    """Return the fingerprint a batch's own claim carries: a key used for a batch of ``kind``."""
    return fingerprint("batch", kind)


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
        consumers recognise its event id, so availability is kept and nothing counts twice
        (a conflict then goes unnoticed; its event carries the id of the first and is dropped).
        """
        if not claims:
            return []
        try:
            return await self._claim(claims)
        except (DBAPIError, OSError) as exc:
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
        params = {
            "keys": keys,
            "event_ids": [claims[first[k]].event_id for k in keys],
            "fingerprints": [claims[first[k]].fingerprint for k in keys],
            "window": self._window,
        }
        async with self._engine.begin() as conn:
            rows = {row.key: row for row in await conn.execute(_CLAIM, params)}
            verdicts: list[Verdict] = []
            batches: dict[str, tuple[bool, Verdict]] = {}  # the latest batch claim of each key
            unclaim: list[str] = []
            for i, c in enumerate(claims):
                row = rows[c.key]
                fresh = bool(row.fresh) and first[c.key] == i
                if c.fingerprint is not None and row.fingerprint not in (None, c.fingerprint):
                    verdict = Verdict.CONFLICT
                elif c.batch is not None and (
                    batches[c.batch][1] is Verdict.CONFLICT or (fresh and not batches[c.batch][0])
                ):
                    # An item the batch first sent under this key did not hold.
                    verdict = Verdict.CONFLICT
                    if fresh:
                        unclaim.append(c.key)  # so that a resend conflicts again
                elif row.produced:
                    verdict = Verdict.DUPLICATE
                else:
                    verdict = Verdict.NEW
                if c.batch is None and c.fingerprint is not None:
                    batches[c.key] = (fresh, verdict)
                verdicts.append(verdict)
            if unclaim:
                await conn.execute(_UNCLAIM, {"keys": unclaim})
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
        except (DBAPIError, OSError) as exc:
            if not is_transient(exc):
                raise
            return False

    async def mark_produced(self, keys: Sequence[str]) -> None:
        """Record that ``keys`` were acknowledged by the broker, starting their window."""
        if not keys:
            return
        try:
            await self._mark(keys)
        except (DBAPIError, OSError) as exc:
            # Only the duplicate answer is lost: a repeat is produced and dropped downstream.
            if not is_transient(exc):
                raise
            log.warning("could not record %d produced key(s)", len(keys))

    async def _mark_all(self, keys: list[str]) -> list[None]:
        async with self._engine.begin() as conn:
            await conn.execute(_MARK, {"keys": sorted(set(keys)), "window": self._window})
        return [None] * len(keys)

    async def purge_expired(self) -> int:
        """Delete keys whose window has passed; return how many."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                idempotency.delete().where(idempotency.c.expires_at < sa.func.now())
            )
        return int(result.rowcount)
