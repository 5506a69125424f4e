"""The alerting service is SIGKILLed mid-batch and mid-delivery, again and again, during a
backlog of detractors: each detractor still opens exactly one alert, and each alert's
notification reaches the receiver at least once, always under one stable webhook-id."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections import defaultdict
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.servers import free_port
from shared.settings import KafkaSettings
from shared.topics import Topic
from tests.builders import response_event
from tests.helpers import http_server, produce
from tests.processes import Service, scalar, wait_for

pytestmark = [pytest.mark.resilience, pytest.mark.apache_kafka]

DETRACTORS = 400


class Receiver:
    """Answers 2xx after a short while, so that kills land while requests are in flight."""

    def __init__(self) -> None:
        self.ids_by_customer: defaultdict[str, set[str]] = defaultdict(set)
        self.deliveries: defaultdict[str, int] = defaultdict(int)

    async def hook(self, request: Request) -> Response:
        body = await request.json()
        await asyncio.sleep(0.05)
        webhook_id = request.headers["webhook-id"]
        self.deliveries[webhook_id] += 1
        self.ids_by_customer[body["data"]["alert"]["customer_id"]].add(webhook_id)
        return JSONResponse({"ok": True})


async def test_one_alert_per_detractor_and_each_notification_at_least_once_under_one_id(
    stack_env: dict[str, str],
    kafka_settings: KafkaSettings,
    database_url: str,
    api_key: str,
    tmp_path: Path,
) -> None:
    rng = random.Random(11)
    detractors = [
        response_event(score=rng.randint(0, 6), customer_id=f"cust-{i}") for i in range(DETRACTORS)
    ]
    promoters = [response_event(score=10, customer_id=f"fan-{i}") for i in range(100)]
    stream = detractors + promoters
    # Redeliveries, as a producer retrying after a lost ack would add.
    redelivered = rng.sample(stream, len(stream) // 10)
    events = stream + redelivered
    rng.shuffle(events)
    await produce(kafka_settings, Topic.RESPONSES, events)

    receiver = Receiver()
    app = Starlette(routes=[Route("/hook", receiver.hook, methods=["POST"])])
    async with http_server(app, free_port()) as url:
        config = tmp_path / "alerting.yaml"
        # JSON is YAML.
        config.write_text(
            json.dumps(
                {
                    "receivers": [{"name": "oncall", "type": "webhook", "url": f"{url}/hook"}],
                    "routes": [{"receiver": "oncall"}],
                }
            )
        )
        env = stack_env | {
            "CXLOOP_ALERTING_CONFIG_PATH": str(config),
            "CXLOOP_ALERTING_BATCH_MAX_RECORDS": "10",
        }

        crashing = Path(__file__).with_name("crashing_alerting.py")
        crashes = [
            ("transaction", 3),
            ("batch", 2),
            ("delivery", 3),
            ("transaction", 1),
            ("batch", 5),
            ("delivery", 1),
        ]
        for at, after in crashes:
            alerting = Service(
                "alerting", env | {"CRASH_AT": at, "CRASH_AFTER": str(after)}, api_key
            )
            alerting.argv = (str(crashing),)
            with contextlib.suppress(RuntimeError):  # it may die before it ever answers
                await alerting.start(ready=False)
            assert alerting.process is not None
            # 137 is its own exit: it reached the point named and died there.
            assert await asyncio.wait_for(alerting.process.wait(), 90) == 137, at

        for _ in range(3):
            alerting = Service("alerting", env, api_key)
            await alerting.start()
            await asyncio.sleep(rng.uniform(0.3, 1.5))
            await alerting.kill()

        alerting = Service("alerting", env, api_key)
        await alerting.start()
        try:
            applied = "SELECT count(*) FROM alerting_applied_events"
            await wait_for(
                lambda: scalar(database_url, applied), lambda n: n == len(stream), timeout=120
            )
            # Every event is applied, so every notification is queued: wait for them to go out.
            undelivered = "SELECT count(*) FROM notifications WHERE status <> 'delivered'"
            await wait_for(lambda: scalar(database_url, undelivered), lambda n: n == 0, timeout=120)
            alerts = await _rows(database_url, "SELECT customer_id, occurrences FROM alerts")
            notifications = await scalar(database_url, "SELECT count(*) FROM notifications")
        finally:
            await alerting.stop()

    customers = {e.customer_id for e in detractors}
    opened = [customer for customer, _ in alerts]
    assert customers - set(opened) == set(), "a detractor without an alert"
    assert sorted(opened) == sorted(customers), "an alert too many"
    assert {occurrences for _, occurrences in alerts} == {1}, "a redelivery counted again"
    assert notifications == DETRACTORS
    assert customers - set(receiver.ids_by_customer) == set(), "an alert never notified"
    resent_under_new_ids = {c: ids for c, ids in receiver.ids_by_customer.items() if len(ids) > 1}
    assert resent_under_new_ids == {}, "a notification was resent under another id"
    assert len(receiver.deliveries) == DETRACTORS
    # The kills after a receiver's 2xx, before the record, were resent: at least once.
    assert max(receiver.deliveries.values()) >= 2


async def _rows(database_url: str, sql: str) -> list[tuple[str, int]]:
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            return [(str(a), int(b)) for a, b in await conn.execute(sa.text(sql))]
    finally:
        await engine.dispose()
