"""A broker outage: 503 quickly during it, nothing lost or doubled after it.

This test runs its own Apache Kafka (persistent, so it can be stopped and started again on
the same port and data) rather than the session broker.
"""

from __future__ import annotations

import functools
import time
import uuid

import httpx
import pytest

from services.collector.app import create_app
from services.servers import ApacheKafkaBroker
from shared.events import ResponseSubmitted
from shared.kafka import ensure_topics
from shared.settings import AuthSettings, CollectorSettings, DatabaseSettings, KafkaSettings
from shared.topics import Topic
from tests.builders import response_payload
from tests.helpers import eventually, read_topic, serving

pytestmark = pytest.mark.apache_kafka
PRODUCE_TIMEOUT = 2.0


async def post(client: httpx.AsyncClient, payload: dict[str, object]) -> tuple[int, float]:
    started = time.monotonic()
    r = await client.post("/v1/responses", json=payload)
    return r.status_code, time.monotonic() - started


class TestBrokerOutage:
    async def test_503_during_the_outage_and_nothing_lost_after(
        self, own_kafka: ApacheKafkaBroker, database_url: str, auth: AuthSettings, api_key: str
    ) -> None:
        kafka = KafkaSettings(
            bootstrap_servers=own_kafka.bootstrap_servers,
            topic_prefix=f"outage{uuid.uuid4().hex[:6]}.",
            produce_timeout_seconds=PRODUCE_TIMEOUT,
            request_timeout_ms=3000,
        )
        await ensure_topics(kafka)
        app = create_app(
            kafka=kafka,
            database=DatabaseSettings(url=database_url),
            auth=auth,
            settings=CollectorSettings(),
        )
        answered: dict[str, int] = {}
        async with serving(app, api_key, "collector") as client:
            for _ in range(20):
                payload = response_payload(event_id=str(uuid.uuid4()))
                status, _ = await post(client, payload)
                answered[str(payload["event_id"])] = status
            assert set(answered.values()) == {202}

            await own_kafka.stop()
            during: dict[str, dict[str, object]] = {}
            for _ in range(5):
                payload = response_payload(event_id=str(uuid.uuid4()))
                status, took = await post(client, payload)
                during[str(payload["event_id"])] = payload
                assert status == 503, "nothing may be answered 2xx while the broker is down"
                assert took < PRODUCE_TIMEOUT + 3, f"a request hung for {took:.1f}s"
            assert (await client.get("/readyz")).status_code == 503

            await own_kafka.start()
            await eventually(
                lambda: client.get("/readyz"), lambda r: r.status_code == 200, timeout=60
            )
            # Clients retry their 503s with the same request (and so the same event id), as the
            # 503 tells them to; another body under that id would be a 409.
            for sent in during.values():
                retry = functools.partial(client.post, "/v1/responses", json=sent)
                r = await eventually(retry, lambda r: r.status_code == 202, timeout=30)
                assert r.json()["status"] in ("accepted", "duplicate")
            for _ in range(5):
                payload = response_payload(event_id=str(uuid.uuid4()))
                status, _ = await post(client, payload)
                answered[str(payload["event_id"])] = status
            assert set(answered.values()) == {202}

        records = await read_topic(kafka, Topic.RESPONSES, 40, timeout=10)
        ids = [str(ResponseSubmitted.model_validate_json(r.value).event_id) for r in records]
        accepted_before_and_after = [i for i in ids if i in answered]
        assert sorted(accepted_before_and_after) == sorted(answered), (
            "an answered event was lost or doubled"
        )
        assert set(during) <= set(ids), "a retried event was lost"
