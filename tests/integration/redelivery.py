"""The scorer fed a stream twice over, as Kafka may: each event one or more times, in any
order, then again from an earlier committed offset (a crash after the database commit and
before the offsets). The property tests check its tables against a direct computation."""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from services.scorer.app import create_app as create_scorer
from shared.events import ResponseSubmitted, TouchpointEvent
from shared.settings import AuthSettings, DatabaseSettings, KafkaSettings, ScorerSettings
from shared.topics import TOPIC_SPECS, Topic
from tests.helpers import eventually, produce

TOPICS = (Topic.RESPONSES, Topic.TOUCHPOINTS)
Offsets = dict[TopicPartition, int]


async def offsets(kafka: KafkaSettings, group: str) -> tuple[Offsets, Offsets]:
    """Return the group's committed offsets and the end offsets of the scorer's topics."""
    admin = AIOKafkaAdminClient(**kafka.to_aiokafka_params())
    consumer = AIOKafkaConsumer(**kafka.to_aiokafka_params())
    await admin.start()
    await consumer.start()
    try:
        committed = {
            tp: meta.offset
            for tp, meta in (await admin.list_consumer_group_offsets(group)).items()
            if meta.offset >= 0
        }
        parts = [
            TopicPartition(kafka.topic(spec.topic), p)
            for spec in TOPIC_SPECS
            if spec.topic in TOPICS
            for p in range(spec.partitions)
        ]
        return committed, await consumer.end_offsets(parts)
    finally:
        await consumer.stop()
        await admin.close()


async def commit(kafka: KafkaSettings, group: str, to: Offsets) -> None:
    """Commit ``to`` for the (stopped) group."""
    consumer = AIOKafkaConsumer(
        **kafka.to_aiokafka_params(), group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(list(to))
        await consumer.commit(to)
    finally:
        await consumer.stop()


async def consume_all(
    kafka: KafkaSettings, database_url: str, settings: ScorerSettings, auth: AuthSettings
) -> None:
    """Run the scorer until its group has committed every record of its topics."""
    app = create_scorer(kafka, DatabaseSettings(url=database_url), auth, settings)
    async with app.router.lifespan_context(app):
        await eventually(
            lambda: offsets(kafka, settings.group_id),
            lambda found: found[0] == found[1],
            timeout=60,
            interval=0.2,
        )


async def fresh_scorer(kafka: KafkaSettings, batch_size: int) -> tuple[ScorerSettings, Offsets]:
    """A scorer of a new group that starts where the topics end (one set of topics serves
    every example; each would cost the broker its partitions), reading ``batch_size``
    records a batch, with the production setting of two batches in flight; and where its
    topics ended."""
    group = f"scorer_{uuid.uuid4().hex[:10]}"
    _, start = await offsets(kafka, group)
    await commit(kafka, group, start)
    scorer = ScorerSettings(
        group_id=group,
        batch_max_records=batch_size,
        batch_timeout_ms=50,
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
        commit_timeout_seconds=5,
    )
    # The production setting is what the properties are about.
    assert scorer.batches_in_flight >= 2
    return scorer, start


async def deliver_twice(
    kafka: KafkaSettings,
    database_url: str,
    scorer: ScorerSettings,
    auth: AuthSettings,
    start: Offsets,
    stream: Sequence[Any],
    rng: random.Random,
) -> None:
    """Produce ``stream`` with some events repeated, shuffled; let the scorer apply it all;
    then rewind the group to a random earlier offset on every partition and let it apply
    what it reads again."""
    delivered = [*stream, *rng.sample(list(stream), k=rng.randint(0, len(stream)))]
    rng.shuffle(delivered)
    for topic, kind in (
        (Topic.RESPONSES, ResponseSubmitted),
        (Topic.TOUCHPOINTS, TouchpointEvent),
    ):
        events = [e for e in delivered if isinstance(e, kind)]
        if events:
            await produce(kafka, topic, events)
    await consume_all(kafka, database_url, scorer, auth)
    # A crash after the database commit, before the offsets: Kafka redelivers from an
    # earlier offset, on any partition.
    committed, _ = await offsets(kafka, scorer.group_id)
    await commit(
        kafka,
        scorer.group_id,
        {tp: rng.randint(start[tp], end) for tp, end in committed.items()},
    )
    await consume_all(kafka, database_url, scorer, auth)
