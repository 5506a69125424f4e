"""Scorer throughput: events/s from a pre-filled topic to committed aggregates.

Side by side, in one run, on the same broker and Postgres, each from its own fresh database:
  scorer   the real consumer (ConsumingService + BatchHandler, default settings): ledger,
           raw rows, score/reason buckets, activity, offsets committed after each transaction
  limit    a bare getmany loop that decodes and bulk-inserts the same raw rows (ledger and
           responses, by COPY) and nothing else: no aggregates; pipelined as the scorer is
           (the next batch fetched while batches_in_flight earlier ones are stored)
  two      two scorer processes (cxloop scorer) in one consumer group on the same backlog,
           against one, with lock waits sampled from pg_stat_activity during each
  naive    one ORM session per event: look the id up, add the row, read-modify-write each
           bucket, commit (on the first --naive-events only; it is that slow)

    python bench/scorer_throughput.py --events 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, TopicPartition
from common import (
    Cpu,
    CpuMeter,
    GroupProgress,
    Result,
    Servers,
    asyncpg_dsn,
    checkpoint,
    servers,
    stack,
    wait_done,
)
from sqlalchemy.ext.asyncio import create_async_engine
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
from shared.topics import TOPIC_SPECS, Topic
from tests.harness.backends import PostgresServer

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


def consume_timeout(n: int) -> float:
    """How long a consuming side may take for ``n`` records before its row fails instead of
    hanging the run (a dead-lettered record is never stored)."""
    return 120 + n / 500


class FirstSeen:
    """Wraps a handler to note when it was handed its first batch (``time.time()``)."""

    def __init__(self, handle: Callable[[Sequence[Any]], Any]) -> None:
        self._handle = handle
        self.at: float | None = None

    async def __call__(self, batch: Sequence[Any]) -> None:
        if self.at is None:
            self.at = time.time()
        await self._handle(batch)


def scorer_service(
    kafka: KafkaSettings,
    url: str,
    group: str,
    wrap: Callable[[BatchHandler], Any] = lambda handler: handler,
) -> ConsumingService:
    scorer = ScorerSettings(group_id=group)
    return ConsumingService(
        name="bench",
        kafka=kafka,
        database=DatabaseSettings(url=url),
        consumer=scorer,
        models={Topic.RESPONSES: ResponseSubmitted, Topic.TOUCHPOINTS: TouchpointEvent},
        make_handler=lambda engine: wrap(BatchHandler(engine, Hasher(b"bench-hash-key"))),
        migrations=MIGRATIONS_DIR,
        in_flight=scorer.batches_in_flight,
    )


@dataclass
class LockWaits:
    """Sampled every 50 ms: how often a scorer session of the database waited on a lock."""

    samples: int = 0
    waiting: int = 0  # samples with at least one session waiting on a lock
    sessions: int = 0  # session-samples waiting on a lock
    events: collections.Counter[str] = field(default_factory=collections.Counter)

    def describe(self) -> str:
        top = ", ".join(f"{name} {n}" for name, n in self.events.most_common(3)) or "none"
        return (
            f"a session waited on a lock in {self.waiting} of {self.samples} samples "
            f"(every 50 ms; wait events: {top})"
        )


async def sample_lock_waits(url: str, into: LockWaits, stop: asyncio.Event) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        while not stop.is_set():
            rows = await conn.fetch(
                "SELECT wait_event FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
            into.samples += 1
            into.waiting += bool(rows)
            into.sessions += len(rows)
            into.events.update(str(r["wait_event"]) for r in rows)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)
    finally:
        await conn.close()


@dataclass
class Consumed:
    """One consuming side: from its first record consumed to all ``n`` committed (seen by
    :class:`GroupProgress`, as every side is), and what it cost meanwhile."""

    seconds: float
    cpu: Cpu | None = None


async def run_scorer(
    kafka: KafkaSettings, url: str, n: int, pg: PostgresServer | None = None
) -> Consumed:
    """The scorer in this process, timed from its first batch to all ``n`` committed; with
    ``pg``, its CPU (this process and its database's Postgres backends) as well."""
    group = f"bench-{uuid.uuid4().hex[:6]}"
    seen: list[FirstSeen] = []

    def wrap(handler: BatchHandler) -> FirstSeen:
        seen.append(first := FirstSeen(handler))
        return first

    runtime = scorer_service(kafka, url, group, wrap)
    meter = CpuMeter(pg, url, lambda: [os.getpid()]) if pg is not None else None
    async with GroupProgress(kafka, group, kafka.topic(Topic.RESPONSES)) as progress:
        await runtime.start()
        try:
            if meter is not None:
                await meter.start()
            ended = await wait_done(progress, n, timeout=consume_timeout(n))
            cpu = await meter.stop() if meter is not None else None
        finally:
            await runtime.stop()
    first = min(h.at for h in seen if h.at is not None)
    return Consumed(ended - first, cpu)


async def run_scorer_processes(
    srv: Servers, kafka: KafkaSettings, n: int, instances: int
) -> tuple[float, LockWaits]:
    """Events/s of ``instances`` scorer processes (``cxloop scorer``) in one consumer group
    on the first ``n`` answers of the backlog, from when all are ready (what they store from
    then, over the time it takes)."""
    url = await srv.database()
    group = f"bench-{uuid.uuid4().hex[:6]}"
    env = {
        "CXLOOP_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "CXLOOP_DATABASE_URL": url,
        "CXLOOP_SCORER_GROUP_ID": group,
    }
    names = ["scorer", *(f"scorer#{i}" for i in range(2, instances + 1))]
    waits, stop = LockWaits(), asyncio.Event()
    await checkpoint(srv.postgres)
    async with (
        GroupProgress(kafka, group, kafka.topic(Topic.RESPONSES)) as progress,
        stack(srv, services=names, **env),
    ):
        sampler = asyncio.create_task(sample_lock_waits(url, waits, stop))
        try:
            started, before = time.time(), await progress.committed()
            took = await wait_done(progress, n, timeout=consume_timeout(n)) - started
        finally:
            stop.set()
            await sampler
    print(
        f"  {instances} scorer process(es): {n - before:,} left when all were ready "
        f"({before:,} stored while they started), {(n - before) / took:,.0f}/s",
        flush=True,
    )
    return (n - before) / took, waits


def consumer_for(kafka: KafkaSettings, group: str | None = None) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        kafka.topic(Topic.RESPONSES),
        **kafka.to_aiokafka_params(),
        group_id=group or f"ref-{uuid.uuid4().hex[:6]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )


async def run_limit(kafka: KafkaSettings, url: str, n: int) -> Consumed:
    """The limit, timed as the scorer is (first record fetched to all ``n`` committed, seen
    by :class:`GroupProgress`): see :func:`limit_loop`."""
    group = f"ref-{uuid.uuid4().hex[:6]}"
    first: list[float] = []
    async with GroupProgress(kafka, group, kafka.topic(Topic.RESPONSES)) as progress:
        loop = asyncio.create_task(limit_loop(kafka, url, n, group, first))
        try:
            ended = await wait_done(progress, n, timeout=consume_timeout(n), alive=_alive(loop))
        finally:
            if not loop.done():
                loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
    return Consumed(ended - first[0])


def _alive(task: asyncio.Task[None]) -> Callable[[], None]:
    def check() -> None:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]

    return check


async def limit_loop(
    kafka: KafkaSettings, url: str, n: int, group: str, first: list[float]
) -> None:
    """Decode and COPY the raw rows (ledger and responses) and nothing else, pipelined as
    the scorer's loop is: the next batch is fetched and decoded while up to
    ``batches_in_flight`` earlier ones are stored, each in its own transaction, with the
    same batch size and wait; offsets are committed in order once a batch and every batch
    before it are stored. Appends to ``first`` when the first records were fetched."""
    settings = ScorerSettings()
    engine = create_async_engine(DatabaseSettings(url=url).sqlalchemy_url())
    consumer = consumer_for(kafka, group)
    await consumer.start()

    async def fetch() -> tuple[dict[TopicPartition, int], list[ResponseSubmitted]]:
        batches = await consumer.getmany(
            timeout_ms=settings.batch_timeout_ms, max_records=settings.batch_max_records
        )
        offsets = {tp: rs[-1].offset + 1 for tp, rs in batches.items() if rs}
        if offsets and not first:
            first.append(time.time())
        rows = [
            ResponseSubmitted.model_validate_json(r.value) for rs in batches.values() for r in rs
        ]
        return offsets, rows

    async def store(rows: list[ResponseSubmitted]) -> None:
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
                "responses", records=[response_record(e) for e in rows], columns=RESPONSE_COLUMNS
            )

    seen = 0
    pending: collections.deque[tuple[dict[TopicPartition, int], asyncio.Task[None]]] = (
        collections.deque()
    )
    upcoming = asyncio.create_task(fetch())
    try:
        while seen < n:
            while pending and pending[0][1].done():
                offsets, storing = pending.popleft()
                await storing
                await consumer.commit(offsets)
            waits: set[asyncio.Task[Any]] = {pending[0][1]} if pending else set()
            if len(pending) < settings.batches_in_flight:
                waits.add(upcoming)
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if upcoming.done() and len(pending) < settings.batches_in_flight:
                offsets, rows = upcoming.result()
                upcoming = asyncio.create_task(fetch())
                if rows:
                    pending.append((offsets, asyncio.create_task(store(rows))))
                    seen += len(rows)
        while pending:
            offsets, storing = pending.popleft()
            await storing
            await consumer.commit(offsets)
    finally:
        upcoming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await upcoming
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
    await checkpoint(srv.postgres)
    scorer = n / (await run_scorer(kafka, await srv.database(), n)).seconds
    print(f"  scorer {scorer:,.0f}/s", flush=True)
    await checkpoint(srv.postgres)
    limit = n / (await run_limit(kafka, await srv.database(), n)).seconds
    print(f"  limit  {limit:,.0f}/s", flush=True)
    # Enough for the rebalance and start-up to count little, few enough to keep the run short.
    scale_n = min(n, 300_000)
    one_process, one_waits = await run_scorer_processes(srv, kafka, scale_n, 1)
    two, two_waits = await run_scorer_processes(srv, kafka, scale_n, 2)
    print(f"  two scorers {two:,.0f}/s; {two_waits.describe()}", flush=True)
    await checkpoint(srv.postgres)
    naive = naive_n / await run_naive(kafka, await srv.database(), naive_n)
    print(f"  naive  {naive:,.0f}/s", flush=True)
    setup = f"{n:,} NPS answers over {spread_hours:g} h, from a pre-filled topic"
    partitions = next(t.partitions for t in TOPIC_SPECS if t.topic == Topic.RESPONSES)
    in_flight = ScorerSettings().batches_in_flight
    return [
        Result(
            "Scorer throughput vs bare bulk insert",
            scorer,
            "events/s",
            f"getmany + COPY of the raw rows only, {in_flight} batches in flight",
            limit,
            "≥ 0.8",
            scorer / limit >= 0.8,
            f"{setup}; both pipelined alike (the next batch fetched and decoded while "
            f"{in_flight} are stored); each timed from its first record consumed until the "
            "broker holds its group's commit of every record (polled every 0.2 s, the same "
            "check for both), after a CHECKPOINT",
        ),
        Result(
            "Two scorer processes in one group vs one",
            two,
            "events/s",
            "one process",
            one_process,
            "report the factor",
            None,
            f"the first {scale_n:,} of the {n:,} answers, each side timed from when its "
            "processes were all ready; bounded by the "
            f"topic's {partitions} partitions ({partitions // 2} each), the machine's "
            f"{os.cpu_count()} cores (shared with Kafka and Postgres) and row locks on shared "
            f"buckets: with two, {two_waits.describe()}; with one, {one_waits.describe()}",
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
