"""The scorer counts every accepted response exactly once, whatever Kafka redelivers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from services.scorer.app import create_app
from services.scorer.consumer import BatchHandler
from shared.kafka import HEADER_DLQ_REASON, Decoded
from shared.settings import AuthSettings, DatabaseSettings, KafkaSettings, ScorerSettings
from shared.topics import Topic
from tests.builders import response_event
from tests.helpers import eventually, produce, read_topic, serving


@pytest.fixture
async def scorer(
    kafka_settings: KafkaSettings,
    database_url: str,
    auth: AuthSettings,
    api_key: str,
    scorer_settings: ScorerSettings,
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        kafka_settings,
        DatabaseSettings(url=database_url),
        auth,
        scorer_settings,
    )
    async with serving(app, api_key, "scorer") as client:
        yield client


async def nps(client: httpx.AsyncClient, **params: str) -> dict[str, object]:
    r = await client.get("/v1/scores", params={"metric": "nps", "window": "30d", **params})
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


@pytest.mark.smoke
class TestConsume:
    async def test_scores_follow_the_stream(
        self, scorer: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        events = [response_event(score=s) for s in (10, 9, 9, 8, 3)]
        await produce(kafka_settings, Topic.RESPONSES, events)
        body = await eventually(lambda: nps(scorer), lambda b: b["n"] == 5)
        assert body["score"] == pytest.approx(40.0)
        assert (body["promoters"], body["passives"], body["detractors"]) == (3, 1, 1)
        assert body["margin_of_error"] is not None

    async def test_resent_event_ids_count_once(
        self, scorer: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        events = [response_event(score=s) for s in (10, 2)]
        await produce(kafka_settings, Topic.RESPONSES, events + events + [events[0]])
        marker = response_event(score=7)
        await produce(kafka_settings, Topic.RESPONSES, [marker])
        body = await eventually(lambda: nps(scorer), lambda b: b["passives"] == 1)
        assert body["n"] == 3

    async def test_poison_goes_to_dead_letters_and_the_stream_moves_on(
        self, scorer: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        bad_version = response_event().model_dump(mode="json") | {"schema_version": 99}
        import json

        poison = [b"\xff\xfe not json", json.dumps(bad_version).encode()]
        await produce(
            kafka_settings, Topic.RESPONSES, [*poison, response_event(score=10)], key=b"same"
        )
        await eventually(lambda: nps(scorer), lambda b: b["n"] == 1)
        dead = await read_topic(kafka_settings, Topic.DEAD_LETTERS, 2)
        assert sorted(r.value for r in dead) == sorted(poison)
        reasons = [dict(r.headers)[HEADER_DLQ_REASON].decode() for r in dead]
        assert any("schema_version" in reason for reason in reasons)
        assert any("json" in reason.lower() for reason in reasons)


class TestFilters:
    async def test_segment_filters_and_windows(
        self, scorer: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        old = datetime.now(UTC) - timedelta(days=10)
        events = [
            response_event(score=10, channel="sms", segments={"location": "tokyo"}),
            response_event(score=0, channel="web", segments={"location": "osaka"}),
            response_event(score=10, channel="web", occurred_at=old),
        ]
        await produce(kafka_settings, Topic.RESPONSES, events)
        await eventually(lambda: nps(scorer), lambda b: b["n"] == 3)
        assert (await nps(scorer, channel="sms"))["score"] == pytest.approx(100.0)
        assert (await nps(scorer, location="osaka"))["score"] == pytest.approx(-100.0)
        assert (await nps(scorer, window="7d"))["n"] == 2

    async def test_csat_and_ces(
        self, scorer: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        events = [response_event(metric="csat", scale=5, score=s) for s in (5, 4, 2, 1)]
        events += [response_event(metric="ces", scale=7, score=s) for s in (7, 6, 2)]
        await produce(kafka_settings, Topic.RESPONSES, events)
        csat = await eventually(
            lambda: scorer.get("/v1/scores", params={"metric": "csat"}),
            lambda r: r.json()["n"] == 4,
        )
        assert csat.json()["score"] == pytest.approx(50.0)
        assert csat.json()["mean"] == pytest.approx(3.0)
        ces = await eventually(
            lambda: scorer.get("/v1/scores", params={"metric": "ces", "scale": 7}),
            lambda r: r.json()["n"] == 3,
        )
        assert ces.json()["score"] == pytest.approx(5.0)
        assert ces.json()["easy"] == 2
        no_scale = await scorer.get("/v1/scores", params={"metric": "ces"})
        assert no_scale.status_code == 422
        assert no_scale.json()["field"] == "scale"
        assert "is required for ces" in no_scale.json()["detail"]

    async def test_needs_a_key(self, scorer: httpx.AsyncClient) -> None:
        r = await scorer.get("/v1/scores", params={"metric": "nps"}, headers={"Authorization": ""})
        assert r.status_code == 401


class TestRedelivery:
    """The handler alone, applying the same batch as Kafka would after a crash."""

    async def test_a_redelivered_batch_changes_nothing(self, database_url: str) -> None:
        engine = create_async_engine(database_url)
        try:
            handler = BatchHandler(engine)
            events = [response_event(score=s) for s in (10, 6, 8)]
            batch = [Decoded(record=None, event=e) for e in events]
            await handler(batch)
            await handler(batch)
            await handler([*batch[1:], Decoded(record=None, event=response_event(score=9))])
            async with engine.connect() as conn:
                raw = await conn.scalar(sa.text("SELECT count(*) FROM responses"))
                n, promoters = (
                    await conn.execute(sa.text("SELECT sum(n), sum(promoters) FROM score_buckets"))
                ).one()
            assert (raw, n, promoters) == (4, 4, 2)
        finally:
            await engine.dispose()
