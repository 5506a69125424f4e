"""An alert receiver is down for two minutes: when it returns, each notification queued
meanwhile arrives exactly once, within a minute."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.alerting.config import AlertingConfig
from services.servers import free_port
from shared.settings import KafkaSettings
from shared.topics import Topic
from tests.builders import response_event
from tests.conftest import AlertingFactory
from tests.helpers import eventually, http_server, produce

pytestmark = [pytest.mark.resilience]

DOWN_FOR = 120.0


class Receiver:
    def __init__(self, down_until: float) -> None:
        self.down_until = down_until
        self.refused = 0
        self.delivered: Counter[str] = Counter()
        self.customers: Counter[str] = Counter()

    async def hook(self, request: Request) -> Response:
        if time.monotonic() < self.down_until:
            self.refused += 1
            return Response("maintenance", status_code=503)
        body = await request.json()
        self.delivered[request.headers["webhook-id"]] += 1
        self.customers[body["data"]["alert"]["customer_id"]] += 1
        return JSONResponse({"ok": True})


async def test_notifications_queued_during_a_two_minute_outage_arrive_once_each(
    kafka_settings: KafkaSettings, alerting_with: AlertingFactory
) -> None:
    receiver = Receiver(time.monotonic() + DOWN_FOR)
    app = Starlette(routes=[Route("/hook", receiver.hook, methods=["POST"])])
    async with http_server(app, free_port()) as url:
        config = AlertingConfig.model_validate(
            {
                "receivers": [{"name": "oncall", "type": "webhook", "url": f"{url}/hook"}],
                "routes": [{"receiver": "oncall"}],
            }
        )
        async with alerting_with(config):
            customers = [f"cust-{i}" for i in range(25)]
            await produce(
                kafka_settings,
                Topic.RESPONSES,
                [response_event(score=1, customer_id=c) for c in customers],
            )
            await eventually(lambda: _value(receiver.refused), lambda n: n >= 25, timeout=30)
            await eventually(
                lambda: _value(sum(receiver.customers.values())),
                lambda n: n >= len(customers),
                timeout=DOWN_FOR + 75,
                interval=1,
            )
            back_at = receiver.down_until
            assert time.monotonic() - back_at < 75, "delivered within a minute of its return"
            await asyncio.sleep(5)  # a redelivery would arrive now
    assert sorted(receiver.customers) == sorted(customers)
    assert set(receiver.customers.values()) == {1}, "a notification arrived twice"
    assert set(receiver.delivered.values()) == {1}


async def _value(n: int) -> int:
    return n
