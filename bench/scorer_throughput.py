"""Scorer throughput: events/s from a pre-filled topic to committed aggregates.

Side by side, in one run, on the same broker and Postgres, each from its own fresh database:
  scorer   the real consumer (ConsumingService + BatchHandler, default settings): ledger,
           raw rows, score/reason buckets, activity, offsets committed after each transaction
  limit    a bare getmany loop that decodes and bulk-inserts the same raw rows (ledger and
           responses, by COPY) and nothing else: no aggregates
  naive    one ORM session per event: look the id up, add the row, read-modify-write each
           bucket, commit (on the first --naive-events only; it is that slow)

    python bench/scorer_throughput.py --events 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer
from common import Result, Servers, servers
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import registry

from services.migrations import MIGRATIONS_DIR
from services.scorer import aggregates, models
from services.scorer.consumer import BatchHandler
from services.scorer.repository import RESPONSE_COLUMNS, response_record
from shared.events import ResponseSubmitted, TouchpointEvent
from shared.kafka import encode, make_producer
from shared.privacy import Hasher
from shared.runtime import ConsumingService
from shared.scoring import Counts
from shared.settings import DatabaseSettings, KafkaSettings, ScorerSettings
from shared.topics import Topic

CHANNELS = ["web", "sms", "call_center", "email"]
TOUCHPOINTS = ["checkout", "support_call", "delivery"]
LOCATIONS = ["tokyo", "osaka", "nagoya"]


def answer(rng: random.Random, i: int, now: datetime, spread: timedelta) -> ResponseSubmitted:
    at = now - spread * rng.random()
    return ResponseSubmitted.model_validate(
        {
            "event_id": uuid.UUID(int=rng.getrandbits(128), version=4),
            "occurred_at": at,
            "received_at": at,
            "source": "api",
            "channel": rng.choice(CHANNELS),
            "customer_id": f"c{i % 20000}",
            "metric": "nps",
            "scale": 10,
            "score": rng.randint(0, 10),
            "survey_type": "transactional",
            "touchpoint": rng.choice(TOUCHPOINTS),
            "comment": "配送が遅い" if rng.random() < 0.2 else None,
            "reasons": rng.sample(["price", "wait_time", "app"], rng.randint(0, 2)),
            "segments": {"location": rng.choice(LOCATIONS)},
        }
    )


async def fill(kafka: KafkaSettings, n: int, spread: timedelta) -> float:
    rng, now = random.Random(1), datetime.now(UTC)
    producer = make_producer(kafka)
    await producer.start()
    started = time.perf_counter()
    try:
        topic = kafka.topic(Topic.RESPONSES)
        for chunk in range(0, n, 20_000):
            futures = []
            for i in range(chunk, min(n, chunk + 20_000)):
                e = answer(rng, i, now, spread)
                futures.append(await producer.send(topic, encode(e), key=e.customer_id.encode()))
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def applied(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(sa.text("SELECT count(*) FROM scorer_applied_events")) or 0)


async def run_scorer(kafka: KafkaSettings, url: str, n: int) -> float:
    scorer = ScorerSettings(group_id=f"bench-{uuid.uuid4().hex[:6]}")
    runtime = ConsumingService(
        name="bench",
        kafka=kafka,
        database=DatabaseSettings(url=url),
        consumer=scorer,
        models={Topic.RESPONSES: ResponseSubmitted, Topic.TOUCHPOINTS: TouchpointEvent},
        make_handler=lambda engine: BatchHandler(engine, Hasher(b"bench-hash-key")),
        migrations=MIGRATIONS_DIR,
        in_flight=scorer.batches_in_flight,
    )
    started = time.perf_counter()
    await runtime.start()
    try:
        first = None
        while (done := await applied(runtime.engine)) < n:
            if first is None and done:
                first = time.perf_counter() - started
            await asyncio.sleep(0.1)
        print(f"  scorer: first batch committed after {first or 0:.1f}s", flush=True)
        return time.perf_counter() - started
    finally:
        await runtime.stop()


def consumer_for(kafka: KafkaSettings) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        kafka.topic(Topic.RESPONSES),
        **kafka.to_aiokafka_params(),
        group_id=f"ref-{uuid.uuid4().hex[:6]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )


async def run_limit(kafka: KafkaSettings, url: str, n: int) -> float:
    engine = create_async_engine(url)
    consumer = consumer_for(kafka)
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
                driver = (await conn.get_raw_connection()).driver_connection
                assert driver is not None
                await driver.copy_records_to_table(
                    "responses",
                    records=[response_record(e) for e in rows],
                    columns=RESPONSE_COLUMNS,
                )
            await consumer.commit()
            seen += len(rows)
        return time.perf_counter() - started
    finally:
        await consumer.stop()
        await engine.dispose()


class Applied:
    pass


class Response:
    pass


class ScoreBucket:
    pass


class ReasonBucket:
    pass


class Activity:
    pass


_reason_buckets = sa.Table(
    "reason_buckets",
    sa.MetaData(),
    *(sa.Column(k, sa.Text, primary_key=True) for k in aggregates.ReasonKey._fields[1:]),
    sa.Column("bucket_start", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("n", sa.BigInteger),
)
_activity = sa.Table(
    "customer_activity",
    sa.MetaData(),
    sa.Column("period", sa.Text, primary_key=True),
    sa.Column("period_start", sa.Date, primary_key=True),
    sa.Column("customer_key", sa.Text, primary_key=True),
)
_orm = registry()
_orm.map_imperatively(Applied, models.applied_events)
_orm.map_imperatively(Response, models.responses)
_orm.map_imperatively(ScoreBucket, models.score_buckets)
_orm.map_imperatively(ReasonBucket, _reason_buckets)
_orm.map_imperatively(Activity, _activity)


async def run_naive(kafka: KafkaSettings, url: str, n: int) -> float:
    """The textbook way: one ORM unit of work per event, each bucket read, changed, written."""
    from sqlalchemy.ext.asyncio import async_sessionmaker

    engine = create_async_engine(url)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    consumer = consumer_for(kafka)
    started = time.perf_counter()
    await consumer.start()
    seen = 0
    try:
        while seen < n:
            batches = await consumer.getmany(timeout_ms=200, max_records=min(500, n - seen))
            for records in batches.values():
                for record in records:
                    await _naive_one(sessions, ResponseSubmitted.model_validate_json(record.value))
                    seen += 1
            if batches:
                await consumer.commit()
        return time.perf_counter() - started
    finally:
        await consumer.stop()
        await engine.dispose()


async def _naive_one(sessions: object, e: ResponseSubmitted) -> None:
    async with sessions() as session, session.begin():  # type: ignore[operator]
        if await session.get(Applied, e.event_id) is not None:
            return
        session.add(Applied(event_id=e.event_id))  # type: ignore[call-arg]
        row = dict(zip(RESPONSE_COLUMNS, response_record(e), strict=True))
        session.add(Response(**row))
        key = aggregates.key_of(e)
        counts = aggregates.counts_of(e)
        bucket = await session.get(ScoreBucket, key._asdict(), with_for_update=True)
        if bucket is None:
            session.add(ScoreBucket(**key._asdict(), **_counts(counts)))
        else:
            for name, value in _counts(counts).items():
                setattr(bucket, name, getattr(bucket, name) + value)
        for rkey, count in aggregates.fold_reasons([e]).items():
            reason = await session.get(ReasonBucket, rkey._asdict(), with_for_update=True)
            if reason is None:
                session.add(ReasonBucket(**rkey._asdict(), n=count))  # type: ignore[call-arg]
            else:
                reason.n += count
        for period, start, customer in aggregates.activity([e]):
            pk = {"period": period, "period_start": start, "customer_key": customer}
            if await session.get(Activity, pk) is None:
                session.add(Activity(**pk))


def _counts(c: Counts) -> dict[str, int]:
    return {name: getattr(c, name) for name in models.COUNTS}


async def measure(srv: Servers, n: int, naive_n: int, spread_hours: float) -> list[Result]:
    kafka = await srv.topics()
    filled = await fill(kafka, n, timedelta(hours=spread_hours))
    print(f"  filled {n:,} answers over {spread_hours:g} h in {filled:.1f}s", flush=True)
    scorer = n / await run_scorer(kafka, await srv.database(), n)
    print(f"  scorer {scorer:,.0f}/s", flush=True)
    limit = n / await run_limit(kafka, await srv.database(), n)
    print(f"  limit  {limit:,.0f}/s", flush=True)
    naive = naive_n / await run_naive(kafka, await srv.database(), naive_n)
    print(f"  naive  {naive:,.0f}/s", flush=True)
    setup = f"{n:,} NPS answers over {spread_hours:g} h, from a pre-filled topic"
    return [
        Result(
            "Scorer throughput vs bare bulk insert",
            scorer,
            "events/s",
            "getmany + COPY of the raw rows only",
            limit,
            "≥ 0.5 and ≥ 15,000 events/s",
            scorer / limit >= 0.5 and scorer >= 15_000,
            setup,
        ),
        Result(
            "Scorer throughput vs naive ORM",
            scorer,
            "events/s",
            f"one ORM transaction per event ({naive_n:,} events)",
            naive,
            "≥ 10×",
            scorer / naive >= 10,
            setup,
        ),
    ]


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--naive-events", type=int, default=5_000)
    parser.add_argument("--spread-hours", type=float, default=24)
    args = parser.parse_args()
    async with servers() as srv:
        for r in await measure(srv, args.events, args.naive_events, args.spread_hours):
            print(f"{r.name}: {r.value:,.0f} {r.unit} / {r.reference_value:,.0f} = {r.ratio:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
