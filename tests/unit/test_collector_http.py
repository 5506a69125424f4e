"""What a caller of the collector sees when it gets something wrong, or the broker is down.

The broker here is a closed port on purpose: nothing may be answered 2xx without an ack.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from services.collector.app import create_app
from services.servers import free_port
from shared.settings import AuthSettings, CollectorSettings, KafkaSettings
from tests.builders import response_payload

KEY = "unit-test-key-0123456789"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", produce_timeout_seconds=1),
        AuthSettings(api_key=KEY),
        CollectorSettings(max_body_bytes=4096),
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://collector",
            headers={"Authorization": f"Bearer {KEY}"},
        ) as c:
            yield c


class TestAuthentication:
    async def test_missing_key_is_401_with_a_challenge(self, client: httpx.AsyncClient) -> None:
        r = await client.post(
            "/v1/responses", json=response_payload(), headers={"Authorization": ""}
        )
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["error"] == "unauthorized"

    async def test_wrong_key_is_401(self, client: httpx.AsyncClient) -> None:
        r = await client.post(
            "/v1/responses",
            json=response_payload(),
            headers={"Authorization": "Bearer nope-nope-nope-nope"},
        )
        assert r.status_code == 401
        assert r.json()["detail"] == "invalid API key"

    async def test_health_needs_no_key(self, client: httpx.AsyncClient) -> None:
        r = await client.get("/healthz", headers={"Authorization": ""})
        assert r.status_code == 200


class TestValidation:
    async def test_every_bad_field_is_named(self, client: httpx.AsyncClient) -> None:
        r = await client.post(
            "/v1/responses",
            json=response_payload(score=11, channel="fax", scroe=3),
        )
        assert r.status_code == 422
        body = r.json()
        fields = {e["field"]: e["detail"] for e in body["errors"]}
        assert fields["score"] == "score 11 is outside 0–10 for nps"
        assert "channel" in fields
        assert fields["scroe"] == "Extra inputs are not permitted"

    async def test_naive_timestamp_is_refused(self, client: httpx.AsyncClient) -> None:
        r = await client.post(
            "/v1/responses", json=response_payload(occurred_at="2026-11-22T10:00:00")
        )
        assert r.status_code == 422
        assert r.json()["field"] == "occurred_at"
        assert "timezone" in r.json()["detail"]

    async def test_ces_without_scale_is_refused(self, client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/responses", json=response_payload(metric="ces", score=3))
        assert r.status_code == 422
        assert r.json()["field"] == "scale"

    async def test_score_as_text_or_fraction_is_refused(self, client: httpx.AsyncClient) -> None:
        for score in ("9", 9.5, True):
            r = await client.post("/v1/responses", json=response_payload(score=score))
            assert r.status_code == 422, score
            assert r.json()["field"] == "score"

    async def test_wrong_content_type_is_415(self, client: httpx.AsyncClient) -> None:
        r = await client.post(
            "/v1/responses",
            content=b"score=9",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 415
        assert r.json()["error"] == "unsupported_media_type"

    async def test_oversized_body_is_413(self, client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/responses", json=response_payload(comment="x" * 5000))
        assert r.status_code == 413

    async def test_oversized_chunked_body_is_413(self, client: httpx.AsyncClient) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"comment": "'
            for _ in range(10):
                yield b"y" * 1000
            yield b'"}'

        r = await client.post(
            "/v1/responses", content=chunks(), headers={"content-type": "application/json"}
        )
        assert r.status_code == 413

    async def test_malformed_json_is_422_not_500(self, client: httpx.AsyncClient) -> None:
        r = await client.post(
            "/v1/responses",
            content=b'{"metric": "nps",',
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 422


class TestBrokerDown:
    async def test_valid_response_gets_503_never_202(self, client: httpx.AsyncClient) -> None:
        event_id = str(uuid.uuid4())
        r = await client.post("/v1/responses", json=response_payload(event_id=event_id))
        assert r.status_code == 503
        assert r.headers["retry-after"]
        assert r.json()["event_id"] == event_id

    async def test_not_ready_names_kafka(self, client: httpx.AsyncClient) -> None:
        r = await client.get("/readyz")
        assert r.status_code == 503
        assert r.json()["checks"] == {"kafka": False}
