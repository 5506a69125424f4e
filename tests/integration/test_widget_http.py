"""The widget endpoint as browsers reach it: origins, CORS, rate limits, sendBeacon bodies."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from shared.apikeys import KeyKind, Scope, create_key
from shared.settings import CollectorSettings
from tests.builders import response_payload
from tests.conftest import CollectorFactory

SHOP = "https://shop.example"


@pytest.fixture
async def publishable_key(database_url: str) -> str:
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            key, _ = await create_key(
                conn,
                name="shop",
                kind=KeyKind.PUBLISHABLE,
                scopes=[Scope.RESPONSES_WRITE],
                sources=["widget"],
                origins=[SHOP],
            )
    finally:
        await engine.dispose()
    return key


@pytest.fixture
async def collector(collector_app: CollectorFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with collector_app(CollectorSettings(widget_rate_per_minute=3)) as client:
        client.headers.pop("Authorization")
        yield client


def widget_url(key: str) -> str:
    return f"/v1/widget/responses?key={key}"


class TestOrigins:
    async def test_preflight_is_answered_for_allowed_origins_only(
        self, collector: httpx.AsyncClient, publishable_key: str
    ) -> None:
        headers = {
            "Origin": SHOP,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        }
        r = await collector.options(widget_url(publishable_key), headers=headers)
        assert r.status_code == 204
        assert r.headers["access-control-allow-origin"] == SHOP
        assert "POST" in r.headers["access-control-allow-methods"]
        evil = await collector.options(
            widget_url(publishable_key), headers={**headers, "Origin": "https://evil.example"}
        )
        assert evil.status_code == 403
        assert "access-control-allow-origin" not in evil.headers

    async def test_text_plain_from_the_page_is_accepted(
        self, collector: httpx.AsyncClient, publishable_key: str
    ) -> None:
        body = response_payload(event_id=str(uuid.uuid4()), survey_type="in_the_moment")
        r = await collector.post(
            widget_url(publishable_key),
            content=httpx.Response(200, json=body).content,
            headers={"Origin": SHOP, "Content-Type": "text/plain;charset=UTF-8"},
        )
        assert r.status_code == 202, r.text
        assert r.headers["access-control-allow-origin"] == SHOP
        assert r.json() == {"event_id": body["event_id"], "status": "accepted"}

    async def test_other_origins_keys_and_kinds_are_refused(
        self, collector_app: CollectorFactory, publishable_key: str, api_key: str
    ) -> None:
        # Refusals spend the address's budget too (it is checked before the key): room for 4.
        async with collector_app(CollectorSettings(widget_rate_per_minute=4)) as collector:
            collector.headers.pop("Authorization")
            await self._refusals(collector, publishable_key, api_key)

    async def _refusals(
        self, collector: httpx.AsyncClient, publishable_key: str, api_key: str
    ) -> None:
        body = response_payload()
        r = await collector.post(
            widget_url(publishable_key), json=body, headers={"Origin": "https://evil.example"}
        )
        assert r.status_code == 403
        r = await collector.post(widget_url(publishable_key), json=body)
        assert r.status_code == 403
        r = await collector.post(widget_url(api_key), json=body, headers={"Origin": SHOP})
        assert r.status_code == 401
        r = await collector.post(widget_url("cxp_nope"), json=body, headers={"Origin": SHOP})
        assert r.status_code == 401

    async def test_invalid_answer_names_the_field_and_keeps_cors(
        self, collector: httpx.AsyncClient, publishable_key: str
    ) -> None:
        r = await collector.post(
            widget_url(publishable_key), json=response_payload(score=42), headers={"Origin": SHOP}
        )
        assert r.status_code == 422
        assert r.json()["field"] == "score"
        assert r.headers["access-control-allow-origin"] == SHOP

    async def test_a_version_8_event_id_is_refused_naming_event_id(
        self, collector: httpx.AsyncClient, publishable_key: str
    ) -> None:
        # The collector derives version-8 ids from keys and vendor message ids: an anonymous
        # page must not send one first and so take another caller's event.
        derived = uuid.UUID(int=uuid.uuid4().int & ~(0xF << 76) | (0x8 << 76))
        r = await collector.post(
            widget_url(publishable_key),
            json=response_payload(event_id=str(derived)),
            headers={"Origin": SHOP},
        )
        assert r.status_code == 422
        assert r.json()["field"] == "event_id"
        assert r.headers["access-control-allow-origin"] == SHOP


class TestRateLimit:
    async def test_429_with_retry_after_per_address(
        self, collector: httpx.AsyncClient, publishable_key: str
    ) -> None:
        statuses = []
        for _ in range(5):
            r = await collector.post(
                widget_url(publishable_key), json=response_payload(), headers={"Origin": SHOP}
            )
            statuses.append(r.status_code)
        assert statuses == [202, 202, 202, 429, 429]
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["access-control-allow-origin"] == SHOP


class TestScript:
    async def test_widget_js_is_served(self, collector: httpx.AsyncClient) -> None:
        r = await collector.get("/widget.js")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/javascript")
        assert "sendBeacon" in r.text
