"""The alerting service: opens an alert for every response that needs a follow-up."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI

from services.alerting import api, drops, gauges, outbox, timers
from services.alerting.config import AlertingConfig
from services.alerting.config import load as load_config
from services.alerting.consumer import AlertHandler
from services.alerting.pages import build as build_pages
from services.alerting.pages import routes as page_routes
from services.migrations import MIGRATIONS_DIR
from shared.apikeys import KeyStore
from shared.events import ResponseSubmitted, TouchpointEvent
from shared.http import build_app
from shared.privacy import Hasher
from shared.runtime import ConsumingService
from shared.settings import (
    AlertingSettings,
    AuthSettings,
    DatabaseSettings,
    KafkaSettings,
    PrivacySettings,
    SlaSettings,
    load,
)
from shared.topics import Topic
from shared.web.pages import install as install_pages
from shared.web.pages import sign_in_router

log = logging.getLogger(__name__)

DESCRIPTION = """\
Every detractor, dissatisfied or high-effort answer becomes one alert that a person
follows up; repeats fold into the alert already open. Every `/v1` call needs
`Authorization: Bearer <key>`.
"""


def create_app(
    kafka: KafkaSettings | None = None,
    database: DatabaseSettings | None = None,
    auth: AuthSettings | None = None,
    settings: AlertingSettings | None = None,
    sla: SlaSettings | None = None,
    config: AlertingConfig | None = None,
    privacy: PrivacySettings | None = None,
) -> FastAPI:
    """Build the alerting app; settings default to the environment."""
    auth = auth or load(AuthSettings)
    keystore = KeyStore(auth.keys(), ttl=auth.key_cache_seconds)
    alerting = settings or load(AlertingSettings)
    hasher = Hasher((privacy or load(PrivacySettings)).key())
    sla_settings = sla or load(SlaSettings)
    routing = config or (
        load_config(alerting.config_path) if alerting.config_path else AlertingConfig()
    )
    # The environment's proxies for notifications: one that does not parse stops start-up.
    routes = outbox.Routes.from_environment()
    tls = outbox.tls_context()
    # Set by the consumer when it queued notifications, so the outbox sends without waiting.
    queued = asyncio.Event()
    runtime = ConsumingService(
        name="alerting",
        kafka=kafka or load(KafkaSettings),
        database=database or load(DatabaseSettings),
        consumer=alerting,
        models={Topic.RESPONSES: ResponseSubmitted, Topic.TOUCHPOINTS: TouchpointEvent},
        make_handler=lambda engine: AlertHandler(engine, sla_settings, routing, queued, hasher),
        migrations=MIGRATIONS_DIR,
        hasher=hasher,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with runtime.lifespan(app):
            stop = asyncio.Event()
            background = [
                asyncio.create_task(
                    timers.run(runtime.engine, stop, alerting.timer_interval_seconds, routing)
                ),
                asyncio.create_task(
                    outbox.run(
                        runtime.engine,
                        routing,
                        stop,
                        queued=queued,
                        max_age=timedelta(hours=alerting.notification_max_age_hours),
                        timeout=alerting.notification_timeout_seconds,
                        routes=routes,
                        tls=tls,
                    ),
                    name="outbox",
                ),
                asyncio.create_task(
                    drops.run(
                        runtime.engine,
                        routing.score_drops,
                        routing,
                        stop,
                        routing.score_drop_every_minutes * 60,
                    )
                ),
                asyncio.create_task(
                    gauges.keep_fresh(
                        runtime.engine,
                        stop,
                        touch_retention=timedelta(days=alerting.touch_retention_days),
                        order_retention=timedelta(days=alerting.order_retention_days),
                    )
                ),
            ]
            for task in background:
                task.add_done_callback(_report_stopped)
            try:
                yield
            finally:
                stop.set()
                await asyncio.gather(*background)

    pages = build_pages(alerting, keystore)
    app = build_app(
        service="alerting",
        description=DESCRIPTION,
        lifespan=lifespan,
        readiness=runtime.readiness,
        routers=[api.router, page_routes.router(pages), sign_in_router(pages)],
        keystore=keystore,
        http=alerting,
        body_policy=pages.body_policy(alerting.max_body_bytes),
    )
    install_pages(app, pages)
    app.state.routing = routing
    app.state.hasher = hasher
    app.state.alerting_settings = alerting
    return app


def _report_stopped(task: asyncio.Task[None]) -> None:
    """A background loop that ends on an error before shutdown says so at once, not at
    shutdown (where ``gather`` raises it): its work (sending, timers) has stopped."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("the %s loop stopped: %s", task.get_name(), type(exc).__name__)
