"""The scorer: turns the response stream into stored, time-bucketed scores and serves them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware import Middleware

from services.migrations import MIGRATIONS_DIR
from services.scorer import api, gauges, snapshots
from services.scorer.consumer import BatchHandler
from services.scorer.lean import LeanQueryMiddleware
from services.scorer.pages import build as build_pages
from services.scorer.pages import routes as page_routes
from shared.apikeys import KeyStore
from shared.events import ResponseSubmitted, TouchpointEvent
from shared.http import build_app
from shared.privacy import Hasher
from shared.runtime import ConsumingService
from shared.settings import (
    AuthSettings,
    DatabaseSettings,
    KafkaSettings,
    PrivacySettings,
    ScorerSettings,
    SlaSettings,
    load,
)
from shared.topics import Topic
from shared.web.pages import install as install_pages
from shared.web.pages import sign_in_router

DESCRIPTION = """\
Live NPS, CSAT and CES computed from every accepted response, exactly once under
redelivery. Every score carries its sample size `n`. Every `/v1` call needs
`Authorization: Bearer <key>`.
"""


def create_app(
    kafka: KafkaSettings | None = None,
    database: DatabaseSettings | None = None,
    auth: AuthSettings | None = None,
    settings: ScorerSettings | None = None,
    sla: SlaSettings | None = None,
    privacy: PrivacySettings | None = None,
) -> FastAPI:
    """Build the scorer app; settings default to the environment."""
    auth = auth or load(AuthSettings)
    keystore = KeyStore(auth.keys(), ttl=auth.key_cache_seconds)
    scorer = settings or load(ScorerSettings)
    hasher = Hasher((privacy or load(PrivacySettings)).key())
    runtime = ConsumingService(
        name="scorer",
        kafka=kafka or load(KafkaSettings),
        database=database or load(DatabaseSettings),
        consumer=scorer,
        models={Topic.RESPONSES: ResponseSubmitted, Topic.TOUCHPOINTS: TouchpointEvent},
        make_handler=lambda engine: BatchHandler(engine, hasher),
        migrations=MIGRATIONS_DIR,
        in_flight=scorer.batches_in_flight,
        hasher=hasher,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with runtime.lifespan(app):
            stop = asyncio.Event()
            values = asyncio.create_task(
                snapshots.keep_fresh(
                    runtime.engine, app.state.value_snapshots, stop, scorer.value_refresh_seconds
                )
            )
            refresher = asyncio.create_task(
                gauges.keep_fresh(
                    runtime.engine,
                    stop,
                    scorer.gauge_interval_seconds,
                    scorer.value_currencies,
                    app.state.value_snapshots,
                )
            )
            try:
                yield
            finally:
                stop.set()
                # A refresh in flight is seconds of queries: not waited for.
                values.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await values
                await refresher

    pages = build_pages(scorer, keystore)
    app = build_app(
        service="scorer",
        description=DESCRIPTION,
        lifespan=lifespan,
        readiness=runtime.readiness,
        routers=[api.router, page_routes.router(pages), sign_in_router(pages)],
        keystore=keystore,
        http=scorer,
        body_policy=pages.body_policy(scorer.max_body_bytes),
        innermost=[Middleware(LeanQueryMiddleware)],
    )
    install_pages(app, pages)
    app.state.scorer_settings = scorer
    app.state.value_snapshots = snapshots.ValueSnapshots(scorer.min_n)
    app.state.hasher = hasher
    app.state.sla = sla or load(SlaSettings)
    return app
