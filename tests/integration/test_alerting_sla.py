"""SLA timers: an alert fires when a deadline passes with no event, once, on any instance."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from services.alerting.app import create_app
from shared.events import TouchpointEvent
from shared.settings import (
    AlertingSettings,
    AuthSettings,
    DatabaseSettings,
    KafkaSettings,
    SlaSettings,
)
from shared.topics import Topic
from tests.builders import response_event
from tests.helpers import eventually, produce, serving, stays

# Deadlines a few seconds long, so the test can watch them pass.
SLA = SlaSettings(
    first_response_minutes={"urgent": 0.05, "normal": 600},
    resolution_minutes={"urgent": 0.1, "normal": 6000},
)

Factory = Callable[[str], AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def alerting_app(
    kafka_settings: KafkaSettings,
    database_url: str,
    auth: AuthSettings,
    api_key: str,
    alerting_settings: AlertingSettings,
) -> Factory:
    settings = alerting_settings.model_copy(update={"timer_interval_seconds": 0.2})

    def make(name: str) -> AbstractAsyncContextManager[httpx.AsyncClient]:
        app = create_app(kafka_settings, DatabaseSettings(url=database_url), auth, settings, SLA)
        return serving(app, api_key, name)

    return make


@pytest.fixture
async def alerting(alerting_app: Factory) -> AsyncIterator[httpx.AsyncClient]:
    async with alerting_app("alerting") as client:
        yield client


def ticket(
    kind: str, ticket_id: str, at: datetime, priority: str | None = "urgent"
) -> TouchpointEvent:
    return TouchpointEvent.model_validate(
        {
            "event_id": uuid.uuid4(),
            "occurred_at": at,
            "received_at": at,
            "source": "zendesk",
            "channel": "email",
            "customer_id": f"cust-{ticket_id}",
            "type": kind,
            "ticket_id": ticket_id,
            "priority": priority,
        }
    )


async def alerts(client: httpx.AsyncClient, **params: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (await client.get("/v1/alerts", params=params)).json()["items"]
    return items


class TestTimers:
    async def test_fires_on_time_with_no_further_event(
        self, alerting: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        now = datetime.now(UTC)
        await produce(
            kafka_settings,
            Topic.TOUCHPOINTS,
            [
                ticket("ticket.created", "SLOW", now),
                ticket("ticket.created", "QUICK", now),
                ticket("ticket.agent_replied", "QUICK", now + timedelta(seconds=1)),
                # Out of order: the reply arrives before the creation it follows.
                ticket("ticket.agent_replied", "EARLY", now + timedelta(seconds=1)),
                ticket("ticket.created", "EARLY", now),
            ],
        )
        deadline = now + timedelta(minutes=0.05)
        (alert,) = await eventually(
            lambda: alerts(alerting, rule="slow_first_response"), lambda a: len(a) >= 1, timeout=20
        )
        assert (alert["ticket_id"], alert["severity"], alert["status"]) == (
            "SLOW",
            "critical",
            "open",
        )
        opened = datetime.fromisoformat(alert["opened_at"])
        assert opened >= deadline
        assert opened - deadline < timedelta(seconds=5), "the timer fired late"
        await eventually(
            lambda: alerts(alerting, rule="slow_resolution"), lambda a: len(a) == 3, timeout=20
        )
        # Ten timer passes later, each deadline has still fired once.
        await stays(
            lambda: alerts(alerting, limit="500"),
            lambda a: (
                sorted(x["rule"] for x in a) == ["slow_first_response"] + ["slow_resolution"] * 3
            ),
            seconds=2,
        )

    async def test_resolving_the_ticket_resolves_its_slow_alerts(
        self, alerting: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        now = datetime.now(UTC)
        await produce(kafka_settings, Topic.TOUCHPOINTS, [ticket("ticket.created", "R", now)])
        await eventually(lambda: alerts(alerting, status="open"), lambda a: len(a) == 2, timeout=20)
        await produce(
            kafka_settings, Topic.TOUCHPOINTS, [ticket("ticket.resolved", "R", datetime.now(UTC))]
        )
        done = await eventually(
            lambda: alerts(alerting, status="resolved"), lambda a: len(a) == 2, timeout=20
        )
        history = (await alerting.get(f"/v1/alerts/{done[0]['id']}/history")).json()["items"]
        assert history[-1]["action"] == "auto_resolved"
        assert history[-1]["note"] == "the ticket was resolved"


class TestTwoInstances:
    async def test_no_duplicate_alerts(
        self, alerting_app: Factory, kafka_settings: KafkaSettings
    ) -> None:
        now = datetime.now(UTC)
        tickets = [ticket("ticket.created", f"T{i}", now) for i in range(30)]
        detractors = [
            response_event(score=2, customer_id=f"d{i % 10}", ticket_id=f"X{i % 10}")
            for i in range(40)
        ]
        async with AsyncExitStack() as stack:
            one = await stack.enter_async_context(alerting_app("alerting-1"))
            await stack.enter_async_context(alerting_app("alerting-2"))
            await produce(kafka_settings, Topic.TOUCHPOINTS, tickets)
            await produce(kafka_settings, Topic.RESPONSES, detractors + detractors[:10])
            everything = await eventually(
                lambda: alerts(one, limit="500"), lambda a: len(a) >= 70, timeout=40
            )
            # Both instances run the timers: no deadline fires twice, on either.
            await stays(lambda: alerts(one, limit="500"), lambda a: len(a) == 70, seconds=3)
        keys = [a["dedupe_key"] for a in everything]
        assert len(keys) == len(set(keys))
        by_rule = {
            r: sum(a["rule"] == r for a in everything)
            for r in ("detractor", "slow_first_response", "slow_resolution")
        }
        assert by_rule == {"detractor": 10, "slow_first_response": 30, "slow_resolution": 30}
        folded = [a for a in everything if a["rule"] == "detractor"]
        assert sum(a["occurrences"] for a in folded) == 40
