"""The broker is SIGKILLed during steady ingest and restarted: every answer the collector
accepted is counted exactly once, and nothing is accepted while the broker is dead."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from services.servers import ApacheKafkaBroker
from tests.processes import Load, Service, scalar, service_env, wait_for
from tests.resilience.conftest import topics_on

pytestmark = [pytest.mark.resilience, pytest.mark.apache_kafka]


async def test_answers_accepted_around_a_broker_kill_are_counted_exactly_once(
    own_kafka: ApacheKafkaBroker, database_url: str, api_key: str
) -> None:
    kafka = await topics_on(own_kafka.bootstrap_servers)
    env = service_env(
        bootstrap=own_kafka.bootstrap_servers,
        prefix=kafka.topic_prefix,
        database_url=database_url,
        api_key=api_key,
        CXLOOP_KAFKA_PRODUCE_TIMEOUT_SECONDS="2",
        CXLOOP_KAFKA_REQUEST_TIMEOUT_MS="3000",
    )
    collector = Service("collector", env, api_key)
    scorer = Service("scorer", env, api_key)
    await collector.start()
    await scorer.start()
    try:
        async with collector.client(timeout=15) as client:
            load = Load(client, rate=40)
            running = asyncio.create_task(load.run())
            await asyncio.sleep(4)
            await own_kafka.process.stop(signal.SIGKILL)
            killed_at = time.monotonic()
            await asyncio.sleep(8)
            restarting_at = time.monotonic()
            await own_kafka.start()
            await asyncio.sleep(8)
            load.stop()
            await running
            await load.retry_refused(timeout=90)

        during = [o for o in load.outcomes if o[0] >= killed_at and o[1] <= restarting_at]
        assert during, "the load kept going while the broker was dead"
        assert {status for *_, status in during} == {503}, "accepted while the broker was dead"
        accepted = load.accepted()
        assert len(accepted) == len(load.payloads), "every answer was accepted in the end"

        await wait_for(
            lambda: scalar(database_url, "SELECT coalesce(sum(n), 0) FROM score_buckets"),
            lambda n: n == len(accepted),
            timeout=90,
        )
        stored = await scalar(
            database_url,
            "SELECT count(*) FROM responses WHERE event_id = ANY(CAST(:ids AS uuid[]))",
            ids=sorted(accepted),
        )
        assert stored == len(accepted)
    finally:
        await scorer.stop()
        await collector.stop()
