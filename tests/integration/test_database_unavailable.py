"""The database out of reach under the JSON APIs: a 503 with Retry-After that a client
retries, never a 500, and nothing of the request in the log.

The services' apps run against the test Postgres; the outage is a dead engine (nothing
listens on port 1) swapped in for the one a request would use.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import create_async_engine

from services.collector.app import create_app as collector_app
from shared.apikeys import KeyKind, Scope, create_key
from shared.settings import AuthSettings, CollectorSettings, DatabaseSettings, KafkaSettings
from tests.builders import response_payload
from tests.helpers import database_down, serving

# A JSON route of each service that reads the database, with a customer's id in its path
# where it has one (the log must not show it), and the scope a stored key needs for it.
ROUTES = {
    "scorer": ("/v1/customers/c-secret-42", Scope.RESPONSES_READ),
    "alerting": ("/v1/alerts?customer_id=c-secret-42", Scope.ALERTS_READ),
}


@pytest.fixture(params=sorted(ROUTES))
def service(request: pytest.FixtureRequest) -> str:
    return str(request.param)


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
        async with serving(collector, key, "collector") as client:
            async with database_down(collector.state.keystore):
                response = await client.post("/v1/responses", json=response_payload())
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
        async with serving(collector, "unused", "collector") as client:
            client.headers.pop("Authorization")
            async with database_down(collector.state.keystore):
                response = await client.post(
                    f"/v1/widget/responses?key={key}",
                    json=response_payload(survey_type="in_the_moment"),
                    headers={"Origin": SHOP},
                )
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
        async with serving(app, api_key, service) as client:
            served = (await client.get(path)).status_code
            assert served in (200, 404)  # a customer never seen is a 404
            async with database_down(app.state):
                with caplog.at_level(logging.WARNING):
                    response = await client.get(path)
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
        async with serving(app, key, service) as client:
            async with database_down(app.state.keystore):
                with caplog.at_level(logging.WARNING):
                    response = await client.get(path)
            assert_retry_later(response)
            # Nothing about the key was remembered: once the database is back, it is served.
            assert (await client.get(path)).status_code in (200, 404)
        assert key not in caplog.text
        assert "c-secret-42" not in caplog.text
