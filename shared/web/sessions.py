"""Browser sessions: an API key exchanged once for an HttpOnly, SameSite=Strict cookie.

The cookie holds a random token; Postgres holds only its SHA-256 (``web_sessions``), with
the SHA-256 of the key it was exchanged for. Every request looks the key up again through
the service's :class:`~shared.apikeys.KeyStore`, so a revoked key signs its sessions out
within the key cache's TTL, and the session's principal is always the key's current one.

Each service has its own cookie name (cookies do not isolate by port): over https it is
``__Host-cxloop-<service>`` (Secure, whole host, no Domain), over http
``cxloop-<service>``. Each session carries a CSRF synchroniser token that every
state-changing form must send back (:func:`check_csrf`).

One-time sign-in links (``sign_in_links``) let ``cxloop up`` print a URL that signs its
developer key in with one click; each is good for one sign-in, for a limited time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from shared.apikeys import KeyStore, Principal, hash_key
from shared.events import utcnow

metadata = sa.MetaData()
web_sessions = sa.Table(
    "web_sessions",
    metadata,
    sa.Column("token_hash", sa.LargeBinary, primary_key=True),
    sa.Column("service", sa.Text, nullable=False),
    sa.Column("key_hash", sa.LargeBinary, nullable=False),
    sa.Column("csrf_token", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("ended_at", sa.DateTime(timezone=True)),
)
sign_in_links = sa.Table(
    "sign_in_links",
    metadata,
    sa.Column("token_hash", sa.LargeBinary, primary_key=True),
    sa.Column("service", sa.Text, nullable=False),
    sa.Column("key_hash", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("used_at", sa.DateTime(timezone=True)),
)

# Longer than any token we issue (43 characters); a longer cookie is not looked up.
_MAX_TOKEN = 128
_MAX_COOKIES = 3
SESSION_SCOPE = "cxloop.session"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _token() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Session:
    """A signed-in browser: who it acts as, and its forms' CSRF token."""

    principal: Principal
    csrf_token: str
    token_hash: bytes


def is_https(scope: Any) -> bool:
    """Return whether the request came over https (as the trusted proxy headers say)."""
    return bool(scope.get("scheme") == "https")


class SessionStore:
    """The sessions of one service's pages."""

    def __init__(self, service: str, keystore: KeyStore, *, hours: float) -> None:
        self.service = service
        self.keystore = keystore
        self.lifetime = timedelta(hours=hours)

    @property
    def engine(self) -> AsyncEngine:
        engine = self.keystore.engine
        if engine is None:
            raise RuntimeError("the session store is used before the service started")
        return engine

    def cookie_name(self, secure: bool) -> str:
        """The session cookie's name: ``__Host-`` prefixed (so Secure, host-only) over https."""
        return f"__Host-cxloop-{self.service}" if secure else f"cxloop-{self.service}"

    def cookies_of(self, scope: Any) -> list[str]:
        """Return the session tokens the request carries (a few at most).

        Another page on the same host (cookies ignore ports) may have planted a cookie of
        the same name for a narrower path; each is tried, so it cannot lock a user out.
        """
        name = self.cookie_name(is_https(scope)).encode("ascii")
        found: list[str] = []
        for key, value in scope["headers"]:
            if key != b"cookie":
                continue
            for part in value.split(b";"):
                cookie_name, sep, cookie_value = part.strip().partition(b"=")
                if sep and cookie_name == name:
                    found.append(cookie_value.decode("latin-1"))
        return [token for token in found if 0 < len(token) <= _MAX_TOKEN][:_MAX_COOKIES]

    async def open(self, principal_key_hash: bytes) -> tuple[str, str]:
        """Start a session for the key whose hash is given; return its cookie and CSRF tokens."""
        token, csrf = _token(), _token()
        now = utcnow()
        async with self.engine.begin() as conn:
            # Forget sessions that ended over a day ago, a few at a time, as new ones start.
            stale = (
                sa.select(web_sessions.c.token_hash)
                .where(web_sessions.c.expires_at < now - timedelta(days=1))
                .limit(100)
                .with_for_update(skip_locked=True)
                .scalar_subquery()
            )
            await conn.execute(web_sessions.delete().where(web_sessions.c.token_hash.in_(stale)))
            await conn.execute(
                web_sessions.insert().values(
                    token_hash=_digest(token),
                    service=self.service,
                    key_hash=principal_key_hash,
                    csrf_token=csrf,
                    expires_at=now + self.lifetime,
                )
            )
        return token, csrf

    async def resolve(self, scope: Any) -> Session | None:
        """Return the live session of the request ``scope``, or None."""
        digests = [_digest(token) for token in self.cookies_of(scope)]
        if not digests:
            return None
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(
                        web_sessions.c.token_hash,
                        web_sessions.c.key_hash,
                        web_sessions.c.csrf_token,
                    ).where(
                        web_sessions.c.token_hash.in_(digests),
                        web_sessions.c.service == self.service,
                        web_sessions.c.ended_at.is_(None),
                        web_sessions.c.expires_at > sa.func.now(),
                    )
                )
            ).first()
        if row is None:
            return None
        principal = await self.keystore.authenticate_digest(row.key_hash)
        if principal is None:
            return None
        return Session(principal, row.csrf_token, row.token_hash)

    async def end(self, session: Session) -> None:
        """Sign the session out: its cookie no longer signs anyone in."""
        async with self.engine.begin() as conn:
            await conn.execute(
                web_sessions.update()
                .where(web_sessions.c.token_hash == session.token_hash)
                .values(ended_at=sa.func.now())
            )

    async def redeem_link(self, token: str) -> bytes | None:
        """Use a one-time sign-in link: return its key's hash, or None if unknown or used."""
        if not 0 < len(token) <= _MAX_TOKEN:
            return None
        async with self.engine.begin() as conn:
            # Forget links that expired over a day ago, a few at a time.
            old = (
                sa.select(sign_in_links.c.token_hash)
                .where(sign_in_links.c.expires_at < sa.func.now() - timedelta(days=1))
                .limit(100)
                .with_for_update(skip_locked=True)
                .scalar_subquery()
            )
            await conn.execute(sign_in_links.delete().where(sign_in_links.c.token_hash.in_(old)))
            key_hash: bytes | None = (
                await conn.execute(
                    sign_in_links.update()
                    .where(
                        sign_in_links.c.token_hash == _digest(token),
                        sign_in_links.c.service == self.service,
                        sign_in_links.c.used_at.is_(None),
                        sign_in_links.c.expires_at > sa.func.now(),
                    )
                    .values(used_at=sa.func.now())
                    .returning(sign_in_links.c.key_hash)
                )
            ).scalar_one_or_none()
        return key_hash


async def create_sign_in_link(
    conn: AsyncConnection, *, service: str, key_hash: bytes, valid_for: timedelta
) -> str:
    """Store a one-time sign-in link for ``service``; return its token (shown once)."""
    token = _token()
    expires: datetime = utcnow() + valid_for
    await conn.execute(
        sign_in_links.insert().values(
            token_hash=_digest(token), service=service, key_hash=key_hash, expires_at=expires
        )
    )
    return token


async def sign_in_link_for(
    database_url: str, *, service: str, api_key: str, valid_for: timedelta
) -> str:
    """Store a one-time link that signs ``api_key`` in to ``service``'s pages; return its
    token. For callers outside a service (``cxloop up``, tests, the bench): one short-lived
    engine per call."""
    engine = create_async_engine(database_url, hide_parameters=True)
    try:
        async with engine.begin() as conn:
            return await create_sign_in_link(
                conn, service=service, key_hash=hash_key(api_key), valid_for=valid_for
            )
    finally:
        await engine.dispose()


def same_origin(scope: Any) -> bool:
    """Return whether a state-changing request may have come from our own pages.

    Browsers send ``Sec-Fetch-Site`` and ``Origin`` with every form POST; a value naming
    another site is refused. (The CSRF token is the main defence; this is the second.)
    """
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    site = headers.get("sec-fetch-site")
    if site is not None and site not in {"same-origin", "none"}:
        return False
    origin = headers.get("origin")
    if origin is None:
        return True
    host = headers.get("host", "")
    parts = urlsplit(origin)
    return bool(parts.netloc == host and parts.scheme == (scope.get("scheme") or "http"))


def check_csrf(session_token: str, presented: str | None) -> bool:
    """Return whether a form's ``csrf_token`` field matches its session's token."""
    if not presented or len(presented) > _MAX_TOKEN:
        return False
    return hmac.compare_digest(session_token.encode("utf-8"), presented.encode("utf-8"))
