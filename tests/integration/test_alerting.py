"""Every detractor reaches the alert list once; repeats fold, redeliveries vanish."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from services.alerting.app import create_app
from shared.settings import AlertingSettings, AuthSettings, DatabaseSettings, KafkaSettings
from shared.topics import Topic
from tests.builders import response_event
from tests.helpers import eventually, produce, serving


@pytest.fixture
async def alerting(
    kafka_settings: KafkaSettings,
    database_url: str,
    auth: AuthSettings,
    api_key: str,
    alerting_settings: AlertingSettings,
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        kafka_settings,
        DatabaseSettings(url=database_url),
        auth,
        alerting_settings,
    )
    async with serving(app, api_key, "alerting") as client:
        yield client


async def alerts(client: httpx.AsyncClient, **params: str) -> list[dict[str, Any]]:
    r = await client.get("/v1/alerts", params=params)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


@pytest.mark.smoke
class TestDetractorAlerts:
    async def test_one_alert_per_detractor_with_its_context(
        self, alerting: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        detractor = response_event(
            score=2, customer_id="c-1", ticket_id="T-9", comment="二度と使わない", reasons=["price"]
        )
        await produce(kafka_settings, Topic.RESPONSES, [response_event(score=9), detractor])
        (alert,) = await eventually(lambda: alerts(alerting, status="open"), lambda a: len(a) == 1)
        assert alert["rule"] == "detractor"
        assert alert["severity"] == "critical"
        assert (alert["customer_id"], alert["ticket_id"], alert["score"]) == ("c-1", "T-9", 2)
        assert alert["comment"] == "二度と使わない"
        assert alert["reasons"] == ["price"]
        assert alert["event_id"] == str(detractor.event_id)
        one = await alerting.get(f"/v1/alerts/{alert['id']}")
        assert one.json() == alert
        assert len(await alerts(alerting, customer_id="c-1", severity="critical")) == 1
        assert await alerts(alerting, customer_id="c-1", severity="warning") == []

    async def test_repeats_fold_and_redeliveries_do_not_count(
        self, alerting: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        first = response_event(score=5, customer_id="c-2", ticket_id="T-1")
        again = response_event(score=3, customer_id="c-2", ticket_id="T-1")
        await produce(kafka_settings, Topic.RESPONSES, [first, first, again, again])
        other = response_event(score=4, customer_id="c-3")
        await produce(kafka_settings, Topic.RESPONSES, [other])
        open_alerts = await eventually(lambda: alerts(alerting), lambda a: len(a) == 2)
        by_customer = {a["customer_id"]: a for a in open_alerts}
        assert by_customer["c-2"]["occurrences"] == 2
        assert by_customer["c-3"]["occurrences"] == 1

    async def test_unknown_alert_is_404(self, alerting: httpx.AsyncClient) -> None:
        r = await alerting.get("/v1/alerts/6f1c1d5e-7b7a-4c39-9f3a-0d2b8b7d1a10")
        assert r.status_code == 404
        assert r.json()["error"] == "not_found"


class TestLifecycle:
    async def test_open_ack_resolve_with_history(
        self, alerting: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        await produce(kafka_settings, Topic.RESPONSES, [response_event(score=1, customer_id="c-9")])
        (alert,) = await eventually(lambda: alerts(alerting, status="open"), lambda a: len(a) == 1)
        url = f"/v1/alerts/{alert['id']}"

        r = await alerting.post(f"{url}/ack", json={"by": "sato", "note": "calling now"})
        assert (r.status_code, r.json()["status"], r.json()["acknowledged_by"]) == (
            200,
            "acknowledged",
            "sato",
        )
        again = await alerting.post(f"{url}/ack", json={"by": "tanaka"})
        assert again.json()["acknowledged_by"] == "sato"
        assert (await alerting.post(f"{url}/assign", json={"to": "tanaka", "by": "sato"})).json()[
            "assignee"
        ] == "tanaka"
        r = await alerting.post(
            f"{url}/comments", json={"by": "tanaka", "text": "留守電を残しました"}
        )
        assert r.status_code == 201

        no_note = await alerting.post(f"{url}/resolve", json={"by": "tanaka"})
        assert (no_note.status_code, no_note.json()["field"]) == (422, "note")
        r = await alerting.post(
            f"{url}/resolve", json={"by": "tanaka", "note": "Refunded the fee."}
        )
        assert (r.json()["status"], r.json()["resolved_by"], r.json()["note"]) == (
            "resolved",
            "tanaka",
            "Refunded the fee.",
        )
        assert (await alerting.post(f"{url}/ack", json={"by": "sato"})).status_code == 409

        history = (await alerting.get(f"{url}/history")).json()["items"]
        # The actor is the key that called (here the operator's); `by` is its display name.
        assert [(h["action"], h["actor"], h["display_name"]) for h in history] == [
            ("opened", "cxloop", None),
            ("acknowledged", "operator", "sato"),
            ("assigned", "operator", "sato"),
            ("commented", "operator", "tanaka"),
            ("resolved", "operator", "tanaka"),
        ]
        assert history[3]["note"] == "留守電を残しました"

        # The loop is closed: a new detractor answer from the customer opens a new alert.
        await produce(kafka_settings, Topic.RESPONSES, [response_event(score=2, customer_id="c-9")])
        await eventually(lambda: alerts(alerting, status="open"), lambda a: len(a) == 1)

    async def test_unknown_alert_and_read_only_keys(
        self, alerting: httpx.AsyncClient, kafka_settings: KafkaSettings, database_url: str
    ) -> None:
        unknown = "/v1/alerts/6f1c1d5e-7b7a-4c39-9f3a-0d2b8b7d1a10"
        r = await alerting.post(f"{unknown}/ack", json={"by": "x"})
        assert r.status_code == 404

        from sqlalchemy.ext.asyncio import create_async_engine

        from shared.apikeys import KeyKind, Scope, create_key

        engine = create_async_engine(database_url)
        try:
            async with engine.begin() as conn:
                key, _ = await create_key(
                    conn, name="dashboard", kind=KeyKind.SECRET, scopes=[Scope.ALERTS_READ]
                )
        finally:
            await engine.dispose()
        read_only = {"Authorization": f"Bearer {key}"}
        await produce(kafka_settings, Topic.RESPONSES, [response_event(score=0, customer_id="r")])
        (alert,) = await eventually(lambda: alerts(alerting, status="open"), lambda a: len(a) == 1)
        url = f"/v1/alerts/{alert['id']}"

        seen = await alerting.get(url, headers=read_only)
        assert (seen.status_code, seen.json()["id"]) == (200, alert["id"])
        assert (await alerting.get(f"{url}/history", headers=read_only)).status_code == 200
        assert (await alerting.get(unknown, headers=read_only)).status_code == 404
        for action, body in [
            ("ack", {"by": "x"}),
            ("resolve", {"by": "x", "note": "n"}),
            ("assign", {"to": "x", "by": "x"}),
            ("comments", {"by": "x", "text": "t"}),
        ]:
            refused = await alerting.post(f"{url}/{action}", json=body, headers=read_only)
            assert refused.status_code == 403, (action, refused.text)
            assert "alerts:write" in refused.json()["detail"]
        assert (
            await alerting.post(f"{unknown}/ack", json={}, headers=read_only)
        ).status_code == 403
        after = (await alerting.get(url)).json()
        assert (after["status"], after["assignee"]) == ("open", None)
        history = (await alerting.get(f"{url}/history")).json()["items"]
        assert [h["action"] for h in history] == ["opened"]


class TestPreparedStatements:
    async def test_opening_alerts_keeps_working_after_many_runs_on_one_connection(
        self, database_url: str
    ) -> None:
        # asyncpg switches a prepared statement to a generic plan after five runs; the
        # partial-index ON CONFLICT must still match then (it did not, before a fix). A bare
        # engine (no plan_cache_mode) on one connection, so the statement does reach its sixth
        # run on the same prepared plan.
        import sqlalchemy as sa
        from sqlalchemy.ext.asyncio import create_async_engine

        from services.alerting.consumer import AlertHandler
        from services.alerting.models import alerts as alerts_table
        from shared.kafka import Decoded
        from shared.settings import SlaSettings

        engine = create_async_engine(database_url, pool_size=1, max_overflow=0)
        try:
            handler = AlertHandler(engine, SlaSettings())
            for i in range(12):
                event = response_event(score=1, customer_id=f"p{i % 3}")
                await handler([Decoded(None, event)])
            async with engine.connect() as conn:
                rows = await conn.execute(
                    sa.select(
                        alerts_table.c.customer_id,
                        alerts_table.c.status,
                        alerts_table.c.occurrences,
                    ).order_by(alerts_table.c.customer_id)
                )
                found = [tuple(r) for r in rows]
        finally:
            await engine.dispose()
        assert found == [("p0", "open", 4), ("p1", "open", 4), ("p2", "open", 4)]


class TestErasure:
    async def test_erasure_keeps_the_alert_and_drops_the_words(
        self, alerting: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        await produce(
            kafka_settings,
            Topic.RESPONSES,
            [response_event(score=1, customer_id="gone", comment="私の電話番号は…")],
        )
        (alert,) = await eventually(lambda: alerts(alerting), lambda a: len(a) == 1)
        r = await alerting.delete("/v1/customers/gone")
        assert r.json() == {"alerts_pseudonymised": 1}
        after = (await alerting.get(f"/v1/alerts/{alert['id']}")).json()
        assert after["comment"] is None
        assert after["customer_id"].startswith("erased:")
        assert "gone" not in after["dedupe_key"]
