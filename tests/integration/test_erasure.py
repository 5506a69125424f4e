"""One call on the collector erases a customer from every service, for good."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, cast

import httpx
import pytest
import sqlalchemy as sa
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.alerting import repository as alerting_repository
from services.alerting.app import create_app as create_alerting
from services.collector import metrics as collector_metrics
from services.collector.app import _purge, purge_invitations
from services.collector.app import create_app as create_collector
from services.collector.idempotency import IdempotencyStore
from services.migrations import upgrade
from services.scorer.app import create_app as create_scorer
from shared import erasure
from shared.apikeys import KeyKind, Scope, create_key
from shared.errors import ConfigError, PermanentError
from shared.events import CustomerErased, ResponseSubmitted, utcnow
from shared.kafka import decode, ensure_topics, topic_configs
from shared.privacy import Hasher, verify_key
from shared.settings import (
    AlertingSettings,
    AuthSettings,
    DatabaseSettings,
    KafkaSettings,
    PrivacySettings,
    ScorerSettings,
)
from shared.topics import Topic
from tests.builders import response_event, response_payload
from tests.conftest import CollectorFactory, unique
from tests.helpers import eventually, read_topic, serving
from tests.processes import TEST_HASH_KEY

PHONE = "+819012345678"
# Every column that holds a customer id, by table.
CUSTOMER_COLUMNS = {
    "responses": "customer_id",
    "tickets": "customer_id",
    "customer_activity": "customer_key",
    "customer_nps": "customer_key",
    "customer_latest_nps": "customer_key",
    "orders": "customer_id",
    "customer_revenue": "customer_id",
    "alerts": "customer_id",
    "sla_deadlines": "customer_id",
    "customer_touches": "customer_id",
    "invitations": "customer_id",
}

Consumers = Callable[[], AbstractAsyncContextManager[tuple[httpx.AsyncClient, httpx.AsyncClient]]]


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def consumers(
    kafka_settings: KafkaSettings,
    database_url: str,
    auth: AuthSettings,
    api_key: str,
    scorer_settings: ScorerSettings,
    alerting_settings: AlertingSettings,
) -> Consumers:
    """The scorer and the alerting service on this test's topics and database."""

    @asynccontextmanager
    async def run() -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
        database = DatabaseSettings(url=database_url)
        scorer = create_scorer(kafka_settings, database, auth, scorer_settings)
        alerting = create_alerting(kafka_settings, database, auth, alerting_settings)
        async with (
            serving(scorer, api_key, "scorer") as s,
            serving(alerting, api_key, "alerting") as a,
        ):
            yield s, a

    return run


async def rows_of(engine: AsyncEngine, customer_id: str) -> dict[str, int]:
    """How many rows of each table still carry ``customer_id``."""
    async with engine.connect() as conn:
        return {
            table: int(
                await conn.scalar(
                    sa.text(f"SELECT count(*) FROM {table} WHERE {column} = :c"),  # noqa: S608
                    {"c": customer_id},
                )
                or 0
            )
            for table, column in CUSTOMER_COLUMNS.items()
        }


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return await conn.scalar(sa.text(sql), params)


async def applied(engine: AsyncEngine, ledger: str) -> int:
    """How many events a service's ledger holds."""
    return int(await scalar(engine, f"SELECT count(*) FROM {ledger}"))  # noqa: S608


async def submit(collector: httpx.AsyncClient, customer: str, **overrides: Any) -> None:
    r = await collector.post(
        "/v1/responses",
        json=response_payload(
            **{"customer_id": customer, "score": 2, "comment": "call me, Jane", **overrides}
        ),
    )
    assert r.status_code in (200, 201, 202), r.text
    r = await collector.post(
        "/v1/events",
        json={
            "type": "ticket.created",
            "ticket_id": f"T-{uuid.uuid4().hex[:6]}",
            "customer_id": customer,
            "channel": "email",
            "priority": "urgent",
        },
    )
    assert r.status_code in (200, 201, 202), r.text


async def erase(collector: httpx.AsyncClient, customer: str) -> str:
    r = await collector.delete(f"/v1/customers/{customer}")
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "accepted"
    erasure_id: str = body["id"]
    return erasure_id


async def erasure_of(collector: httpx.AsyncClient, erasure_id: str) -> dict[str, Any]:
    r = await collector.get(f"/v1/erasures/{erasure_id}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def completed(collector: httpx.AsyncClient, erasure_id: str) -> dict[str, Any]:
    return await eventually(
        lambda: erasure_of(collector, erasure_id), lambda b: b["complete"], timeout=60
    )


class TestOneCallErasesEverywhere:
    async def test_every_service_erases_and_reports_it(
        self, collector_app: CollectorFactory, consumers: Consumers, engine: AsyncEngine
    ) -> None:
        customer = f"cust-{uuid.uuid4().hex[:8]}"
        async with collector_app() as collector, consumers() as (scorer, _):
            await submit(collector, customer)
            r = await collector.post(
                "/v1/invitations",
                json={
                    "customer_id": customer,
                    "phone": PHONE,
                    "metric": "nps",
                    "survey_type": "transactional",
                    "touchpoint": "checkout",
                    "channel": "sms",
                },
            )
            assert r.status_code == 201, r.text
            await eventually(
                lambda: rows_of(engine, customer),
                lambda n: all(
                    n[t]
                    for t in ("responses", "tickets", "alerts", "sla_deadlines", "customer_touches")
                ),
            )

            erasure_id = await erase(collector, customer)
            early = await erasure_of(collector, erasure_id)
            assert [s["service"] for s in early["services"]] == ["collector", "scorer", "alerting"]
            assert early["services"][0]["status"] == "complete"

            done = await completed(collector, erasure_id)
            assert {s["service"]: s["status"] for s in done["services"]} == {
                "collector": "complete",
                "scorer": "complete",
                "alerting": "complete",
            }
            assert await rows_of(engine, customer) == dict.fromkeys(CUSTOMER_COLUMNS, 0)
            comments = await scalar(engine, "SELECT count(comment) FROM alerts")
            assert comments == 0
            touches = await scalar(
                engine,
                "SELECT count(*) FROM customer_touches "
                "WHERE comment IS NOT NULL OR reasons <> '{}'",
            )
            assert touches == 0
            in_keys = await scalar(
                engine, "SELECT count(*) FROM alerts WHERE strpos(dedupe_key, :c) > 0", c=customer
            )
            assert in_keys == 0
            # The scorer's counts stay.
            r = await scorer.get("/v1/scores", params={"metric": "nps", "window": "30d"})
            assert r.json()["n"] == 1

    async def test_an_unknown_erasure_is_404(self, collector_app: CollectorFactory) -> None:
        async with collector_app() as collector:
            r = await collector.get(f"/v1/erasures/{uuid.uuid4()}")
        assert r.status_code == 404

    async def test_needs_the_erase_scope(
        self, collector_app: CollectorFactory, engine: AsyncEngine
    ) -> None:
        async with engine.begin() as conn:
            reader, _ = await create_key(
                conn, name="reader", kind=KeyKind.SECRET, scopes=[Scope.RESPONSES_WRITE]
            )
            eraser, _ = await create_key(
                conn, name="eraser", kind=KeyKind.SECRET, scopes=[Scope.CUSTOMERS_ERASE]
            )
        async with collector_app() as collector:
            headers = {"Authorization": f"Bearer {reader}"}
            r = await collector.delete("/v1/customers/c1", headers=headers)
            assert r.status_code == 403
            r = await collector.get(f"/v1/erasures/{uuid.uuid4()}", headers=headers)
            assert r.status_code == 403
            # The erase scope alone is enough for both (publishable keys: test_http_edge).
            headers = {"Authorization": f"Bearer {eraser}"}
            r = await collector.delete("/v1/customers/c1", headers=headers)
            assert r.status_code == 202, r.text
            r = await collector.get(f"/v1/erasures/{r.json()['id']}", headers=headers)
            assert r.status_code == 200, r.text

    async def test_the_event_follows_the_customers_events_on_each_topic(
        self, collector_app: CollectorFactory, kafka_settings: KafkaSettings
    ) -> None:
        customer = f"cust-{uuid.uuid4().hex[:8]}"
        async with collector_app() as collector:
            await submit(collector, customer)
            erasure_id = await erase(collector, customer)
        for topic in (Topic.RESPONSES, Topic.TOUCHPOINTS):
            records = await read_topic(kafka_settings, topic, 2)
            assert len(records) == 2
            first, last = records
            assert (first.partition, first.key) == (last.partition, customer.encode())
            assert first.offset < last.offset
            event = decode(ResponseSubmitted, last)
            assert isinstance(event, CustomerErased)
            assert (str(event.event_id), event.customer_id) == (erasure_id, customer)


class TestNothingComesBack:
    async def test_events_sent_before_the_delete_and_consumed_after(
        self, collector_app: CollectorFactory, consumers: Consumers, engine: AsyncEngine
    ) -> None:
        customer = f"cust-{uuid.uuid4().hex[:8]}"
        async with collector_app() as collector:
            # No consumer runs yet: these are still in Kafka when the DELETE is answered.
            await submit(collector, customer)
            erasure_id = await erase(collector, customer)
            async with consumers():
                await completed(collector, erasure_id)
                await eventually(
                    lambda: scalar(engine, "SELECT count(*) FROM scorer_applied_events"),
                    lambda n: n == 2,
                )
        assert await rows_of(engine, customer) == dict.fromkeys(CUSTOMER_COLUMNS, 0)
        assert await scalar(engine, "SELECT count(*) FROM alerts") == 1

    async def test_a_later_event_is_stored_pseudonymised(
        self, collector_app: CollectorFactory, consumers: Consumers, engine: AsyncEngine
    ) -> None:
        customer = f"cust-{uuid.uuid4().hex[:8]}"
        async with collector_app() as collector, consumers():
            await submit(collector, customer)
            await completed(collector, await erase(collector, customer))
            await submit(collector, customer, comment="it's Jane again")
            for ledger in ("scorer_applied_events", "alerting_applied_events"):
                await eventually(functools.partial(applied, engine, ledger), lambda n: n == 4)
        assert await rows_of(engine, customer) == dict.fromkeys(CUSTOMER_COLUMNS, 0)
        # (The first answer too, if the scorer met the erasure on the touchpoints topic first.)
        later = await scalar(engine, "SELECT min(customer_id) FROM responses")
        assert later.startswith("erased:")
        assert await scalar(engine, "SELECT count(comment) FROM responses") == 0
        # One pseudonym per service: the scorer's retention and tickets still link the periods.
        alerting = await scalar(engine, "SELECT customer_id FROM sla_deadlines LIMIT 1")
        assert alerting.startswith("erased:")
        for table, column in CUSTOMER_COLUMNS.items():
            if table != "invitations":
                alerting_tables = ("alerts", "sla_deadlines", "customer_touches")
                pseudonym = alerting if table in alerting_tables else later
                found = await scalar(
                    engine,
                    f"SELECT count(*) FROM {table} WHERE {column} <> :p",  # noqa: S608
                    p=pseudonym,
                )
                assert found == 0, table
        async with engine.connect() as conn:
            erased = (await conn.execute(sa.text("SELECT * FROM erased_customers"))).all()
        assert sorted(row.service for row in erased) == ["alerting", "collector", "scorer"]
        # Kept only as the keyed hash: never the id, nor a hash anyone could compute from it.
        keyed = Hasher(TEST_HASH_KEY.encode()).customer(customer)
        assert [bytes(row.id_hash) for row in erased] == [keyed] * 3
        assert keyed != hashlib.sha256(customer.encode()).digest()


class TestCollectorState:
    async def test_invitations_go_and_numbers_are_kept_only_as_keyed_hashes(
        self, collector_app: CollectorFactory, engine: AsyncEngine
    ) -> None:
        customer = f"cust-{uuid.uuid4().hex[:8]}"
        invitation = {
            "customer_id": customer,
            "phone": PHONE,
            "metric": "nps",
            "survey_type": "transactional",
            "touchpoint": "checkout",
            "channel": "sms",
        }
        async with collector_app() as collector:
            r = await collector.post("/v1/invitations", json=invitation)
            assert r.status_code == 201, r.text
            async with engine.begin() as conn:
                # As a STOP reply records it (services.collector.invitations.opt_out).
                await conn.execute(
                    sa.text("INSERT INTO sms_opt_outs (phone_hash, keyword) VALUES (:h, 'stop')"),
                    {"h": Hasher(TEST_HASH_KEY.encode()).phone(PHONE)},
                )
            await erase(collector, customer)
            assert await scalar(engine, "SELECT count(*) FROM invitations") == 0
            # The opt-out outlives erasure, as a hash: the number is never surveyed again.
            r = await collector.post(
                "/v1/invitations", json={**invitation, "customer_id": "someone-else"}
            )
            assert r.json()["status"] == "suppressed"
            assert r.json()["reason"] == "opted_out"
        async with engine.connect() as conn:
            dump = str((await conn.execute(sa.text("SELECT * FROM invitations"))).all())
            dump += str((await conn.execute(sa.text("SELECT * FROM sms_opt_outs"))).all())
        assert PHONE not in dump
        assert hashlib.sha256(PHONE.encode()).hexdigest() not in dump

    async def test_an_erased_customer_is_not_invited_again(
        self, collector_app: CollectorFactory, engine: AsyncEngine
    ) -> None:
        customer = f"cust-{uuid.uuid4().hex[:8]}"
        async with collector_app() as collector:
            await erase(collector, customer)
            r = await collector.post(
                "/v1/invitations",
                json={
                    "customer_id": customer,
                    "phone": PHONE,
                    "metric": "nps",
                    "survey_type": "transactional",
                    "touchpoint": "checkout",
                    "channel": "sms",
                },
            )
            # Their reply would carry their words back into the scorer, alerts and Slack.
            assert r.status_code == 422, r.text
            assert r.json()["field"] == "customer_id"
        assert await scalar(engine, "SELECT count(*) FROM invitations") == 0

    async def test_expired_invitations_are_purged(
        self, collector_app: CollectorFactory, engine: AsyncEngine
    ) -> None:
        async with collector_app() as collector:
            for customer in ("old", "new"):
                r = await collector.post(
                    "/v1/invitations",
                    json={
                        "customer_id": customer,
                        "phone": PHONE,
                        "metric": "nps",
                        "survey_type": "transactional",
                        "touchpoint": "checkout",
                        "channel": "sms",
                    },
                )
                assert r.status_code == 201, r.text
        async with engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "UPDATE invitations SET created_at = now() - interval '31 days' "
                    "WHERE customer_id = 'old'"
                )
            )
        assert await purge_invitations(engine, timedelta(days=30)) == 1
        assert await scalar(engine, "SELECT array_agg(customer_id) FROM invitations") == ["new"]

    async def test_a_failing_purge_is_logged_and_counted(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        stop = asyncio.Event()

        class Store:
            async def purge_expired(self) -> int:
                stop.set()
                raise RuntimeError(f"a driver error quoting a row: {PHONE}")

        failures = {
            what: collector_metrics.PURGE_FAILURES.labels(what=what)
            for what in ("idempotency_keys", "invitations")
        }
        before = {what: counter._value.get() for what, counter in failures.items()}
        unreachable = create_async_engine("postgresql+asyncpg://cxloop@127.0.0.1:1/cxloop")
        try:
            store = cast(IdempotencyStore, Store())
            await _purge(store, unreachable, timedelta(days=30), stop)
        finally:
            await unreachable.dispose()
        assert {w: c._value.get() - before[w] for w, c in failures.items()} == {
            "idempotency_keys": 1,
            "invitations": 1,
        }
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert [m.split(" failed")[0] for m in errors] == [
            "purging idempotency_keys",
            "purging invitations",
        ]
        assert not [m for m in errors if PHONE in m]


class TestKeyedHashes:
    async def test_a_caller_is_known_by_a_keyed_hash(
        self, collector_app: CollectorFactory, kafka_settings: KafkaSettings
    ) -> None:
        async with collector_app() as collector:
            r = await collector.post(
                "/v1/sources/ivr",
                json={"call_id": "call-1", "caller": PHONE, "answers": {"survey_result_1": "9"}},
            )
            assert r.status_code == 200, r.text
        (record,) = await read_topic(kafka_settings, Topic.RESPONSES, 1)
        event = decode(ResponseSubmitted, record)
        assert isinstance(event, ResponseSubmitted)
        customer_id = event.customer_id
        unkeyed = hashlib.sha256(PHONE.encode()).hexdigest()
        assert unkeyed[:24] not in customer_id
        assert customer_id == Hasher(TEST_HASH_KEY.encode()).caller(PHONE)
        assert customer_id != Hasher(b"another-secret-of-16+").caller(PHONE)

    async def test_migration_rekeys_stored_numbers_and_callers(
        self, empty_database_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        await asyncio.to_thread(upgrade, empty_database_url, "0012")
        legacy = "caller:" + hashlib.sha256(PHONE.encode()).hexdigest()[:24]
        engine = create_async_engine(empty_database_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    sa.text(
                        "INSERT INTO invitations (id, customer_id, phone, metric, scale, "
                        "survey_type, touchpoint, channel, status, expires_at) VALUES "
                        "(gen_random_uuid(), :c, :p, 'nps', 10, 'transactional', 'checkout', "
                        "'sms', 'open', now() + interval '1 day')"
                    ),
                    {"c": legacy, "p": PHONE},
                )
                await conn.execute(
                    sa.text("INSERT INTO sms_opt_outs (phone, keyword) VALUES (:p, 'stop')"),
                    {"p": PHONE},
                )
            monkeypatch.delenv("CXLOOP_PRIVACY_HASH_KEY")
            with pytest.raises(RuntimeError, match="CXLOOP_PRIVACY_HASH_KEY"):
                await asyncio.to_thread(upgrade, empty_database_url)
            key = "a-production-secret-0123456789"
            monkeypatch.setenv("CXLOOP_PRIVACY_HASH_KEY", key)
            sent: list[str] = []

            def log(*args: Any) -> None:
                sent.append(repr(args[3]))  # a statement's parameters, as a log would show

            sa.event.listen(sa.Engine, "before_cursor_execute", log)
            try:
                await asyncio.to_thread(upgrade, empty_database_url)
            finally:
                sa.event.remove(sa.Engine, "before_cursor_execute", log)
            hasher = Hasher(key.encode())
            async with engine.connect() as conn:
                row = (
                    await conn.execute(sa.text("SELECT customer_id, phone_hash FROM invitations"))
                ).one()
                opted_out = await conn.scalar(sa.text("SELECT phone_hash FROM sms_opt_outs"))
        finally:
            await engine.dispose()
        assert tuple(row) == (hasher.caller(PHONE), hasher.phone(PHONE))
        assert opted_out == hasher.phone(PHONE)
        # Neither the key (nor its padded forms) nor a stored number was a bind parameter.
        pads = [bytes(b ^ p for b in key.encode().ljust(64, b"\0")) for p in (0x36, 0x5C)]
        secrets = [key, PHONE, legacy[7:], *map(repr, pads)]
        assert sent
        assert not [s for s in sent if any(secret in s for secret in secrets)]


async def configs_of(settings: KafkaSettings, topic: Topic) -> dict[str, str]:
    """The topic's own configs; empty while the broker cannot describe it yet."""
    try:
        return await topic_configs(settings, settings.topic(topic))
    except KafkaError:
        return {}


class TestTopicRetention:
    async def test_set_on_new_and_existing_topics(
        self, kafka_settings: KafkaSettings, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        await ensure_topics(kafka_settings)
        # An operator's own config on a topic, set before: it must be kept.
        name = kafka_settings.topic(Topic.RESPONSES)
        admin = AIOKafkaAdminClient(**kafka_settings.to_aiokafka_params())
        await admin.start()
        try:
            await admin.alter_configs(
                [ConfigResource(ConfigResourceType.TOPIC, name, {"max.message.bytes": "2000000"})]
            )
        finally:
            await admin.close()
        await eventually(
            functools.partial(configs_of, kafka_settings, Topic.RESPONSES),
            lambda configs: configs.get("max.message.bytes") == "2000000",
        )
        await ensure_topics(kafka_settings, retention_ms=3_600_000)
        # A broker applies an altered config shortly after the controller accepted it; a
        # segment never outlives the retention.
        for topic in Topic:
            await eventually(
                functools.partial(configs_of, kafka_settings, topic),
                lambda configs: (
                    (configs.get("retention.ms"), configs.get("segment.ms"))
                    == ("3600000", "3600000")
                ),
            )
        kept = await configs_of(kafka_settings, Topic.RESPONSES)
        assert kept.get("max.message.bytes") == "2000000"

        fresh = kafka_settings.model_copy(update={"topic_prefix": f"{unique('r')}."})
        monkeypatch.setenv("CXLOOP_KAFKA_BOOTSTRAP_SERVERS", fresh.bootstrap_servers)
        monkeypatch.setenv("CXLOOP_KAFKA_TOPIC_PREFIX", fresh.topic_prefix)
        monkeypatch.setenv("CXLOOP_KAFKA_IDEMPOTENCE", str(fresh.idempotence).lower())
        from services.cli import main

        assert await asyncio.to_thread(main, ["topics"]) == 0
        await eventually(
            functools.partial(configs_of, fresh, Topic.RESPONSES),
            lambda configs: (
                (configs.get("retention.ms"), configs.get("segment.ms"))
                == (str(7 * 86_400_000), "86400000")
            ),
        )


def test_the_erasure_event_is_in_the_published_schemas() -> None:
    from shared.events import json_schemas

    assert "CustomerErased.v1.schema.json" in json_schemas()


class TestErasureLocks:
    """An erasure stalls only its own service's batches, and only while it is pending."""

    async def test_an_erasure_in_one_service_does_not_wait_for_the_other(
        self, engine: AsyncEngine
    ) -> None:
        async with engine.begin() as scorer, engine.begin() as alerting:
            await erasure.lock(scorer, "scorer", exclusive=True)
            # Refused at once instead of waiting when the lock is held (never a hang).
            await alerting.execute(sa.text("SET LOCAL lock_timeout = '5s'"))
            await erasure.lock(alerting, "alerting", exclusive=False)

    async def test_a_completed_erasure_redelivered_does_not_wait_for_batches_in_flight(
        self, engine: AsyncEngine
    ) -> None:
        event = CustomerErased(
            event_id=uuid.uuid4(), requested_at=utcnow(), customer_id=unique("cust")
        )
        async with engine.begin() as conn:
            await erasure.complete(conn, event.event_id, "scorer", event.requested_at)
        hasher = Hasher(TEST_HASH_KEY.encode())
        erased: list[str] = []

        async def apply(events: list[Any]) -> None:
            pass

        async def erase_one(customer_id: str, pseudonym: str) -> None:
            erased.append(customer_id)

        async with engine.begin() as in_flight, engine.begin() as redelivered:
            await erasure.lock(in_flight, "scorer", exclusive=False)
            await redelivered.execute(sa.text("SET LOCAL lock_timeout = '5s'"))
            await erasure.apply_in_order(redelivered, hasher, "scorer", [event], apply, erase_one)
        assert erased == []

    async def test_a_request_time_past_the_calendar_in_utc_is_refused_naming_it(
        self, engine: AsyncEngine
    ) -> None:
        # Valid in its own zone; the driver's OverflowError instead was taken for a bug, and
        # the batch retried for ever.
        late = datetime(9999, 12, 31, 23, 30, tzinfo=timezone(timedelta(hours=-1)))
        event = CustomerErased(event_id=uuid.uuid4(), requested_at=late, customer_id="c1")

        async def apply(events: list[Any]) -> None:
            pass

        async def erase_one(customer_id: str, pseudonym: str) -> None:
            pass

        hasher = Hasher(TEST_HASH_KEY.encode())
        with pytest.raises(PermanentError) as refused:
            async with engine.begin() as conn:
                await erasure.apply_in_order(conn, hasher, "scorer", [event], apply, erase_one)
        assert refused.value.field == "requested_at"

    async def test_a_batch_around_a_completed_erasure_is_applied_whole(
        self, engine: AsyncEngine
    ) -> None:
        """The copy of an erasure on the other customer topic, or a redelivery, splits
        nothing: the events apply in one call, in order, the erased customer's pseudonymised,
        so a batch takes its locks once, in their order."""
        gone, kept = unique("gone"), unique("kept")
        event = CustomerErased(event_id=uuid.uuid4(), requested_at=utcnow(), customer_id=gone)
        hasher = Hasher(TEST_HASH_KEY.encode())
        async with engine.begin() as conn:
            await erasure.complete(conn, event.event_id, "scorer", event.requested_at)
            pseudonym = await erasure.pseudonym_for(conn, hasher, "scorer", gone)
        before, after = response_event(customer_id=gone), response_event(customer_id=kept)
        calls: list[list[Any]] = []

        async def apply(events: list[Any]) -> None:
            calls.append(events)

        async def erase_one(customer_id: str, pseudonym: str) -> None:
            raise AssertionError("an erasure completed before is not erased again")

        async with engine.begin() as conn:
            await erasure.apply_in_order(
                conn, hasher, "scorer", [before, event, after], apply, erase_one
            )
        assert [[(e.event_id, e.customer_id) for e in call] for call in calls] == [
            [(before.event_id, pseudonym), (after.event_id, kept)]
        ]


async def test_a_customer_with_more_alerts_than_bind_parameters_is_erased(
    engine: AsyncEngine,
) -> None:
    customer = unique("many")
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO alerts (id, dedupe_key, rule, severity, status, customer_id, "
                "channel, reasons, event_id, occurrences, opened_at, last_seen_at, comment) "
                "SELECT gen_random_uuid(), 'detractor:' || :c || ':' || n, 'detractor', "
                "'high', 'resolved', :c, 'email', ARRAY['r'], gen_random_uuid(), 1, now(), "
                "now(), 'call me' FROM generate_series(1, 33000) AS n"
            ),
            {"c": customer},
        )
        await conn.execute(
            sa.text(
                "INSERT INTO alert_history (alert_id, actor, action, note) "
                "SELECT id, 'operator', 'resolve', 'Jane called back' FROM alerts "
                "WHERE customer_id = :c LIMIT 1"
            ),
            {"c": customer},
        )
    async with engine.begin() as conn:
        erased = await alerting_repository.erase_customer(conn, customer, f"erased:{customer}")
    assert erased == 33000
    notes = await scalar(
        engine,
        "SELECT count(h.note) FROM alert_history h JOIN alerts a ON a.id = h.alert_id "
        "WHERE a.customer_id = :p",
        p=f"erased:{customer}",
    )
    assert notes == 0


class TestThePrivacyKeyNeverChanges:
    async def test_a_service_under_another_key_refuses_to_start(
        self,
        kafka_settings: KafkaSettings,
        database_url: str,
        auth: AuthSettings,
        api_key: str,
        collector_app: CollectorFactory,
        scorer_settings: ScorerSettings,
        alerting_settings: AlertingSettings,
    ) -> None:
        # The database was migrated under the test key, and a service started with it.
        async with collector_app() as collector:
            assert (await collector.get("/v1/erasures/" + str(uuid.uuid4()))).status_code == 404
        other = PrivacySettings(hash_key="another-secret-of-16-chars")
        database = DatabaseSettings(url=database_url)
        for app in (
            create_collector(kafka_settings, database, auth, privacy=other),
            create_scorer(kafka_settings, database, auth, scorer_settings, privacy=other),
            create_alerting(kafka_settings, database, auth, alerting_settings, privacy=other),
        ):
            with pytest.raises(ConfigError, match="CXLOOP_PRIVACY_HASH_KEY"):
                async with serving(app, api_key, "service"):
                    pass

    async def test_the_first_start_stores_the_check_value(
        self, database_url: str, engine: AsyncEngine
    ) -> None:
        hasher = Hasher(TEST_HASH_KEY.encode())
        # Migrated under the key: its check value is there already.
        assert bytes(await scalar(engine, "SELECT check_value FROM privacy_key_check")) == (
            hasher.check_value()
        )
        async with engine.begin() as conn:
            await conn.execute(sa.text("DELETE FROM privacy_key_check"))
        await verify_key(engine, hasher)
        await verify_key(engine, hasher)
        with pytest.raises(ConfigError, match="CXLOOP_PRIVACY_HASH_KEY"):
            await verify_key(engine, Hasher(b"another-secret-of-16-chars"))


async def test_alerting_erases_history_notes_dedupe_keys_and_group_keys(
    engine: AsyncEngine,
) -> None:
    customer = unique("jane")
    async with engine.begin() as conn:
        alert_id = await conn.scalar(
            sa.text(
                "INSERT INTO alerts (id, dedupe_key, rule, severity, status, customer_id, "
                "channel, reasons, event_id, occurrences, opened_at, last_seen_at, comment, "
                "note) VALUES (gen_random_uuid(), 'detractor:' || :c || ':-', 'detractor', "
                "'high', 'open', :c, 'email', ARRAY['said: call Jane'], gen_random_uuid(), 1, "
                "now(), now(), 'call me', 'Jane was angry') RETURNING id"
            ),
            {"c": customer},
        )
        await conn.execute(
            sa.text(
                "INSERT INTO alert_history (alert_id, actor, action, note) "
                "VALUES (:a, 'operator', 'ack', 'Jane called back')"
            ),
            {"a": alert_id},
        )
        await conn.execute(
            sa.text(
                "INSERT INTO customer_touches (event_id, customer_id, kind, occurred_at, "
                "channel, source, touchpoint, metric, score, comment, reasons) VALUES "
                "(gen_random_uuid(), :c, 'answer', now(), 'email', 'api', 'checkout', 'nps', "
                "2, 'call me, Jane', ARRAY['price'])"
            ),
            {"c": customer},
        )
        await conn.execute(
            sa.text(
                "INSERT INTO notifications (id, alert_id, receiver, action, group_key) VALUES "
                "(gen_random_uuid(), :a, 'oncall', 'trigger', "
                "'0:oncall:customer_id=' || :c || ',rule=detractor#1')"
            ),
            {"a": alert_id, "c": customer},
        )
        # A silence made from the alert (the console ticks customer_id by default), and one
        # of someone else's that must stay as it was.
        await conn.execute(
            sa.text(
                "INSERT INTO silences (id, matchers, ends_at, created_by, comment, actor) VALUES "
                "(gen_random_uuid(), jsonb_build_object('rule', 'detractor', 'customer_id', "
                "CAST(:c AS text)), now() + interval '1 hour', 'hanako', 'Jane is on holiday', "
                "'hanako'), (gen_random_uuid(), jsonb_build_object('customer_id', 'someone'), "
                "now() + interval '1 hour', 'hanako', 'someone else', 'hanako')"
            ),
            {"c": customer},
        )
    pseudonym = f"erased:{uuid.uuid4()}"
    async with engine.begin() as conn:
        assert await alerting_repository.erase_customer(conn, customer, pseudonym) == 1
    async with engine.connect() as conn:
        alert = (
            await conn.execute(
                sa.text("SELECT dedupe_key, comment, note, reasons FROM alerts WHERE id = :a"),
                {"a": alert_id},
            )
        ).one()
        notes = await conn.scalar(
            sa.text("SELECT array_agg(note) FROM alert_history WHERE alert_id = :a"),
            {"a": alert_id},
        )
        group_key = await conn.scalar(
            sa.text("SELECT group_key FROM notifications WHERE alert_id = :a"), {"a": alert_id}
        )
        touches = (
            await conn.execute(
                sa.text("SELECT customer_id, comment, reasons, score FROM customer_touches")
            )
        ).all()
        silenced = (
            await conn.execute(sa.text("SELECT matchers, comment FROM silences ORDER BY comment"))
        ).all()
    assert tuple(alert) == (f"detractor:{pseudonym}:-", None, None, [])
    # The customer's recent answers are pseudonymised as their alerts are.
    assert [tuple(t) for t in touches] == [(pseudonym, None, [], 2)]
    assert notes == [None]
    assert group_key == f"0:oncall:customer_id={pseudonym},rule=detractor#1"
    # The silence still matches their (pseudonymised) alerts, and no longer names them.
    assert [tuple(s) for s in silenced] == [
        ({"rule": "detractor", "customer_id": pseudonym}, "(erased)"),
        ({"customer_id": "someone"}, "someone else"),
    ]
