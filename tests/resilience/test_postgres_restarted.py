"""Postgres is shut down hard and restarted under load: the scorer and alerting recover by
themselves, and every accepted answer is counted and every detractor alerted exactly once."""

from __future__ import annotations

import asyncio
import signal

import pytest

from services.servers import LocalPostgres
from shared.settings import KafkaSettings
from tests.harness.backends import KafkaServer
from tests.processes import Load, Service, scalar, service_env, wait_for
from tests.resilience.conftest import migrated

pytestmark = [pytest.mark.resilience, pytest.mark.apache_kafka]


async def test_services_recover_from_a_postgres_restart_and_lose_nothing(
    kafka: KafkaServer, kafka_settings: KafkaSettings, own_postgres: LocalPostgres, api_key: str
) -> None:
    database_url = await migrated(own_postgres)
    env = service_env(
        bootstrap=kafka.bootstrap_servers,
        prefix=kafka_settings.topic_prefix,
        database_url=database_url,
        api_key=api_key,
        CXLOOP_KAFKA_IDEMPOTENCE=str(kafka.supports_idempotence).lower(),
    )
    services = [Service(name, env, api_key) for name in ("collector", "scorer", "alerting")]
    for service in services:
        await service.start()
    collector, scorer, alerting = services
    try:
        async with collector.client(timeout=15) as client:
            load = Load(client, rate=30, detractor_every=5)
            running = asyncio.create_task(load.run())
            await asyncio.sleep(5)
            # Immediate shutdown: no checkpoint, crash recovery on the way back up.
            await own_postgres.process.stop(signal.SIGQUIT)
            await asyncio.sleep(5)
            await own_postgres.start()
            await asyncio.sleep(8)
            load.stop()
            await running
            await load.retry_refused(timeout=60)

        accepted = load.accepted()
        assert len(accepted) == len(load.payloads)
        detractors = {i for i in accepted if load.payloads[i]["score"] <= 6}
        assert detractors
        await wait_for(
            lambda: scalar(database_url, "SELECT coalesce(sum(n), 0) FROM score_buckets"),
            lambda n: n == len(accepted),
            timeout=90,
        )
        await wait_for(
            lambda: scalar(database_url, "SELECT count(*) FROM alerts"),
            lambda n: n == len(detractors),
            timeout=60,
        )
        await asyncio.sleep(2)  # a late double count would show now
        assert await scalar(database_url, "SELECT sum(n) FROM score_buckets") == len(accepted)
        assert await scalar(database_url, "SELECT count(*) FROM alerts") == len(detractors)
        for service in (scorer, alerting):
            async with service.client() as c:
                assert (await c.get("/readyz")).status_code == 200, f"{service.name} recovered"
    finally:
        for service in reversed(services):
            await service.stop()
