"""The collector: authenticates, validates and produces every piece of feedback to Kafka."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.collector.routes import responses
from shared.http import BodyLimitMiddleware, build_app
from shared.kafka import broker_answers
from shared.runtime import ProducerHandle
from shared.settings import AuthSettings, CollectorSettings, KafkaSettings, load

DESCRIPTION = """\
The front door of cxloop. Every write is answered **2xx only once Kafka has acknowledged
it**; a 503 means nothing was stored and the request can be retried with the same
`event_id`. Every `/v1` call needs `Authorization: Bearer <key>`.
"""


def create_app(
    kafka: KafkaSettings | None = None,
    auth: AuthSettings | None = None,
    settings: CollectorSettings | None = None,
) -> FastAPI:
    """Build the collector app; settings default to the environment."""
    kafka = kafka or load(KafkaSettings)
    settings = settings or load(CollectorSettings)
    keys = (auth or load(AuthSettings)).keys()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        handle = ProducerHandle(kafka)
        handle.start()
        app.state.producer = handle
        try:
            yield
        finally:
            await handle.stop()

    async def readiness() -> dict[str, bool]:
        handle: ProducerHandle = app.state.producer
        return {"kafka": handle.ready and await broker_answers(handle.producer)}

    app = build_app(
        service="collector",
        description=DESCRIPTION,
        lifespan=lifespan,
        readiness=readiness,
        routers=[responses.router],
        api_keys=keys,
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    return app
