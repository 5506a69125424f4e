"""A batch whose later send fails still counts the records the broker already holds."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaTimeoutError

from shared.events import ResponseSubmitted
from shared.settings import KafkaSettings
from shared.topics import Topic
from tests.builders import response_payload
from tests.conftest import CollectorFactory
from tests.helpers import eventually, read_topic


async def test_records_sent_before_a_failed_send_are_accepted_and_not_resent(
    collector_app: CollectorFactory,
    kafka_settings: KafkaSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Twelve customers land on several partitions, so the batch is sent as several
    # record batches; the second one handed to the (real) producer fails.
    items = [response_payload(customer_id=f"c-{n}", event_id=str(uuid.uuid4())) for n in range(12)]
    real = AIOKafkaProducer.send_batch
    calls = 0

    async def failing_second(
        self: AIOKafkaProducer, *args: Any, **kwargs: Any
    ) -> asyncio.Future[Any]:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KafkaTimeoutError()
        future: asyncio.Future[Any] = await real(self, *args, **kwargs)
        return future

    async with collector_app() as client:
        await eventually(lambda: client.get("/readyz"), lambda r: r.status_code == 200)
        monkeypatch.setattr(AIOKafkaProducer, "send_batch", failing_second)
        first = await client.post("/v1/responses/batch", json={"items": items})
        monkeypatch.undo()
        statuses = [r["status"] for r in first.json()["results"]]
        accepted = {items[i]["event_id"] for i, s in enumerate(statuses) if s == "accepted"}
        assert accepted
        assert set(statuses) == {"accepted", "unavailable"}
        held = await read_topic(kafka_settings, Topic.RESPONSES, len(accepted), timeout=10)
        assert {str(ResponseSubmitted.model_validate_json(r.value).event_id) for r in held} == (
            accepted
        )

        again = await client.post("/v1/responses/batch", json={"items": items})
        assert [r["status"] for r in again.json()["results"]] == [
            "duplicate" if s == "accepted" else "accepted" for s in statuses
        ]
    records = await read_topic(kafka_settings, Topic.RESPONSES, len(items) + 1, timeout=5)
    ids = [str(ResponseSubmitted.model_validate_json(r.value).event_id) for r in records]
    assert sorted(ids) == sorted(item["event_id"] for item in items)
