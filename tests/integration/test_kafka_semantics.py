"""Kafka guarantees cxloop relies on, checked against Apache Kafka (Tansu lacks them)."""

from __future__ import annotations

import pytest

from shared.kafka import make_producer
from shared.settings import KafkaSettings
from shared.topics import Topic
from tests.helpers import read_topic


@pytest.mark.apache_kafka
class TestIdempotentProducer:
    async def test_idempotent_acks_all_producer_delivers_each_record_once(
        self, kafka_settings: KafkaSettings
    ) -> None:
        assert kafka_settings.idempotence
        producer = make_producer(kafka_settings)
        await producer.start()
        try:
            futures = [
                await producer.send(
                    kafka_settings.topic(Topic.RESPONSES), f"{i}".encode(), key=b"k"
                )
                for i in range(200)
            ]
            for future in futures:
                await future
        finally:
            await producer.stop()
        records = await read_topic(kafka_settings, Topic.RESPONSES, 200)
        assert [r.value for r in records] == [f"{i}".encode() for i in range(200)]
        assert len({r.offset for r in records}) == 200
