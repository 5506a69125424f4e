"""The on-call console's pages over HTTP, against the app in-process on a real Postgres: the
queue (its order, filters and counts are the service's for the same URL), one alert's page,
its forms (recorded with the signed-in key as actor, CSRF-checked, refused without
alerts:write), silences, hostile and Japanese comments, and the catalogues."""

from __future__ import annotations

import base64
import html
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
import sqlalchemy as sa
from babel.numbers import format_currency
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from services.alerting import drops, service
from services.alerting.app import create_app
from services.alerting.config import AlertingConfig
from services.alerting.consumer import AlertHandler
from services.alerting.models import alerts as alerts_table
from services.alerting.models import silences as silences_table
from services.alerting.pages import routes
from services.alerting.rules import DropRule
from services.alerting.schemas import (
    NOTE_MAX_LENGTH,
    QueueFilters,
    QueueSort,
    QueueStatus,
    SilenceIn,
)
from services.servers import free_port
from shared import apikeys
from shared.apikeys import KeyKind, Scope
from shared.db import create_engine
from shared.events import TouchpointEvent
from shared.kafka import Decoded
from shared.privacy import Hasher
from shared.settings import (
    AlertingSettings,
    AuthSettings,
    DatabaseSettings,
    KafkaSettings,
    SlaSettings,
)
from shared.web.i18n import assert_catalogues_match, load_messages
from tests.builders import response_event
from tests.helpers import eventually, http_server, recording
from tests.processes import TEST_HASH_KEY

MESSAGES = Path(routes.__file__).parent / "messages"
DASHBOARD = "https://scores.example/dashboard"
HOSTILE = "<script>alert(1)</script>"
JAPANESE = "配送が遅すぎました。二度と使いません。👨‍👩‍👧 最悪でした"


@dataclass
class Console:
    """The app, its database, and browsers signed in with three keys."""

    app: FastAPI
    engine: AsyncEngine
    handler: AlertHandler
    hanako: httpx.AsyncClient  # alerts:read and alerts:write
    reader: httpx.AsyncClient  # alerts:read only
    api: httpx.AsyncClient  # the operator's bearer key, for /v1

    async def detractor(self, customer: str, score: int = 1, **fields: Any) -> uuid.UUID:
        """Apply one answer through the consumer's handler; return the alert it opened."""
        event = response_event(customer_id=customer, score=score, **fields)
        await self.handler([Decoded(None, event)])
        (alert,) = (await service.alerts_for_customer(self.engine, customer)).items
        return alert.id


def hidden(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found, f"no hidden {name} in the page"
    return found.group(1)


def row_ids(page: str) -> list[str]:
    return re.findall(r'<tr data-id="([0-9a-f-]+)"', page)


def facet_links(page: str) -> dict[str, int]:
    """Each facet link of the page (its query, unescaped) and the count it shows."""
    found = re.findall(
        r'<a href="(/console\?[^"]*)"[^>]*>\s*<span class="facet-name"[^>]*>[^<]*</span>\s*'
        r'<data class="num count" value="(\d+)"',
        page,
    )
    return {html.unescape(href): int(n) for href, n in found}


async def sign_in(client: httpx.AsyncClient, key: str) -> None:
    form = await client.get("/signin")
    response = await client.post(
        "/signin", data={"api_key": key, "csrf_token": hidden(form.text, "csrf_token")}
    )
    assert response.status_code == 303, response.text


async def stored_key(engine: AsyncEngine, name: str, *scopes: Scope) -> str:
    async with engine.begin() as conn:
        key, _ = await apikeys.create_key(conn, name=name, kind=KeyKind.SECRET, scopes=scopes)
    return key


@asynccontextmanager
async def browsers(app: FastAPI, api_key: str) -> AsyncIterator[list[httpx.AsyncClient]]:
    transport = httpx.ASGITransport(app=app)

    def client(**kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=transport, base_url="http://testserver", follow_redirects=False, **kwargs
        )

    async with (
        app.router.lifespan_context(app),
        client() as hanako,
        client() as reader,
        client(headers={"Authorization": f"Bearer {api_key}"}) as api,
    ):
        yield [hanako, reader, api]


ConsoleFactory = Callable[..., AbstractAsyncContextManager[Console]]


@pytest.fixture
def open_console(
    kafka_settings: KafkaSettings,
    database_url: str,
    auth: AuthSettings,
    api_key: str,
    alerting_settings: AlertingSettings,
) -> ConsoleFactory:
    """Start the app (with a routing config, if given) and sign its browsers in."""

    @asynccontextmanager
    async def make(config: AlertingConfig | None = None) -> AsyncIterator[Console]:
        engine = create_engine(DatabaseSettings(url=database_url))
        settings = alerting_settings.model_copy(update={"dashboard_url": DASHBOARD})
        database = DatabaseSettings(url=database_url)
        app = create_app(kafka_settings, database, auth, settings, None, config)
        writer_key = await stored_key(engine, "hanako", Scope.ALERTS_READ, Scope.ALERTS_WRITE)
        reader_key = await stored_key(engine, "yomu", Scope.ALERTS_READ)
        hasher = Hasher(TEST_HASH_KEY.encode())
        handler = AlertHandler(engine, SlaSettings(), config, hasher=hasher)
        try:
            async with browsers(app, api_key) as (hanako, reader, api):
                await sign_in(hanako, writer_key)
                await sign_in(reader, reader_key)
                yield Console(app, engine, handler, hanako, reader, api)
        finally:
            await engine.dispose()

    return make


@pytest.fixture
async def console(open_console: ConsoleFactory) -> AsyncIterator[Console]:
    async with open_console() as opened:
        yield opened


async def seed(console: Console) -> dict[str, uuid.UUID]:
    """Alerts of both severities, channels and locations, opened one after another."""
    ids = {}
    seeds: list[tuple[str, int, dict[str, Any]]] = [
        ("old-warning", 5, {"channel": "sms", "segments": {"location": "tokyo"}}),
        ("old-critical", 1, {"channel": "web", "segments": {"location": "osaka"}}),
        ("new-warning", 6, {"channel": "web", "segments": {"location": "tokyo"}}),
        ("new-critical", 0, {"channel": "sms"}),
        ("csat", 1, {"metric": "csat", "scale": 5, "channel": "email"}),
    ]
    for name, score, fields in seeds:
        ids[name] = await console.detractor(name, score, **fields)
    return ids


class TestQueue:
    async def test_most_severe_then_oldest_as_the_service_orders_it(self, console: Console) -> None:
        ids = await seed(console)
        page = await console.hanako.get("/console")
        assert page.status_code == 200, page.text
        shown = row_ids(page.text)
        expected = await service.queue(console.engine, QueueFilters(), QueueSort.SEVERITY, 50)
        assert shown == [str(a.id) for a in expected.items]
        critical_first = [ids["old-critical"], ids["new-critical"]]
        assert shown[:2] == [str(i) for i in critical_first]
        assert shown.index(str(ids["old-warning"])) < shown.index(str(ids["new-warning"]))

    @pytest.mark.parametrize(
        ("query", "filters"),
        [
            ("", {}),
            ("channel=sms", {"channel": "sms"}),
            ("location=tokyo", {"location": "tokyo"}),
            ("rule=low_csat", {"rule": "low_csat"}),
            ("unassigned=true", {"unassigned": True}),
            ("assignee=hanako&status=all", {"assignee": "hanako", "status": QueueStatus.ALL}),
            ("status=acknowledged", {"status": QueueStatus.ACKNOWLEDGED}),
            ("status=unresolved&channel=web", {"status": QueueStatus.UNRESOLVED, "channel": "web"}),
        ],
    )
    async def test_filters_and_counts_are_the_services_for_the_same_url(
        self, console: Console, query: str, filters: dict[str, Any]
    ) -> None:
        ids = await seed(console)
        await console.hanako.post(
            f"/console/alerts/{ids['old-critical']}/assign",
            data={"csrf_token": await self._token(console), "to_me": "1"},
        )
        await console.hanako.post(
            f"/console/alerts/{ids['new-warning']}/ack",
            data={"csrf_token": await self._token(console)},
        )
        chosen = QueueFilters(**filters)
        page = await console.hanako.get("/console?" + query)
        assert page.status_code == 200, page.text
        expected = await service.queue(console.engine, chosen, QueueSort.SEVERITY, 50)
        assert row_ids(page.text) == [str(a.id) for a in expected.items]

        counts = await service.queue_counts(console.engine, chosen)
        live = (await console.hanako.get("/console/live?" + query)).json()
        assert live["counts"] == counts.model_dump(mode="json")
        assert live["ids"] == [str(a.id) for a in expected.items]
        # Every facet value is a link whose count is the service's, and following the link
        # shows that many alerts; a chosen value is marked and its link removes it.
        links = facet_links(page.text)
        for facet in ("rule", "channel", "location", "assignee"):
            for value in getattr(counts, facet).values:
                key = "unassigned" if value.value is None else facet
                wanted = "true" if value.value is None else value.value
                if value.value is None and facet != "assignee":
                    continue  # "no location" is counted but cannot be chosen
                if _chosen(chosen, facet, value.value):
                    assert 'aria-current="true"' in page.text
                    continue
                (href,) = [
                    h for h in links if dict(parse_qsl(urlsplit(h).query)).get(key) == wanted
                ]
                assert links[href] == value.count
                followed = await console.hanako.get(href)
                assert len(row_ids(followed.text)) == value.count, href

    async def _token(self, console: Console) -> str:
        return hidden((await console.hanako.get("/console")).text, "csrf_token")

    async def test_the_empty_queue_says_what_it_means(self, console: Console) -> None:
        page = await console.hanako.get("/console")
        assert "No open alerts. New detractors appear here within seconds." in page.text
        ja = await console.hanako.get("/console", headers={"Accept-Language": "ja"})
        assert '<html lang="ja">' in ja.text
        assert "未対応のアラートはありません" in ja.text

    async def test_pages_follow_by_cursor(self, console: Console) -> None:
        for n in range(routes.PAGE_SIZE + 3):
            await console.handler([Decoded(None, response_event(customer_id=f"c{n}", score=2))])
        first = await console.hanako.get("/console")
        nxt = re.search(r'<a href="([^"]*cursor=[^"]*)" rel="next"', first.text)
        assert nxt
        second = await console.hanako.get(html.unescape(nxt.group(1)))
        assert len(row_ids(first.text)) == routes.PAGE_SIZE
        assert len(row_ids(second.text)) == 3
        assert not set(row_ids(first.text)) & set(row_ids(second.text))

    async def test_a_bad_link_is_a_page_that_says_so(self, console: Console) -> None:
        for query in ("status=nonsense", "cursor=forged", "assignee=a&unassigned=true"):
            page = await console.hanako.get("/console?" + query)
            assert page.status_code == 422, query
            assert page.headers["content-type"].startswith("text/html")

    async def test_a_forged_cursor_is_a_422_naming_it_never_a_500(self, console: Console) -> None:
        for after in (
            ["0", "2026-05-01T00:00:00+00:00", 5],  # uuid.UUID(5) raised AttributeError
            ["0", "0001-01-01T00:00:00+14:00", str(uuid.uuid4())],  # overflowed in asyncpg
        ):
            text = json.dumps({"sort": "severity", "after": after}).encode()
            cursor = base64.urlsafe_b64encode(text).decode().rstrip("=")
            api = await console.api.get("/v1/alerts", params={"sort": "severity", "cursor": cursor})
            assert (api.status_code, api.json()["field"]) == (422, "cursor"), api.text
            page = await console.hanako.get("/console", params={"cursor": cursor})
            assert page.status_code == 422
            assert page.headers["content-type"].startswith("text/html")
            assert "cursor" in page.text

    async def test_the_fragment_and_live_answer_for_the_same_filters(
        self, console: Console
    ) -> None:
        ids = await seed(console)
        fragment = await console.hanako.get("/console/queue?channel=sms")
        assert fragment.status_code == 200
        assert "<html" not in fragment.text
        assert set(row_ids(fragment.text)) == {str(ids["old-warning"]), str(ids["new-critical"])}
        # Its links lead to the queue page, not to the fragment.
        assert 'href="/console/queue' not in fragment.text
        live = (await console.hanako.get("/console/live?channel=sms")).json()
        assert live["signature"] in fragment.text
        before = live["signature"]
        await console.detractor("newcomer", 0, channel="sms")
        after = (await console.hanako.get("/console/live?channel=sms")).json()
        assert after["signature"] != before
        assert len(after["ids"]) == 3


class TestLive:
    async def test_unchanged_alerts_cost_one_small_query_and_any_change_is_seen(
        self, console: Console
    ) -> None:
        await seed(console)
        first = (await console.hanako.get("/console/live")).json()
        with recording(console.app.state.engine) as seen:
            again = (await console.hanako.get("/console/live")).json()
        assert again == first
        on_alerts = [q for q in seen.statements if re.search(r"\bFROM alerts\b", q)]
        assert on_alerts == []  # only the version, no queue and no facet
        assert len([q for q in seen.statements if "alerts_version" in q]) == 1

        await console.detractor("newcomer", 0)
        moved = (await console.hanako.get("/console/live")).json()
        assert moved["signature"] != first["signature"]
        assert len(moved["ids"]) == len(first["ids"]) + 1

    async def test_an_erased_customer_leaves_an_open_wallboard(self, console: Console) -> None:
        await console.detractor("wallboard-jane", 0, comment="Jane here, call me")
        before = (await console.hanako.get("/console/live")).json()
        hasher = Hasher(TEST_HASH_KEY.encode())
        await service.erase_customer(console.engine, hasher, "wallboard-jane")
        after = (await console.hanako.get("/console/live")).json()
        # Same ids, statuses and counts: only the customer's id and comment changed.
        assert after["ids"] == before["ids"]
        assert after["signature"] != before["signature"]
        fragment = (await console.hanako.get("/console/queue")).text
        assert after["signature"] in fragment
        assert "wallboard-jane" not in fragment
        assert "Jane here" not in fragment


def _chosen(filters: QueueFilters, facet: str, value: str | None) -> bool:
    if value is None:
        return filters.unassigned
    return bool(getattr(filters, facet) == value)


class TestAlertPage:
    async def test_what_happened_the_customer_and_the_links(self, console: Console) -> None:
        await console.handler(
            [
                Decoded(
                    None,
                    TouchpointEvent.model_validate(
                        {
                            "event_id": uuid.uuid4(),
                            "occurred_at": datetime.now(UTC) - timedelta(hours=2),
                            "received_at": datetime.now(UTC),
                            "source": "zendesk",
                            "channel": "email",
                            "customer_id": "kim/0",
                            "type": "ticket.created",
                            "ticket_id": "T-77",
                        }
                    ),
                )
            ]
        )
        first = await console.detractor("kim/0", 2, comment="first", reasons=["price"])
        await console.hanako.post(
            f"/console/alerts/{first}/resolve",
            data={
                "csrf_token": hidden((await console.hanako.get("/console")).text, "csrf_token"),
                "note": "called",
            },
        )
        alert_id = await self._second(console)
        page = await console.hanako.get(f"/console/alerts/{alert_id}")
        assert page.status_code == 200, page.text
        text = page.text
        assert "Delivery speed" in text  # the reason, by its name
        assert "Ticket created" in text  # the customer's ticket event
        customer = "https://scores.example/dashboard/customers/kim%2F0"
        assert text.count(f'href="{customer}"') >= 3  # the header, each answer, each ticket
        assert f'href="/console/alerts/{first}"' in text  # their other alert
        assert "History" in text
        assert "Opened" in text
        assert "Where it was notified" in text

    async def test_a_detractors_answers_are_marked_as_the_scorer_counts_them(
        self, console: Console
    ) -> None:
        # The edges of the NPS categories, and a CSAT 1 (not an NPS detractor).
        for score, metric, scale in ((6, "nps", 10), (7, "nps", 10), (1, "csat", 5)):
            await console.handler(
                [
                    Decoded(
                        None,
                        response_event(customer_id="lee", score=score, metric=metric, scale=scale),
                    )
                ]
            )
        alert_id = (await service.alerts_for_customer(console.engine, "lee")).items[0].id
        page = await console.hanako.get(f"/console/alerts/{alert_id}")
        assert page.status_code == 200, page.text
        (touches,) = re.findall(r'<ol class="touches">(.*?)</ol>', page.text, flags=re.S)
        badges = re.findall(
            r'<span class="badge (badge-\w+)">[^<]*</span>.*?<data class="num" value="(\d+)">',
            touches,
            flags=re.S,
        )
        assert sorted((int(score), badge) for badge, score in badges) == [
            (1, "badge-info"),
            (6, "badge-detractor"),
            (7, "badge-info"),
        ]

    async def _second(self, console: Console) -> uuid.UUID:
        await console.handler(
            [
                Decoded(
                    None,
                    response_event(
                        customer_id="kim/0", score=1, comment="again", reasons=["delivery_speed"]
                    ),
                )
            ]
        )
        page = await service.alerts_for_customer(console.engine, "kim/0")
        return next(a.id for a in page.items if a.status == "open")

    @pytest.mark.parametrize(
        ("lang", "heading", "orders", "badge", "why"),
        [
            (
                "en",
                "12 months up to the answer",
                "2 orders",
                "High value",
                "High-value customer: {} in the 12 months up to the answer (threshold {}).",
            ),
            (
                "ja",
                "回答までの12か月の購入",
                "注文2件",
                "高額顧客",
                "高額顧客: 回答までの12か月で{}(基準 {})。",
            ),
        ],
    )
    async def test_the_customers_value_in_the_viewers_language(
        self,
        open_console: ConsoleFactory,
        lang: str,
        heading: str,
        orders: str,
        badge: str,
        why: str,
    ) -> None:
        config = AlertingConfig.model_validate({"high_value": {"JPY": 100000}})
        async with open_console(config) as console:
            bought = [("o-1", "80000"), ("o-2", "40000"), ("o-3", "5.00")]
            await console.handler(
                [
                    Decoded(
                        None,
                        TouchpointEvent.model_validate(
                            {
                                "event_id": uuid.uuid4(),
                                "occurred_at": datetime.now(UTC) - timedelta(days=9),
                                "received_at": datetime.now(UTC),
                                "source": "shop",
                                "channel": "web",
                                "customer_id": "pia",
                                "type": "order.completed",
                                "order_id": order_id,
                                "amount": amount,
                                "currency": "USD" if "." in amount else "JPY",
                            }
                        ),
                    )
                    for order_id, amount in bought
                ]
            )
            alert_id = await console.detractor("pia", 5)
            page = await console.hanako.get(f"/console/alerts/{alert_id}", params={"lang": lang})
            assert page.status_code == 200, page.text
            text = page.text
            yen = format_currency(Decimal("120000"), "JPY", locale=lang)
            threshold = format_currency(Decimal("100000"), "JPY", locale=lang)
            dollars = format_currency(Decimal("5.00"), "USD", locale=lang)
            assert heading in text
            assert f'<data value="120000" data-currency="JPY">{yen}</data>' in text
            assert f'<data value="5.00" data-currency="USD">{dollars}</data>' in text
            assert orders in text
            assert f"<p>{why.format(yen, threshold)}</p>" in text
            # Critical for its value, though an NPS 5 is a warning by the rules: the yen line
            # carries the High value badge (the severity badge says "critical" apart).
            high = f'<span class="badge badge-critical">{badge}</span>'
            assert re.search(rf"{re.escape(yen)}</data>\s*·[^<]*{re.escape(high)}", text), text
            if lang == "ja":
                assert yen == "￥120,000"  # Babel's Japanese format, not the English one

            plain = await console.detractor("quinn", 5)
            page = await console.hanako.get(f"/console/alerts/{plain}", params={"lang": lang})
            assert heading in page.text
            assert high not in page.text
            assert why.split("{}")[0] not in page.text

    async def test_only_an_answers_alert_shows_a_value(self, console: Console) -> None:
        heading = "12 months up to the answer"
        async with console.engine.begin() as conn:
            rule = DropRule(metric="nps", window="7d", below=30)
            assert await drops._open(conn, rule, "all", "NPS is 12, below 30", None) == 1
        (drop,) = (await service.queue(console.engine)).items
        page = await console.hanako.get(f"/console/alerts/{drop.id}")
        assert page.status_code == 200, page.text
        assert drop.metric == "nps"
        assert heading not in page.text
        assert 'class="value"' not in page.text
        # An answer's alert opened before alerts carried a value: nothing, rather than
        # "no orders".
        opened = await console.detractor("ria", 5)
        async with console.engine.begin() as conn:
            await conn.execute(sa.update(alerts_table).values(value=None))
        page = await console.hanako.get(f"/console/alerts/{opened}")
        assert page.status_code == 200, page.text
        assert heading not in page.text
        assert "No orders" not in page.text

    async def test_viewing_locks_nothing_and_reads_on_one_connection(
        self, console: Console
    ) -> None:
        alert_id = await console.detractor("c-viewed", 0)
        await console.hanako.get(f"/console/alerts/{alert_id}")  # the session is cached
        with recording(console.app.state.engine) as seen:
            page = await console.hanako.get(f"/console/alerts/{alert_id}")
        assert page.status_code == 200
        assert [s for s in seen.statements if "FOR UPDATE" in s.upper()] == []
        page_reads = [
            s for s in seen.statements if re.search(r"\bFROM (alerts|alert_history)\b", s)
        ]
        assert page_reads  # it did read them
        assert seen.checkouts <= 2, seen.checkouts  # the session's look-up, and the page

    async def test_unknown_and_malformed_ids(self, console: Console) -> None:
        unknown = await console.hanako.get(f"/console/alerts/{uuid.uuid4()}")
        assert unknown.status_code == 404
        assert unknown.headers["content-type"].startswith("text/html")
        assert "Not found" in unknown.text
        malformed = await console.hanako.get("/console/alerts/not-an-id")
        assert malformed.status_code == 422
        assert malformed.headers["content-type"].startswith("text/html")

    async def test_a_hostile_comment_is_escaped_and_japanese_intact(self, console: Console) -> None:
        hostile = await console.detractor("mallory", 0, comment=HOSTILE + "\nsecond line")
        japanese = await console.detractor("hanako-san", 0, comment=JAPANESE)
        queue = (await console.hanako.get("/console")).text
        page = (await console.hanako.get(f"/console/alerts/{hostile}")).text
        for text in (queue, page):
            assert HOSTILE not in text
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
        assert JAPANESE in queue
        assert JAPANESE in (await console.hanako.get(f"/console/alerts/{japanese}")).text
        # The queue shows the first line only; the alert's page all of it.
        assert "second line" not in queue
        assert "second line" in page


class TestNotifications:
    async def test_each_delivery_and_its_outcome(self, open_console: ConsoleFactory) -> None:
        receiver = Starlette(
            routes=[
                Route("/ok", lambda r: Response(status_code=204), methods=["POST"]),
                Route("/gone", lambda r: Response(status_code=410), methods=["POST"]),
            ]
        )
        port = free_port()
        config = AlertingConfig.model_validate(
            {
                "receivers": [
                    {"name": "oncall-chat", "type": "slack", "url": f"http://127.0.0.1:{port}/ok"},
                    {"name": "old-pager", "type": "slack", "url": f"http://127.0.0.1:{port}/gone"},
                ],
                "routes": [
                    {"receiver": "oncall-chat", "continue": True},
                    {"receiver": "old-pager"},
                ],
            }
        )
        async with http_server(receiver, port), open_console(config) as console:
            alert_id = await console.detractor("c-notified", 0)

            async def outcomes() -> dict[str, str]:
                found = await service.notifications(console.engine, alert_id)
                return {n.receiver: n.status for n in found.items}

            await eventually(
                outcomes, lambda o: o == {"oncall-chat": "delivered", "old-pager": "failed"}
            )
            page = (await console.hanako.get(f"/console/alerts/{alert_id}")).text
            assert "oncall-chat" in page
            assert "Delivered" in page
            assert "old-pager" in page
            assert "HTTP 410: refused by the receiver" in page


class TestActions:
    async def test_acknowledge_then_resolve_records_the_signed_in_key(
        self, console: Console
    ) -> None:
        alert_id = await console.detractor("c-ack", 0)
        page = await console.hanako.get(f"/console/alerts/{alert_id}")
        token = hidden(page.text, "csrf_token")
        ack = await console.hanako.post(
            f"/console/alerts/{alert_id}/ack", data={"csrf_token": token}
        )
        assert ack.status_code == 303
        assert ack.headers["location"] == f"/console/alerts/{alert_id}?done=acknowledged"
        confirmed = await console.hanako.get(ack.headers["location"])
        assert "Acknowledged: the alert stops escalating." in confirmed.text

        body = (await console.api.get(f"/v1/alerts/{alert_id}")).json()
        assert body["status"] == "acknowledged"
        assert (body["acknowledged_by"], body["acknowledged_actor"]) == ("hanako", "hanako")

        resolved = await console.hanako.post(
            f"/console/alerts/{alert_id}/resolve",
            data={"csrf_token": token, "note": "Called her back; refunded the fee. 返金済み"},
        )
        assert resolved.status_code == 303
        assert resolved.headers["location"].endswith("?done=resolved")
        body = (await console.api.get(f"/v1/alerts/{alert_id}")).json()
        assert body["status"] == "resolved"
        assert body["note"] == "Called her back; refunded the fee. 返金済み"
        assert (body["resolved_by"], body["resolved_actor"]) == ("hanako", "hanako")
        history = (await console.api.get(f"/v1/alerts/{alert_id}/history")).json()["items"]
        assert [(e["action"], e["actor"]) for e in history][-2:] == [
            ("acknowledged", "hanako"),
            ("resolved", "hanako"),
        ]

        # Acting on it again: acknowledging a resolved alert is the service's 409, as a page.
        again = await console.hanako.post(
            f"/console/alerts/{alert_id}/ack", data={"csrf_token": token}
        )
        assert again.status_code == 409
        assert "this alert is resolved already" in again.text
        twice = await console.hanako.post(
            f"/console/alerts/{alert_id}/resolve", data={"csrf_token": token, "note": "other"}
        )
        assert twice.headers["location"].endswith("?done=already_resolved")
        assert (await console.api.get(f"/v1/alerts/{alert_id}")).json() == body

    async def test_resolving_what_someone_just_resolved_says_so_and_keeps_the_note(
        self, console: Console
    ) -> None:
        alert_id = await console.detractor("c-race", 0)
        url = f"/console/alerts/{alert_id}"
        token = hidden((await console.hanako.get(url)).text, "csrf_token")
        # Hanako has the page open; meanwhile the operator resolves it.
        first = await console.api.post(f"/v1/alerts/{alert_id}/resolve", json={"note": "done"})
        assert first.status_code == 200
        late = await console.hanako.post(
            url + "/resolve", data={"csrf_token": token, "note": "Called back; 返金済み"}
        )
        assert late.status_code == 303
        assert late.headers["location"] == f"{url}?done=already_resolved"
        shown = (await console.hanako.get(late.headers["location"])).text
        assert "Already resolved by operator at " in shown
        assert "your note was added to the history as a comment" in shown
        ja = await console.hanako.get(late.headers["location"], headers={"Accept-Language": "ja"})
        assert "operator が " in ja.text
        assert (await console.api.get(f"/v1/alerts/{alert_id}")).json() == first.json()
        history = (await console.api.get(f"/v1/alerts/{alert_id}/history")).json()["items"]
        assert [(e["action"], e["actor"], e["note"]) for e in history][1:] == [
            ("resolved", "operator", "done"),
            ("commented", "hanako", "Called back; 返金済み"),
        ]

    async def test_acknowledging_what_someone_just_took_says_who(self, console: Console) -> None:
        alert_id = await console.detractor("c-race-ack", 0)
        url = f"/console/alerts/{alert_id}"
        token = hidden((await console.hanako.get(url)).text, "csrf_token")
        taken = await console.api.post(f"/v1/alerts/{alert_id}/ack", json={"by": "sato"})
        assert taken.status_code == 200
        late = await console.hanako.post(url + "/ack", data={"csrf_token": token})
        assert late.headers["location"] == f"{url}?done=already_acknowledged"
        shown = (await console.hanako.get(late.headers["location"])).text
        assert "Already acknowledged by sato at " in shown
        assert (await console.api.get(f"/v1/alerts/{alert_id}")).json() == taken.json()

    async def test_resolve_without_a_note_is_refused_and_changes_nothing(
        self, console: Console
    ) -> None:
        alert_id = await console.detractor("c-note", 0)
        before = (await console.api.get(f"/v1/alerts/{alert_id}")).json()
        token = hidden((await console.hanako.get("/console")).text, "csrf_token")
        for note in ("", "   \n  "):
            refused = await console.hanako.post(
                f"/console/alerts/{alert_id}/resolve", data={"csrf_token": token, "note": note}
            )
            assert refused.status_code == 422
            assert 'id="note-error"' in refused.text
            assert 'aria-invalid="true" aria-describedby="note-error note-hint"' in refused.text
        assert (await console.api.get(f"/v1/alerts/{alert_id}")).json() == before

    async def test_a_long_japanese_note_is_kept_and_too_large_a_form_is_a_page(
        self, console: Console
    ) -> None:
        alert_id = await console.detractor("c-long", 0)
        url = f"/console/alerts/{alert_id}"
        page = await console.hanako.get(url)
        token = hidden(page.text, "csrf_token")
        assert f'maxlength="{NOTE_MAX_LENGTH}"' in page.text
        note = ("返金済み。" * 400)[:2000]  # about 18 KB urlencoded: over the old 16 KiB
        resolved = await console.hanako.post(
            url + "/resolve", data={"csrf_token": token, "note": note}
        )
        assert resolved.status_code == 303, resolved.text
        assert (await console.api.get(f"/v1/alerts/{alert_id}")).json()["note"] == note

        other = await console.detractor("c-longer", 0)
        huge = "😀" * NOTE_MAX_LENGTH + "x" * 20_000  # past the console's 128 KiB
        refused = await console.hanako.post(
            f"/console/alerts/{other}/comment", data={"csrf_token": token, "text": huge}
        )
        assert refused.status_code == 413
        assert refused.headers["content-type"].startswith("text/html")
        assert "nothing was saved" in refused.text
        as_json = await console.hanako.post(f"/console/alerts/{other}/comment", json={"text": "x"})
        assert as_json.status_code == 415
        assert as_json.headers["content-type"].startswith("text/html")
        # The JSON API keeps its JSON refusals.
        api = await console.api.post(
            f"/v1/alerts/{other}/comments", content=b"x", headers={"Content-Type": "text/plain"}
        )
        assert (api.status_code, api.headers["content-type"]) == (415, "application/json")

    async def test_assign_and_comment(self, console: Console) -> None:
        alert_id = await console.detractor("c-assign", 0)
        token = hidden((await console.hanako.get("/console")).text, "csrf_token")
        url = f"/console/alerts/{alert_id}"
        mine = await console.hanako.post(url + "/assign", data={"csrf_token": token, "to_me": "1"})
        assert mine.headers["location"].endswith("?done=assigned")
        assert (await console.api.get(f"/v1/alerts/{alert_id}")).json()["assignee"] == "hanako"
        other = await console.hanako.post(url + "/assign", data={"csrf_token": token, "to": "佐藤"})
        assert other.status_code == 303
        assert (await console.api.get(f"/v1/alerts/{alert_id}")).json()["assignee"] == "佐藤"
        empty = await console.hanako.post(url + "/assign", data={"csrf_token": token, "to": " "})
        assert empty.status_code == 422
        said = await console.hanako.post(
            url + "/comment", data={"csrf_token": token, "text": HOSTILE}
        )
        assert said.headers["location"].endswith("?done=commented")
        page = (await console.hanako.get(url)).text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert HOSTILE not in page
        history = (await console.api.get(f"/v1/alerts/{alert_id}/history")).json()["items"]
        assert [(e["action"], e["actor"], e["note"]) for e in history][-1] == (
            "commented",
            "hanako",
            HOSTILE,
        )

    async def test_a_post_without_the_csrf_token_is_refused(self, console: Console) -> None:
        alert_id = await console.detractor("c-csrf", 0)
        before = (await console.api.get(f"/v1/alerts/{alert_id}")).json()
        for action, data in [
            ("ack", {"note": ""}),
            ("resolve", {"note": "x"}),
            ("assign", {"to": "x"}),
            ("comment", {"text": "x"}),
        ]:
            for token in ({}, {"csrf_token": "guessed"}):
                refused = await console.hanako.post(
                    f"/console/alerts/{alert_id}/{action}", data=data | token
                )
                assert refused.status_code == 403, (action, token)
        assert (await console.api.get(f"/v1/alerts/{alert_id}")).json() == before
        history = (await console.api.get(f"/v1/alerts/{alert_id}/history")).json()["items"]
        assert [e["action"] for e in history] == ["opened"]

    async def test_forms_post_with_their_origin_and_another_sites_are_refused(
        self, console: Console
    ) -> None:
        alert_id = await console.detractor("c-origin", 0)
        page = await console.hanako.get(f"/console/alerts/{alert_id}")
        # Under "no-referrer" a browser would post every form with Origin: null.
        assert page.headers["referrer-policy"] == "same-origin"
        token = hidden(page.text, "csrf_token")
        url = f"/console/alerts/{alert_id}/comment"
        for origin in ("null", "http://evil.example"):
            refused = await console.hanako.post(
                url, data={"csrf_token": token, "text": "x"}, headers={"Origin": origin}
            )
            assert refused.status_code == 403, origin
        same = await console.hanako.post(
            url,
            data={"csrf_token": token, "text": "x"},
            headers={"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},
        )
        assert same.status_code == 303

    async def test_a_key_without_alerts_write_sees_no_forms_and_is_refused(
        self, console: Console
    ) -> None:
        alert_id = await console.detractor("c-read", 0)
        page = await console.reader.get(f"/console/alerts/{alert_id}")
        assert page.status_code == 200
        assert "acting needs alerts:write" in page.text
        forms = re.findall(r'<form method="post" action="([^"]+)"', page.text)
        assert forms == []  # only the sign-out form, which has its own markup
        token = hidden(page.text, "csrf_token")
        for action in ("ack", "resolve", "assign", "comment", "silence"):
            refused = await console.reader.post(
                f"/console/alerts/{alert_id}/{action}",
                data={"csrf_token": token, "note": "x", "to": "x", "text": "x", "comment": "x"},
            )
            assert refused.status_code == 403, action
        assert (await console.api.get(f"/v1/alerts/{alert_id}")).json()["status"] == "open"
        silences = await console.reader.get("/console/silences")
        assert "/expire" not in silences.text


class TestSilences:
    async def test_a_silence_from_an_alerts_fields_is_listed_and_expired(
        self, console: Console
    ) -> None:
        alert_id = await console.detractor("c-quiet", 0, channel="sms")
        page = await console.hanako.get(f"/console/alerts/{alert_id}")
        token = hidden(page.text, "csrf_token")
        assert 'id="match-rule" name="field" value="rule" checked' in page.text
        assert 'id="match-channel" name="field" value="channel" >' in page.text
        url = f"/console/alerts/{alert_id}/silence"
        refused = await console.hanako.post(
            url, data={"csrf_token": token, "minutes": "60", "comment": ""}
        )
        assert refused.status_code == 422
        assert 'id="comment-error"' in refused.text
        assert 'id="field-error"' in refused.text
        assert (await service.list_silences(console.engine, active=False)).items == []

        created = await console.hanako.post(
            url,
            data={
                "csrf_token": token,
                "field": ["rule", "channel", "not_a_field"],
                "minutes": "240",
                "comment": "SMS gateway incident; calling everyone back",
            },
        )
        assert created.status_code == 303
        assert created.headers["location"] == "/console/silences?done=silenced"
        (silence,) = (await service.list_silences(console.engine)).items
        assert silence.matchers == {"rule": "detractor", "channel": "sms"}
        assert silence.actor == "hanako"
        assert (
            timedelta(minutes=239) < silence.ends_at - silence.starts_at <= timedelta(minutes=241)
        )

        listed = await console.hanako.get(created.headers["location"])
        assert "SMS gateway incident; calling everyone back" in listed.text
        assert "Silence created" in listed.text
        expire = f"/console/silences/{silence.id}/expire"
        assert f'action="{expire}" data-confirm=' in listed.text
        assert (await console.hanako.post(expire, data={"csrf_token": ""})).status_code == 403
        ended = await console.hanako.post(expire, data={"csrf_token": token})
        assert ended.headers["location"] == "/console/silences?done=expired"
        assert (await service.list_silences(console.engine)).items == []
        after = (await console.hanako.get("/console/silences")).text
        assert "Ended in the last 7 days" in after
        assert "ended by hanako" in after
        async with console.engine.connect() as conn:
            expired_by = await conn.scalar(sa.select(silences_table.c.expired_by))
        assert expired_by == "hanako"

    async def test_ending_what_someone_just_ended_says_so(self, console: Console) -> None:
        alert_id = await console.detractor("c-quiet-race", 0)
        page = await console.hanako.get(f"/console/alerts/{alert_id}")
        token = hidden(page.text, "csrf_token")
        await console.hanako.post(
            f"/console/alerts/{alert_id}/silence",
            data={"csrf_token": token, "field": "rule", "minutes": "60", "comment": "storm"},
        )
        (silence,) = (await service.list_silences(console.engine)).items
        # The operator ends it while hanako's list is open.
        assert (await console.api.delete(f"/v1/silences/{silence.id}")).status_code == 200
        late = await console.hanako.post(
            f"/console/silences/{silence.id}/expire", data={"csrf_token": token}
        )
        assert late.headers["location"] == "/console/silences?done=already_expired"
        shown = (await console.hanako.get(late.headers["location"])).text
        assert "This silence had already ended: nothing changed." in shown
        assert "ended by operator" in shown

    async def test_a_silence_can_match_the_longest_customer_id(self, console: Console) -> None:
        longest = "c" * 256  # what the events accept
        alert_id = await console.detractor(longest, 0)
        page = await console.hanako.get(f"/console/alerts/{alert_id}")
        token = hidden(page.text, "csrf_token")
        created = await console.hanako.post(
            f"/console/alerts/{alert_id}/silence",
            data={
                "csrf_token": token,
                "field": ["rule", "customer_id"],
                "minutes": "60",
                "comment": "x",
            },
        )
        assert created.status_code == 303, created.text
        (silence,) = (await service.list_silences(console.engine)).items
        assert silence.matchers["customer_id"] == longest

    async def test_a_matcher_the_schema_refuses_is_shown_beside_the_fields(
        self, console: Console
    ) -> None:
        alert_id = await console.detractor("c-long-location", 0)
        async with console.engine.begin() as conn:
            await conn.execute(
                sa.text("UPDATE alerts SET location = repeat('x', 300) WHERE id = :a"),
                {"a": alert_id},
            )
        token = hidden((await console.hanako.get("/console")).text, "csrf_token")
        refused = await console.hanako.post(
            f"/console/alerts/{alert_id}/silence",
            data={"csrf_token": token, "field": "location", "minutes": "60", "comment": "x"},
        )
        assert refused.status_code == 422
        assert 'id="field-error"' in refused.text
        assert (await service.list_silences(console.engine, active=False)).items == []

    async def test_an_ended_silence_is_never_ended_again(self, console: Console) -> None:
        async with console.engine.begin() as conn:
            silence_id = await conn.scalar(
                sa.text(
                    "INSERT INTO silences (id, matchers, ends_at, created_by, comment, actor, "
                    'expired_at, expired_by) VALUES (gen_random_uuid(), \'{"rule": "x"}\', '
                    "now() + interval '1 hour', 'sato', 'x', 'sato', now(), 'sato') RETURNING id"
                )
            )
        ended = await service.expire_silence(console.engine, silence_id, service.Actor("hanako"))
        assert not ended.changed
        assert ended.silence.expired_by == "sato"

    async def test_past_the_newest_500_the_list_says_there_are_more(self, console: Console) -> None:
        async with console.engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "INSERT INTO silences (id, matchers, ends_at, created_by, comment, actor, "
                    'created_at) SELECT gen_random_uuid(), \'{"rule": "x"}\', '
                    "now() + interval '1 hour', 'sato', 'storm ' || n, 'sato', "
                    "now() - n * interval '1 second' FROM generate_series(1, 501) AS n"
                )
            )
        listed = await service.list_silences(console.engine)
        assert (len(listed.items), listed.more) == (500, True)
        page = (await console.hanako.get("/console/silences")).text
        assert "Only the newest 500 silences are listed" in page
        assert "storm 500<" in page
        api = (await console.api.get("/v1/silences")).json()
        assert (len(api["items"]), api["more"]) == (500, True)


# Every form the console posts: the route (under an alert or a silence) and a valid body.
POSTS = [
    ("alert", "ack", {}),
    ("alert", "assign", {"to": "x"}),
    ("alert", "comment", {"text": "x"}),
    ("alert", "resolve", {"note": "x"}),
    ("alert", "silence", {"field": "rule", "minutes": "60", "comment": "x"}),
    ("silence", "expire", {}),
]


class TestEveryForm:
    async def _targets(self, console: Console) -> tuple[uuid.UUID, uuid.UUID]:
        alert_id = await console.detractor(f"c-{uuid.uuid4().hex[:8]}", 0)
        silence = await service.create_silence(
            console.engine,
            service.Actor("sato"),
            SilenceIn(matchers={"rule": "other"}, duration_minutes=60, comment="quiet"),
        )
        return alert_id, silence.id

    async def _unchanged(self, console: Console, alert_id: uuid.UUID) -> None:
        history = (await console.api.get(f"/v1/alerts/{alert_id}/history")).json()["items"]
        assert [e["action"] for e in history] == ["opened"]
        (silence,) = (await service.list_silences(console.engine, active=False)).items
        assert (silence.active, silence.matchers) == (True, {"rule": "other"})

    def _url(self, kind: str, action: str, alert_id: uuid.UUID, silence_id: uuid.UUID) -> str:
        if kind == "alert":
            return f"/console/alerts/{alert_id}/{action}"
        return f"/console/silences/{silence_id}/{action}"

    @pytest.mark.parametrize(("kind", "action", "data"), POSTS)
    async def test_without_the_csrf_token_it_is_refused(
        self, console: Console, kind: str, action: str, data: dict[str, str]
    ) -> None:
        alert_id, silence_id = await self._targets(console)
        url = self._url(kind, action, alert_id, silence_id)
        form = {"Content-Type": "application/x-www-form-urlencoded"}  # even with no fields
        for token in ({}, {"csrf_token": "guessed"}):
            refused = await console.hanako.post(url, data=data | token, headers=form)
            assert refused.status_code == 403, token
        await self._unchanged(console, alert_id)

    @pytest.mark.parametrize(("kind", "action", "data"), POSTS)
    async def test_from_another_origin_it_is_refused(
        self, console: Console, kind: str, action: str, data: dict[str, str]
    ) -> None:
        alert_id, silence_id = await self._targets(console)
        token = hidden((await console.hanako.get("/console")).text, "csrf_token")
        url = self._url(kind, action, alert_id, silence_id)
        for headers in (
            {"Origin": "null"},
            {"Origin": "http://evil.example"},
            {"Sec-Fetch-Site": "cross-site"},
        ):
            refused = await console.hanako.post(
                url, data=data | {"csrf_token": token}, headers=headers
            )
            assert refused.status_code == 403, headers
        await self._unchanged(console, alert_id)

    @pytest.mark.parametrize(("kind", "action", "data"), POSTS)
    async def test_a_key_without_alerts_write_is_refused(
        self, console: Console, kind: str, action: str, data: dict[str, str]
    ) -> None:
        alert_id, silence_id = await self._targets(console)
        token = hidden((await console.reader.get("/console")).text, "csrf_token")
        url = self._url(kind, action, alert_id, silence_id)
        refused = await console.reader.post(url, data=data | {"csrf_token": token})
        assert refused.status_code == 403
        await self._unchanged(console, alert_id)


class TestCatalogues:
    def test_both_languages_have_every_key(self) -> None:
        assert_catalogues_match(MESSAGES)
        load_messages(MESSAGES)  # and none repeats a shared key

    def test_every_key_a_template_names_exists(self) -> None:
        templates = Path(routes.__file__).parent / "templates"
        catalogue = load_messages(MESSAGES).catalogues["en"]
        for template in templates.glob("*.html"):
            pattern = r"""\bt\(\s*["']([a-z_.0-9]+)["']\s*[,)]"""
            for key in re.findall(pattern, template.read_text()):
                assert key in catalogue, (template.name, key)
