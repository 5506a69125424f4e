"""Our alerts through a real Prometheus Alertmanager (Debian's), routed on to a webhook."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from services.alerting.config import AlertingConfig
from services.servers import ServerProcess, free_port, wait_for_port
from shared.settings import KafkaSettings
from shared.topics import Topic
from tests.builders import response_event
from tests.conftest import AlertingFactory
from tests.harness.backends import scratch_dir
from tests.helpers import eventually, http_server, produce

ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
pytestmark = pytest.mark.skipif(
    ALERTMANAGER is None and os.environ.get("CI") != "true",
    reason="needs Debian's prometheus-alertmanager; CI installs it",
)


@pytest.fixture
async def routed() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """Alertmanager routing everything to a local webhook; yields its URL and what arrived."""
    received: list[dict[str, Any]] = []

    async def hook(request: Request) -> JSONResponse:
        received.append(await request.json())
        return JSONResponse({})

    hook_port, am_port = free_port(), free_port()
    work = scratch_dir()
    config = work / "alertmanager.yml"
    config.write_text(f"""
route:
  receiver: test
  group_by: [alertname]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: test
    webhook_configs:
      - url: http://127.0.0.1:{hook_port}/am
        send_resolved: true
""")
    assert ALERTMANAGER is not None
    process = ServerProcess("alertmanager")
    async with http_server(Starlette(routes=[Route("/am", hook, methods=["POST"])]), hook_port):
        await process.spawn(
            ALERTMANAGER,
            f"--config.file={config}",
            f"--storage.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{am_port}",
            "--cluster.listen-address=",
        )
        try:
            await wait_for_port(am_port, timeout=30, alive=lambda: process.alive)
            yield f"http://127.0.0.1:{am_port}", received
        finally:
            await process.stop()


class TestAlertmanager:
    async def test_firing_then_resolved_reaches_the_routed_webhook(
        self,
        routed: tuple[str, list[dict[str, Any]]],
        kafka_settings: KafkaSettings,
        alerting_with: AlertingFactory,
    ) -> None:
        am_url, received = routed
        config = AlertingConfig.model_validate(
            {
                "receivers": [{"name": "am", "type": "alertmanager", "url": am_url}],
                "routes": [{"receiver": "am"}],
            }
        )
        async with alerting_with(config) as client:
            await produce(
                kafka_settings, Topic.RESPONSES, [response_event(score=0, customer_id="am-1")]
            )
            await eventually(lambda: _statuses(received), lambda s: "firing" in s, timeout=60)
            firing = next(m for m in received if m["status"] == "firing")
            assert firing["version"] == "4"
            (alert,) = firing["alerts"]
            assert alert["labels"]["alertname"] == "detractor"
            assert alert["labels"]["severity"] == "critical"
            assert "am-1" in alert["annotations"]["summary"]

            alert_id = alert["labels"]["alert_id"]
            r = await client.post(
                f"/v1/alerts/{alert_id}/resolve", json={"by": "sato", "note": "ok"}
            )
            assert r.status_code == 200
            await eventually(lambda: _statuses(received), lambda s: "resolved" in s, timeout=60)


async def _statuses(received: list[dict[str, Any]]) -> set[str]:
    return {m["status"] for m in received}
