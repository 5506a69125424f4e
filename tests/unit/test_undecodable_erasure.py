"""An erasure the running version cannot decode is never dead-lettered: it waits."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from pydantic import BaseModel

from shared import metrics
from shared.events import CUSTOMER_ERASED
from shared.kafka import HEADER_TYPE, DeadLetters, Decoded, run_batches
from shared.settings import ConsumerSettings, KafkaSettings

TP = TopicPartition("t", 0)


class Answer(BaseModel):
    n: int


def record(offset: int, value: bytes, erasure: bool = False) -> ConsumerRecord[bytes, bytes]:
    headers = [(HEADER_TYPE, CUSTOMER_ERASED.encode())] if erasure else []
    return ConsumerRecord(
        topic="t",
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"k",
        value=value,
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=len(value),
        headers=headers,
    )


class Consumer:
    """One partition: getmany returns the records from the position on; seek moves it."""

    def __init__(self, records: list[ConsumerRecord[bytes, bytes]], stop: asyncio.Event) -> None:
        self.records, self.stopping, self.position, self.fetches = records, stop, 0, 0
        self.committed: list[int] = []

    async def getmany(self, **_: Any) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        self.fetches += 1
        if self.fetches == 4:
            self.stopping.set()
        batch = [r for r in self.records if r.offset >= self.position]
        self.position = len(self.records)
        return {TP: batch} if batch else {}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.position = offset

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed.append(offsets[TP])

    def assignment(self) -> set[TopicPartition]:
        return set()

    async def stop(self) -> None:
        pass


class Producer:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send_and_wait(self, topic: str, value: bytes, **_: Any) -> None:
        self.sent.append(value)


async def test_an_undecodable_erasure_holds_its_partition_and_is_never_dead_lettered() -> None:
    stop = asyncio.Event()
    # A schema the running version does not know, mid-rollout; then more of the customer.
    consumer = Consumer(
        [
            record(0, b'{"n": 0}'),
            record(1, b"not json"),  # an ordinary poison record: dead-lettered
            record(2, b'{"schema_version": 2}', erasure=True),
            record(3, b'{"n": 3}'),
        ],
        stop,
    )
    producer = Producer()
    applied: list[int] = []

    async def handle(batch: Sequence[Decoded]) -> None:
        applied.extend(d.event.n for d in batch if isinstance(d.event, Answer))

    held = metrics.HELD_BACK.labels(group="g", topic="t")
    before = held._value.get()
    await run_batches(
        consumer,
        handle,
        stop,
        models={"t": Answer},
        dead_letters=DeadLetters(producer, KafkaSettings(), "g"),
        settings=ConsumerSettings(group_id="g"),
    )
    assert producer.sent == [b"not json"]
    # The records before it apply; it and everything after it wait, committed never past it.
    assert applied == [0]
    assert consumer.committed == [2]
    assert held._value.get() - before >= 2  # retried, and counted each time
