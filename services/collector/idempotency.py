"""Idempotency keys: a repeat inside the window is answered `duplicate` and not produced again.

An idempotency key names one event for good: its event id is derived from the key, so even
a repeat that does get produced (after the window, or while Postgres is unreachable, or
after a failed produce) carries the same event id and the consumers drop it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.coalesce import Coalescer
from shared.db import is_transient

log = logging.getLogger(__name__)

_NAMESPACE = uuid.UUID("0f3c2f0e-8a3b-5d2e-9c41-6b7e2d1a9f00")

metadata = sa.MetaData()
idempotency = sa.Table(
    "collector_idempotency",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("event_id", pg.UUID(as_uuid=True), nullable=False),
    sa.Column("produced", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
)


# Fixed SQL over array parameters: one prepared statement whatever the batch size, where a
# multi-row VALUES would be compiled afresh for every request (measured: most of the
# collector's CPU per single answer).
_CLAIM = sa.text("""
INSERT INTO collector_idempotency (key, event_id, produced, expires_at)
SELECT key, event_id, false, now() + CAST(:window AS interval)
FROM unnest(CAST(:keys AS text[]), CAST(:event_ids AS uuid[])) AS c(key, event_id)
ON CONFLICT (key) DO UPDATE SET key = EXCLUDED.key
RETURNING key, produced AND expires_at > now() AS dup
""")

_MARK = sa.text("""
UPDATE collector_idempotency SET produced = true, expires_at = now() + CAST(:window AS interval)
WHERE key = ANY(CAST(:keys AS text[]))
""")


def event_id_for(source: str, key: str) -> uuid.UUID:
    """Return the event id an idempotency key names, the same on every collector."""
    return uuid.uuid5(_NAMESPACE, f"{source}:{key}")


@dataclass(frozen=True)
class Claim:
    """An idempotency key together with the event id it names."""

    key: str
    event_id: uuid.UUID


class IdempotencyStore:
    """Remembers which keys were produced, in Postgres, shared by every collector."""

    def __init__(self, engine: AsyncEngine, window: timedelta) -> None:
        self._engine = engine
        self._window = window
        self._claim = Coalescer(self._claim_all, max_items=5_000)
        self._mark = Coalescer(self._mark_all, max_items=5_000)

    async def already_produced(self, claims: Sequence[Claim]) -> set[str]:
        """Record ``claims`` and return the keys produced within the window.

        When Postgres is unreachable this returns no keys: the event is produced again and the
        consumers recognise its event id, so availability is kept and nothing counts twice.
        """
        if not claims:
            return set()
        try:
            duplicate = await self._claim(claims)
        except (DBAPIError, OSError) as exc:
            if not is_transient(exc):
                raise
            log.warning("idempotency store unreachable; producing without the duplicate check")
            return set()
        return {c.key for c, dup in zip(claims, duplicate, strict=True) if dup}

    async def _claim_all(self, claims: list[Claim]) -> list[bool]:
        # Concurrent requests may carry the same key (a client retrying early): one row each.
        first = {c.key: c.event_id for c in reversed(claims)}
        keys = sorted(first)  # one lock order across collectors
        params = {"keys": keys, "event_ids": [first[k] for k in keys], "window": self._window}
        async with self._engine.begin() as conn:
            duplicate = {row.key for row in await conn.execute(_CLAIM, params) if row.dup}
        return [c.key in duplicate for c in claims]

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
