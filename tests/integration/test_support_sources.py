"""Zendesk and Freshdesk webhooks, end to end to the touchpoint topic."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import httpx
import pytest

from shared.events import TouchpointEvent
from shared.settings import (
    KafkaSettings,
    SourceSettings,
)
from shared.topics import Topic
from tests.builders_vendors import freshdesk_ticket, zendesk_event, zendesk_headers
from tests.conftest import CollectorFactory
from tests.helpers import read_topic

SECRET = "zendesk-signing-secret"


@pytest.fixture
async def collector(collector_app: CollectorFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with collector_app(sources=SourceSettings(zendesk_signing_secret=SECRET)) as client:
        yield client


async def post_zendesk(
    client: httpx.AsyncClient, body: dict[str, object], secret: str = SECRET
) -> httpx.Response:
    raw = json.dumps(body).encode()
    headers = {**zendesk_headers(secret, raw), "Authorization": ""}
    return await client.post("/v1/sources/zendesk", content=raw, headers=headers)


class TestZendesk:
    async def test_out_of_order_lifecycle_arrives_whole_and_once(
        self, collector: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        solved = zendesk_event(
            "ticket.status_changed",
            event={"previous": "OPEN", "current": "SOLVED"},
            time="2026-11-22T05:00:00Z",
        )
        created = zendesk_event("ticket.created", time="2026-11-22T01:00:00Z")
        for body in (solved, created, solved):
            r = await post_zendesk(collector, body)
            assert r.status_code == 202, r.text
        assert r.json()["status"] == "duplicate"
        records = await read_topic(kafka_settings, Topic.TOUCHPOINTS, 3, timeout=5)
        events = sorted(
            (TouchpointEvent.model_validate_json(r.value) for r in records),
            key=lambda e: e.occurred_at,
        )
        assert [e.type for e in events] == ["ticket.created", "ticket.resolved"]
        assert {e.ticket_id for e in events} == {"35436"}
        assert {e.source for e in events} == {"zendesk"}

    async def test_bad_signature_is_403_and_unused_types_are_acknowledged(
        self, collector: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        assert (
            await post_zendesk(collector, zendesk_event("ticket.created"), "wrong")
        ).status_code == 403
        r = await post_zendesk(collector, zendesk_event("ticket.tags_changed"))
        assert (r.status_code, r.json()["status"]) == (200, "ignored")
        assert await read_topic(kafka_settings, Topic.TOUCHPOINTS, 1, timeout=2) == []

    async def test_malformed_event_names_the_field(self, collector: httpx.AsyncClient) -> None:
        body = zendesk_event("ticket.created")
        body["detail"].pop("id")
        r = await post_zendesk(collector, body)
        assert r.status_code == 422
        assert (r.json()["field"], r.json()["detail"]) == ("detail.id", "detail.id is required")


class TestFreshdesk:
    async def test_needs_a_key_for_the_freshdesk_source(
        self, collector: httpx.AsyncClient, database_url: str, kafka_settings: KafkaSettings
    ) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CXLOOP_")}
        env["CXLOOP_DATABASE_URL"] = database_url

        async def make_key(*args: str) -> str:
            out = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "services.cli", "keys", "create", "--name", "fd", *args],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            return out.stdout.strip().splitlines()[-1]

        freshdesk_key = await make_key("--scope", "events:write", "--source", "freshdesk")
        other_key = await make_key("--scope", "events:write", "--source", "zendesk")
        body = freshdesk_ticket(event="updated", status=4, updated_at="2026-11-22T18:00:00+09:00")
        r = await collector.post(
            "/v1/sources/freshdesk", json=body, headers={"Authorization": f"Bearer {other_key}"}
        )
        assert r.status_code == 403
        r = await collector.post(
            "/v1/sources/freshdesk", json=body, headers={"Authorization": f"Bearer {freshdesk_key}"}
        )
        assert r.status_code == 202, r.text
        (record,) = await read_topic(kafka_settings, Topic.TOUCHPOINTS, 1)
        event = TouchpointEvent.model_validate_json(record.value)
        assert (event.type, event.ticket_id, event.status) == (
            "ticket.resolved",
            "7001",
            "resolved",
        )
        assert event.attributes["due_by"] == "2026-11-23T09:00:00+09:00"
