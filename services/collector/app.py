"""The collector: authenticates, validates and produces every piece of feedback to Kafka."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.middleware import Middleware

from services.collector import invitations as invitations_store
from services.collector import metrics, payments
from services.collector.idempotency import EventIds, IdempotencyStore
from services.collector.lean import LeanSubmitMiddleware
from services.collector.orders import LOCK_TIMEOUT_SECONDS, OrderLedger
from services.collector.ratelimit import RateLimiter
from services.collector.routes import (
    customers,
    generic,
    invitations,
    ivr,
    stripe,
    support,
    twilio,
    widget,
)
from services.collector.service import Ingest
from services.migrations import MIGRATIONS_DIR
from shared import runtime
from shared.apikeys import KeyStore
from shared.db import assert_schema_current, create_engine, database_answers
from shared.errors import ConfigError
from shared.http import JSON_ONLY, build_app
from shared.kafka import broker_answers, sleep_unless_stopped
from shared.privacy import Hasher, verify_key
from shared.runtime import ProducerHandle
from shared.settings import (
    AuthSettings,
    CollectorSettings,
    DatabaseSettings,
    KafkaSettings,
    PrivacySettings,
    SourceSettings,
    check_twilio_url,
    load,
)

log = logging.getLogger(__name__)

DESCRIPTION = """\
The front door of cxloop. Every write is answered **2xx only once Kafka has acknowledged
it**; a 503 means nothing was stored and the request can be retried with the same
`event_id`. A repeat of an `event_id`, `Idempotency-Key` or vendor message id within the
idempotency window is answered `duplicate` and not produced again; the same `event_id` or
`Idempotency-Key` with a different body is refused with 409. An `Idempotency-Key` belongs to
the API key that sends it.

Every `/v1` call needs `Authorization: Bearer <key>` with the scope the route names.
Unknown fields are refused with 422, naming the field.
"""

PURGE_EVERY = 600.0
FORM = frozenset({"application/x-www-form-urlencoded"})
# sendBeacon posts a string as text/plain, which also spares the browser a preflight.
JSON_OR_TEXT = frozenset({"application/json", "text/plain"})


@dataclass(frozen=True)
class WidgetLimits:
    """The widget's rate limits: per client address (answers, and preflights apart, so a
    browser's preflight does not spend an answer), checked before the key is looked up, and
    per publishable key."""

    per_address: RateLimiter
    per_key: RateLimiter
    preflight: RateLimiter


def create_app(
    kafka: KafkaSettings | None = None,
    database: DatabaseSettings | None = None,
    auth: AuthSettings | None = None,
    settings: CollectorSettings | None = None,
    sources: SourceSettings | None = None,
    privacy: PrivacySettings | None = None,
) -> FastAPI:
    """Build the collector app; settings default to the environment."""
    kafka = kafka or load(KafkaSettings)
    database = database or load(DatabaseSettings)
    collector = settings or load(CollectorSettings)
    auth = auth or load(AuthSettings)
    keystore = KeyStore(auth.keys(), ttl=auth.key_cache_seconds)
    source_settings = sources or load(SourceSettings)
    check_twilio_url(collector, source_settings)
    privacy = privacy or load(PrivacySettings)
    hasher = Hasher(privacy.key())
    event_ids = EventIds(privacy.key())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # A request waits for a pooled connection no longer than for an order's lock.
        engine = create_engine(database, pool_timeout=LOCK_TIMEOUT_SECONDS)
        await assert_schema_current(engine, MIGRATIONS_DIR)
        try:
            await verify_key(engine, hasher)
        except ConfigError:
            await engine.dispose()
            raise
        keystore.engine = engine
        handle = ProducerHandle(kafka)
        handle.start()
        # A healthy broker is connected before the first request, so start-up causes no 503s;
        # an absent one does not hold start-up back for long (requests get 503 meanwhile).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(handle.wait_started(), collector.broker_wait_seconds)
        store = IdempotencyStore(engine, timedelta(days=collector.idempotency_window_days))
        app.state.engine = engine
        app.state.producer = handle
        app.state.ingest = Ingest(
            handle,
            store,
            collector,
            event_ids,
            OrderLedger(engine, hasher, produce_timeout=kafka.produce_timeout_seconds),
        )
        stop = asyncio.Event()
        retention = timedelta(days=collector.invitation_retention_days)
        purge = asyncio.create_task(_purge(store, engine, retention, stop), name="purge")
        runtime.tune_gc()
        try:
            yield
        finally:
            stop.set()
            await purge
            await handle.stop()
            await engine.dispose()

    async def readiness() -> dict[str, bool]:
        handle: ProducerHandle = app.state.producer
        return {
            "kafka": handle.ready and await broker_answers(handle.producer),
            "database": await database_answers(app.state.engine),
        }

    def body_policy(path: str) -> tuple[int, frozenset[str]]:
        if path == "/v1/sources/twilio/sms":
            return collector.max_body_bytes, FORM
        if path == widget.PATH:
            return collector.max_body_bytes, JSON_OR_TEXT
        if path.endswith("/batch"):
            return collector.max_batch_bytes, JSON_ONLY
        if path == stripe.PATH:
            return max(collector.max_body_bytes, payments.MAX_BODY_BYTES), JSON_ONLY
        return collector.max_body_bytes, JSON_ONLY

    app = build_app(
        service="collector",
        description=DESCRIPTION,
        lifespan=lifespan,
        readiness=readiness,
        routers=[
            generic.router,
            invitations.router,
            customers.router,
            twilio.router,
            support.router,
            stripe.router,
            ivr.router,
            widget.router,
        ],
        keystore=keystore,
        http=collector,
        body_policy=body_policy,
        innermost=[Middleware(LeanSubmitMiddleware, routes=generic.LEAN)],
    )
    app.state.sources = source_settings
    app.state.hasher = hasher
    app.state.widget_limits = WidgetLimits(
        per_address=RateLimiter(collector.widget_rate_per_minute),
        per_key=RateLimiter(collector.widget_key_rate_per_minute),
        preflight=RateLimiter(collector.widget_rate_per_minute),
    )
    return app


def worker_app() -> Any:
    """One worker of ``cxloop collector --workers N``: uvicorn calls this in each process."""
    return runtime.worker_app(create_app, "collector")


async def _purge(
    store: IdempotencyStore, engine: AsyncEngine, retention: timedelta, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        try:
            purged = await store.purge_expired()
            if purged:
                log.info("purged %d expired idempotency keys", purged)
        except Exception as exc:
            _purge_failed("idempotency_keys", exc)
        try:
            purged = await purge_invitations(engine, retention)
            if purged:
                log.info("purged %d invitations past their retention", purged)
        except Exception as exc:
            _purge_failed("invitations", exc)
        await sleep_unless_stopped(stop, PURGE_EVERY)


def _purge_failed(what: str, exc: Exception) -> None:
    # The exception's type only: a driver's message may quote a row.
    metrics.PURGE_FAILURES.labels(what=what).inc()
    log.error("purging %s failed (%s); retrying in %ds", what, type(exc).__name__, PURGE_EVERY)


async def purge_invitations(engine: AsyncEngine, retention: timedelta) -> int:
    """Delete the invitations older than ``retention``; return how many."""
    async with engine.begin() as conn:
        return await invitations_store.purge_expired(conn, retention)
