"""What a caller of the collector sees when it gets something wrong, or the broker is down.

The broker here is a closed port on purpose: nothing may be answered 2xx without an ack.
Postgres is real: keys and idempotency live there.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from services.collector.app import create_app
from services.servers import free_port
from shared.settings import AuthSettings, CollectorSettings, DatabaseSettings, KafkaSettings
from tests.builders import response_payload

KEY = "unit-test-key-0123456789"


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        kafka=KafkaSettings(
            bootstrap_servers=f"127.0.0.1:{free_port()}", produce_timeout_seconds=1
        ),
        database=DatabaseSettings(url=database_url),
        auth=AuthSettings(api_key=KEY, key_cache_seconds=0),
        settings=CollectorSettings(
            max_body_bytes=4096, max_batch_bytes=8192, max_batch_items=3, broker_wait_seconds=0
        ),
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
        assert r.json()["checks"] == {"kafka": False, "database": True}


class TestConfiguredSets:
    async def test_unconfigured_reason_is_named(self, client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/responses", json=response_payload(reasons=["price", "vibes"]))
        assert r.status_code == 422
        assert r.json()["field"] == "reasons.1"
        assert "'vibes' is not one of the configured reason codes" in r.json()["detail"]


class TestBatches:
    async def test_each_item_is_judged_on_its_own(self, client: httpx.AsyncClient) -> None:
        items = [response_payload(), response_payload(score=11), response_payload(metric="ces")]
        r = await client.post("/v1/responses/batch", json={"items": items})
        # The broker is down: one item is unstored, so the whole answer is 503, with details.
        assert r.status_code == 503
        assert r.headers["retry-after"]
        body = r.json()
        assert [x["status"] for x in body["results"]] == ["unavailable", "rejected", "rejected"]
        assert body["results"][1]["errors"] == [
            {"field": "score", "detail": "score 11 is outside 0–10 for nps"}
        ]
        assert body["results"][2]["errors"][0]["field"] == "scale"
        assert (body["rejected"], body["unavailable"]) == (2, 1)

    async def test_too_many_items_is_422(self, client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/responses/batch", json={"items": [response_payload()] * 4})
        assert r.status_code == 422
        assert r.json()["field"] == "items"
        assert "at most 3" in r.json()["detail"]

    async def test_batch_size_limit_is_its_own(self, client: httpx.AsyncClient) -> None:
        small = [response_payload(comment="x" * 1000)] * 3
        assert (await client.post("/v1/responses/batch", json={"items": small})).status_code == 503
        big = [response_payload(comment="x" * 3000)] * 3
        assert (await client.post("/v1/responses/batch", json={"items": big})).status_code == 413


class TestEvents:
    async def test_ticket_events_need_a_ticket_id(self, client: httpx.AsyncClient) -> None:
        r = await client.post(
            "/v1/events", json={"type": "ticket.created", "customer_id": "c", "channel": "email"}
        )
        assert r.status_code == 422
        assert "ticket_id is required for ticket.created" in r.json()["detail"]

    async def test_type_must_be_a_dotted_name(self, client: httpx.AsyncClient) -> None:
        r = await client.post(
            "/v1/events", json={"type": "Ticket Created!", "customer_id": "c", "channel": "web"}
        )
        assert r.status_code == 422
        assert r.json()["field"] == "type"


class TestScopedKeys:
    async def _cxloop_keys(self, database_url: str, *args: str) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CXLOOP_")}
        env["CXLOOP_DATABASE_URL"] = database_url
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "services.cli", "keys", *args],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout

    async def test_scopes_sources_and_revocation(
        self, client: httpx.AsyncClient, database_url: str
    ) -> None:
        out = await self._cxloop_keys(
            database_url, "create", "--name", "helpdesk", "--scope", "events:write"
        )
        key_id, key = out.split()[2], out.strip().splitlines()[-1]
        assert key.startswith("cxs_")
        events_only = {"Authorization": f"Bearer {key}"}
        r = await client.post("/v1/responses", json=response_payload(), headers=events_only)
        assert r.status_code == 403
        assert r.json()["detail"] == "this key may not use responses:write through api"
        event = {"type": "purchase", "customer_id": "c", "channel": "web"}
        r = await client.post("/v1/events", json=event, headers=events_only)
        assert r.status_code == 503  # admitted; the broker is down in this module

        listing = await self._cxloop_keys(database_url, "list")
        assert "helpdesk" in listing
        assert key not in listing
        await self._cxloop_keys(database_url, "revoke", key_id)
        r = await client.post("/v1/events", json=event, headers=events_only)
        assert r.status_code == 401

    async def test_publishable_keys_cannot_use_the_server_api(
        self, client: httpx.AsyncClient, database_url: str
    ) -> None:
        out = await self._cxloop_keys(
            database_url, "create", "--name", "site", "--publishable",
            "--origin", "https://shop.example",
        )  # fmt: skip
        key = out.strip().splitlines()[-1]
        assert key.startswith("cxp_")
        r = await client.post(
            "/v1/responses", json=response_payload(), headers={"Authorization": f"Bearer {key}"}
        )
        assert r.status_code == 403
