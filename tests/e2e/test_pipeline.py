"""The three services as separate processes, driven over HTTP the way a user would."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from services.servers import ServerProcess, free_port
from shared.settings import KafkaSettings
from tests.builders import response_payload
from tests.harness.backends import KafkaServer
from tests.helpers import eventually
from tests.metric_names import offered, used_by_deploy
from tests.processes import TEST_HASH_KEY

pytestmark = pytest.mark.smoke


@dataclass
class Stack:
    collector: httpx.AsyncClient
    scorer: httpx.AsyncClient
    alerting: httpx.AsyncClient


@pytest.fixture
async def stack(
    kafka: KafkaServer, kafka_settings: KafkaSettings, database_url: str, api_key: str
) -> AsyncIterator[Stack]:
    ports = {name: free_port() for name in ("collector", "scorer", "alerting")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXLOOP_")}
    env |= {
        "CXLOOP_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "CXLOOP_KAFKA_TOPIC_PREFIX": kafka_settings.topic_prefix,
        "CXLOOP_KAFKA_IDEMPOTENCE": str(kafka.supports_idempotence).lower(),
        "CXLOOP_DATABASE_URL": database_url,
        "CXLOOP_API_KEY": api_key,
        "CXLOOP_PRIVACY_HASH_KEY": TEST_HASH_KEY,
        "CXLOOP_SCORER_GROUP_ID": f"scorer-{uuid.uuid4().hex[:8]}",
        "CXLOOP_ALERTING_GROUP_ID": f"alerting-{uuid.uuid4().hex[:8]}",
        "CXLOOP_SCORER_SESSION_TIMEOUT_MS": "6000",
        "CXLOOP_ALERTING_SESSION_TIMEOUT_MS": "6000",
        "CXLOOP_SCORER_HEARTBEAT_INTERVAL_MS": "500",
        "CXLOOP_ALERTING_HEARTBEAT_INTERVAL_MS": "500",
        **{f"CXLOOP_{name.upper()}_PORT": str(port) for name, port in ports.items()},
    }
    processes = [ServerProcess(name, sink=None) for name in ports]
    clients: dict[str, httpx.AsyncClient] = {}
    try:
        for process in processes:
            await process.spawn(sys.executable, "-m", "services.cli", process.name, env=env)
        for name, port in ports.items():
            clients[name] = httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}",
                headers={"Authorization": f"Bearer {api_key}"},
                timeout=10,
            )
            await eventually(functools.partial(_ready, clients[name]), bool, timeout=60)
        yield Stack(**clients)
    finally:
        for client in clients.values():
            await client.aclose()
        await asyncio.gather(*(p.stop() for p in processes))
        for process in processes:
            # uvicorn re-raises SIGTERM once shutdown is complete, so -SIGTERM is a clean exit.
            assert process.proc is not None
            assert process.proc.returncode in (0, -signal.SIGTERM), process.tail[-20:]
            assert any("Application shutdown complete" in line for line in process.tail)


async def _ready(client: httpx.AsyncClient) -> bool:
    try:
        return (await client.get("/readyz")).status_code == 200
    except httpx.TransportError:
        return False


async def get_json(client: httpx.AsyncClient, path: str, **params: Any) -> Any:
    r = await client.get(path, params=params)
    assert r.status_code == 200, r.text
    return r.json()


async def metric_value(client: httpx.AsyncClient, name: str) -> float:
    text = (await client.get("/metrics")).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


class TestPipeline:
    async def test_three_answers_one_detractor_alert_and_resends_change_nothing(
        self, stack: Stack
    ) -> None:
        answers = [
            response_payload(event_id=str(uuid.uuid4()), score=10, customer_id="a"),
            response_payload(event_id=str(uuid.uuid4()), score=9, customer_id="b"),
            response_payload(
                event_id=str(uuid.uuid4()), score=2, customer_id="c", comment="待ち時間が長すぎる"
            ),
        ]
        for answer in answers:
            r = await stack.collector.post("/v1/responses", json=answer)
            assert r.status_code == 202, r.text
            assert r.json() == {"event_id": answer["event_id"], "status": "accepted"}

        score = await eventually(
            lambda: get_json(stack.scorer, "/v1/scores", metric="nps", window="30d"),
            lambda s: s["n"] == 3,
            timeout=20,
        )
        assert score["score"] == pytest.approx(100 * (2 - 1) / 3)
        assert (score["promoters"], score["passives"], score["detractors"]) == (2, 0, 1)
        alerts = await eventually(
            lambda: get_json(stack.alerting, "/v1/alerts", status="open"),
            lambda a: len(a["items"]) == 1,
            timeout=20,
        )
        (alert,) = alerts["items"]
        assert (alert["rule"], alert["customer_id"]) == ("detractor", "c")
        assert alert["comment"] == "待ち時間が長すぎる"

        r = await stack.collector.post("/v1/responses", json=answers[2])
        assert r.status_code == 202
        assert r.json() == {"event_id": answers[2]["event_id"], "status": "duplicate"}
        marker = response_payload(metric="csat", score=5, customer_id="c")
        assert (await stack.collector.post("/v1/responses", json=marker)).status_code == 202
        await eventually(
            lambda: get_json(stack.scorer, "/v1/scores", metric="csat"), lambda s: s["n"] == 1
        )
        await eventually(
            lambda: metric_value(stack.alerting, "cxloop_consumer_records_total"),
            lambda v: v == 4,
        )
        again = await get_json(stack.scorer, "/v1/scores", metric="nps", window="30d")
        assert again["n"] == 3
        lag = await metric_value(stack.scorer, "cxloop_consumer_lag_records")
        assert lag == 0, "everything sent has been consumed"
        alerts = await get_json(stack.alerting, "/v1/alerts", status="open")
        assert len(alerts["items"]) == 1
        assert alerts["items"][0]["occurrences"] == 1

    async def test_every_service_exposes_health_and_metrics(self, stack: Stack) -> None:
        offered_names: set[str] = set()
        for client in (stack.collector, stack.scorer, stack.alerting):
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            ready = await client.get("/readyz")
            assert ready.status_code == 200
            assert all(ready.json()["checks"].values())
            metrics = await client.get("/metrics")
            assert metrics.headers["content-type"].startswith("text/plain")
            assert "cxloop_service_ready" in metrics.text
            assert "cxloop_http_requests_total" in metrics.text
            offered_names.update(offered(metrics.text))
            docs = await client.get("/docs")
            assert docs.status_code == 200
            assert "swagger-ui" in docs.text.lower()
            assert (await client.get("/openapi.json")).json()["info"]["title"].startswith("cxloop")
        # What the dashboards and alert rules query is what the running services offer.
        missing = used_by_deploy() - offered_names
        assert not missing, missing
