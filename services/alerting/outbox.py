"""The durable notification outbox: written with the alert change, delivered with retries.

A pass leases due rows in a short transaction (``locked_until``, taken ``FOR UPDATE SKIP
LOCKED`` so instances share the work), commits, sends, and records each delivery's outcome
(those that finish while one is being recorded, together in one statement). No row lock is
held while a receiver is called; a crashed instance's lease runs out and another sends
again. Each receiver has its own requests in flight (``max_in_flight``) and connections,
so one that hangs or is down delays nobody else's notifications.

2xx: delivered. A timeout, a connection failure, 429 or 5xx: retried with exponential
backoff, honouring Retry-After, until the retry budget (a maximum age) is spent; then
failed. Any other 4xx, or a request that cannot even be built: failed, visibly, never
retried, and no other notification is touched. Every attempt of a notification carries the
same id (webhook-id, PagerDuty dedup_key), so a receiver can drop the repeat that a crash
between its answer and our commit would cause.

A trigger that a silence matches is kept ``held``; when no silence matches it any more, it
is sent if its alert is still open, and dropped otherwise (as Alertmanager does).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import logging
import os
import re
import ssl
import urllib.request
import uuid
from base64 import b64encode
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import certifi
import sqlalchemy as sa
import yarl
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.alerting import metrics, receivers
from services.alerting.config import AlertingConfig, is_ip, label, url_problem
from services.alerting.models import alerts, notifications, silences
from shared.db import refused_data
from shared.errors import ConfigError
from shared.kafka import backoff_delay

log = logging.getLogger(__name__)

# A receiver back from an outage hears from us within a minute: an alert is for people now.
MAX_DELAY = 60.0
# Requests in flight per receiver, unless its ``max_in_flight`` says otherwise: a slow one
# uses its own, never another receiver's. A receiver on the same network answers in a few
# milliseconds; 16 keep up with a hundred and more alerts a second on a busy 2-core machine.
PER_RECEIVER = 16
# Where a receiver does not set ``max_in_flight``: chat and paging services limit how fast
# they are posted to (Slack about one message a second per webhook), so fewer at once.
FEWER_IN_FLIGHT = {"slack": 4, "pagerduty": 4}
# Seconds an idle connection to a receiver is kept: less than servers' own keep-alive
# (gunicorn 2 s, Node and uvicorn 5 s), so that we do not reuse one they are closing.
KEEPALIVE = 1.0
# Rows a lease looks at per unit of a receiver's room: a bound on a pass, whatever the backlog.
SCAN = 4
# Rounds of a receiver's requests in flight it may hold leased at most, however short the
# timeout: what one instance takes is bounded, and other instances find the rest.
MAX_ROUNDS = 5
# Seconds a record of an outcome may take; it is tried twice (see ``Outbox._deliver``).
RECORD_TIMEOUT = 5.0
# Bytes of a receiver's answer read (and dropped) so that its connection can be reused, and
# the seconds it may take: a longer or slower answer closes the connection instead.
ANSWER_READ = 64 * 1024
ANSWER_WAIT = 1.0
# How often held notifications are compared with the silences in force, and how many at once.
RELEASE_EVERY = 1.0
HELD_PAGE = 1000


async def active_silences(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Return the matchers of every silence in force now."""
    rows = await conn.execute(
        sa.select(silences.c.matchers).where(
            silences.c.starts_at <= sa.func.now(), silences.c.ends_at > sa.func.now()
        )
    )
    return [matchers for (matchers,) in rows]


def silenced(alert: dict[str, Any], active: Sequence[dict[str, Any]]) -> bool:
    """Return whether one of the ``active`` silences matches every one of its matchers."""
    return any(all(label(alert.get(k)) == label(v) for k, v in m.items()) for m in active)


async def enqueue(
    conn: AsyncConnection,
    config: AlertingConfig,
    alert: dict[str, Any],
    action: str,
    receivers_: list[str] | None = None,
    silences_: Sequence[dict[str, Any]] | None = None,
) -> int:
    """Queue ``action`` on ``alert`` for every receiver its routes name (or ``receivers_``),
    and return how many were queued. A trigger that a silence matches is held until no
    silence does; any other action under a silence is dropped.

    A new alert on a grouping route waits ``group_wait_seconds`` for company: every alert
    that joins the group meanwhile is delivered in the same request. ``silences_`` are the
    silences in force, when the caller already read them for a whole batch.
    """
    return await enqueue_many(conn, config, [alert], action, receivers_, silences_)


async def enqueue_many(
    conn: AsyncConnection,
    config: AlertingConfig,
    alerts_: Sequence[dict[str, Any]],
    action: str,
    receivers_: list[str] | None = None,
    silences_: Sequence[dict[str, Any]] | None = None,
) -> int:
    """:func:`enqueue` for each of ``alerts_``, in one INSERT; return how many were queued.

    Alerts of the call that a grouping route puts in one group join it as they would one
    call at a time: the first finds (or starts) the group, the others join the same.
    """
    rows: dict[str, list[Any]] = {
        k: [] for k in ("id", "alert_id", "receiver", "action", "group_key", "due", "wait")
    }
    rows["status"] = []
    groups: dict[str, tuple[str, datetime | None, float]] = {}  # route key -> its group
    active: Sequence[dict[str, Any]] | None = silences_
    queued = 0
    for alert in alerts_:
        if receivers_ is not None:
            routes: list[tuple[str, str | None, float]] = [(r, None, 0.0) for r in receivers_]
        else:
            routes = [
                (route.receiver, key, route.group_wait_seconds)
                for route, key in config.matches(alert)
            ]
        if not routes:
            continue
        if active is None:
            active = await active_silences(conn)
        held = silenced(alert, active)
        if held and action != "trigger":
            continue
        for receiver, route_key, wait in routes:
            group_key: str | None = None
            due: datetime | None = None  # None: now() + wait
            delay = 0.0
            if not held and route_key is not None and action == "trigger":
                if route_key not in groups:
                    groups[route_key] = await _group_for(conn, route_key, wait)
                group_key, due, delay = groups[route_key]
            # Held: sent, with its group, when no silence matches it any more.
            rows["id"].append(uuid.uuid4())
            rows["alert_id"].append(alert["id"])
            rows["receiver"].append(receiver)
            rows["action"].append(action)
            rows["group_key"].append(group_key)
            rows["due"].append(due)
            rows["wait"].append(delay)
            rows["status"].append("held" if held else "pending")
        queued += 0 if held else len(routes)
    if rows["id"]:
        await conn.execute(_ENQUEUE, rows)
    return queued


async def _group_for(
    conn: AsyncConnection, route_key: str, wait: float
) -> tuple[str, datetime | None, float]:
    """The group a trigger on a grouping route joins: (its key, its due time or None for
    now() + the returned wait)."""
    # A group is frozen once leased: a later alert starts the route's next group, so that
    # every attempt of a group carries the same alerts under the same id.
    joinable = (
        await conn.execute(
            sa.select(notifications.c.group_key, notifications.c.next_attempt_at)
            .where(
                notifications.c.group_key.startswith(f"{route_key}#", autoescape=True),
                notifications.c.status == "pending",
                notifications.c.attempts == 0,
                notifications.c.locked_until.is_(None),
            )
            .order_by(notifications.c.next_attempt_at)
            .limit(1)
        )
    ).first()
    if joinable is not None:
        return joinable.group_key, joinable.next_attempt_at, 0.0
    return f"{route_key}#{uuid.uuid4().hex}", None, wait


_ENQUEUE = sa.text("""
INSERT INTO notifications (id, alert_id, receiver, action, group_key, next_attempt_at, status)
SELECT id, alert_id, receiver, action, group_key,
       coalesce(due, now() + make_interval(secs => wait)), status
FROM unnest(
    CAST(:id AS uuid[]), CAST(:alert_id AS uuid[]), CAST(:receiver AS text[]),
    CAST(:action AS text[]), CAST(:group_key AS text[]), CAST(:due AS timestamptz[]),
    CAST(:wait AS float8[]), CAST(:status AS text[])
) AS d(id, alert_id, receiver, action, group_key, due, wait, status)
""")


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Return the seconds Retry-After asks for: ASCII digits or an HTTP-date, else None.

    ``headers`` is the answer's (case-insensitive) headers.
    """
    value = headers.get("Retry-After", "").strip()
    if re.fullmatch(r"[0-9]{1,9}", value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


async def _attempt(
    client: aiohttp.ClientSession,
    config: AlertingConfig,
    rows: list[Any],
    timeout: float,
    routes: Routes | None = None,
) -> tuple[str, float | None, str | None]:
    """Return (outcome, delay before a retry, error) for one notification or one group.

    The request has ``timeout`` seconds in all, up to its answer's status and headers;
    the answer's body is read only to be dropped. A redirect is the receiver's answer, not
    followed: its status decides.
    """
    first = rows[0]
    receiver = config.receiver(first.receiver)
    if receiver is None:
        return "failed", None, f"receiver {first.receiver!r} is no longer configured"
    group = [dict(row.alert._mapping) for row in rows]
    try:
        request = receivers.build_group(
            receiver, config, str(first.notification_id), first.action, group
        )
    except Exception as exc:
        # A bad secret or link template: this notification can never be sent as it is.
        return "failed", None, f"cannot build the request: {type(exc).__name__}: {exc}"[:500]
    loop = asyncio.get_running_loop()
    ends = loop.time() + timeout
    status: int | None = None
    retry_after: float | None = None
    try:
        route = (routes or Routes())(request.url)
    except ValueError:
        return "failed", None, "the receiver's url cannot be sent to"
    try:
        async with contextlib.AsyncExitStack() as stack:
            async with asyncio.timeout_at(ends):
                # Slack's messages carry no id a repeat could be known by: never sent twice.
                for again in (receiver.type != "slack", False):
                    sent: dict[str, bool] = {}
                    try:
                        response = await stack.enter_async_context(
                            client.post(
                                route.url,
                                data=request.body,
                                headers=request.headers | route.headers,
                                allow_redirects=False,
                                proxy=route.proxy,
                                proxy_headers=route.proxy_headers,
                                trace_request_ctx=sent,
                            )
                        )
                        break
                    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                        # A kept-alive connection the receiver closed as it was taken
                        # (httpx looked at the socket first; aiohttp does not): once more
                        # at once, on a new one, if nothing of an answer came. The same
                        # request, id and signature, so a receiver drops a repeat.
                        if not (again and sent.get("reused") and _unanswered(exc)):
                            raise
            # The outcome is the status: the answer's body is read only so that the
            # connection can carry the next request (see _drop_answer).
            status = response.status
            retry_after = _retry_after(response.headers)
            await _drop_answer(response, min(ends, loop.time() + ANSWER_WAIT))
    except Exception as exc:
        if status is None:
            # Whatever went wrong, it is recorded and retried within the budget, never lost.
            return "retry", None, type(exc).__name__
    # Never the body: receivers echo the payload back, and the error is shown and logged.
    if 200 <= status < 300:
        return "delivered", None, None
    if status == 429 or status >= 500:
        return "retry", retry_after, f"HTTP {status}"
    return "failed", None, f"HTTP {status}: refused by the receiver"


def _unanswered(exc: aiohttp.ClientError) -> bool:
    """Whether the connection went before any of an answer arrived (aiohttp carries the
    part of an answer it had read as the error's message)."""
    return not isinstance(exc, aiohttp.ServerDisconnectedError) or isinstance(exc.message, str)


def _reuse_trace() -> aiohttp.TraceConfig:
    """Marks a request's ``trace_request_ctx`` (a dict) when it was sent on a kept-alive
    connection, not a new one."""

    async def reused(session: Any, context: Any, params: Any) -> None:
        if isinstance(context.trace_request_ctx, dict):
            context.trace_request_ctx["reused"] = True

    trace = aiohttp.TraceConfig()
    trace.on_connection_reuseconn.append(reused)
    return trace


async def _drop_answer(response: aiohttp.ClientResponse, until: float) -> None:
    """Read the answer's body and drop it (never kept or logged), so that the connection is
    kept for the next request. One longer than ``ANSWER_READ``, slower than ``until`` or cut
    off only costs the connection (closed on leaving the stream), never the outcome."""
    unread = ANSWER_READ
    # Whatever goes wrong here, the status decided the outcome; only the connection goes.
    with contextlib.suppress(Exception):
        async with asyncio.timeout_at(until):
            async for chunk in response.content.iter_any():
                unread -= len(chunk)
                if unread < 0:
                    response.close()  # the rest unread: this connection is not reused
                    return


# Per pass, each receiver with room gets its oldest due units (a group whole, or a single
# notification) from a bounded scan of ``notifications_receiver_due``, so that a pass costs
# what it leases, not the backlog. The receivers are found by a skip scan of that index.
_LEASE = sa.text("""
WITH RECURSIVE receivers AS (
    (SELECT receiver FROM notifications WHERE status = 'pending' ORDER BY receiver LIMIT 1)
    UNION ALL
    SELECT (SELECT n.receiver FROM notifications AS n
            WHERE n.status = 'pending' AND n.receiver > r.receiver
            ORDER BY n.receiver LIMIT 1)
    FROM receivers AS r WHERE r.receiver IS NOT NULL
), room AS (
    SELECT * FROM unnest(CAST(:busy AS text[]), CAST(:room AS integer[])) AS x(receiver, room)
), wants AS (
    SELECT r.receiver, coalesce(x.room, CAST(:default_room AS integer)) AS room
    FROM receivers AS r LEFT JOIN room AS x USING (receiver)
    WHERE r.receiver IS NOT NULL
), units AS (
    SELECT w.receiver, u.unit, u.group_key
    FROM wants AS w CROSS JOIN LATERAL (
        -- A unit is due when its first row is: the first rows in due order name the units.
        SELECT s.unit, s.group_key
        FROM (
            SELECT coalesce(n.group_key, CAST(n.id AS text)) AS unit, n.group_key,
                   n.next_attempt_at
            FROM notifications AS n
            WHERE n.receiver = w.receiver AND n.status = 'pending'
              AND n.next_attempt_at <= now()
              AND (n.locked_until IS NULL OR n.locked_until <= now())
            ORDER BY n.next_attempt_at
            LIMIT CAST(:scan AS integer) * w.room
        ) AS s
        GROUP BY s.unit, s.group_key
        ORDER BY min(s.next_attempt_at), s.unit
        LIMIT w.room
    ) AS u
    WHERE w.room > 0
), candidates AS (
    SELECT CAST(unit AS uuid) AS id FROM units WHERE group_key IS NULL
    UNION
    -- A group is leased whole: every due row of it, however many the scan saw.
    SELECT n.id FROM units AS u JOIN notifications AS n
        ON n.group_key = u.group_key AND n.receiver = u.receiver
    WHERE u.group_key IS NOT NULL AND n.status = 'pending' AND n.next_attempt_at <= now()
      AND (n.locked_until IS NULL OR n.locked_until <= now())
), picked AS (
    SELECT id FROM notifications
    WHERE id IN (SELECT id FROM candidates)
      AND status = 'pending' AND next_attempt_at <= now()
      AND (locked_until IS NULL OR locked_until <= now())
    ORDER BY id
    FOR UPDATE SKIP LOCKED
)
UPDATE notifications AS n
SET locked_until = now() + make_interval(secs => CAST(:lease AS float8)),
    lease_id = CAST(:token AS uuid)
FROM picked WHERE n.id = picked.id
RETURNING n.id AS notification_id, n.receiver, n.action, n.attempts, n.group_key, n.alert_id,
          n.lease_id
""")

# Rows past their budget are failed, not leased: whatever stopped their record, they stop.
_EXPIRE = sa.text("""
UPDATE notifications
SET status = 'failed', locked_until = NULL, lease_id = NULL,
    last_error = CAST(:error AS text) || coalesce('; last error: ' || last_error, '')
WHERE status = 'pending' AND next_attempt_at <= now()
  AND (locked_until IS NULL OR locked_until <= now())
  AND due_since <= now() - make_interval(secs => CAST(:max_age AS float8))
RETURNING receiver
""")

# Outcomes are recorded many at a time (see ``Outbox._record``): each row by its own
# status, error and delay, and only under the lease it was sent under, so that a late
# answer never overwrites a newer lease.
_RECORD = sa.text("""
WITH u AS (
    SELECT * FROM unnest(
        CAST(:ids AS uuid[]), CAST(:leases AS uuid[]), CAST(:statuses AS text[]),
        CAST(:errors AS text[]), CAST(:delays AS float8[])
    ) AS u(id, lease, status, error, delay)
), locked AS (
    -- The rows still ours, locked in id order whatever the batch's, so that two records
    -- never wait on each other in a cycle.
    SELECT n.id FROM notifications AS n JOIN u ON u.id = n.id AND n.lease_id = u.lease
    WHERE n.status = 'pending'
    ORDER BY n.id FOR UPDATE OF n
), limits AS (
    SELECT now() - make_interval(secs => CAST(:max_age AS float8)) AS oldest,
           CAST(:budget AS text) AS budget
)
UPDATE notifications AS n SET
    status = CASE WHEN u.status = 'pending' AND n.due_since <= l.oldest THEN 'failed'
                  ELSE u.status END,
    attempts = n.attempts + 1,
    last_error = CASE WHEN u.status = 'pending' AND n.due_since <= l.oldest
                      THEN 'retry budget of ' || l.budget || ' spent; last error: ' || u.error
                      ELSE u.error END,
    delivered_at = CASE WHEN u.status = 'delivered' THEN now() ELSE n.delivered_at END,
    next_attempt_at = CASE WHEN u.delay IS NULL THEN n.next_attempt_at
                           ELSE now() + make_interval(secs => u.delay) END,
    locked_until = NULL, lease_id = NULL
FROM u, limits AS l
WHERE n.id = u.id AND n.id IN (SELECT id FROM locked) AND n.status = 'pending'
  AND n.lease_id = u.lease
RETURNING n.id, u.lease, n.status
""")

# The most outcomes one record statement carries.
RECORD_BATCH = 500


# Queued here but never sent: leasable again at once (or after ``delay``, when the receiver
# asked us to wait), under the lease this instance took, the attempts unchanged.
# ``locked_until`` becomes now(), not NULL: a group that was leased may already have reached
# its receiver (a send whose record failed), so a new alert must never join it.
_GIVE_BACK = sa.text("""
UPDATE notifications SET locked_until = now(), lease_id = NULL,
    next_attempt_at = CASE WHEN CAST(:delay AS float8) IS NULL THEN next_attempt_at
                           ELSE now() + make_interval(secs => CAST(:delay AS float8)) END
WHERE id = ANY(CAST(:ids AS uuid[])) AND status = 'pending'
  AND lease_id = ANY(CAST(:leases AS uuid[]))
""")


def _budget(max_age: timedelta) -> str:
    hours = max_age.total_seconds() / 3600
    return f"{hours:g} h"


def in_flight_max(config: AlertingConfig, receiver: str) -> int:
    """Requests in flight to ``receiver`` at once, per instance: its ``max_in_flight``, else
    its type's default."""
    configured = config.receiver(receiver)
    if configured is None:
        return PER_RECEIVER
    if configured.max_in_flight is not None:
        return configured.max_in_flight
    return FEWER_IN_FLIGHT.get(configured.type, PER_RECEIVER)


def connections(config: AlertingConfig) -> int:
    """A connection for every request every receiver may have in flight at once, so that
    receivers that hang never leave another waiting for a connection."""
    return max(1, sum(in_flight_max(config, r.name) for r in config.receivers))


def client_session(
    config: AlertingConfig, timeout: float = 10.0, tls: ssl.SSLContext | None = None
) -> aiohttp.ClientSession:
    """The outbox's HTTP client: ``connections(config)`` connections in all (none per host
    beyond that), idle ones kept ``KEEPALIVE`` seconds, nothing longer than ``timeout``.

    aiohttp, not httpx: this session took about an eighth of the CPU per webhook that
    httpx took as the outbox used it, posting 16 at a time to a local receiver
    (``bench/http_clients.py``); the alerting service sends one per detractor, in the
    process that consumes.

    Like httpx before it: TLS is verified against ``SSL_CERT_FILE`` or ``SSL_CERT_DIR``
    when set, else certifi's bundle, and the environment's proxies are used (``Routes``).
    Not aiohttp's ``trust_env``: it reads ~/.netrc in a thread on every request, and sends
    what it finds there to receivers as Basic credentials. No cookie a receiver sets is
    kept or sent back. Answers are never decompressed: they are dropped unread.
    """
    connector = aiohttp.TCPConnector(
        limit=connections(config),
        limit_per_host=0,
        keepalive_timeout=KEEPALIVE,
        ssl=tls or tls_context(),
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout),
        trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding",),
        headers={"User-Agent": "cxloop-alerting"},
        trace_configs=[_reuse_trace()],
        raise_for_status=False,
    )


def _basic(user: str | None, password: str | None) -> str:
    """Basic credentials, UTF-8 as httpx sent them (aiohttp's own are Latin-1)."""
    return "Basic " + b64encode(f"{user or ''}:{password or ''}".encode()).decode()


def _without_credentials(url: yarl.URL) -> tuple[yarl.URL, str | None]:
    """``url`` without its user and password, and them as a Basic credential (or None)."""
    if url.raw_user is None and url.raw_password is None:
        return url, None
    return url.with_user(None), _basic(url.user, url.password)


@dataclass(frozen=True)
class Route:
    """How a request to one receiver URL goes out."""

    url: yarl.URL  # without its credentials: they are in ``headers``
    headers: dict[str, str] = field(repr=False)  # added to the request's own
    proxy: yarl.URL | None = None  # without its credentials, as ``url``
    proxy_headers: dict[str, str] | None = field(default=None, repr=False)  # for a CONNECT


@dataclass(frozen=True)
class _Proxy:
    url: yarl.URL
    credentials: str | None = field(repr=False)


@dataclass(frozen=True)
class _Bypass:
    """One ``NO_PROXY`` entry, read as httpx reads it: ``*`` (everything), an optional
    ``scheme://``, then an IP address or ``localhost`` (that host alone), a ``.domain``
    (its subdomains) or a domain (it and its subdomains), and an optional ``:port``."""

    scheme: str | None
    host: str
    port: int | None
    subdomains_only: bool = False
    exact: bool = False

    @classmethod
    def parse(cls, entry: str) -> _Bypass | None:
        scheme = None
        if "://" in entry:
            scheme, entry = entry.split("://", 1)
        try:
            url = yarl.URL(f"http://{entry}")
            host, port = url.raw_host, url.explicit_port
        except ValueError:
            return None
        if not host:
            return None
        if host.startswith("."):
            return cls(scheme, host[1:].lower(), port, subdomains_only=True)
        return cls(scheme, host.lower(), port, exact=is_ip(host) or host == "localhost")

    def matches(self, url: yarl.URL) -> bool:
        host = (url.raw_host or "").lower()
        if self.scheme is not None and self.scheme != url.scheme:
            return False
        if self.port is not None and self.port != url.port:
            return False
        if self.exact:
            return host == self.host
        inside = host.endswith(f".{self.host}")
        return inside if self.subdomains_only else inside or host == self.host


@dataclass
class Routes:
    """Each receiver URL's route, worked out once (receivers' URLs are the config's).

    The environment's proxies are read when this is made, as httpx read them:
    ``HTTP_PROXY``, ``HTTPS_PROXY`` and, where the scheme's own is unset, ``ALL_PROXY``,
    in either case; a proxy without a scheme is http. ``NO_PROXY`` as ``_Bypass`` says.
    A proxy URL the receivers' own rules would refuse stops start-up, naming the
    variable, never quoting its value (it may hold credentials).
    """

    proxies: dict[str, _Proxy] = field(default_factory=dict)
    bypass: list[_Bypass] = field(default_factory=list)
    everything_direct: bool = False
    known: dict[str, Route] = field(default_factory=dict, repr=False)

    @classmethod
    def from_environment(cls) -> Routes:
        found = urllib.request.getproxies_environment()
        proxies = {}
        for scheme in ("http", "https", "all"):
            value = found.get(scheme)
            if not value:
                continue
            text = value if "://" in value else f"http://{value}"
            problem = url_problem(text)
            if problem is not None or not text.startswith(("http://", "https://")):
                name = f"{scheme.upper()}_PROXY (or {scheme}_proxy)"
                raise ConfigError(f"{name} is not a usable http(s) URL: {problem or 'scheme'}")
            proxies[scheme] = _Proxy(*_without_credentials(yarl.URL(text)))
        entries = [e.strip() for e in found.get("no", "").split(",") if e.strip()]
        bypass = [b for b in map(_Bypass.parse, entries) if b is not None]
        return cls(proxies, bypass, everything_direct="*" in entries)

    def __call__(self, url: str) -> Route:
        found = self.known.get(url)
        if found is None:
            found = self.known[url] = self._route(yarl.URL(url))
        return found

    def _route(self, written: yarl.URL) -> Route:
        url, credentials = _without_credentials(written)
        headers = {} if credentials is None else {"Authorization": credentials}
        proxy = self.proxies.get(url.scheme) or self.proxies.get("all")
        if proxy is None or self.everything_direct or any(b.matches(url) for b in self.bypass):
            return Route(url, headers)
        if proxy.credentials is None:
            return Route(url, headers, proxy.url)
        auth = {"Proxy-Authorization": proxy.credentials}
        if url.scheme == "https":
            return Route(url, headers, proxy.url, auth)  # on the CONNECT alone
        # To an http receiver the proxy is sent the request itself, and drops this header.
        return Route(url, headers | auth, proxy.url)


def tls_context() -> ssl.SSLContext:
    """The CAs notifications are verified against: the same choice, in the same order, as
    httpx made for the outbox before. One the process cannot read stops start-up."""
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        if where := os.environ.get(name):
            try:
                if name == "SSL_CERT_FILE":
                    return ssl.create_default_context(cafile=where)
                return ssl.create_default_context(capath=where)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"{name} cannot be read as CA certificates ({type(exc).__name__})"
                ) from None
    return ssl.create_default_context(cafile=certifi.where())


@dataclass
class Outbox:
    """One instance's delivery loop: leases, sends per receiver, records the outcomes.

    What a lease returns waits in its receiver's local queue and is sent ``in_flight_max()``
    at a time. Each unit carries a deadline (its lease's start, plus the lease, less a send's
    timeout and its records' time): a unit still queued past it is given back, never sent,
    so no row is sent after its lease ran out, when another instance may have leased it.
    A receiver holds at most ``capacity()`` units (queued and in flight), so that normally
    all of them are sent in time. A receiver that answers with Retry-After is sent nothing
    more, and leased nothing, until that delay is over; its queued units are given back
    due then.
    """

    engine: AsyncEngine
    client: aiohttp.ClientSession
    config: AlertingConfig
    max_age: timedelta = timedelta(hours=24)
    lease_seconds: float = 60.0
    timeout: float = 10.0
    record_timeout: float = RECORD_TIMEOUT
    routes: Routes = field(default_factory=Routes.from_environment, repr=False)
    in_flight: dict[str, int] = field(default_factory=dict)  # units being sent
    recording: dict[str, int] = field(default_factory=dict)  # sent, outcome not yet recorded
    sent: set[asyncio.Task[None]] = field(default_factory=set)  # delivery tasks past their send
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    queues: dict[str, deque[list[Any]]] = field(default_factory=dict)
    freed: asyncio.Event = field(default_factory=asyncio.Event)
    # Receivers that asked us to wait (Retry-After), with the loop time they may be sent to.
    paused: dict[str, float] = field(default_factory=dict)
    stopping: bool = False
    # Outcomes waiting to be recorded, and the task recording them (see ``_record``).
    outcomes: deque[_Outcome] = field(default_factory=deque)
    recorder: asyncio.Task[None] | None = None

    def in_flight_max(self, receiver: str) -> int:
        return in_flight_max(self.config, receiver)

    def capacity(self, receiver: str) -> int:
        """Units (groups or single notifications) one receiver may hold, queued or sending.

        ``in_flight_max`` sends of at most ``timeout`` each fit ``window() // timeout`` times
        before the units' deadline, and no more than ``MAX_ROUNDS`` times.
        """
        return self.in_flight_max(receiver) * max(1, self.rounds())

    def rounds(self) -> int:
        return min(MAX_ROUNDS, int(self.window() // self.timeout))

    def window(self) -> float:
        """Seconds after a lease starts in which its units may still be sent: the send (at
        most ``timeout``) and its two records (``record_timeout`` each) end within it."""
        return self.lease_seconds - self.timeout - 2 * self.record_timeout

    def held(self, receiver: str) -> int:
        return (
            self.in_flight.get(receiver, 0)
            + self.recording.get(receiver, 0)
            + len(self.queues.get(receiver, ()))
        )

    def is_paused(self, receiver: str) -> bool:
        until = self.paused.get(receiver)
        if until is None:
            return False
        if asyncio.get_running_loop().time() < until:
            return True
        del self.paused[receiver]
        return False

    def room(self, receiver: str) -> int:
        if self.is_paused(receiver):
            return 0
        return max(0, self.capacity(receiver) - self.held(receiver))

    async def lease(self) -> list[list[Any]]:
        """Lease due notifications (each receiver up to its free room); return them grouped."""
        known = set(self.in_flight) | set(self.recording) | set(self.queues) | set(self.paused)
        # Every receiver's room: the configured ones even when idle (each has its own
        # capacity); one no longer configured gets the default's (it fails at once).
        room = {r.name: self.room(r.name) for r in self.config.receivers}
        room |= {r: self.room(r) for r in known}
        # Taken before the lease: every unit's deadline is earlier than its lease's end.
        deadline = asyncio.get_running_loop().time() + self.window()
        async with self.engine.begin() as conn:
            expired = (
                await conn.execute(
                    _EXPIRE,
                    {
                        "max_age": self.max_age.total_seconds(),
                        "error": f"retry budget of {_budget(self.max_age)} spent",
                    },
                )
            ).all()
            for receiver, count in Counter(r for (r,) in expired).items():
                metrics.NOTIFICATIONS_EXPIRED.labels(receiver=receiver).inc(count)
                log.error(
                    "%d notifications to %s failed for good: retry budget spent", count, receiver
                )
            leased = (
                await conn.execute(
                    _LEASE,
                    {
                        "busy": list(room),
                        "room": list(room.values()),
                        "default_room": PER_RECEIVER * max(1, self.rounds()),
                        "scan": SCAN,
                        "lease": self.lease_seconds,
                        "token": uuid.uuid4(),
                    },
                )
            ).all()
            if not leased:
                return []
            rows = await conn.execute(
                sa.select(alerts).where(alerts.c.id.in_({row.alert_id for row in leased}))
            )
            by_id = {row.id: row for row in rows}
        batches: dict[object, list[Any]] = {}
        for row in leased:
            alert = by_id.get(row.alert_id)
            if alert is None:
                continue
            merged = _Row(
                notification_id=row.notification_id,
                receiver=row.receiver,
                action=row.action,
                attempts=row.attempts,
                group_key=row.group_key,
                alert=alert,
                lease_id=row.lease_id,
                deadline=deadline,
            )
            batches.setdefault(row.group_key or row.notification_id, []).append(merged)
        return [sorted(rows, key=lambda r: str(r.notification_id)) for rows in batches.values()]

    def start(self, group: list[Any]) -> None:
        """Queue one leased notification (or group) for its receiver; sent when it has room."""
        receiver = group[0].receiver
        self.queues.setdefault(receiver, deque()).append(group)
        self._pump(receiver)

    def _pump(self, receiver: str) -> None:
        queue = self.queues.get(receiver)
        if not queue or self.stopping:
            return
        loop = asyncio.get_running_loop()
        if self.is_paused(receiver):
            # It asked us to wait: what is queued goes back, due when the wait is over.
            self._give_back(list(queue), self.paused[receiver] - loop.time())
            queue.clear()
            return
        late: list[list[Any]] = []
        most = self.in_flight_max(receiver)
        while queue and self.in_flight.get(receiver, 0) < most:
            group = queue.popleft()
            if loop.time() > group[0].deadline:
                late.append(group)  # its lease may run out before it is sent and recorded
                continue
            self.in_flight[receiver] = self.in_flight.get(receiver, 0) + 1
            task = asyncio.create_task(
                self._deliver(group, functools.partial(self._sent, receiver))
            )
            self.tasks.add(task)
            task.add_done_callback(self._done(receiver))
        if late:
            log.warning(
                "%d notifications to %s were not sent within their lease; given back",
                sum(len(g) for g in late),
                receiver,
            )
            self._give_back(late, None)

    def _sent(self, receiver: str) -> None:
        """A unit's send is over: its receiver may be sent the next while it is recorded."""
        self.in_flight[receiver] -= 1
        self.recording[receiver] = self.recording.get(receiver, 0) + 1
        task = asyncio.current_task()
        if task is not None:
            self.sent.add(task)
        self._pump(receiver)

    def _give_back(self, groups: list[list[Any]], delay: float | None) -> None:
        """Give back leased units unsent, in the background (``drain`` waits for it)."""
        task = asyncio.create_task(self._give_back_now([r for g in groups for r in g], delay))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _give_back_now(self, rows: list[Any], delay: float | None) -> None:
        if not rows:
            return
        try:
            async with asyncio.timeout(self.record_timeout), self.engine.begin() as conn:
                await conn.execute(
                    _GIVE_BACK,
                    {
                        "ids": [row.notification_id for row in rows],
                        "leases": list({row.lease_id for row in rows}),
                        "delay": delay,
                    },
                )
        except Exception as exc:
            # Their leases run out and they are sent then, by whichever instance is up.
            log.warning("giving back queued notifications failed (%s)", type(exc).__name__)

    def _done(self, receiver: str) -> Any:
        def done(task: asyncio.Task[None]) -> None:
            self.tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.error(
                    "a delivery to %s failed unexpectedly (%s)",
                    receiver,
                    type(task.exception()).__name__,
                )
            if task in self.sent:
                self.sent.discard(task)
                self.recording[receiver] -= 1
            else:
                self.in_flight[receiver] -= 1  # ended before its send did (cancelled)
            self._pump(receiver)
            # Lease again once half the room is free, not per freed slot.
            if self.held(receiver) <= self.capacity(receiver) // 2:
                self.freed.set()

        return done

    async def _deliver(self, group: list[Any], sent: Callable[[], None] | None = None) -> None:
        """Send one unit and record its outcome; ``sent`` is called between the two."""
        first = group[0]
        try:
            outcome, retry_after, error = await _attempt(
                self.client, self.config, group, self.timeout, self.routes
            )
        except Exception as exc:
            outcome, retry_after, error = "retry", None, f"cannot send: {type(exc).__name__}"
        delay = None
        if outcome == "retry":
            delay = min(
                MAX_DELAY,
                max(retry_after or 0, backoff_delay(first.attempts, base=1.0, cap=MAX_DELAY)),
            )
        if delay is not None and retry_after is not None:
            # The receiver asked us to wait: nothing more to it until then, from this instance.
            self.paused[first.receiver] = asyncio.get_running_loop().time() + delay
        if sent is not None:
            sent()  # pumps its receiver: its next unit, or its queue given back when paused
        status = {"delivered": "delivered", "failed": "failed"}.get(outcome, "pending")
        try:
            recorded = await self._record(group, status, error, delay)
        except Exception as exc:
            # Recorded again with a fixed text, so that no error text can stop the record.
            log.warning(
                "recording a delivery to %s failed (%s); recording it without its error",
                first.receiver,
                type(exc).__name__,
            )
            try:
                recorded = await self._record(
                    group, status, f"recording the outcome failed ({type(exc).__name__})", delay
                )
            except Exception as again:
                # Its lease runs out and it is sent again, with the same id, within the budget.
                log.warning(
                    "recording a delivery to %s failed (%s)", first.receiver, type(again).__name__
                )
                return
        if not recorded:
            # Its lease ran out and the row was leased again: that attempt is the one counted.
            log.warning("a delivery to %s was not recorded: lease lost", first.receiver)
            return
        expired = sum(1 for (s,) in recorded if s == "failed") if status == "pending" else 0
        if expired:
            outcome = "failed"
            metrics.NOTIFICATIONS_EXPIRED.labels(receiver=first.receiver).inc(expired)
            log.error(
                "notification to %s failed for good: retry budget spent (%s)",
                first.receiver,
                error,
            )
        elif outcome == "failed":
            log.error("notification to %s failed for good: %s", first.receiver, error)
        metrics.NOTIFY_ATTEMPTS.labels(receiver=first.receiver, outcome=outcome).inc(len(recorded))

    async def _record(
        self, group: list[Any], status: str, error: str | None, delay: float | None
    ) -> list[tuple[str]]:
        """Record one unit's outcome; return its rows' new status (none: lease lost).

        Outcomes that arrive while a record is being written wait and are written together,
        in one statement, so that a busy receiver costs a commit per batch of answers rather
        than per answer. When the database refuses a batch's data (a value it cannot
        store), each of its outcomes is written alone, so that the bad one fails alone; any
        other failure (the database down, slow or deadlocked) fails the whole batch at once.
        An outcome waits ``record_timeout`` at most to be taken into a write (then it is not
        written, and the caller records it again); a write takes ``record_timeout`` at most.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[tuple[str]]] = loop.create_future()
        # A waiter that gave up never reads it: mark its error read, not "never retrieved".
        done.add_done_callback(lambda f: None if f.cancelled() else f.exception())
        outcome = _Outcome(group, status, error, delay, done)
        self.outcomes.append(outcome)
        if self.recorder is None or self.recorder.done():
            self.recorder = asyncio.create_task(self._write_outcomes())
            self.tasks.add(self.recorder)
            self.recorder.add_done_callback(self.tasks.discard)
        try:
            async with asyncio.timeout(self.record_timeout):
                return await asyncio.shield(done)
        except TimeoutError:
            if not outcome.taken:
                raise
            # Being written: its write has a timeout of its own, and its result is the one
            # that counts (a second record would find the lease it cleared).
            return await asyncio.shield(done)
        finally:
            done.cancel()  # no-op once settled; otherwise it is not written (see above)

    async def _write_outcomes(self) -> None:
        while self.outcomes:
            batch = [self.outcomes.popleft() for _ in range(min(RECORD_BATCH, len(self.outcomes)))]
            batch = [outcome for outcome in batch if not outcome.done.done()]
            if not batch:
                continue
            for outcome in batch:
                outcome.taken = True
            try:
                await self._write(batch)
            except Exception as exc:
                if len(batch) == 1 or refused_data(exc) is None:
                    for outcome in batch:
                        _settle(outcome, exc)
                    continue
                for outcome in batch:  # one bad value must not stop the others
                    if outcome.done.done():
                        continue  # its waiter gave up meanwhile
                    try:
                        await self._write([outcome])
                    except Exception as alone:
                        _settle(outcome, alone)

    async def _write(self, batch: list[_Outcome]) -> None:
        columns: dict[str, list[Any]] = {
            k: [] for k in ("ids", "leases", "statuses", "errors", "delays")
        }
        for outcome in batch:
            for row in outcome.group:
                columns["ids"].append(row.notification_id)
                columns["leases"].append(row.lease_id)
                columns["statuses"].append(outcome.status)
                columns["errors"].append(outcome.error)
                columns["delays"].append(outcome.delay)
        async with asyncio.timeout(self.record_timeout), self.engine.begin() as conn:
            written = (
                await conn.execute(
                    _RECORD,
                    {
                        **columns,
                        "max_age": self.max_age.total_seconds(),
                        "budget": _budget(self.max_age),
                    },
                )
            ).all()
        # Keyed by the lease too: an outcome under a lease since lost gets nothing.
        status = {(row.id, row.lease): row.status for row in written}
        for outcome in batch:
            keys = [(row.notification_id, row.lease_id) for row in outcome.group]
            _settle(outcome, [(status[k],) for k in keys if k in status])

    async def release_held(self) -> int:
        """Queue held triggers no silence matches any more (drop those of closed alerts).

        Every held row is looked at, a page at a time: one whose silence ended never waits
        behind any number still silenced.
        """
        released, after = 0, None
        while True:
            async with self.engine.begin() as conn:
                query = (
                    sa.select(notifications.c.id.label("notification_id"), *alerts.columns)
                    .join(alerts, alerts.c.id == notifications.c.alert_id)
                    .where(notifications.c.status == "held")
                    .order_by(notifications.c.id)
                    .limit(HELD_PAGE)
                    .with_for_update(of=notifications, skip_locked=True)
                )
                if after is not None:
                    query = query.where(notifications.c.id > after)
                held = (await conn.execute(query)).all()
                if not held:
                    return released
                after = held[-1].notification_id
                active = await active_silences(conn)
                free = [row for row in held if not silenced(dict(row._mapping), active)]
                send = [row.notification_id for row in free if row.status == "open"]
                drop = [row.notification_id for row in free if row.status != "open"]
                if send:
                    await conn.execute(
                        notifications.update()
                        .where(notifications.c.id.in_(send))
                        .values(
                            status="pending", next_attempt_at=sa.func.now(), due_since=sa.func.now()
                        )
                    )
                if drop:
                    await conn.execute(notifications.delete().where(notifications.c.id.in_(drop)))
            released += len(send)
            if len(held) < HELD_PAGE:
                return released

    async def drain(self, grace: float) -> None:
        """Give back what is queued unsent, wait up to ``grace`` seconds for the requests in
        flight, then cancel the rest."""
        self.stopping = True
        waiting = [row for queue in self.queues.values() for group in queue for row in group]
        self.queues.clear()
        await self._give_back_now(waiting, None)
        # Until every send and every record is over (a send finishing meanwhile starts a
        # recorder), or the grace is.
        loop = asyncio.get_running_loop()
        ends = loop.time() + grace
        while self.tasks and loop.time() < ends:
            await asyncio.wait(set(self.tasks), timeout=ends - loop.time())
        pending = set(self.tasks)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


@dataclass
class _Outcome:
    group: list[Any]
    status: str
    error: str | None
    delay: float | None
    done: asyncio.Future[list[tuple[str]]]
    taken: bool = False  # in a write: its waiter waits for that write's result


def _settle(outcome: _Outcome, result: list[tuple[str]] | BaseException) -> None:
    if outcome.done.done():
        return  # its waiter gave up (timed out or cancelled)
    if isinstance(result, BaseException):
        outcome.done.set_exception(result)
    else:
        outcome.done.set_result(result)


@dataclass(frozen=True)
class _Row:
    notification_id: uuid.UUID
    receiver: str
    action: str
    attempts: int
    group_key: str | None
    alert: Any
    lease_id: uuid.UUID
    deadline: float  # loop time after which it is given back, not sent


async def run(
    engine: AsyncEngine,
    config: AlertingConfig,
    stop: asyncio.Event,
    every: float = 0.5,
    queued: asyncio.Event | None = None,
    max_age: timedelta = timedelta(hours=24),
    timeout: float = 10.0,
    routes: Routes | None = None,
    tls: ssl.SSLContext | None = None,
) -> None:
    """Deliver until ``stop`` is set: every ``every`` seconds, at once when ``queued`` is set,
    and whenever a receiver has room again.

    ``queued`` is this process's shortcut; the poll finds what other instances queued.
    """
    queued = queued or asyncio.Event()
    loop = asyncio.get_running_loop()
    async with client_session(config, timeout, tls) as client:
        outbox = Outbox(
            engine,
            client,
            config,
            max_age=max_age,
            lease_seconds=max(60.0, 3 * timeout),
            timeout=timeout,
            routes=routes or Routes.from_environment(),
        )
        released_at = 0.0
        try:
            while not stop.is_set():
                queued.clear()
                outbox.freed.clear()
                try:
                    if loop.time() - released_at >= RELEASE_EVERY:
                        released_at = loop.time()
                        await outbox.release_held()
                    for group in await outbox.lease():
                        outbox.start(group)
                except Exception as exc:
                    log.warning("delivery pass failed (%s); retrying", type(exc).__name__)
                # The next pass: when a receiver has sent half its room (freed), or sooner.
                await _first_of(stop, queued, outbox.freed, timeout=every)
        finally:
            await outbox.drain(grace=min(timeout, 5.0))


async def _first_of(*events: asyncio.Event, timeout: float) -> None:
    waits = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
