"""The alerting service: opens an alert for every response that needs a follow-up."""

from __future__ import annotations

from fastapi import FastAPI

from services.alerting import api
from services.alerting.consumer import AlertHandler
from services.migrations import MIGRATIONS_DIR
from shared.apikeys import KeyStore
from shared.events import ResponseSubmitted
from shared.http import build_app
from shared.runtime import ConsumingService
from shared.settings import AlertingSettings, AuthSettings, DatabaseSettings, KafkaSettings, load
from shared.topics import Topic

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
) -> FastAPI:
    """Build the alerting app; settings default to the environment."""
    auth = auth or load(AuthSettings)
    keystore = KeyStore(auth.keys(), ttl=auth.key_cache_seconds)
    runtime = ConsumingService(
        name="alerting",
        kafka=kafka or load(KafkaSettings),
        database=database or load(DatabaseSettings),
        consumer=settings or load(AlertingSettings),
        models={Topic.RESPONSES: ResponseSubmitted},
        make_handler=AlertHandler,
        migrations=MIGRATIONS_DIR,
    )
    return build_app(
        service="alerting",
        description=DESCRIPTION,
        lifespan=runtime.lifespan,
        readiness=runtime.readiness,
        routers=[api.router],
        keystore=keystore,
    )
