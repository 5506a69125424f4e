"""API keys: operator keys from the environment, and scoped keys stored hashed in Postgres.

* **Operator keys** (``CXLOOP_API_KEY``, ``CXLOOP_API_KEYS``) may do everything.
* **Secret keys** (``cxs_…``) carry scopes (which endpoints) and optionally sources (which
  adapters, e.g. a Freshdesk token limited to ``freshdesk``). Created by ``cxloop keys create``.
* **Publishable keys** (``cxp_…``) are meant to be seen in a browser: they may only submit
  widget answers, and only from their configured origins.

Only a SHA-256 of each key is stored; the key itself is shown once, at creation. A lookup
is cached for ``ttl`` seconds, so a revocation takes effect everywhere within that time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared import signatures


class Scope(StrEnum):
    """What a key may do."""

    RESPONSES_WRITE = "responses:write"
    EVENTS_WRITE = "events:write"
    INVITATIONS_WRITE = "invitations:write"
    SCORES_READ = "scores:read"
    RESPONSES_READ = "responses:read"
    CUSTOMERS_ERASE = "customers:erase"
    ALERTS_READ = "alerts:read"
    ALERTS_WRITE = "alerts:write"


class KeyKind(StrEnum):
    """Secret keys stay on servers; publishable keys may be embedded in a web page."""

    SECRET = "secret"  # noqa: S105 - a kind of key, not a key
    PUBLISHABLE = "publishable"
    OPERATOR = "operator"


_PREFIX = {KeyKind.SECRET: "cxs_", KeyKind.PUBLISHABLE: "cxp_"}
# Names that stand for something other than a stored key in a record of who acted: the
# service itself, an action from before keys were recorded, the environment's keys.
RESERVED_NAMES = frozenset({"cxloop", "unknown", "operator"})
# The only adapter a publishable key reaches: the widget's endpoint.
WIDGET_SOURCE = "widget"

metadata = sa.MetaData()
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("prefix", sa.Text, nullable=False),
    sa.Column("key_hash", sa.LargeBinary, nullable=False),
    sa.Column("scopes", pg.ARRAY(sa.Text), nullable=False),
    sa.Column("sources", pg.ARRAY(sa.Text), nullable=False),
    sa.Column("origins", pg.ARRAY(sa.Text), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
)


@dataclass(frozen=True)
class Principal:
    """Who is calling, and what they may do."""

    name: str
    kind: KeyKind
    scopes: frozenset[str]
    sources: frozenset[str] = field(default_factory=frozenset)
    origins: frozenset[str] = field(default_factory=frozenset)
    key_id: uuid.UUID | None = None  # None for the operator keys from the environment

    @property
    def caller(self) -> str:
        """Who owns what this key sends (its idempotency keys): the key's id, or ``operator``."""
        return str(self.key_id) if self.key_id is not None else self.kind.value

    def may(self, scope: Scope, source: str | None = None) -> bool:
        """Return whether this key may use ``scope`` through the adapter ``source``.

        A publishable key is visible to anyone who opens the page that embeds it: it only
        ever submits widget answers, whatever scopes it was created with.
        """
        if self.kind is KeyKind.OPERATOR:
            return True
        if self.kind is KeyKind.PUBLISHABLE and (
            scope is not Scope.RESPONSES_WRITE or source != WIDGET_SOURCE
        ):
            return False
        if scope.value not in self.scopes:
            return False
        return not self.sources or source is None or source in self.sources


def hash_key(key: str) -> bytes:
    """Return the stored form of ``key``."""
    return hashlib.sha256(key.encode("utf-8")).digest()


async def create_key(
    conn: AsyncConnection,
    *,
    name: str,
    kind: KeyKind,
    scopes: Iterable[Scope],
    sources: Iterable[str] = (),
    origins: Iterable[str] = (),
) -> tuple[str, uuid.UUID]:
    """Create a key; return it (shown once, never stored) and its id."""
    if kind is KeyKind.OPERATOR:
        raise ValueError("operator keys come from CXLOOP_API_KEY, not the database")
    if name.strip().casefold() in RESERVED_NAMES:
        raise ValueError(
            f"the key name {name.strip()!r} is reserved (records of who acted use it for "
            "the service itself); choose another"
        )
    if kind is KeyKind.PUBLISHABLE and not list(origins):
        raise ValueError("a publishable key needs at least one allowed origin")
    key = _PREFIX[kind] + secrets.token_urlsafe(32)
    key_id = uuid.uuid4()
    await conn.execute(
        api_keys.insert().values(
            id=key_id,
            name=name,
            kind=kind.value,
            prefix=key[:10],
            key_hash=hash_key(key),
            scopes=sorted({s.value for s in scopes}),
            sources=sorted(set(sources)),
            origins=sorted(set(origins)),
        )
    )
    return key, key_id


async def list_keys(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Return every key's metadata (never a secret), newest first."""
    query = sa.select(
        api_keys.c.id,
        api_keys.c.name,
        api_keys.c.kind,
        api_keys.c.prefix,
        api_keys.c.scopes,
        api_keys.c.sources,
        api_keys.c.origins,
        api_keys.c.created_at,
        api_keys.c.revoked_at,
    ).order_by(api_keys.c.created_at.desc())
    return [dict(row._mapping) for row in await conn.execute(query)]


async def revoke_key(conn: AsyncConnection, key_id: uuid.UUID) -> bool:
    """Revoke a key by id; return whether an active key was revoked."""
    result = await conn.execute(
        api_keys.update()
        .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=sa.func.now())
    )
    return bool(result.rowcount)


class KeyStore:
    """Authenticates presented keys against the operator keys and the database."""

    def __init__(
        self, operator_keys: Sequence[str], *, ttl: float = 30.0, max_entries: int = 10_000
    ) -> None:
        self._operator = [k.encode("utf-8") for k in operator_keys]
        self._ttl = ttl
        self._max_entries = max_entries
        # Two bounded LRU caches of key digests, each for ``ttl`` seconds: the keys found,
        # and the keys refused, so a key presented again costs no query either way, and a
        # flood of refused keys cannot push the good ones out.
        self._known: OrderedDict[bytes, tuple[float, Principal]] = OrderedDict()
        self._refused: OrderedDict[bytes, float] = OrderedDict()
        self.engine: AsyncEngine | None = None

    async def authenticate(self, presented: str) -> Principal | None:
        """Return the principal behind ``presented``, or None for an unknown or revoked key."""
        raw = presented.encode("utf-8")
        # Compare with every operator key so the time taken does not reveal a near match.
        matched = False
        for key in self._operator:
            matched |= signatures.matches(key, raw)
        if matched:
            return Principal("operator", KeyKind.OPERATOR, frozenset())
        if self.engine is None or not presented.startswith(tuple(_PREFIX.values())):
            return None
        return await self._stored(hash_key(presented))

    async def authenticate_digest(self, digest: bytes) -> Principal | None:
        """Return the principal of the key whose :func:`hash_key` is ``digest``, or None.

        A browser session holds only this digest: the key is looked up (and its revocation
        seen) through the same caches as a presented key.
        """
        matched = False
        for key in self._operator:
            matched |= hmac.compare_digest(hashlib.sha256(key).digest(), digest)
        if matched:
            return Principal("operator", KeyKind.OPERATOR, frozenset())
        if self.engine is None:
            return None
        return await self._stored(digest)

    async def _stored(self, digest: bytes) -> Principal | None:
        now = time.monotonic()
        known = self._known.get(digest)
        if known is not None and known[0] > now:
            self._known.move_to_end(digest)
            return known[1]
        refused_until = self._refused.get(digest)
        if refused_until is not None and refused_until > now:
            self._refused.move_to_end(digest)
            return None
        principal = await self._lookup(digest)
        if principal is None:
            self._known.pop(digest, None)
            _remember(self._refused, digest, now + self._ttl, self._max_entries)
        else:
            self._refused.pop(digest, None)
            _remember(self._known, digest, (now + self._ttl, principal), self._max_entries)
        return principal

    async def _lookup(self, digest: bytes) -> Principal | None:
        assert self.engine is not None
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(api_keys).where(
                        api_keys.c.key_hash == digest, api_keys.c.revoked_at.is_(None)
                    )
                )
            ).first()
        if row is None:
            return None
        return Principal(
            name=row.name,
            kind=KeyKind(row.kind),
            scopes=frozenset(row.scopes),
            sources=frozenset(row.sources),
            origins=frozenset(row.origins),
            key_id=row.id,
        )


def _remember(cache: OrderedDict[bytes, Any], digest: bytes, entry: Any, limit: int) -> None:
    """Store ``entry`` as the most recent, evicting the least recently used past ``limit``."""
    cache[digest] = entry
    cache.move_to_end(digest)
    while len(cache) > limit:
        cache.popitem(last=False)
