"""Who acted on an alert or a silence is the key that called, not a name in the body."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from services.alerting import repository, rules
from services.alerting.app import create_app
from services.migrations import downgrade, upgrade
from shared.apikeys import KeyKind, Scope, create_key
from shared.settings import AlertingSettings, AuthSettings, DatabaseSettings, KafkaSettings
from tests.builders import response_event
from tests.helpers import serving

TEAM = "support-team"


@pytest.fixture
async def team(database_url: str) -> tuple[str, str]:
    """A key named TEAM that may read and act on alerts, and its id."""
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            key, key_id = await create_key(
                conn, name=TEAM, kind=KeyKind.SECRET, scopes=[Scope.ALERTS_READ, Scope.ALERTS_WRITE]
            )
    finally:
        await engine.dispose()
    return key, str(key_id)


@pytest.fixture
def team_key(team: tuple[str, str]) -> str:
    return team[0]


@pytest.fixture
def team_id(team: tuple[str, str]) -> str:
    return team[1]


@pytest.fixture
async def alerting(
    kafka_settings: KafkaSettings,
    database_url: str,
    auth: AuthSettings,
    team_key: str,
    alerting_settings: AlertingSettings,
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(kafka_settings, DatabaseSettings(url=database_url), auth, alerting_settings)
    async with serving(app, team_key, "alerting") as client:
        yield client


async def open_alert(database_url: str) -> str:
    event = response_event(score=1, customer_id=f"c-{uuid.uuid4().hex[:8]}")
    draft = rules.evaluate(event)
    assert draft is not None
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            await repository.open_or_fold(conn, [(draft, event)])
            alert_id = await conn.scalar(
                sa.text("SELECT id FROM alerts WHERE event_id = :e"), {"e": event.event_id}
            )
    finally:
        await engine.dispose()
    return str(alert_id)


async def open_alert_at_0011(database_url: str) -> str:
    """An open alert and its "opened" history row as the service wrote them at schema 0011
    (the repository of today writes columns later migrations added)."""
    alert_id = uuid.uuid4()
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "INSERT INTO alerts (id, dedupe_key, rule, severity, status, customer_id, "
                    "channel, metric, score, event_id, opened_at, last_seen_at) VALUES "
                    "(:id, :key, 'detractor', 'warning', 'open', :customer, 'web', 'nps', 1, "
                    ":event, now(), now())"
                ),
                {
                    "id": alert_id,
                    "key": f"detractor:{alert_id}",
                    "customer": f"c-{alert_id.hex[:8]}",
                    "event": uuid.uuid4(),
                },
            )
            await conn.execute(
                sa.text(
                    "INSERT INTO alert_history (alert_id, actor, action) "
                    "VALUES (:a, 'cxloop', 'opened')"
                ),
                {"a": alert_id},
            )
    finally:
        await engine.dispose()
    return str(alert_id)


async def history(client: httpx.AsyncClient, alert_id: str) -> list[dict[str, Any]]:
    r = await client.get(f"/v1/alerts/{alert_id}/history")
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


class TestAlertActions:
    async def test_an_ack_naming_someone_else_records_the_key_as_actor(
        self, alerting: httpx.AsyncClient, database_url: str
    ) -> None:
        alert_id = await open_alert(database_url)
        r = await alerting.post(f"/v1/alerts/{alert_id}/ack", json={"by": "someone-else"})
        assert r.status_code == 200, r.text
        assert r.json()["acknowledged_by"] == "someone-else"
        opened, acked = await history(alerting, alert_id)
        assert (acked["action"], acked["actor"]) == ("acknowledged", TEAM)
        assert acked.get("display_name") == "someone-else"
        assert (opened["actor"], opened["display_name"]) == ("cxloop", None)

    async def test_assign_comment_and_resolve_record_the_key_too(
        self, alerting: httpx.AsyncClient, database_url: str
    ) -> None:
        alert_id = await open_alert(database_url)
        url = f"/v1/alerts/{alert_id}"
        assigned = await alerting.post(f"{url}/assign", json={"to": "tanaka", "by": "the-ceo"})
        assert assigned.status_code == 200, assigned.text
        commented = await alerting.post(f"{url}/comments", json={"by": "the-ceo", "text": "x"})
        assert commented.status_code == 201, commented.text
        resolved = await alerting.post(f"{url}/resolve", json={"by": "the-ceo", "note": "done"})
        assert resolved.json()["resolved_by"] == "the-ceo"
        entries = await history(alerting, alert_id)
        assert [(h["action"], h["actor"], h["display_name"]) for h in entries] == [
            ("opened", "cxloop", None),
            ("assigned", TEAM, "the-ceo"),
            ("commented", TEAM, "the-ceo"),
            ("resolved", TEAM, "the-ceo"),
        ]

    async def test_the_second_of_two_resolving_keeps_their_note_as_a_comment(
        self, alerting: httpx.AsyncClient, database_url: str
    ) -> None:
        # Two people resolve at once: the second call finds the first's resolution.
        alert_id = await open_alert(database_url)
        url = f"/v1/alerts/{alert_id}"
        first = await alerting.post(f"{url}/resolve", json={"by": "sato", "note": "refunded"})
        second = await alerting.post(f"{url}/resolve", json={"by": "kato", "note": "called her"})
        assert second.status_code == 200, second.text
        assert second.json() == first.json()  # the first resolution stands, as it was
        retry = await alerting.post(f"{url}/resolve", json={"by": "sato", "note": "refunded"})
        assert retry.json() == first.json()
        entries = await history(alerting, alert_id)
        assert [(h["action"], h["display_name"], h["note"]) for h in entries[1:]] == [
            ("resolved", "sato", "refunded"),
            ("commented", "kato", "called her"),  # not lost; the retry added nothing
        ]

    async def test_the_second_of_two_acknowledging_keeps_their_note_as_a_comment(
        self, alerting: httpx.AsyncClient, database_url: str
    ) -> None:
        alert_id = await open_alert(database_url)
        url = f"/v1/alerts/{alert_id}"
        first = await alerting.post(f"{url}/ack", json={"by": "sato"})
        second = await alerting.post(f"{url}/ack", json={"by": "kato", "note": "on it too"})
        assert second.status_code == 200, second.text
        assert second.json() == first.json()
        entries = await history(alerting, alert_id)
        assert [(h["action"], h["display_name"], h["note"]) for h in entries[1:]] == [
            ("acknowledged", "sato", None),
            ("commented", "kato", "on it too"),
        ]

    async def test_without_a_display_name_the_key_name_is_shown(
        self, alerting: httpx.AsyncClient, database_url: str
    ) -> None:
        alert_id = await open_alert(database_url)
        r = await alerting.post(f"/v1/alerts/{alert_id}/ack", json={})
        assert r.status_code == 200, r.text
        assert r.json()["acknowledged_by"] == TEAM
        r = await alerting.post(f"/v1/alerts/{alert_id}/resolve", json={"note": "called back"})
        assert r.json()["resolved_by"] == TEAM
        entries = await history(alerting, alert_id)
        assert [(h["actor"], h["display_name"]) for h in entries[1:]] == [(TEAM, None)] * 2

    async def test_the_key_id_is_recorded_and_the_alert_keeps_the_verified_key(
        self, alerting: httpx.AsyncClient, database_url: str, team_id: str
    ) -> None:
        alert_id = await open_alert(database_url)
        url = f"/v1/alerts/{alert_id}"
        acked = (await alerting.post(f"{url}/ack", json={"by": "the-ceo"})).json()
        assert (acked["acknowledged_by"], acked["acknowledged_actor"]) == ("the-ceo", TEAM)
        assert acked["acknowledged_actor_id"] == team_id
        await alerting.post(f"{url}/assign", json={"to": "tanaka"})
        await alerting.post(f"{url}/comments", json={"text": "called"})
        resolved = (await alerting.post(f"{url}/resolve", json={"by": "x", "note": "ok"})).json()
        assert (resolved["resolved_by"], resolved["resolved_actor"]) == ("x", TEAM)
        assert resolved["resolved_actor_id"] == team_id
        assert (await alerting.get(url)).json()["resolved_actor_id"] == team_id
        entries = await history(alerting, alert_id)
        assert [h["actor_id"] for h in entries] == [None] + [team_id] * 4


class TestReservedNames:
    @pytest.mark.parametrize("name", ["cxloop", "unknown", "operator", " Operator "])
    async def test_a_key_may_not_take_a_name_that_stands_for_something_else(
        self, database_url: str, name: str
    ) -> None:
        engine = create_async_engine(database_url)
        try:
            async with engine.begin() as conn:
                with pytest.raises(ValueError, match="reserved"):
                    await create_key(
                        conn, name=name, kind=KeyKind.SECRET, scopes=[Scope.ALERTS_WRITE]
                    )
        finally:
            await engine.dispose()


class TestSilenceActor:
    async def test_a_silence_naming_someone_else_records_the_key_as_actor(
        self, alerting: httpx.AsyncClient
    ) -> None:
        body = {
            "matchers": {"rule": "detractor"},
            "duration_minutes": 30,
            "created_by": "someone-else",
            "comment": "incident",
        }
        r = await alerting.post("/v1/silences", json=body)
        assert r.status_code == 201, r.text
        assert (r.json()["actor"], r.json()["created_by"]) == (TEAM, "someone-else")
        (listed,) = (await alerting.get("/v1/silences")).json()["items"]
        assert (listed["actor"], listed["created_by"]) == (TEAM, "someone-else")

        del body["created_by"]
        r = await alerting.post("/v1/silences", json=body)
        assert (r.status_code, r.json()["actor"], r.json()["created_by"]) == (201, TEAM, TEAM)

    async def test_ending_a_silence_records_the_key_that_ended_it_and_when(
        self, alerting: httpx.AsyncClient, team_id: str
    ) -> None:
        body = {"matchers": {"rule": "detractor"}, "duration_minutes": 30, "comment": "c"}
        created = (await alerting.post("/v1/silences", json=body)).json()
        assert (created["actor_id"], created["expired_by"], created["expired_at"]) == (
            team_id,
            None,
            None,
        )
        ended = await alerting.delete(f"/v1/silences/{created['id']}")
        assert ended.status_code == 200, ended.text
        silence = ended.json()
        assert (silence["active"], silence["expired_by"]) == (False, TEAM)
        assert silence["expired_by_id"] == team_id
        assert silence["expired_at"] == silence["ends_at"]
        again = (await alerting.delete(f"/v1/silences/{created['id']}")).json()
        assert again == silence
        (listed,) = (await alerting.get("/v1/silences", params={"active": "false"})).json()["items"]
        assert (listed["expired_by"], listed["expired_at"]) == (TEAM, silence["expired_at"])


class TestMigration:
    async def test_existing_rows_keep_their_names_as_display_names_and_go_back(
        self, empty_database_url: str
    ) -> None:
        url = empty_database_url
        await asyncio.to_thread(upgrade, url, "0011")
        engine = create_async_engine(url)
        alert_id = await open_alert_at_0011(url)
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    sa.text(
                        "INSERT INTO alert_history (alert_id, actor, action) "
                        "VALUES (:a, 'sato', 'acknowledged')"
                    ),
                    {"a": alert_id},
                )
                await conn.execute(
                    sa.text(
                        "INSERT INTO silences (id, matchers, ends_at, created_by, comment) "
                        "VALUES (:id, '{}', now(), 'sato', 'c')"
                    ),
                    {"id": uuid.uuid4()},
                )
            await asyncio.to_thread(upgrade, url, "0012")
            async with engine.connect() as conn:
                rows = (
                    await conn.execute(
                        sa.text("SELECT actor, display_name FROM alert_history ORDER BY id")
                    )
                ).all()
                assert [tuple(r) for r in rows] == [("cxloop", None), ("unknown", "sato")]
                silence = (
                    await conn.execute(sa.text("SELECT actor, created_by FROM silences"))
                ).one()
                assert tuple(silence) == ("unknown", "sato")
            await asyncio.to_thread(downgrade, url, "0011")
            async with engine.connect() as conn:
                actors = await conn.scalars(sa.text("SELECT actor FROM alert_history ORDER BY id"))
                assert list(actors) == ["cxloop", "sato"]
        finally:
            await engine.dispose()

    async def test_a_name_typed_as_cxloop_is_not_taken_for_the_service(
        self, empty_database_url: str
    ) -> None:
        url = empty_database_url
        await asyncio.to_thread(upgrade, url, "0011")
        engine = create_async_engine(url)
        spoofed, auto = await open_alert_at_0011(url), await open_alert_at_0011(url)
        try:
            async with engine.begin() as conn:
                rows = [
                    (spoofed, "acknowledged"),
                    (spoofed, "assigned"),
                    (spoofed, "commented"),
                    (spoofed, "resolved"),
                    (auto, "escalated"),
                    (auto, "auto_resolved"),
                ]
                for alert_id, action in rows:
                    await conn.execute(
                        sa.text(
                            "INSERT INTO alert_history (alert_id, actor, action) "
                            "VALUES (:a, 'cxloop', :action)"
                        ),
                        {"a": alert_id, "action": action},
                    )
                await conn.execute(
                    sa.text(
                        "UPDATE alerts SET status = 'resolved', acknowledged_at = now(), "
                        "acknowledged_by = 'cxloop', resolved_at = now(), resolved_by = 'cxloop'"
                    )
                )
            await asyncio.to_thread(upgrade, url, "0012")
            async with engine.connect() as conn:
                history_rows = await conn.execute(
                    sa.text(
                        "SELECT alert_id, action, actor, display_name, actor_id "
                        "FROM alert_history ORDER BY id"
                    )
                )
                got = [
                    (str(r.alert_id), r.action, r.actor, r.display_name, r.actor_id)
                    for r in history_rows
                ]
                assert got == [
                    (spoofed, "opened", "cxloop", None, None),
                    (auto, "opened", "cxloop", None, None),
                    (spoofed, "acknowledged", "unknown", "cxloop", None),
                    (spoofed, "assigned", "unknown", "cxloop", None),
                    (spoofed, "commented", "unknown", "cxloop", None),
                    (spoofed, "resolved", "unknown", "cxloop", None),
                    (auto, "escalated", "cxloop", None, None),
                    (auto, "auto_resolved", "cxloop", None, None),
                ]
                alert_rows = await conn.execute(
                    sa.text("SELECT id, acknowledged_actor, resolved_actor FROM alerts")
                )
                alerts = {str(r.id): (r.acknowledged_actor, r.resolved_actor) for r in alert_rows}
                assert alerts == {spoofed: ("unknown", "unknown"), auto: ("unknown", "cxloop")}
            await asyncio.to_thread(downgrade, url, "0011")
            async with engine.connect() as conn:
                actors = await conn.scalars(sa.text("SELECT actor FROM alert_history ORDER BY id"))
                assert set(actors) == {"cxloop"}
        finally:
            await engine.dispose()
