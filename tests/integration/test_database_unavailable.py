"""The database out of reach under the JSON APIs: a 503 with Retry-After that a client
retries, never a 500, and nothing of the request in the log.

The services' apps run against the test Postgres; the outage is a dead engine (nothing
listens on port 1) swapped in for the one a request would use.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.alerting.app import create_app as alerting_app
from services.collector.app import create_app as collector_app
from services.scorer.app import create_app as scorer_app
from shared.apikeys import KeyKind, Scope, create_key
from shared.settings import (
    AlertingSettings,
    AuthSettings,
    CollectorSettings,
    DatabaseSettings,
    KafkaSettings,
    ScorerSettings,
)
from tests.builders import response_payload

# A JSON route of each service that reads the database, with a customer's id in its path
# where it has one (the log must not show it), and the scope a stored key needs for it.
ROUTES = {
    "scorer": ("/v1/customers/c-secret-42", Scope.RESPONSES_READ),
    "alerting": ("/v1/alerts?customer_id=c-secret-42", Scope.ALERTS_READ),
}


@pytest.fixture(params=sorted(ROUTES))
def service(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_app(
    service: str,
    kafka_settings: KafkaSettings,
    database_url: str,
    auth: AuthSettings,
    scorer_settings: ScorerSettings,
    alerting_settings: AlertingSettings,
) -> Callable[[], FastAPI]:
    def make() -> FastAPI:
        database = DatabaseSettings(url=database_url)
        if service == "scorer":
            return scorer_app(kafka_settings, database, auth, scorer_settings)
        return alerting_app(kafka_settings, database, auth, alerting_settings)

    return make


@asynccontextmanager
async def client_of(app: FastAPI, key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {key}"},
        ) as client,
    ):
        yield client


@asynccontextmanager
async def dead_engine(like: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(like.url.set(port=1), connect_args={"timeout": 2})
    try:
        yield engine
    finally:
        await engine.dispose()


def assert_retry_later(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["retry-after"] == "2"
    assert response.json()["error"] == "unavailable"
    assert "database" in response.json()["detail"]


async def stored_key(
    database_url: str, scope: Scope, kind: KeyKind = KeyKind.SECRET, **more: list[str]
) -> str:
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            key, _ = await create_key(conn, name="a source", kind=kind, scopes=[scope], **more)
    finally:
        await engine.dispose()
    return key


SHOP = "https://shop.example"


class TestCollectorKeyLookup:
    @pytest.fixture
    def collector(
        self, kafka_settings: KafkaSettings, database_url: str, auth: AuthSettings
    ) -> FastAPI:
        return collector_app(
            kafka=kafka_settings,
            database=DatabaseSettings(url=database_url),
            auth=auth,
            settings=CollectorSettings(),
        )

    async def test_a_source_s_key_unseen_while_the_database_is_down_is_503(
        self, collector: FastAPI, database_url: str
    ) -> None:
        key = await stored_key(database_url, Scope.RESPONSES_WRITE)
        async with client_of(collector, key) as client:
            keystore = collector.state.keystore
            real = keystore.engine
            async with dead_engine(real) as down:
                keystore.engine = down
                try:
                    response = await client.post("/v1/responses", json=response_payload())
                finally:
                    keystore.engine = real
            assert_retry_later(response)
            assert (await client.post("/v1/responses", json=response_payload())).status_code == 202

    async def test_the_widget_s_503_carries_its_cors_headers(
        self, collector: FastAPI, database_url: str
    ) -> None:
        key = await stored_key(
            database_url,
            Scope.RESPONSES_WRITE,
            KeyKind.PUBLISHABLE,
            sources=["widget"],
            origins=[SHOP],
        )
        async with client_of(collector, "unused") as client:
            client.headers.pop("Authorization")
            keystore = collector.state.keystore
            real = keystore.engine
            async with dead_engine(real) as down:
                keystore.engine = down
                try:
                    response = await client.post(
                        f"/v1/widget/responses?key={key}",
                        json=response_payload(survey_type="in_the_moment"),
                        headers={"Origin": SHOP},
                    )
                finally:
                    keystore.engine = real
            # The page's script may read the answer and its Retry-After.
            assert_retry_later(response)
            assert response.headers["access-control-allow-origin"] == SHOP


class TestDatabaseUnavailable:
    async def test_a_query_is_answered_503_and_served_again_once_it_is_back(
        self,
        service: str,
        make_app: Callable[[], FastAPI],
        api_key: str,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        path, _ = ROUTES[service]
        app = make_app()
        async with client_of(app, api_key) as client:
            served = (await client.get(path)).status_code
            assert served in (200, 404)  # a customer never seen is a 404
            real = app.state.engine
            async with dead_engine(real) as down:
                app.state.engine = down
                try:
                    with caplog.at_level(logging.WARNING):
                        response = await client.get(path)
                finally:
                    app.state.engine = real
            assert_retry_later(response)
            assert (await client.get(path)).status_code == served
        assert "answered 503" in caplog.text
        assert "c-secret-42" not in caplog.text

    async def test_a_stored_key_that_cannot_be_looked_up_is_503_not_401_or_500(
        self,
        service: str,
        make_app: Callable[[], FastAPI],
        database_url: str,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        path, scope = ROUTES[service]
        key = await stored_key(database_url, scope)
        app = make_app()
        async with client_of(app, key) as client:
            keystore = app.state.keystore
            real = keystore.engine
            async with dead_engine(real) as down:
                keystore.engine = down
                try:
                    with caplog.at_level(logging.WARNING):
                        response = await client.get(path)
                finally:
                    keystore.engine = real
            assert_retry_later(response)
            # Nothing about the key was remembered: once the database is back, it is served.
            assert (await client.get(path)).status_code in (200, 404)
        assert key not in caplog.text
        assert "c-secret-42" not in caplog.text
