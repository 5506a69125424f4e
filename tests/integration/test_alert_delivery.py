"""Notifications reach real HTTP receivers exactly once, even when a receiver is down a while."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from standardwebhooks import Webhook
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
from tests.helpers import eventually, http_server, produce, stays

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@dataclass
class Receiver:
    """A webhook receiver that is down until ``down_until`` (monotonic), then verifies and acks."""

    down_until: float = 0.0
    attempts: Counter[str] = field(default_factory=Counter)
    delivered: Counter[str] = field(default_factory=Counter)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    by_id: dict[str, dict[str, Any]] = field(default_factory=dict)

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        msg_id = request.headers["webhook-id"]
        self.attempts[msg_id] += 1
        if time.monotonic() < self.down_until:
            return Response("down for maintenance", status_code=503, headers={"Retry-After": "1"})
        payload = Webhook(SECRET).verify(body, dict(request.headers))
        self.delivered[msg_id] += 1
        self.bodies.append(payload)
        self.by_id[msg_id] = payload
        return JSONResponse({"ok": True})

    async def gone(self, request: Request) -> Response:
        return Response("this hook was deleted", status_code=410)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    state = Receiver(down_until=time.monotonic() + 4)
    app = Starlette(
        routes=[
            Route("/hook", state.handle, methods=["POST"]),
            Route("/gone", state.gone, methods=["POST"]),
        ]
    )
    async with http_server(app, free_port()) as url:
        yield state, url


class TestDelivery:
    async def test_down_receiver_gets_each_notification_once_and_gone_ones_fail_visibly(
        self,
        receiver: tuple[Receiver, str],
        kafka_settings: KafkaSettings,
        alerting_with: AlertingFactory,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        state, url = receiver
        monkeypatch.setenv("TEST_HOOK_SECRET", SECRET)
        config = AlertingConfig.model_validate(
            {
                "receivers": [
                    {
                        "name": "oncall",
                        "type": "webhook",
                        "url": f"{url}/hook",
                        "secret_env": "TEST_HOOK_SECRET",
                    },
                    {"name": "old", "type": "webhook", "url": f"{url}/gone"},
                ],
                "routes": [{"receiver": "old", "continue": True}, {"receiver": "oncall"}],
            }
        )
        async with alerting_with(config) as client:
            await produce(
                kafka_settings,
                Topic.RESPONSES,
                [response_event(score=1, customer_id=f"c{i}") for i in range(3)],
            )
            await eventually(lambda: _sum(state.delivered), lambda n: n == 3, timeout=60)
            assert all(n == 1 for n in state.delivered.values())
            assert all(state.attempts[m] >= 2 for m in state.delivered), "it was down at first"
            assert {b["type"] for b in state.bodies} == {"alert.triggered"}

            alert_id = state.bodies[0]["data"]["alert"]["id"]
            r = await client.post(
                f"/v1/alerts/{alert_id}/resolve", json={"by": "sato", "note": "Called back."}
            )
            assert r.status_code == 200
            await eventually(lambda: _sum(state.delivered), lambda n: n == 4, timeout=30)
            assert state.bodies[-1]["type"] == "alert.resolved"
            assert state.bodies[-1]["data"]["alert"]["note"] == "Called back."
            await stays(lambda: _sum(state.delivered), lambda n: n == 4, seconds=3)

            listed = (await client.get(f"/v1/alerts/{alert_id}/notifications")).json()["items"]
            old = [n for n in listed if n["receiver"] == "old"]
            assert {n["status"] for n in old} == {"failed"}
            assert all(n["attempts"] == 1 and "HTTP 410" in n["last_error"] for n in old)
            oncall = [n for n in listed if n["receiver"] == "oncall"]
            assert {(n["action"], n["status"]) for n in oncall} == {
                ("trigger", "delivered"),
                ("resolve", "delivered"),
            }
        await_more = sum(state.delivered.values())
        assert await_more == 4


async def _sum(counter: Counter[str]) -> int:
    return sum(counter.values())


async def _heard(receiver: Receiver) -> list[tuple[str, str]]:
    """What a receiver was told, once per notification id (a repeated attempt of one
    notification is the same news): the (type, customer) of each, sorted."""
    return sorted((b["type"], b["data"]["alert"]["customer_id"]) for b in receiver.by_id.values())


async def _open(client: Any) -> list[dict[str, Any]]:
    r = await client.get("/v1/alerts", params={"status": "open"})
    items: list[dict[str, Any]] = r.json()["items"]
    return items


@pytest.fixture
async def up_receiver() -> AsyncIterator[tuple[Receiver, Receiver, str]]:
    oncall, pager = Receiver(), Receiver()
    app = Starlette(
        routes=[
            Route("/hook", oncall.handle, methods=["POST"]),
            Route("/pager", pager.handle, methods=["POST"]),
        ]
    )
    async with http_server(app, free_port()) as url:
        yield oncall, pager, url


class TestSilencesAndEscalation:
    async def test_silence_holds_back_and_unacknowledged_alerts_escalate(
        self,
        up_receiver: tuple[Receiver, Receiver, str],
        kafka_settings: KafkaSettings,
        alerting_with: AlertingFactory,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        oncall, pager, url = up_receiver
        monkeypatch.setenv("TEST_HOOK_SECRET", SECRET)
        hook = {"type": "webhook", "secret_env": "TEST_HOOK_SECRET"}
        config = AlertingConfig.model_validate(
            {
                "receivers": [
                    {"name": "oncall", "url": f"{url}/hook", **hook},
                    {"name": "pager", "url": f"{url}/pager", **hook},
                ],
                "routes": [{"receiver": "oncall"}],
                "escalation": {"after_minutes": 0.1, "receiver": "pager"},
            }
        )
        async with alerting_with(config, timer_interval_seconds=0.2) as client:
            r = await client.post(
                "/v1/silences",
                json={
                    "matchers": {"rule": "detractor", "channel": "web"},
                    "duration_minutes": 30,
                    "created_by": "sato",
                    "comment": "web survey bug; calling everyone",
                },
            )
            assert r.status_code == 201
            silence = r.json()
            await produce(
                kafka_settings,
                Topic.RESPONSES,
                [
                    response_event(score=1, customer_id="web-1", channel="web"),
                    response_event(score=1, customer_id="sms-1", channel="sms"),
                    response_event(score=1, customer_id="sms-2", channel="sms"),
                ],
            )
            # Acknowledged as soon as it is listed, well inside the six seconds to escalation.
            listed = await eventually(
                lambda: _open(client), lambda found: len(found) == 3, timeout=30
            )
            by_customer = {a["customer_id"]: a for a in listed}
            await client.post(f"/v1/alerts/{by_customer['sms-2']['id']}/ack", json={"by": "sato"})
            # Counted by notification id (a receiver may see an attempt again: at least once).
            # On-call hears of both SMS alerts, and of sms-2's acknowledgement; web-1 is held.
            expected = [
                ("alert.acknowledged", "sms-2"),
                ("alert.triggered", "sms-1"),
                ("alert.triggered", "sms-2"),
            ]
            await eventually(lambda: _heard(oncall), lambda h: h == expected, timeout=30)
            # Nobody acknowledged sms-1 (or the silenced web-1): the pager hears of sms-1 once;
            # acked sms-2 and silenced web-1 are never escalated (fifteen timer passes).
            sms_1 = [("alert.triggered", "sms-1")]
            await eventually(lambda: _heard(pager), lambda h: h == sms_1, timeout=30)
            await stays(lambda: _heard(pager), lambda h: h == sms_1, seconds=3)
            history = (await client.get(f"/v1/alerts/{by_customer['sms-1']['id']}/history")).json()[
                "items"
            ]
            assert history[-1]["action"] == "escalated"

            ended = await client.delete(f"/v1/silences/{silence['id']}")
            assert ended.json()["active"] is False
            assert (await client.get("/v1/silences")).json()["items"] == []
            await produce(
                kafka_settings,
                Topic.RESPONSES,
                [response_event(score=1, customer_id="web-2", channel="web")],
            )
            # The silence over, web-1 (still open) is announced after all, and so is its
            # escalation, held by the silence too; web-2 is announced as it opens.
            expected = sorted(
                [*expected, ("alert.triggered", "web-1"), ("alert.triggered", "web-2")]
            )
            await eventually(lambda: _heard(oncall), lambda h: h == expected, timeout=30)
            escalated = [*sms_1, ("alert.triggered", "web-1")]
            await eventually(lambda: _heard(pager), lambda h: h == escalated, timeout=30)
            await stays(lambda: _heard(oncall), lambda h: h == expected, seconds=1)

    async def test_silence_needs_one_end(
        self,
        kafka_settings: KafkaSettings,
        alerting_with: AlertingFactory,
    ) -> None:
        async with alerting_with() as client:
            r = await client.post(
                "/v1/silences",
                json={"matchers": {"rule": "detractor"}, "created_by": "x", "comment": "y"},
            )
            assert r.status_code == 422
            assert "exactly one of duration_minutes and ends_at" in r.json()["detail"]


class TestGrouping:
    async def test_a_burst_from_one_store_is_one_notification(
        self,
        up_receiver: tuple[Receiver, Receiver, str],
        kafka_settings: KafkaSettings,
        alerting_with: AlertingFactory,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        oncall, _, url = up_receiver
        monkeypatch.setenv("TEST_HOOK_SECRET", SECRET)
        config = AlertingConfig.model_validate(
            {
                "receivers": [
                    {
                        "name": "oncall",
                        "type": "webhook",
                        "url": f"{url}/hook",
                        "secret_env": "TEST_HOOK_SECRET",
                    }
                ],
                "routes": [
                    {"receiver": "oncall", "group_by": ["location"], "group_wait_seconds": 4}
                ],
            }
        )
        async with alerting_with(config):
            burst = [
                response_event(score=1, customer_id=f"t{i}", segments={"location": "tokyo"})
                for i in range(50)
            ]
            others = [
                response_event(score=2, customer_id=f"o{i}", segments={"location": "osaka"})
                for i in range(2)
            ]
            await produce(kafka_settings, Topic.RESPONSES, burst + others)
            await eventually(lambda: _sum(oncall.delivered), lambda n: n == 2, timeout=30)
            # Nothing more after the group wait: each group is one notification, sent once.
            await stays(lambda: _sum(oncall.delivered), lambda n: n == 2, seconds=5)
        sizes = sorted(len(b["data"]["alerts"]) for b in oncall.bodies)
        assert sizes == [2, 50]
        assert all(n == 1 for n in oncall.delivered.values())
