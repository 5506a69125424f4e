"""Idempotency keys belong to the caller that sent them, and name one request body.

Two callers that pick the same ``Idempotency-Key`` get two events; one caller reusing a key
for a different body gets 409, never a silent `duplicate`; a batch is matched item by item
by content, so a resend in another order maps each item to its own first result.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.collector.app import create_app
from services.collector.idempotency import Claim, IdempotencyStore, Verdict
from services.collector.service import Ingest
from services.migrations import downgrade, upgrade
from services.servers import free_port
from shared.apikeys import KeyKind, Scope, create_key
from shared.events import ResponseSubmitted
from shared.settings import AuthSettings, DatabaseSettings, KafkaSettings, PrivacySettings
from shared.topics import Topic
from tests.builders import response_payload
from tests.conftest import CollectorFactory
from tests.helpers import backend_pid, eventually, read_topic, serving

# How event ids were derived before they were keyed: anyone could compute them.
OLD_NAMESPACE = uuid.UUID("0f3c2f0e-8a3b-5d2e-9c41-6b7e2d1a9f00")


@pytest.fixture
async def collector(collector_app: CollectorFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with collector_app() as client:
        await eventually(lambda: client.get("/readyz"), lambda r: r.status_code == 200)
        yield client


@pytest.fixture
async def two_keys(database_url: str) -> tuple[dict[str, str], dict[str, str]]:
    """Authorization headers of two secret keys that may both submit responses."""
    engine = create_async_engine(database_url)
    headers = []
    try:
        async with engine.begin() as conn:
            for name in ("shop-a", "shop-b"):
                key, _ = await create_key(
                    conn, name=name, kind=KeyKind.SECRET, scopes=[Scope.RESPONSES_WRITE]
                )
                headers.append({"Authorization": f"Bearer {key}"})
    finally:
        await engine.dispose()
    return headers[0], headers[1]


async def produced(settings: KafkaSettings, expected: int) -> list[ResponseSubmitted]:
    """Every response on the topic, waiting a while for one more than ``expected``."""
    records = await read_topic(settings, Topic.RESPONSES, expected + 1, timeout=5)
    return [ResponseSubmitted.model_validate_json(r.value) for r in records]


def keyed(key: str, auth: dict[str, str] | None = None) -> dict[str, str]:
    return {"Idempotency-Key": key, **(auth or {})}


async def run_sql(database_url: str, statement: str) -> None:
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text(statement))
    finally:
        await engine.dispose()


async def pass_the_window(database_url: str, how: str) -> None:
    """Every claim's window passes: expired in place, or purged."""
    if how == "expired":
        await run_sql(
            database_url, "UPDATE collector_idempotency SET expires_at = now() - interval '1 s'"
        )
    else:
        await run_sql(database_url, "DELETE FROM collector_idempotency")


async def forget_the_key(database_url: str) -> None:
    """Drop the database's privacy key check value, as on a database never started."""
    await run_sql(database_url, "DELETE FROM privacy_key_check")


@pytest.fixture
async def broker_down(database_url: str, api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    """A collector on the same database whose broker never answers."""
    app = create_app(
        kafka=KafkaSettings(
            bootstrap_servers=f"127.0.0.1:{free_port()}", produce_timeout_seconds=1
        ),
        database=DatabaseSettings(url=database_url),
        auth=AuthSettings(api_key=api_key),
    )
    async with serving(app, api_key, "collector-down") as client:
        yield client


class TestCallerScope:
    async def test_two_keys_with_one_idempotency_key_and_different_bodies_are_two_events(
        self,
        collector: httpx.AsyncClient,
        kafka_settings: KafkaSettings,
        two_keys: tuple[dict[str, str], dict[str, str]],
    ) -> None:
        a, b = two_keys
        key = "order-1042"  # both shops number their orders the same way
        first = await collector.post(
            "/v1/responses", json=response_payload(customer_id="a-1"), headers=keyed(key, a)
        )
        second = await collector.post(
            "/v1/responses", json=response_payload(customer_id="b-1"), headers=keyed(key, b)
        )
        assert (first.status_code, first.json()["status"]) == (202, "accepted")
        assert (second.status_code, second.json()["status"]) == (202, "accepted")
        assert first.json()["event_id"] != second.json()["event_id"]
        events = await produced(kafka_settings, 2)
        assert sorted(e.customer_id for e in events) == ["a-1", "b-1"]

    async def test_a_resent_batch_of_another_key_does_not_answer_for_the_first(
        self,
        collector: httpx.AsyncClient,
        kafka_settings: KafkaSettings,
        two_keys: tuple[dict[str, str], dict[str, str]],
    ) -> None:
        # The same item under the same key from two callers: the item's claim is the caller's.
        a, b = two_keys
        batch = {"items": [response_payload(customer_id="c-1")]}
        ra = await collector.post("/v1/responses/batch", json=batch, headers=keyed("k", a))
        rb = await collector.post("/v1/responses/batch", json=batch, headers=keyed("k", b))
        assert ra.json()["accepted"] == rb.json()["accepted"] == 1
        assert ra.json()["results"][0]["event_id"] != rb.json()["results"][0]["event_id"]
        assert len(await produced(kafka_settings, 2)) == 2


class TestBodyFingerprint:
    async def test_same_key_and_different_body_is_409_naming_the_key(
        self, collector: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        headers = keyed("order-7")
        first = await collector.post(
            "/v1/responses", json=response_payload(score=9), headers=headers
        )
        changed = await collector.post(
            "/v1/responses", json=response_payload(score=2), headers=headers
        )
        assert first.json()["status"] == "accepted"
        assert changed.status_code == 409
        body = changed.json()
        assert body["error"] == "conflict"
        assert body["field"] == "Idempotency-Key"
        assert "'order-7'" in body["detail"]
        assert [e.score for e in await produced(kafka_settings, 1)] == [9]

    async def test_the_conflict_holds_on_every_resend(self, collector: httpx.AsyncClient) -> None:
        headers = keyed(f"order-{uuid.uuid4()}")
        await collector.post("/v1/responses", json=response_payload(score=9), headers=headers)
        for _ in range(2):
            r = await collector.post(
                "/v1/responses", json=response_payload(score=2), headers=headers
            )
            assert r.status_code == 409

    async def test_same_key_and_same_body_in_another_key_order_is_one_duplicate_event(
        self, collector: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        payload = response_payload(comment="遅い", reasons=["wait_time"])
        headers = {**keyed("order-8"), "Content-Type": "application/json"}
        first = await collector.post("/v1/responses", content=json.dumps(payload), headers=headers)
        reordered = json.dumps(dict(reversed(list(payload.items()))), indent=2)
        again = await collector.post("/v1/responses", content=reordered, headers=headers)
        assert first.json()["status"] == "accepted"
        assert again.status_code == 202
        assert again.json() == {"event_id": first.json()["event_id"], "status": "duplicate"}
        assert len(await produced(kafka_settings, 1)) == 1

    async def test_concurrent_requests_with_one_key_and_different_bodies_store_one(
        self, collector: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        # Sent at once, they share one claim round trip: the first claims the key.
        headers = keyed("order-10")
        answers = await asyncio.gather(
            *(
                collector.post("/v1/responses", json=response_payload(score=s), headers=headers)
                for s in (9, 1, 5)
            )
        )
        assert sorted(a.status_code for a in answers) == [202, 409, 409]
        (accepted,) = [a for a in answers if a.status_code == 202]
        (event,) = await produced(kafka_settings, 1)
        assert str(event.event_id) == accepted.json()["event_id"]

    async def test_concurrent_requests_to_two_collectors_with_one_key_store_one(
        self, collector_app: CollectorFactory, kafka_settings: KafkaSettings
    ) -> None:
        headers = keyed("order-11")
        async with collector_app() as one, collector_app() as two:
            answers = await asyncio.gather(
                one.post("/v1/responses", json=response_payload(score=9), headers=headers),
                two.post("/v1/responses", json=response_payload(score=1), headers=headers),
            )
        assert sorted(a.status_code for a in answers) == [202, 409]
        assert len(await produced(kafka_settings, 1)) == 1

    async def test_the_same_instant_in_another_offset_is_a_duplicate(
        self, collector: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        headers = keyed("order-12")
        tokyo = response_payload(occurred_at="2026-11-22T10:15:00+09:00")
        utc = {**tokyo, "occurred_at": "2026-11-22T01:15:00Z"}
        first = await collector.post("/v1/responses", json=tokyo, headers=headers)
        again = await collector.post("/v1/responses", json=utc, headers=headers)
        assert again.status_code == 202, again.text
        assert again.json() == {"event_id": first.json()["event_id"], "status": "duplicate"}
        assert len(await produced(kafka_settings, 1)) == 1

    async def test_an_event_id_reused_for_a_different_body_is_409_naming_it(
        self, collector: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        event_id = str(uuid.uuid4())
        first = await collector.post(
            "/v1/responses", json=response_payload(event_id=event_id, score=9)
        )
        changed = await collector.post(
            "/v1/responses", json=response_payload(event_id=event_id, score=1)
        )
        assert first.json()["status"] == "accepted"
        assert changed.status_code == 409
        assert changed.json()["field"] == "event_id"
        assert event_id in changed.json()["detail"]
        assert len(await produced(kafka_settings, 1)) == 1

    async def test_a_key_used_for_a_batch_conflicts_as_a_single_request(
        self, collector: httpx.AsyncClient
    ) -> None:
        headers = keyed("order-9")
        item = response_payload()
        batch = await collector.post("/v1/responses/batch", json={"items": [item]}, headers=headers)
        assert batch.json()["accepted"] == 1
        single = await collector.post("/v1/responses", json=item, headers=headers)
        assert single.status_code == 409


def statuses(answer: dict[str, Any]) -> list[str]:
    return [r["status"] for r in answer["results"]]


class TestBatches:
    async def test_a_batch_resent_in_another_order_maps_each_item_to_its_own_first_result(
        self, collector: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        twin = response_payload(customer_id="c-twin", score=10)
        items = [
            response_payload(customer_id="c-1", score=1),
            twin,
            response_payload(customer_id="c-2", score=2),
            dict(twin),  # the same answer twice is two answers
        ]
        headers = keyed("upload-2026-12-01")
        first = (
            await collector.post("/v1/responses/batch", json={"items": items}, headers=headers)
        ).json()
        assert statuses(first) == ["accepted"] * 4
        id_of = {i: r["event_id"] for i, r in enumerate(first["results"])}
        assert len(set(id_of.values())) == 4

        order = [2, 3, 0, 1]
        again = (
            await collector.post(
                "/v1/responses/batch", json={"items": [items[i] for i in order]}, headers=headers
            )
        ).json()
        assert statuses(again) == ["duplicate"] * 4
        # Each item keeps its own event id; of two identical answers, the first resent takes
        # the first's.
        assert [r["event_id"] for r in again["results"]] == [id_of[i] for i in (2, 1, 0, 3)]
        events = await produced(kafka_settings, 4)
        assert sorted(str(e.event_id) for e in events) == sorted(id_of.values())

    async def test_a_batch_resent_with_one_item_changed_conflicts_on_that_item(
        self, collector: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        items = [response_payload(customer_id=f"c-{i}", score=i) for i in range(3)]
        headers = keyed("upload-2026-12-02")
        first = (
            await collector.post("/v1/responses/batch", json={"items": items}, headers=headers)
        ).json()
        assert first["accepted"] == 3
        changed = [items[0], {**items[1], "score": 10}, items[2]]
        for _ in range(2):  # and again: a conflict is not remembered as a claim
            r = await collector.post(
                "/v1/responses/batch", json={"items": changed}, headers=headers
            )
            assert r.status_code == 200
            answer = r.json()
            assert statuses(answer) == ["duplicate", "conflict", "duplicate"]
            assert (answer["duplicate"], answer["conflict"]) == (2, 1)
            (error,) = answer["results"][1]["errors"]
            assert error["field"] == "Idempotency-Key"
            assert "'upload-2026-12-02'" in error["detail"]
            assert answer["results"][0]["event_id"] == first["results"][0]["event_id"]
        events = await produced(kafka_settings, 3)
        assert sorted(e.score for e in events) == [0, 1, 2]


class TestEventIds:
    async def test_an_event_id_computed_from_a_key_does_not_take_the_keys_event(
        self, collector: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        # Someone sends first the id they expect the operator's next key to name.
        guessed = uuid.uuid5(OLD_NAMESPACE, "api:operator:order-2001")
        squat = await collector.post(
            "/v1/responses", json=response_payload(event_id=str(guessed), score=0)
        )
        real = await collector.post(
            "/v1/responses", json=response_payload(score=10), headers=keyed("order-2001")
        )
        assert squat.json()["status"] == real.json()["status"] == "accepted"
        assert real.json()["event_id"] != str(guessed)
        assert uuid.UUID(real.json()["event_id"]).version == 8
        events = await produced(kafka_settings, 2)
        assert len({e.event_id for e in events}) == 2  # the consumers count both

    async def test_a_version_8_event_id_from_a_client_is_refused_naming_event_id(
        self, collector: httpx.AsyncClient
    ) -> None:
        keyed_answer = await collector.post(
            "/v1/responses", json=response_payload(), headers=keyed("order-2002")
        )
        derived = keyed_answer.json()["event_id"]
        single = await collector.post("/v1/responses", json=response_payload(event_id=derived))
        assert single.status_code == 422
        assert single.json()["field"] == "event_id"
        batch = await collector.post(
            "/v1/responses/batch", json={"items": [response_payload(event_id=derived)]}
        )
        (result,) = batch.json()["results"]
        assert result["status"] == "rejected"
        assert [e["field"] for e in result["errors"]] == ["event_id"]

    async def test_another_secret_derives_other_event_ids(
        self, database_url: str, kafka_settings: KafkaSettings, api_key: str
    ) -> None:
        def app(secret: str) -> Any:
            return create_app(
                kafka=kafka_settings,
                database=DatabaseSettings(url=database_url),
                auth=AuthSettings(api_key=api_key),
                privacy=PrivacySettings(hash_key=secret),
            )

        ids = []
        for secret in ("one-secret-of-16-chars", "another-secret-of-16-chars"):
            # As on a fresh database: a service refuses a key other than the database's.
            await forget_the_key(database_url)
            async with serving(app(secret), api_key, "collector") as client:
                r = await client.post(
                    "/v1/responses", json=response_payload(), headers=keyed("order-2003")
                )
                ids.append(r.json()["event_id"])
            await pass_the_window(database_url, "deleted")
        assert ids[0] != ids[1]


class TestAfterTheWindow:
    @pytest.mark.parametrize("how", ["expired", "deleted"])
    async def test_a_repeat_after_the_window_carries_the_event_id_of_its_caller(
        self,
        collector: httpx.AsyncClient,
        database_url: str,
        two_keys: tuple[dict[str, str], dict[str, str]],
        how: str,
    ) -> None:
        # Produced again once its claim is gone (purged, or Postgres unreachable), a repeat
        # still names the caller's first event, so the consumers drop it.
        a, b = two_keys
        payload = response_payload()
        first = await collector.post("/v1/responses", json=payload, headers=keyed("k-1", a))
        await pass_the_window(database_url, how)
        again = await collector.post("/v1/responses", json=payload, headers=keyed("k-1", a))
        other = await collector.post("/v1/responses", json=payload, headers=keyed("k-1", b))
        assert again.json() == {"event_id": first.json()["event_id"], "status": "accepted"}
        assert other.json()["event_id"] != first.json()["event_id"]

    @pytest.mark.parametrize("how", ["expired", "deleted"])
    async def test_the_key_with_a_different_body_after_the_window_is_a_new_event(
        self,
        collector: httpx.AsyncClient,
        database_url: str,
        kafka_settings: KafkaSettings,
        how: str,
    ) -> None:
        headers = keyed("order-3001")
        first = await collector.post(
            "/v1/responses", json=response_payload(score=9), headers=headers
        )
        await pass_the_window(database_url, how)
        other = await collector.post(
            "/v1/responses", json=response_payload(score=3), headers=headers
        )
        assert other.json()["status"] == "accepted"
        assert other.json()["event_id"] != first.json()["event_id"]
        events = await produced(kafka_settings, 2)
        assert sorted(e.score for e in events) == [3, 9]
        assert len({e.event_id for e in events}) == 2  # the consumers count both
        # Within the new window, the first body is now the different one.
        back = await collector.post(
            "/v1/responses", json=response_payload(score=9), headers=headers
        )
        assert back.status_code == 409

    async def test_two_collectors_reclaiming_an_expired_key_with_different_bodies_store_one(
        self, collector_app: CollectorFactory, database_url: str, kafka_settings: KafkaSettings
    ) -> None:
        headers = keyed("order-3002")
        async with collector_app() as one, collector_app() as two:
            first = await one.post("/v1/responses", json=response_payload(), headers=headers)
            assert first.status_code == 202
            await pass_the_window(database_url, "expired")
            answers = await asyncio.gather(
                one.post("/v1/responses", json=response_payload(score=1), headers=headers),
                two.post("/v1/responses", json=response_payload(score=2), headers=headers),
            )
        assert sorted(a.status_code for a in answers) == [202, 409]
        assert len(await produced(kafka_settings, 2)) == 2

    async def test_a_collector_that_reclaimed_an_expired_key_holds_it_against_another(
        self,
        collector: httpx.AsyncClient,
        broker_down: httpx.AsyncClient,
        database_url: str,
        kafka_settings: KafkaSettings,
    ) -> None:
        headers = keyed("order-3003")
        first = await collector.post(
            "/v1/responses", json=response_payload(score=5), headers=headers
        )
        assert first.json()["status"] == "accepted"
        await pass_the_window(database_url, "expired")
        # One collector re-claims the key for a new body, and its broker misses it.
        body = response_payload(score=1)
        missed = await broker_down.post("/v1/responses", json=body, headers=headers)
        assert missed.status_code == 503
        other = await collector.post(
            "/v1/responses", json=response_payload(score=2), headers=headers
        )
        assert other.status_code == 409
        retry = await collector.post("/v1/responses", json=body, headers=headers)
        assert retry.json() == {"event_id": missed.json()["event_id"], "status": "accepted"}
        assert sorted(e.score for e in await produced(kafka_settings, 2)) == [1, 5]

    async def test_a_reclaim_holds_the_key_against_another_collector(
        self, database_url: str
    ) -> None:
        # Two collectors (two engines): the first re-claims an expired key for one body and
        # has not produced it yet; the second, with another body, must find the key taken.
        window = timedelta(days=1)
        engines = [create_async_engine(database_url) for _ in range(2)]
        one, two = (IdempotencyStore(engine, window) for engine in engines)
        key = f"api:key:operator:{uuid.uuid4()}"

        def claim(body: bytes) -> list[Claim]:
            return [Claim(key, uuid.uuid4(), body * 32)]

        try:
            assert await one.claim(claim(b"a")) == [Verdict.NEW]
            await one.mark_produced([key])
            await pass_the_window(database_url, "expired")
            assert await one.claim(claim(b"b")) == [Verdict.NEW]
            assert await two.claim(claim(b"c")) == [Verdict.CONFLICT]
        finally:
            for engine in engines:
                await engine.dispose()


class TestUnacknowledgedBatches:
    async def test_a_batch_the_broker_missed_is_not_refused_when_resent_as_claims_expire(
        self,
        collector: httpx.AsyncClient,
        broker_down: httpx.AsyncClient,
        database_url: str,
        kafka_settings: KafkaSettings,
    ) -> None:
        items = [response_payload(customer_id=f"c-{i}") for i in range(2)]
        headers = keyed("upload-2026-12-03")
        missed = await broker_down.post(
            "/v1/responses/batch", json={"items": items}, headers=headers
        )
        assert missed.status_code == 503
        # Time passes until the earliest claims expire.
        await run_sql(
            database_url,
            "UPDATE collector_idempotency SET expires_at = now() - interval '1 s' "
            "WHERE expires_at < (SELECT max(expires_at) FROM collector_idempotency)",
        )
        resent = await collector.post("/v1/responses/batch", json={"items": items}, headers=headers)
        assert resent.status_code == 200
        assert statuses(resent.json()) == ["accepted", "accepted"]
        assert len(await produced(kafka_settings, 2)) == 2

    async def test_an_item_past_its_own_window_is_not_refused_while_its_batch_lives(
        self, collector: httpx.AsyncClient, database_url: str, kafka_settings: KafkaSettings
    ) -> None:
        items = [response_payload(customer_id=f"c-{i}") for i in range(2)]
        headers = keyed("upload-2026-12-04")
        first = await collector.post("/v1/responses/batch", json={"items": items}, headers=headers)
        assert first.json()["accepted"] == 2
        await run_sql(
            database_url,
            "UPDATE collector_idempotency SET expires_at = now() - interval '1 s' "
            "WHERE key LIKE '%:item:%'",
        )
        for expected in ("accepted", "duplicate"):  # and its claim was kept
            again = await collector.post(
                "/v1/responses/batch", json={"items": items}, headers=headers
            )
            assert statuses(again.json()) == [expected, expected]
            ids = [r["event_id"] for r in again.json()["results"]]
            assert ids == [r["event_id"] for r in first.json()["results"]]

    async def test_a_keyed_batch_that_stored_nothing_takes_a_corrected_resend(
        self, collector: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        produce = Ingest._produce

        async def nothing_acked(self: Ingest, events: Any) -> list[bool]:
            return [False] * len(events)

        monkeypatch.setattr(Ingest, "_produce", nothing_acked)
        items = [response_payload(customer_id=f"c-{i}") for i in range(2)]
        headers = keyed("upload-2026-12-05")
        missed = await collector.post("/v1/responses/batch", json={"items": items}, headers=headers)
        assert missed.status_code == 503
        monkeypatch.setattr(Ingest, "_produce", produce)
        corrected = [items[0], {**items[1], "score": 3}]
        resent = await collector.post(
            "/v1/responses/batch", json={"items": corrected}, headers=headers
        )
        assert resent.status_code == 200, resent.text
        assert statuses(resent.json()) == ["accepted", "accepted"]
        again = await collector.post(
            "/v1/responses/batch", json={"items": corrected}, headers=headers
        )
        assert statuses(again.json()) == ["duplicate", "duplicate"]


class TestMigration:
    async def test_0010_keeps_event_id_and_vendor_claims_and_drops_unscoped_api_keys(
        self, empty_database_url: str
    ) -> None:
        insert = sa.text(
            "INSERT INTO collector_idempotency (key, event_id, produced, expires_at) "
            "SELECT k, gen_random_uuid(), true, now() + interval '1 day' "
            "FROM unnest(CAST(:keys AS text[])) k"
        )
        keys = sa.text("SELECT key FROM collector_idempotency ORDER BY key")
        kept = [f"api:event:{uuid.uuid4()}", "twilio:key:SM0001", "zendesk:key:ev-1"]
        await asyncio.to_thread(upgrade, empty_database_url, "0009")
        engine = create_async_engine(empty_database_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(insert, {"keys": [*kept, "api:key:order-1", "api:key:b:0"]})
            await asyncio.to_thread(upgrade, empty_database_url, "0010")
            async with engine.begin() as conn:
                assert list(await conn.scalars(keys)) == sorted(kept)
                await conn.execute(insert, {"keys": ["api:key:operator:k", "api:item:op:ab:0:k"]})
            await asyncio.to_thread(downgrade, empty_database_url, "0009")
            async with engine.begin() as conn:
                assert list(await conn.scalars(keys)) == sorted(kept)
        finally:
            await engine.dispose()


class TestAFullPool:
    async def test_claims_marks_and_releases_treat_a_full_pool_as_postgres_down(
        self, database_url: str
    ) -> None:
        engine = create_async_engine(database_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
        store = IdempotencyStore(engine, timedelta(days=1))
        try:
            async with engine.connect():  # the pool's only connection
                claim = Claim(f"api:key:t:{uuid.uuid4()}", uuid.uuid4(), b"f")
                async with asyncio.timeout(5):
                    assert await store.claim([claim]) == [Verdict.NEW]
                    await store.mark_produced([claim.key])
                    await store.unclaim([claim.key])
                    assert not await store.was_produced(claim.key)
        finally:
            await engine.dispose()

    async def test_keys_that_cannot_be_settled_after_the_ack_still_answer_2xx(
        self,
        collector: httpx.AsyncClient,
        kafka_settings: KafkaSettings,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        async def broken(self: IdempotencyStore, *args: Any) -> None:
            raise RuntimeError("key=upload-secret")

        monkeypatch.setattr(IdempotencyStore, "mark_produced", broken)
        before = (
            REGISTRY.get_sample_value("cxloop_collector_keys_unsettled_total", {"what": "mark"})
            or 0.0
        )
        r = await collector.post(
            "/v1/responses", json=response_payload(), headers=keyed("upload-secret")
        )
        assert r.status_code == 202, r.text
        after = REGISTRY.get_sample_value("cxloop_collector_keys_unsettled_total", {"what": "mark"})
        assert after == before + 1
        assert "upload-secret" not in caplog.text
        assert len(await produced(kafka_settings, 1)) == 1


async def refuse(engine: AsyncEngine, sqlstate: str, operation: str) -> None:
    """Have Postgres refuse ``operation`` on collector_idempotency with ``sqlstate``, as it
    would itself while it restarts (57P03), or for a fault of ours (XX000)."""
    async with engine.begin() as conn:
        await conn.exec_driver_sql(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"RAISE EXCEPTION 'refused %', NEW.key USING ERRCODE = '{sqlstate}'; END $$"
        )
        await conn.exec_driver_sql(
            f"CREATE TRIGGER refuse BEFORE {operation} ON collector_idempotency "
            "FOR EACH ROW EXECUTE FUNCTION refuse()"
        )


class TestTheDriversOwnErrors:
    """Claims and marks go straight to asyncpg, whose errors SQLAlchemy does not wrap."""

    async def test_a_claim_postgres_cannot_serve_now_is_produced_without_the_check(
        self, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
    ) -> None:
        store = IdempotencyStore(engine, timedelta(days=1))
        await refuse(engine, "57P03", "INSERT")
        claim = Claim(f"api:key:t:{uuid.uuid4()}", uuid.uuid4(), b"f")
        assert await store.claim([claim]) == [Verdict.NEW]
        assert "without the duplicate check" in caplog.text
        assert claim.key not in caplog.text

    async def test_a_mark_postgres_cannot_serve_now_leaves_the_answer_standing(
        self, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
    ) -> None:
        store = IdempotencyStore(engine, timedelta(days=1))
        claim = Claim(f"api:key:t:{uuid.uuid4()}", uuid.uuid4(), b"f")
        assert await store.claim([claim]) == [Verdict.NEW]
        await refuse(engine, "57P03", "UPDATE")
        await store.mark_produced([claim.key])  # does not raise
        assert "could not record 1 produced key(s)" in caplog.text
        assert not await store.was_produced(claim.key)

    async def test_any_other_refusal_is_raised_and_the_connection_serves_again(
        self, database_url: str
    ) -> None:
        engine = create_async_engine(database_url, pool_size=1, max_overflow=0)
        store = IdempotencyStore(engine, timedelta(days=1))
        try:
            await refuse(engine, "XX000", "INSERT")
            before = await backend_pid(engine)
            claim = Claim(f"api:key:t:{uuid.uuid4()}", uuid.uuid4(), b"f")
            with pytest.raises(asyncpg.InternalServerError):
                await store.claim([claim])
            assert await backend_pid(engine) != before  # closed, not pooled again
            async with engine.begin() as conn:
                await conn.exec_driver_sql("DROP TRIGGER refuse ON collector_idempotency")
            assert await store.claim([claim]) == [Verdict.NEW]
            await store.mark_produced([claim.key])
            assert await store.claim([claim]) == [Verdict.DUPLICATE]
        finally:
            await engine.dispose()

    async def test_a_pooled_connection_its_server_closed_is_replaced(
        self, database_url: str, engine: AsyncEngine
    ) -> None:
        store = IdempotencyStore(engine, timedelta(days=1))
        other = create_async_engine(database_url, poolclass=sa.pool.NullPool)
        try:
            claim = Claim(f"api:key:t:{uuid.uuid4()}", uuid.uuid4(), b"f")
            assert await store.claim([claim]) == [Verdict.NEW]
            await store.mark_produced([claim.key])
            async with other.connect() as conn:
                killed = await conn.scalar(
                    sa.text(
                        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) "
                        "FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
            assert (killed or 0) >= 1

            # A claim on the closed connection is produced without the check at worst;
            # the next is served by a new one and finds the key produced.
            async def verdicts() -> list[Verdict]:
                return await store.claim([claim])

            await eventually(verdicts, lambda v: v == [Verdict.DUPLICATE], timeout=10)
        finally:
            await other.dispose()

    async def test_a_claim_whose_connection_is_cut_mid_statement_is_produced(
        self, database_url: str, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
    ) -> None:
        store = IdempotencyStore(engine, timedelta(days=1))
        other = create_async_engine(database_url, poolclass=sa.pool.NullPool)
        key = f"api:key:t:{uuid.uuid4()}"
        try:
            async with other.connect() as holder, other.connect() as killer:
                # Another collector's claim of the key, not yet committed: ours waits on it.
                await holder.execute(
                    sa.text(
                        "INSERT INTO collector_idempotency (key, event_id, produced, expires_at) "
                        "VALUES (:key, gen_random_uuid(), false, now() + interval '1 day')"
                    ),
                    {"key": key},
                )
                claiming = asyncio.create_task(store.claim([Claim(key, uuid.uuid4(), b"f")]))

                async def waiting() -> list[int]:
                    rows = await killer.execute(
                        sa.text(
                            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                            " AND wait_event_type = 'Lock'"
                        )
                    )
                    pids = [int(pid) for (pid,) in rows]
                    await killer.commit()  # pg_stat_activity is read once per transaction
                    return pids

                (pid,) = await eventually(waiting, lambda pids: len(pids) == 1, timeout=10)
                await killer.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                assert await claiming == [Verdict.NEW]
                await holder.rollback()
            assert "without the duplicate check" in caplog.text
            assert key not in caplog.text
        finally:
            await other.dispose()
