"""The collector answers 202 only for what the broker holds, exactly as accepted."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from shared.events import ResponseSubmitted, TouchpointEvent
from shared.kafka import HEADER_SCHEMA, HEADER_TYPE
from shared.settings import KafkaSettings
from shared.topics import Topic
from tests.builders import response_payload
from tests.conftest import CollectorFactory
from tests.helpers import eventually, read_topic

pytestmark = pytest.mark.smoke


@pytest.fixture
async def collector(collector_app: CollectorFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with collector_app() as client:
        await eventually(lambda: client.get("/readyz"), lambda r: r.status_code == 200)
        yield client


class TestProduce:
    async def test_accepted_response_is_on_the_topic_as_sent(
        self, collector: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        payload = response_payload(
            score=4,
            customer_id="顧客-0042",
            comment="電話がつながらない。Très long.",
            reasons=["wait_time", "agent_knowledge"],
            segments={"location": "osaka-umeda", "business_unit": "retail"},
            occurred_at="2026-11-22T09:30:00+09:00",
        )
        r = await collector.post("/v1/responses", json=payload)
        assert r.status_code == 202
        event_id = r.json()["event_id"]

        (record,) = await read_topic(kafka_settings, Topic.RESPONSES, 1)
        event = ResponseSubmitted.model_validate_json(record.value)
        assert str(event.event_id) == event_id
        assert record.key == "顧客-0042".encode()
        assert event.comment == payload["comment"]
        assert event.reasons == ("wait_time", "agent_knowledge")
        assert event.segments.location == "osaka-umeda"
        assert event.occurred_at.isoformat() == "2026-11-22T09:30:00+09:00"
        assert event.received_at.tzinfo is not None
        assert event.scale == 10
        headers = dict(record.headers)
        assert headers[HEADER_TYPE] == b"response.submitted"
        assert headers[HEADER_SCHEMA] == b"1"

    async def test_one_customer_stays_on_one_partition(
        self, collector: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        for score in range(6):
            r = await collector.post(
                "/v1/responses", json=response_payload(customer_id="c-7", score=score)
            )
            assert r.status_code == 202
        records = await read_topic(kafka_settings, Topic.RESPONSES, 6)
        assert len(records) == 6
        assert len({r.partition for r in records}) == 1
        assert [ResponseSubmitted.model_validate_json(r.value).score for r in records] == list(
            range(6)
        )

    async def test_a_batch_puts_each_customer_where_single_events_go(
        self, collector: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        customers = [f"顧客-{n}" for n in range(8)]
        for customer in customers:
            r = await collector.post("/v1/responses", json=response_payload(customer_id=customer))
            assert r.status_code == 202
        items = [response_payload(customer_id=c, score=s) for s in (1, 2) for c in customers]
        r = await collector.post("/v1/responses/batch", json={"items": items})
        assert r.json()["accepted"] == len(items)
        records = await read_topic(kafka_settings, Topic.RESPONSES, 24)
        partitions: dict[bytes | None, set[int]] = {}
        for record in records:
            partitions.setdefault(record.key, set()).add(record.partition)
            assert dict(record.headers)[HEADER_TYPE] == b"response.submitted"
        assert {k: len(p) for k, p in partitions.items()} == {c.encode(): 1 for c in customers}
        # In its order within a customer's partition.
        scores = [
            ResponseSubmitted.model_validate_json(r.value).score
            for r in records
            if r.key == customers[0].encode()
        ]
        assert scores[1:] == [1, 2]

    async def test_client_event_id_is_kept(
        self, collector: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        event_id = str(uuid.uuid4())
        r = await collector.post("/v1/responses", json=response_payload(event_id=event_id))
        assert r.json() == {"event_id": event_id, "status": "accepted"}

    async def test_ready_when_the_broker_answers(self, collector: httpx.AsyncClient) -> None:
        r = await collector.get("/readyz")
        assert r.json() == {"status": "ready", "checks": {"kafka": True, "database": True}}


class TestIdempotency:
    async def test_resent_event_id_is_a_duplicate_and_not_produced(
        self, collector: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        payload = response_payload(event_id=str(uuid.uuid4()))
        first = await collector.post("/v1/responses", json=payload)
        again = await collector.post("/v1/responses", json=payload)
        assert first.json()["status"] == "accepted"
        assert again.status_code == 202
        assert again.json() == {"event_id": payload["event_id"], "status": "duplicate"}
        marker = await collector.post("/v1/responses", json=response_payload())
        records = await read_topic(kafka_settings, Topic.RESPONSES, 3, timeout=5)
        ids = [str(ResponseSubmitted.model_validate_json(r.value).event_id) for r in records]
        assert sorted(ids) == sorted([payload["event_id"], marker.json()["event_id"]])

    async def test_idempotency_key_header_names_one_event(
        self, collector: httpx.AsyncClient
    ) -> None:
        headers = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
        payload = response_payload()
        first = await collector.post("/v1/responses", json=payload, headers=headers)
        again = await collector.post("/v1/responses", json=payload, headers=headers)
        assert first.json()["status"] == "accepted"
        assert again.json() == {"event_id": first.json()["event_id"], "status": "duplicate"}

    async def test_batch_reports_duplicates_inside_and_across_batches(
        self, collector: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        repeated = response_payload(event_id=str(uuid.uuid4()))
        items = [repeated, response_payload(score=3), repeated, response_payload(score=99)]
        first = (await collector.post("/v1/responses/batch", json={"items": items})).json()
        assert [r["status"] for r in first["results"]] == [
            "accepted", "accepted", "duplicate", "rejected",
        ]  # fmt: skip
        second = (await collector.post("/v1/responses/batch", json={"items": items[:1]})).json()
        assert second["results"][0]["status"] == "duplicate"
        records = await read_topic(kafka_settings, Topic.RESPONSES, 3, timeout=5)
        assert len(records) == 2


class TestTouchpointEvents:
    async def test_ticket_event_reaches_the_touchpoint_topic(
        self, collector: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        r = await collector.post(
            "/v1/events",
            json={
                "type": "ticket.resolved",
                "ticket_id": "T-77",
                "customer_id": "c-9",
                "channel": "email",
                "priority": "urgent",
                "status": "solved",
                "attributes": {"agent": "佐藤"},
                "occurred_at": "2026-11-22T10:00:00+09:00",
            },
        )
        assert r.status_code == 202, r.text
        (record,) = await read_topic(kafka_settings, Topic.TOUCHPOINTS, 1)
        event = TouchpointEvent.model_validate_json(record.value)
        assert (event.type, event.ticket_id, event.priority) == (
            "ticket.resolved",
            "T-77",
            "urgent",
        )
        assert event.attributes == {"agent": "佐藤"}
        assert record.key == b"c-9"
