"""The outbox never loops, never blocks and never forgets.

Each delivery's outcome is recorded (with others, but one the database refuses alone), so
one notification that cannot be built never makes another resend; no row lock is held
while a receiver is called; one receiver that hangs delays no other; retries stop after
the retry budget; alerts opened under a silence are announced when it ends.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from asyncpg.exceptions import DeadlockDetectedError
from prometheus_client import REGISTRY
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from services.alerting import outbox as outbox_module
from services.alerting.config import AlertingConfig
from services.alerting.outbox import Outbox, client_session
from services.migrations import upgrade
from services.servers import free_port
from shared.db import create_engine
from shared.settings import DatabaseSettings, KafkaSettings
from shared.topics import Topic
from tests.builders import alert as alert_row
from tests.builders import response_event
from tests.conftest import AlertingFactory
from tests.helpers import eventually, http_server, produce, stays

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@dataclass
class Receivers:
    """Webhook receivers on one server: good, always down, and one that hangs."""

    delivered: Counter[str] = field(default_factory=Counter)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    down_attempts: Counter[str] = field(default_factory=Counter)
    hanging: Counter[str] = field(default_factory=Counter)
    echoed: Counter[str] = field(default_factory=Counter)
    hung: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def good(self, request: Request) -> Response:
        payload = Webhook(SECRET).verify(await request.body(), dict(request.headers))
        self.delivered[request.headers["webhook-id"]] += 1
        self.bodies.append(payload)
        return JSONResponse({"ok": True})

    async def down(self, request: Request) -> Response:
        self.down_attempts[request.headers["webhook-id"]] += 1
        return Response("maintenance", status_code=503, headers={"Retry-After": "0"})

    async def hang(self, request: Request) -> Response:
        self.hanging[request.headers["webhook-id"]] += 1
        self.hung.set()
        await self.release.wait()
        return JSONResponse({"ok": True})

    async def echo(self, request: Request) -> Response:
        # Receivers echo the payload: customer text, and here a NUL that Postgres text refuses.
        self.echoed[request.headers["webhook-id"]] += 1
        return Response(b"\x00bad request: " + await request.body(), status_code=400)

    def customers(self) -> list[str]:
        return [b["data"]["alert"]["customer_id"] for b in self.bodies]


@pytest.fixture
async def hooks() -> AsyncIterator[tuple[Receivers, str]]:
    state = Receivers()
    app = Starlette(
        routes=[
            Route("/good", state.good, methods=["POST"]),
            Route("/down", state.down, methods=["POST"]),
            Route("/hang", state.hang, methods=["POST"]),
            Route("/echo", state.echo, methods=["POST"]),
        ]
    )
    async with http_server(app, free_port()) as url:
        try:
            yield state, url
        finally:
            state.release.set()


def routing(url: str, *others: dict[str, Any]) -> AlertingConfig:
    """``good`` last, after every receiver of ``others`` (each with continue)."""
    good = {"name": "good", "type": "webhook", "url": f"{url}/good", "secret_env": "GOOD_SECRET"}
    return AlertingConfig.model_validate(
        {
            "receivers": [*others, good],
            "routes": [
                *({"receiver": o["name"], "continue": True} for o in others),
                {"receiver": "good"},
            ],
        }
    )


async def notifications(client: Any, customer_id: str) -> list[dict[str, Any]]:
    alerts = (await client.get("/v1/alerts", params={"customer_id": customer_id})).json()
    items: list[dict[str, Any]] = []
    for alert in alerts["items"]:
        r = await client.get(f"/v1/alerts/{alert['id']}/notifications")
        items += r.json()["items"]
    return items


def by_receiver(items: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [n for n in items if n["receiver"] == name]


async def total(counter: Counter[str]) -> int:
    return sum(counter.values())


async def most(counter: Counter[str]) -> int:
    """How often the notification sent most often was sent."""
    return max(counter.values(), default=0)


class TestOneBadNotification:
    async def test_a_bad_secret_fails_its_own_notification_and_resends_nothing(
        self,
        hooks: tuple[Receivers, str],
        kafka_settings: KafkaSettings,
        alerting_with: AlertingFactory,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        state, url = hooks
        monkeypatch.setenv("GOOD_SECRET", SECRET)
        bad = {"name": "bad", "type": "webhook", "url": f"{url}/good", "secret_env": "BAD_SECRET"}
        monkeypatch.setenv("BAD_SECRET", SECRET)
        config = routing(url, bad)
        # Valid when the file was checked; the environment changed under the running service.
        monkeypatch.setenv("BAD_SECRET", "whsec_abc")
        async with alerting_with(config) as client:
            await produce(
                kafka_settings, Topic.RESPONSES, [response_event(score=1, customer_id="c1")]
            )
            await eventually(lambda: total(state.delivered), lambda n: n >= 1, timeout=30)
            listed = await eventually(
                lambda: notifications(client, "c1"),
                lambda items: {n["status"] for n in items} == {"delivered", "failed"},
                timeout=30,
            )
            (failed,) = by_receiver(listed, "bad")
            assert failed["attempts"] == 1
            assert "webhook secret" in failed["last_error"]
            assert "whsec_abc" not in failed["last_error"]
            await stays(lambda: total(state.delivered), lambda n: n == 1, seconds=3)
        assert state.customers() == ["c1"]


class TestRefusedWithABody:
    async def test_a_refusal_echoing_the_payload_is_recorded_once_without_the_body(
        self,
        hooks: tuple[Receivers, str],
        kafka_settings: KafkaSettings,
        alerting_with: AlertingFactory,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        state, url = hooks
        monkeypatch.setenv("GOOD_SECRET", SECRET)
        config = routing(url, {"name": "echo", "type": "webhook", "url": f"{url}/echo"})
        async with alerting_with(config) as client:
            await produce(
                kafka_settings,
                Topic.RESPONSES,
                [response_event(score=1, customer_id="c1", comment="call me on 555-0100")],
            )
            listed = await eventually(
                lambda: notifications(client, "c1"),
                lambda items: [n["status"] for n in by_receiver(items, "echo")] == ["failed"],
                timeout=30,
            )
            (failed,) = by_receiver(listed, "echo")
            assert failed["attempts"] == 1
            assert failed["last_error"].startswith("HTTP 400")
            assert "555-0100" not in failed["last_error"]
            assert "c1" not in failed["last_error"]
            await stays(lambda: total(state.echoed), lambda n: n == 1, seconds=2)


class TestNoLockDuringSend:
    async def test_a_hanging_receiver_holds_no_row_and_delays_no_other_receiver(
        self,
        hooks: tuple[Receivers, str],
        kafka_settings: KafkaSettings,
        alerting_with: AlertingFactory,
        database_url: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        state, url = hooks
        monkeypatch.setenv("GOOD_SECRET", SECRET)
        config = routing(url, {"name": "slow", "type": "webhook", "url": f"{url}/hang"})
        engine = create_engine(DatabaseSettings(url=database_url))
        try:
            async with alerting_with(config, notification_timeout_seconds=300):
                try:
                    await self._check(state, kafka_settings, engine)
                finally:
                    state.release.set()
        finally:
            await engine.dispose()

    async def _check(self, state: Receivers, kafka_settings: KafkaSettings, engine: Any) -> None:
        await produce(kafka_settings, Topic.RESPONSES, [response_event(score=1, customer_id="c1")])
        await asyncio.wait_for(state.hung.wait(), timeout=30)
        # The row being sent is leased, not locked: anyone may take it meanwhile.
        async with engine.begin() as conn:
            locked = await conn.execute(
                sa.text("SELECT id FROM notifications WHERE receiver = 'slow' FOR UPDATE NOWAIT")
            )
            assert len(locked.all()) == 1
        # While the first request still hangs, the good receiver hears of more.
        await produce(
            kafka_settings,
            Topic.RESPONSES,
            [response_event(score=1, customer_id=f"c{i}") for i in (2, 3)],
        )
        await eventually(lambda: total(state.delivered), lambda n: n == 3, timeout=30)
        assert not state.release.is_set()
        assert sorted(state.customers()) == ["c1", "c2", "c3"]
        # Leased, none is sent again while it hangs (its lease is 3 x the 300 s timeout).
        await stays(lambda: most(state.hanging), lambda n: n == 1, seconds=1)


@asynccontextmanager
async def raw_receiver(
    answer: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]], path: str
) -> AsyncIterator[str]:
    """Serve ``answer`` on each raw connection (HTTP written by hand); yield its URL."""
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}{path}"
    finally:
        server.close()


@asynccontextmanager
async def dripping_receiver(release: asyncio.Event, calls: list[int]) -> AsyncIterator[str]:
    """A receiver that answers a header line every 0.2 s, never finishing its answer."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        calls.append(1)
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\n")
            while not release.is_set():
                writer.write(b"x-drip: 1\r\n")
                await writer.drain()
                await asyncio.sleep(0.2)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    try:
        async with raw_receiver(answer, "/drip") as url:
            yield url
    finally:
        release.set()


@asynccontextmanager
async def closing_receiver(requests: list[int], answered: int) -> AsyncIterator[str]:
    """A receiver that answers the first ``answered`` requests on a connection (keeping it
    alive) and closes it on the next one without a word: with 1, a keep-alive that ran out
    as it was reused; with 0, a receiver that drops every request."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = len(set(requests))
        try:
            for nth in range(answered + 1):
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                requests.append(connection)
                if nth < answered:
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async with raw_receiver(answer, "/hook") as url:
        yield url


class TestFrozenGroup:
    async def test_an_alert_arriving_while_its_group_is_sent_starts_the_next_group(
        self,
        hooks: tuple[Receivers, str],
        kafka_settings: KafkaSettings,
        alerting_with: AlertingFactory,
        database_url: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        state, url = hooks
        config = AlertingConfig.model_validate(
            {
                "receivers": [{"name": "slow", "type": "webhook", "url": f"{url}/hang"}],
                "routes": [{"receiver": "slow", "group_by": ["rule"], "group_wait_seconds": 0.1}],
            }
        )
        engine = create_engine(DatabaseSettings(url=database_url))
        try:
            async with alerting_with(config, notification_timeout_seconds=300):
                await produce(
                    kafka_settings, Topic.RESPONSES, [response_event(score=1, customer_id="c1")]
                )
                await asyncio.wait_for(state.hung.wait(), timeout=30)
                # The first group is on its way: the second alert may not join it, or the
                # group's retry would carry an alert its first attempt did not.
                await produce(
                    kafka_settings, Topic.RESPONSES, [response_event(score=1, customer_id="c2")]
                )
                await eventually(lambda: total(state.hanging), lambda n: n == 2, timeout=30)
                async with engine.begin() as conn:
                    keys = (
                        (await conn.execute(sa.text("SELECT group_key FROM notifications")))
                        .scalars()
                        .all()
                    )
                assert len(keys) == 2
                assert keys[0] != keys[1]
                await stays(lambda: total(state.hanging), lambda n: n == 2, seconds=1)
        finally:
            state.release.set()
            await engine.dispose()


class TestTotalDeadline:
    async def test_a_receiver_dripping_its_answer_is_cut_off_and_the_attempt_recorded(
        self,
        hooks: tuple[Receivers, str],
        alerting_with: AlertingFactory,
        kafka_settings: KafkaSettings,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        _, url = hooks
        monkeypatch.setenv("GOOD_SECRET", SECRET)
        release, calls = asyncio.Event(), list[int]()
        async with dripping_receiver(release, calls) as drip:
            config = routing(url, {"name": "drip", "type": "webhook", "url": drip})
            # Each header line comes well within the 1 s; the answer as a whole never does.
            async with alerting_with(config, notification_timeout_seconds=1) as client:
                await produce(
                    kafka_settings, Topic.RESPONSES, [response_event(score=1, customer_id="c1")]
                )
                listed = await eventually(
                    lambda: notifications(client, "c1"),
                    lambda items: any(n["attempts"] for n in by_receiver(items, "drip")),
                    timeout=30,
                )
                (dripped,) = by_receiver(listed, "drip")
                assert dripped["status"] == "pending"
                assert dripped["last_error"] == "TimeoutError"
                assert not release.is_set()


class TestHowItPosts:
    async def test_a_redirect_is_the_receivers_answer_and_is_not_followed(
        self,
        hooks: tuple[Receivers, str],
        alerting_with: AlertingFactory,
        kafka_settings: KafkaSettings,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # A receiver's URL is the operator's; a redirect from it to anywhere else (another
        # host, an internal address) is refused, with the signed payload never sent on.
        state, url = hooks
        monkeypatch.setenv("GOOD_SECRET", SECRET)
        moved: list[str] = []

        async def redirect(request: Request) -> Response:
            moved.append(request.headers["webhook-id"])
            return Response(status_code=307, headers={"Location": f"{url}/good"})

        app = Starlette(routes=[Route("/moved", redirect, methods=["POST"])])
        async with http_server(app, free_port()) as elsewhere:
            config = routing(url, {"name": "moved", "type": "webhook", "url": f"{elsewhere}/moved"})
            async with alerting_with(config) as client:
                await produce(
                    kafka_settings, Topic.RESPONSES, [response_event(score=1, customer_id="c1")]
                )
                listed = await eventually(
                    lambda: notifications(client, "c1"),
                    lambda items: all(n["status"] != "pending" for n in items) and len(items) == 2,
                    timeout=30,
                )
        (refused,) = by_receiver(listed, "moved")
        assert refused["status"] == "failed"
        assert refused["last_error"] == "HTTP 307: refused by the receiver"
        assert len(moved) == 1
        # Only good's own notification reached it, not the one redirected there.
        assert sum(state.delivered.values()) == 1
        assert moved[0] not in state.delivered

    async def test_the_environments_proxy_carries_the_request(
        self,
        hooks: tuple[Receivers, str],
        alerting_with: AlertingFactory,
        kafka_settings: KafkaSettings,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # Where egress goes through a proxy, HTTP_PROXY says so, as it did with httpx.
        _, url = hooks
        monkeypatch.setenv("GOOD_SECRET", SECRET)
        through: list[tuple[str, str | None]] = []

        async def proxy(request: Request) -> Response:
            # A forward proxy is sent the whole URL as the request target; the path is ours.
            through.append((request.headers["host"], request.headers.get("proxy-authorization")))
            return JSONResponse({"ok": True})

        for scheme in ("no", "https", "http", "all"):
            for name in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY"):
                monkeypatch.delenv(name, raising=False)
        app = Starlette(routes=[Route("/via", proxy, methods=["POST"])])
        async with http_server(app, free_port()) as proxy_url:
            monkeypatch.setenv("HTTP_PROXY", proxy_url.replace("://", "://cx:s%40cret@"))
            # Not an address this test serves: only the proxy can deliver this.
            config = routing(
                url, {"name": "far", "type": "webhook", "url": "http://10.0.0.9:9/via"}
            )
            async with alerting_with(config) as client:
                await produce(
                    kafka_settings, Topic.RESPONSES, [response_event(score=1, customer_id="c1")]
                )
                listed = await eventually(
                    lambda: notifications(client, "c1"),
                    lambda items: any(
                        n["status"] == "delivered" for n in by_receiver(items, "far")
                    ),
                    timeout=30,
                )
        # The proxy's credentials go to the proxy, decoded from the URL (cx:s@cret).
        assert through == [("10.0.0.9:9", "Basic Y3g6c0BjcmV0")]
        assert by_receiver(listed, "far")[0]["attempts"] == 1

    async def test_no_credentials_from_netrc_and_no_cookies_go_to_a_receiver(
        self,
        hooks: tuple[Receivers, str],
        alerting_with: AlertingFactory,
        kafka_settings: KafkaSettings,
        monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path,
    ) -> None:
        # A host's ~/.netrc (curl's, git's) is not the receivers' business, and a receiver
        # cannot make the outbox carry state from one notification to the next.
        _, url = hooks
        monkeypatch.setenv("GOOD_SECRET", SECRET)
        netrc = tmp_path / "netrc"
        netrc.write_text(
            "machine localhost login ops password hunter2\ndefault login any password hunter3\n"
        )
        netrc.chmod(0o600)
        monkeypatch.setenv("NETRC", str(netrc))
        seen: list[tuple[str | None, str | None]] = []

        async def plain(request: Request) -> Response:
            seen.append((request.headers.get("authorization"), request.headers.get("cookie")))
            response = JSONResponse({"ok": True})
            response.set_cookie("session", "abc")
            return response

        app = Starlette(routes=[Route("/plain", plain, methods=["POST"])])
        async with http_server(app, free_port()) as there:
            # By name: cookies set by an address (127.0.0.1) are never kept anyway.
            named = there.replace("127.0.0.1", "localhost")
            config = routing(url, {"name": "plain", "type": "webhook", "url": f"{named}/plain"})
            async with alerting_with(config) as client:
                for customer in ("c1", "c2"):
                    await produce(
                        kafka_settings,
                        Topic.RESPONSES,
                        [response_event(score=1, customer_id=customer)],
                    )
                    # The next one only once this one's answer (its cookie) came back.
                    await eventually(
                        lambda c=customer: notifications(client, c),  # type: ignore[misc]
                        lambda items: any(
                            n["status"] == "delivered" for n in by_receiver(items, "plain")
                        ),
                        timeout=30,
                    )
        assert seen == [(None, None), (None, None)]

    @pytest.mark.parametrize(
        ("answered", "outcome", "sent"), [(1, "delivered", 5), (0, "retry", 3)]
    )
    async def test_only_a_kept_alive_connection_closed_unanswered_is_tried_again_at_once(
        self, monkeypatch: pytest.MonkeyPatch, answered: int, outcome: str, sent: int
    ) -> None:
        # A receiver that closes a reused connection is sent the request again, once, on a
        # new one; one that closes a new connection has answered (a retry, with backoff).
        monkeypatch.setattr(outbox_module, "KEEPALIVE", 60.0)  # reused, however slow the box
        requests: list[int] = []
        async with closing_receiver(requests, answered) as url:
            config = AlertingConfig.model_validate(
                {"receivers": [{"name": "r", "type": "webhook", "url": url}]}
            )
            async with client_session(config) as http:
                outcomes = []
                for n in range(3):
                    row = SimpleNamespace(
                        receiver="r",
                        notification_id=uuid.uuid4(),
                        action="trigger",
                        alert=SimpleNamespace(_mapping=alert_row(customer_id=f"c{n}")),
                    )
                    got = await outbox_module._attempt(http, config, [row], 10.0)
                    outcomes.append(got[0])
        assert outcomes == [outcome] * 3
        # answered 1: each later one went on the connection before it, closed, then again.
        assert len(requests) == sent


class TestLeaseToken:
    async def test_an_answer_arriving_after_its_lease_ran_out_changes_nothing(
        self, database_url: str
    ) -> None:
        engine = create_engine(DatabaseSettings(url=database_url))
        config = AlertingConfig.model_validate(
            {
                "receivers": [{"name": "r", "type": "slack", "url": "http://127.0.0.1:9/x"}],
                "routes": [{"receiver": "r"}],
            }
        )
        try:
            async with engine.begin() as conn:
                alert_id = await conn.scalar(sa.text(NEW_ALERT))
                await conn.execute(
                    sa.text(
                        "INSERT INTO notifications (id, alert_id, receiver, action) "
                        "VALUES (gen_random_uuid(), :a, 'r', 'trigger')"
                    ),
                    {"a": alert_id},
                )
            async with client_session(config) as http:
                outbox = Outbox(engine, http, config)
                ((first,),) = await outbox.lease()
                # The send outlived its lease; another pass leased the row again.
                async with engine.begin() as conn:
                    await conn.execute(
                        sa.text("UPDATE notifications SET locked_until = now() - interval '1 s'")
                    )
                ((second,),) = await outbox.lease()
                assert second.lease_id != first.lease_id
                await outbox._record([first], "pending", "TimeoutError", 5.0)
            async with engine.begin() as conn:
                row = (
                    await conn.execute(
                        sa.text("SELECT attempts, locked_until, last_error FROM notifications")
                    )
                ).one()
            assert row.attempts == 0
            assert row.locked_until is not None
            assert row.last_error is None
        finally:
            await engine.dispose()

    async def test_an_attempt_whose_lease_was_lost_is_not_counted(
        self, database_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        async def timed_out(*_: Any) -> tuple[str, None, str]:
            return "retry", None, "TimeoutError"

        monkeypatch.setattr(outbox_module, "_attempt", timed_out)
        async with _one_notification(database_url) as (engine, outbox):
            ((first,),) = await outbox.lease()
            async with engine.begin() as conn:
                await conn.execute(
                    sa.text("UPDATE notifications SET locked_until = now() - interval '1 s'")
                )
            await outbox.lease()  # leased again: that attempt is the one to count
            before = _attempts("r", "retry")
            await outbox._deliver([first])
        assert _attempts("r", "retry") == before


class TestAlwaysRecorded:
    async def test_an_error_the_database_refuses_is_recorded_with_a_fixed_text(
        self, database_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        async def refused(*_: Any) -> tuple[str, None, str]:
            return "failed", None, "HTTP 400: \x00"  # Postgres text refuses NUL

        monkeypatch.setattr(outbox_module, "_attempt", refused)
        async with _one_notification(database_url) as (engine, outbox):
            for group in await outbox.lease():
                await outbox._deliver(group)
            async with engine.begin() as conn:
                row = (
                    await conn.execute(
                        sa.text("SELECT status, attempts, last_error FROM notifications")
                    )
                ).one()
        assert (row.status, row.attempts) == ("failed", 1)
        assert row.last_error == "recording the outcome failed (DBAPIError)"

    async def test_a_row_past_its_budget_is_failed_not_leased(self, database_url: str) -> None:
        async with _one_notification(database_url) as (engine, outbox):
            async with engine.begin() as conn:
                await conn.execute(
                    sa.text("UPDATE notifications SET due_since = now() - interval '25 hours'")
                )
            assert await outbox.lease() == []
            async with engine.begin() as conn:
                row = (
                    await conn.execute(sa.text("SELECT status, last_error FROM notifications"))
                ).one()
        assert row.status == "failed"
        assert row.last_error == "retry budget of 24 h spent"


@asynccontextmanager
async def _one_notification(database_url: str) -> AsyncIterator[tuple[Any, Outbox]]:
    """An outbox (not running) over a database holding one pending notification."""
    engine = create_engine(DatabaseSettings(url=database_url))
    config = AlertingConfig.model_validate(
        {
            "receivers": [{"name": "r", "type": "slack", "url": "http://127.0.0.1:9/x"}],
            "routes": [{"receiver": "r"}],
        }
    )
    try:
        async with engine.begin() as conn:
            alert_id = await conn.scalar(sa.text(NEW_ALERT))
            await conn.execute(
                sa.text(
                    "INSERT INTO notifications (id, alert_id, receiver, action) "
                    "VALUES (gen_random_uuid(), :a, 'r', 'trigger')"
                ),
                {"a": alert_id},
            )
        async with client_session(config) as http:
            yield engine, Outbox(engine, http, config)
    finally:
        await engine.dispose()


class TestStoredRefusals:
    async def test_migrating_keeps_only_the_status_of_a_stored_refusal_body(
        self, empty_database_url: str
    ) -> None:
        await asyncio.to_thread(upgrade, empty_database_url, "0010")
        engine = create_engine(DatabaseSettings(url=empty_database_url))
        try:
            async with engine.begin() as conn:
                alert_id = await conn.scalar(sa.text(NEW_ALERT))
                await conn.execute(
                    sa.text(
                        "INSERT INTO notifications (id, alert_id, receiver, action, status, "
                        "attempts, last_error) VALUES (gen_random_uuid(), :a, 'r', 'trigger', "
                        "'failed', 1, :e)"
                    ),
                    {"a": alert_id, "e": 'HTTP 400: {"comment": "call me on 555-0100"}'},
                )
            await asyncio.to_thread(upgrade, empty_database_url, "0011")
            async with engine.begin() as conn:
                error = await conn.scalar(sa.text("SELECT last_error FROM notifications"))
            assert error == "HTTP 400: refused by the receiver"
        finally:
            await engine.dispose()


NEW_ALERT = """
INSERT INTO alerts (id, dedupe_key, rule, severity, status, customer_id, channel, reasons,
                    event_id, occurrences, opened_at, last_seen_at)
VALUES (gen_random_uuid(), gen_random_uuid()::text, 'detractor', 'critical', 'open', 'c1',
        'web', ARRAY['score 1'], gen_random_uuid(), 1, now(), now())
RETURNING id
"""


class TestRetryBudget:
    async def test_a_receiver_down_past_the_budget_gets_the_notification_failed_and_counted(
        self,
        hooks: tuple[Receivers, str],
        kafka_settings: KafkaSettings,
        alerting_with: AlertingFactory,
        database_url: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        state, url = hooks
        monkeypatch.setenv("GOOD_SECRET", SECRET)
        name = f"down{free_port()}"
        config = routing(url, {"name": name, "type": "webhook", "url": f"{url}/down"})
        before = _expired(name)
        engine = create_engine(DatabaseSettings(url=database_url))
        try:
            async with alerting_with(config) as client:
                await produce(
                    kafka_settings, Topic.RESPONSES, [response_event(score=1, customer_id="c1")]
                )
                await eventually(
                    lambda: notifications(client, "c1"),
                    lambda items: [n["attempts"] > 0 for n in by_receiver(items, name)] == [True],
                    timeout=30,
                )
                # Due for longer than the budget (24 h) now: its next turn fails it for good.
                async with engine.begin() as conn:
                    await conn.execute(
                        sa.text(
                            "UPDATE notifications SET due_since = now() - interval '25 hours' "
                            "WHERE receiver = :r"
                        ),
                        {"r": name},
                    )
                listed = await eventually(
                    lambda: notifications(client, "c1"),
                    lambda items: [n["status"] for n in by_receiver(items, name)] == ["failed"],
                    timeout=30,
                )
                (failed,) = by_receiver(listed, name)
                assert "retry budget of 24 h spent" in failed["last_error"]
                assert "HTTP 503" in failed["last_error"]
                attempts = await total(state.down_attempts)
                assert attempts == failed["attempts"]
                await stays(lambda: total(state.down_attempts), lambda n: n == attempts, seconds=2)
                assert _expired(name) - before == 1
                exposition = (await client.get("/metrics")).text
                assert f'cxloop_alerting_notifications_expired_total{{receiver="{name}"}}' in (
                    exposition
                )
                (good,) = by_receiver(listed, "good")
                assert good["status"] == "delivered"
        finally:
            await engine.dispose()

    async def test_the_budget_counts_from_the_end_of_the_silence_not_from_the_alert(
        self,
        hooks: tuple[Receivers, str],
        kafka_settings: KafkaSettings,
        alerting_with: AlertingFactory,
        database_url: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        _, url = hooks
        monkeypatch.setenv("GOOD_SECRET", SECRET)
        config = routing(url, {"name": "down", "type": "webhook", "url": f"{url}/down"})
        engine = create_engine(DatabaseSettings(url=database_url))
        try:
            async with alerting_with(config) as client:
                silence = await client.post(
                    "/v1/silences",
                    json={
                        "matchers": {"channel": "web"},
                        "duration_minutes": 30,
                        "created_by": "sato",
                        "comment": "survey bug",
                    },
                )
                await produce(
                    kafka_settings,
                    Topic.RESPONSES,
                    [response_event(score=1, customer_id="c1", channel="web")],
                )
                await eventually(
                    lambda: notifications(client, "c1"),
                    lambda items: {n["status"] for n in items} == {"held"},
                    timeout=30,
                )
                # Held for two days by the silence.
                async with engine.begin() as conn:
                    await conn.execute(
                        sa.text("UPDATE notifications SET created_at = now() - interval '2 days'")
                    )
                await client.delete(f"/v1/silences/{silence.json()['id']}")
                listed = await eventually(
                    lambda: notifications(client, "c1"),
                    lambda items: [n["attempts"] for n in by_receiver(items, "down")] >= [2],
                    timeout=30,
                )
                (down,) = by_receiver(listed, "down")
                assert down["status"] == "pending"
                assert down["last_error"] == "HTTP 503"
        finally:
            await engine.dispose()


def _attempts(receiver: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "cxloop_alerting_notification_attempts_total", {"receiver": receiver, "outcome": outcome}
    )
    return value or 0.0


def _expired(receiver: str) -> float:
    value = REGISTRY.get_sample_value(
        "cxloop_alerting_notifications_expired_total", {"receiver": receiver}
    )
    return value or 0.0


class TestSilenceEnd:
    async def test_alerts_still_open_when_a_silence_ends_are_announced_then(
        self,
        hooks: tuple[Receivers, str],
        kafka_settings: KafkaSettings,
        alerting_with: AlertingFactory,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        state, url = hooks
        monkeypatch.setenv("GOOD_SECRET", SECRET)
        async with alerting_with(routing(url)) as client:
            r = await client.post(
                "/v1/silences",
                json={
                    "matchers": {"channel": "web"},
                    "duration_minutes": 30,
                    "created_by": "sato",
                    "comment": "web survey bug",
                },
            )
            silence = r.json()
            await produce(
                kafka_settings,
                Topic.RESPONSES,
                [
                    response_event(score=1, customer_id="open-1", channel="web"),
                    response_event(score=1, customer_id="closed-1", channel="web"),
                    response_event(score=1, customer_id="sms-1", channel="sms"),
                ],
            )
            await eventually(lambda: total(state.delivered), lambda n: n == 1, timeout=30)
            listed = await eventually(
                lambda: client.get("/v1/alerts", params={"channel": "web"}),
                lambda r: len(r.json()["items"]) == 2,
            )
            closed = next(a for a in listed.json()["items"] if a["customer_id"] == "closed-1")
            resolved = await client.post(
                f"/v1/alerts/{closed['id']}/resolve", json={"by": "sato", "note": "Called."}
            )
            assert resolved.status_code == 200
            await stays(lambda: total(state.delivered), lambda n: n == 1, seconds=2)

            await client.delete(f"/v1/silences/{silence['id']}")
            await eventually(lambda: total(state.delivered), lambda n: n == 2, timeout=30)
            await stays(lambda: total(state.delivered), lambda n: n == 2, seconds=3)
        assert state.customers() == ["sms-1", "open-1"]
        assert state.bodies[-1]["type"] == "alert.triggered"

    async def test_an_alert_held_by_a_silence_that_expires_is_announced_then(
        self,
        hooks: tuple[Receivers, str],
        kafka_settings: KafkaSettings,
        alerting_with: AlertingFactory,
        database_url: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        state, url = hooks
        monkeypatch.setenv("GOOD_SECRET", SECRET)
        engine = create_engine(DatabaseSettings(url=database_url))
        try:
            async with alerting_with(routing(url)) as client:
                r = await client.post(
                    "/v1/silences",
                    json={
                        "matchers": {"channel": "web"},
                        "duration_minutes": 30,
                        "created_by": "sato",
                        "comment": "web survey bug",
                    },
                )
                assert r.status_code == 201
                await produce(
                    kafka_settings,
                    Topic.RESPONSES,
                    [response_event(score=1, customer_id="web-1", channel="web")],
                )
                await eventually(
                    lambda: notifications(client, "web-1"),
                    lambda items: [n["status"] for n in items] == ["held"],
                )
                await stays(lambda: total(state.delivered), lambda n: n == 0, seconds=1)
                # Its 30 minutes are up: nobody deleted it, it simply ends.
                async with engine.begin() as conn:
                    await conn.execute(sa.text("UPDATE silences SET ends_at = now()"))
                await eventually(lambda: total(state.delivered), lambda n: n == 1, timeout=30)
                await stays(lambda: total(state.delivered), lambda n: n == 1, seconds=2)
            assert state.customers() == ["web-1"]
        finally:
            await engine.dispose()

    async def test_a_released_alert_never_waits_behind_a_thousand_still_silenced(
        self,
        hooks: tuple[Receivers, str],
        kafka_settings: KafkaSettings,
        alerting_with: AlertingFactory,
        database_url: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        state, url = hooks
        monkeypatch.setenv("GOOD_SECRET", SECRET)
        engine = create_engine(DatabaseSettings(url=database_url))
        try:
            async with alerting_with(routing(url)) as client:
                ids = {}
                for customer in ("still", "free"):
                    r = await client.post(
                        "/v1/silences",
                        json={
                            "matchers": {"customer_id": customer},
                            "duration_minutes": 30,
                            "created_by": "sato",
                            "comment": "calling them",
                        },
                    )
                    ids[customer] = r.json()["id"]
                await produce(
                    kafka_settings,
                    Topic.RESPONSES,
                    [response_event(score=1, customer_id=c) for c in ("still", "free")],
                )
                await eventually(
                    lambda: notifications(client, "free"),
                    lambda items: [n["status"] for n in items] == ["held"],
                )
                (still,) = (
                    await eventually(
                        lambda: client.get("/v1/alerts", params={"customer_id": "still"}),
                        lambda r: len(r.json()["items"]) == 1,
                    )
                ).json()["items"]
                # A thousand older held notifications whose silence is still in force.
                async with engine.begin() as conn:
                    await conn.execute(sa.text(MANY_HELD), {"a": still["id"]})
                await client.delete(f"/v1/silences/{ids['free']}")
                await eventually(lambda: total(state.delivered), lambda n: n == 1, timeout=30)
                assert state.customers() == ["free"]
        finally:
            await engine.dispose()


MANY_HELD = """
INSERT INTO notifications (id, alert_id, receiver, action, status, created_at)
SELECT gen_random_uuid(), CAST(:a AS uuid), 'good', 'trigger', 'held', now() - interval '1 hour'
FROM generate_series(1, 1000)
"""


BACKLOG = """
INSERT INTO notifications (id, alert_id, receiver, action, next_attempt_at, due_since)
SELECT gen_random_uuid(), CAST(:a AS uuid), :receiver, 'trigger',
       now() - interval '1 hour' + g * interval '1 ms', now() - interval '1 hour'
FROM generate_series(1, :n) AS g
RETURNING id
"""


class TestBacklog:
    async def test_a_backlog_drains_once_each_without_a_lease_per_delivery_nor_starving_another(
        self, database_url: str
    ) -> None:
        arrived: Counter[str] = Counter()
        order: list[str] = []

        async def hook(request: Request) -> Response:
            arrived[request.headers["webhook-id"]] += 1
            order.append(request.path_params["name"])
            return JSONResponse({"ok": True})

        app = Starlette(routes=[Route("/{name}", hook, methods=["POST"])])
        engine = create_engine(DatabaseSettings(url=database_url))
        leases = 0

        def count(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
            nonlocal leases
            leases += "SET locked_until = now() +" in statement

        sa.event.listen(engine.sync_engine, "before_cursor_execute", count)
        stop = asyncio.Event()
        try:
            async with http_server(app, free_port()) as url:
                config = AlertingConfig.model_validate(
                    {
                        "receivers": [
                            {"name": n, "type": "webhook", "url": f"{url}/{n}"}
                            for n in ("bulk", "other")
                        ],
                        "routes": [{"receiver": "bulk"}],
                    }
                )
                async with engine.begin() as conn:
                    alert_id = await conn.scalar(sa.text(NEW_ALERT))
                    bulk = set(
                        (
                            await conn.execute(
                                sa.text(BACKLOG), {"a": alert_id, "receiver": "bulk", "n": 1500}
                            )
                        ).scalars()
                    )
                    (other,) = (
                        await conn.execute(
                            sa.text(BACKLOG), {"a": alert_id, "receiver": "other", "n": 1}
                        )
                    ).scalars()
                task = asyncio.create_task(outbox_module.run(engine, config, stop, timeout=2.0))
                try:
                    await eventually(lambda: total(arrived), lambda n: n == 1501, timeout=120)
                    # Every one recorded as delivered at its first attempt, its lease cleared,
                    # and none arrives a second time later.
                    rows = await eventually(
                        lambda: _states(engine),
                        lambda r: r == {("delivered", 1, True): 1501},
                        timeout=30,
                    )
                    assert rows == {("delivered", 1, True): 1501}
                    await stays(lambda: most(arrived), lambda n: n == 1, seconds=1)
                finally:
                    stop.set()
                    await task
        finally:
            await engine.dispose()
        # Each exactly once, under its own id; the other receiver waited behind nobody.
        assert set(arrived) == {str(i) for i in bulk | {other}}
        assert set(arrived.values()) == {1}
        assert order.index("other") < 100
        # Leased in batches the local queue sends from (a receiver's room is a few rounds of
        # its requests in flight), not once per freed slot.
        assert leases * 4 <= len(arrived)


async def _states(engine: Any) -> Counter[tuple[str, int, bool]]:
    """How many notifications are in each (status, attempts, lease cleared)."""
    async with engine.begin() as conn:
        rows = await conn.execute(
            sa.text(
                "SELECT status, attempts, locked_until IS NULL AND lease_id IS NULL AS cleared,"
                " count(*) FROM notifications GROUP BY 1, 2, 3"
            )
        )
        return Counter({(r.status, r.attempts, r.cleared): r.count for r in rows})


class TestGiveBack:
    async def test_a_group_given_back_on_shutdown_is_joined_by_no_new_alert(
        self, database_url: str
    ) -> None:
        engine = create_engine(DatabaseSettings(url=database_url))
        config = AlertingConfig.model_validate(
            {
                "receivers": [{"name": "r", "type": "webhook", "url": "http://127.0.0.1:9/x"}],
                "routes": [{"receiver": "r", "group_by": ["rule"], "group_wait_seconds": 0.001}],
            }
        )
        try:
            async with engine.begin() as conn:
                alert_id = await conn.scalar(sa.text(NEW_ALERT))
                alert = dict(
                    (
                        await conn.execute(
                            sa.text("SELECT * FROM alerts WHERE id = :a"), {"a": alert_id}
                        )
                    )
                    .one()
                    ._mapping
                )
                await outbox_module.enqueue(conn, config, alert, "trigger")
                await conn.execute(
                    sa.text("UPDATE notifications SET next_attempt_at = now() - interval '1 s'")
                )
            async with client_session(config) as http:
                outbox = Outbox(engine, http, config)
                # Leased again after a send whose record failed: the receiver has its id.
                (group,) = await outbox.lease()
                outbox.queues["r"] = deque([group])
                await outbox.drain(grace=0)
            async with engine.begin() as conn:
                await outbox_module.enqueue(conn, config, alert, "trigger")
                keys = (
                    (await conn.execute(sa.text("SELECT group_key FROM notifications")))
                    .scalars()
                    .all()
                )
            assert len(set(keys)) == 2
            # Still sent: given back, it is leasable at once.
            async with client_session(config) as http:
                leased = await Outbox(engine, http, config).lease()
            assert group[0].group_key in {g[0].group_key for g in leased}
        finally:
            await engine.dispose()


@asynccontextmanager
async def _queued(
    database_url: str, n: int, hook: Any, max_in_flight: int | None = None, **outbox: Any
) -> AsyncIterator[tuple[Any, Outbox]]:
    """An outbox (not running) over ``n`` due notifications to receiver ``r`` at ``hook``."""
    engine = create_engine(DatabaseSettings(url=database_url))
    app = Starlette(routes=[Route("/r", hook, methods=["POST"])])
    try:
        async with http_server(app, free_port()) as url:
            receiver: dict[str, Any] = {"name": "r", "type": "webhook", "url": f"{url}/r"}
            if max_in_flight is not None:
                receiver["max_in_flight"] = max_in_flight
            config = AlertingConfig.model_validate(
                {"receivers": [receiver], "routes": [{"receiver": "r"}]}
            )
            async with engine.begin() as conn:
                alert_id = await conn.scalar(sa.text(NEW_ALERT))
                await conn.execute(sa.text(BACKLOG), {"a": alert_id, "receiver": "r", "n": n})
            async with client_session(config) as http:
                yield engine, Outbox(engine, http, config, **outbox)
    finally:
        await engine.dispose()


async def _ok(request: Request) -> Response:
    return JSONResponse({"ok": True})


class TestRecords:
    async def test_outcomes_written_together_are_each_recorded_and_a_refused_one_alone(
        self, database_url: str
    ) -> None:
        async with _queued(database_url, 3, _ok) as (engine, outbox):
            delivered, refused, retried = await outbox.lease()
            # Recorded at the same moment: written in one statement, until one is refused.
            results = await asyncio.gather(
                outbox._record(delivered, "delivered", None, None),
                outbox._record(refused, "failed", "HTTP 400: \x00", None),
                outbox._record(retried, "pending", "HTTP 503", 5.0),
                return_exceptions=True,
            )
            assert results[0] == [("delivered",)]
            assert isinstance(results[1], sa.exc.DBAPIError)
            assert results[2] == [("pending",)]
            async with engine.begin() as conn:
                rows = {
                    r.id: r
                    for r in await conn.execute(
                        sa.text("SELECT id, status, attempts, lease_id FROM notifications")
                    )
                }
        assert rows[delivered[0].notification_id].status == "delivered"
        assert rows[retried[0].notification_id].attempts == 1
        # The refused record changed nothing: its lease holds until it is recorded again.
        left = rows[refused[0].notification_id]
        assert (left.status, left.attempts, left.lease_id) == ("pending", 0, refused[0].lease_id)

    async def test_outcomes_arriving_together_are_written_in_one_statement(
        self, database_url: str
    ) -> None:
        async with _queued(database_url, 3, _ok) as (engine, outbox):
            statements: list[str] = []
            sa.event.listen(
                engine.sync_engine,
                "before_cursor_execute",
                lambda _c, _cur, statement, *_: statements.append(statement),
            )
            groups = await outbox.lease()
            results = await asyncio.gather(
                *(outbox._record(g, "delivered", None, None) for g in groups)
            )
        assert results == [[("delivered",)]] * 3
        assert sum("u.lease" in s for s in statements) == 1

    @pytest.mark.parametrize(
        "failure",
        [
            ConnectionRefusedError("database down"),
            sa.exc.DBAPIError("UPDATE", None, DeadlockDetectedError("deadlock detected")),
        ],
        ids=["down", "deadlock"],
    )
    async def test_a_database_that_fails_otherwise_fails_the_batch_at_once(
        self, database_url: str, monkeypatch: pytest.MonkeyPatch, failure: Exception
    ) -> None:
        writes: list[int] = []

        async def down(self: Outbox, batch: list[Any]) -> None:
            writes.append(len(batch))
            raise failure

        monkeypatch.setattr(Outbox, "_write", down)
        async with _queued(database_url, 3, _ok) as (_, outbox):
            groups = await outbox.lease()
            results = await asyncio.gather(
                *(outbox._record(g, "delivered", None, None) for g in groups),
                return_exceptions=True,
            )
        # Not tried again one by one (each waiting its own timeout) while it is down.
        assert writes == [3]
        assert all(r is failure for r in results)

    async def test_a_waiter_whose_outcome_is_being_written_gets_that_write_s_result(
        self, database_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        write = Outbox._write

        async def slow_write(self: Outbox, batch: list[Any]) -> None:
            await asyncio.sleep(1.5)  # longer than the waiter's 1 s; the write's own is fresh
            await write(self, batch)

        monkeypatch.setattr(Outbox, "_write", slow_write)
        async with _queued(database_url, 1, _ok, record_timeout=1.0) as (_, outbox):
            ((first,),) = await outbox.lease()
            # Not a TimeoutError (then recorded again, finding its lease gone: "lease lost",
            # and the attempt never counted).
            assert await outbox._record([first], "delivered", None, None) == [("delivered",)]


class TestConnections:
    async def test_a_receiver_is_sent_one_alert_after_another_on_one_connection(
        self, database_url: str
    ) -> None:
        peers: list[Any] = []

        async def noted(request: Request) -> Response:
            peers.append(request.client)
            return JSONResponse({"ok": True, "detail": "x" * 2000})

        # One request at a time: one lease takes 4 (what 4 rounds of 1 send in flight allow).
        async with _queued(database_url, 4, noted, max_in_flight=1) as (_, outbox):
            for group in await outbox.lease():
                outbox.start(group)
            await eventually(lambda: _idle(outbox), lambda idle: idle, timeout=30)
        assert len(peers) == 4
        assert len(set(peers)) == 1


class TestMaxInFlight:
    async def test_a_receiver_is_leased_and_sent_no_more_at_once_than_its_max_in_flight(
        self, database_url: str
    ) -> None:
        arrived: Counter[str] = Counter()
        release = asyncio.Event()

        async def slow(request: Request) -> Response:
            arrived[request.headers["webhook-id"]] += 1
            await release.wait()
            return JSONResponse({"ok": True})

        async with _queued(database_url, 20, slow, max_in_flight=2) as (_, outbox):
            try:
                # What 4 rounds of 2 at once can send (the default would lease all 20).
                leased = await outbox.lease()
                assert len(leased) == 8
                for group in leased:
                    outbox.start(group)
                await eventually(lambda: total(arrived), lambda n: n == 2, timeout=30)
                await stays(lambda: total(arrived), lambda n: n == 2, seconds=1)
                release.set()
                await eventually(lambda: _idle(outbox), lambda idle: idle, timeout=30)
                assert sorted(arrived.values()) == [1] * 8
            finally:
                release.set()

    async def test_the_next_request_leaves_while_the_last_outcome_is_being_recorded(
        self, database_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        arrived: list[str] = []
        recording = asyncio.Event()
        release = asyncio.Event()
        write = Outbox._write

        async def slow_write(self: Outbox, batch: list[Any]) -> None:
            recording.set()
            await release.wait()
            await write(self, batch)

        async def noted(request: Request) -> Response:
            arrived.append(request.headers["webhook-id"])
            return JSONResponse({"ok": True})

        monkeypatch.setattr(Outbox, "_write", slow_write)
        # Records may wait far longer than the test: the second request cannot be waiting
        # for the first delivery to give up on its record.
        options: dict[str, Any] = {"lease_seconds": 600.0, "record_timeout": 120.0}
        async with _queued(database_url, 2, noted, max_in_flight=1, **options) as (_, outbox):
            try:
                for group in await outbox.lease():
                    outbox.start(group)
                await asyncio.wait_for(recording.wait(), timeout=30)
                # The first outcome is not written yet; the second request went anyway.
                await eventually(lambda: _len(arrived), lambda n: n == 2, timeout=30)
                assert outbox.recording["r"] >= 1
                release.set()
                await eventually(lambda: _idle(outbox), lambda idle: idle, timeout=30)
            finally:
                release.set()


async def _len(items: list[str]) -> int:
    return len(items)


class TestReceiverAnswers:
    @pytest.mark.parametrize(
        ("status", "outcome"),
        [(200, ("delivered", 1, None)), (400, ("failed", 1, "HTTP 400: refused by the receiver"))],
    )
    async def test_an_answer_whose_body_never_ends_is_decided_by_its_status(
        self, database_url: str, status: int, outcome: tuple[str, int, str | None]
    ) -> None:
        forever = asyncio.Event()
        calls: list[str] = []

        async def endless(request: Request) -> Response:
            calls.append(request.headers["webhook-id"])

            async def body() -> AsyncIterator[bytes]:
                yield b"accepted"
                await forever.wait()

            return StreamingResponse(body(), status_code=status)

        async with _queued(database_url, 1, endless, timeout=5.0) as (engine, outbox):
            try:
                for group in await outbox.lease():
                    outbox.start(group)
                await eventually(lambda: _idle(outbox), lambda idle: idle, timeout=30)
                async with engine.begin() as conn:
                    row = (
                        await conn.execute(
                            sa.text("SELECT status, attempts, last_error FROM notifications")
                        )
                    ).one()
            finally:
                forever.set()
        assert tuple(row) == outcome
        assert len(calls) == 1

    async def test_receivers_that_hang_leave_another_its_connections(
        self, database_url: str
    ) -> None:
        release = asyncio.Event()
        arrived: Counter[str] = Counter()

        async def hook(request: Request) -> Response:
            name = request.path_params["name"]
            arrived[name] += 1
            if name != "good":
                await release.wait()
            return JSONResponse({"ok": True})

        app = Starlette(routes=[Route("/{name}", hook, methods=["POST"])])
        engine = create_engine(DatabaseSettings(url=database_url))
        stop = asyncio.Event()
        try:
            async with http_server(app, free_port()) as url:
                # 128 requests hang at once: more than aiohttp's default pool of 100 (httpx's too).
                config = AlertingConfig.model_validate(
                    {
                        "receivers": [
                            {"name": n, "type": "webhook", "url": f"{url}/{n}", **extra}
                            for n, extra in (
                                ("hang1", {"max_in_flight": 64}),
                                ("hang2", {"max_in_flight": 64}),
                                ("good", {}),
                            )
                        ],
                        "routes": [{"receiver": "good"}],
                    }
                )
                async with engine.begin() as conn:
                    alert_id = await conn.scalar(sa.text(NEW_ALERT))
                    for name, n in (("hang1", 64), ("hang2", 64)):
                        await conn.execute(
                            sa.text(BACKLOG), {"a": alert_id, "receiver": name, "n": n}
                        )
                # Each request may hang for 120 s: no connection frees up during the test.
                task = asyncio.create_task(outbox_module.run(engine, config, stop, timeout=120))
                try:
                    await eventually(
                        lambda: _count(arrived, "hang1", "hang2"), lambda n: n == 128, timeout=30
                    )
                    async with engine.begin() as conn:
                        await conn.execute(
                            sa.text(BACKLOG), {"a": alert_id, "receiver": "good", "n": 1}
                        )
                    await eventually(lambda: _count(arrived, "good"), lambda n: n == 1, timeout=10)
                finally:
                    release.set()
                    stop.set()
                    await task
        finally:
            release.set()
            await engine.dispose()


async def _count(counts: Counter[str], *names: str) -> int:
    return sum(counts[name] for name in names)


class TestLeaseDeadline:
    async def test_units_still_queued_when_their_lease_is_nearly_out_are_given_back_unsent(
        self, database_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        arrived: Counter[str] = Counter()
        hang = asyncio.Event()

        async def slow(request: Request) -> Response:
            arrived[request.headers["webhook-id"]] += 1
            if len(arrived) == 1:
                await hang.wait()  # slower than what is left of the lease
            return JSONResponse({"ok": True})

        monkeypatch.setattr(outbox_module, "PER_RECEIVER", 1)
        # A unit may be sent up to 1 s after its lease began; the first send alone takes 1 s.
        options: dict[str, Any] = {"lease_seconds": 4.0, "timeout": 1.0, "record_timeout": 1.0}
        async with _queued(database_url, 2, slow, **options) as (engine, outbox):
            try:
                # Two passes, each leasing one, before either is sent: the second waits.
                (first,) = await outbox.lease()
                (second,) = await outbox.lease()
                outbox.start(first)
                outbox.start(second)
                await eventually(lambda: _idle(outbox), lambda idle: idle, timeout=30)
                async with engine.begin() as conn:
                    rows = {
                        str(r.id): r
                        for r in await conn.execute(
                            sa.text(
                                "SELECT id, attempts, lease_id, locked_until <= now() AS free"
                                " FROM notifications"
                            )
                        )
                    }
                # The first was attempted (cut off by the timeout); the second never sent
                # by this instance, but given back under no lease, leasable now.
                sent = str(first[0].notification_id)
                unsent = str(second[0].notification_id)
                assert dict(arrived) == {sent: 1}
                assert rows[sent].attempts == 1
                assert (rows[unsent].attempts, rows[unsent].lease_id) == (0, None)
                assert rows[unsent].free
                # Leased again, it is sent once.
                hang.set()
                (again,) = await outbox.lease()
                assert str(again[0].notification_id) == unsent
                outbox.start(again)
                await eventually(lambda: _idle(outbox), lambda idle: idle, timeout=30)
                assert dict(arrived) == {sent: 1, unsent: 1}
            finally:
                hang.set()


async def _idle(outbox: Outbox) -> bool:
    # Nothing queued, sending or being recorded: a receiver whose count leaked would stall.
    counts = [*outbox.in_flight.values(), *outbox.recording.values()]
    return not outbox.tasks and not any(outbox.queues.values()) and not any(counts)


class TestRetryAfter:
    async def test_a_receiver_asking_to_wait_is_sent_nothing_more_until_then(
        self, database_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        arrived: Counter[str] = Counter()

        async def busy(request: Request) -> Response:
            arrived[request.headers["webhook-id"]] += 1
            return Response(status_code=429, headers={"Retry-After": "30"})

        monkeypatch.setattr(outbox_module, "PER_RECEIVER", 1)
        async with _queued(database_url, 4, busy) as (engine, outbox):
            for group in await outbox.lease():
                outbox.start(group)
            await eventually(lambda: _idle(outbox), lambda idle: idle, timeout=30)
            # One request told us to wait; the other three waited, their attempts untouched.
            assert sum(arrived.values()) == 1
            async with engine.begin() as conn:
                rows = (
                    await conn.execute(
                        sa.text(
                            "SELECT attempts, lease_id,"
                            " next_attempt_at > now() + interval '20 s' AS later"
                            " FROM notifications ORDER BY attempts"
                        )
                    )
                ).all()
            assert [tuple(r) for r in rows] == [(0, None, True)] * 3 + [(1, None, True)]
            # Nor is it leased anything until then, however due its rows.
            async with engine.begin() as conn:
                await conn.execute(sa.text("UPDATE notifications SET next_attempt_at = now()"))
            assert await outbox.lease() == []
