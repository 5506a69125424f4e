"""The dashboard's pages, in process over real Postgres, on events applied as the scorer's
consumer applies them: they show exactly /v1's numbers, a segment link filters the page,
answers are listed newest first and paged with comments escaped and kept, a customer's
page has their answers and tickets, empty and insufficient states say so, and scopes hold.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from html.parser import HTMLParser
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.scorer import service
from services.scorer.app import create_app
from services.scorer.consumer import BatchHandler
from services.scorer.schemas import Dimension, Interval
from shared import apikeys
from shared.apikeys import KeyKind, Scope
from shared.events import Metric, ResponseSubmitted, TouchpointEvent
from shared.http.auth import signed_in_of
from shared.kafka import Decoded
from shared.settings import (
    AuthSettings,
    DatabaseSettings,
    KafkaSettings,
    ScorerSettings,
    SlaSettings,
)
from shared.timing import parse_header
from shared.web.i18n import assert_catalogues_match, format_money, load_catalogue
from shared.web.sessions import sign_in_link_for
from tests.builders import order_event, response_event
from tests.helpers import database_down

MESSAGES = Path(__file__).parents[2] / "services/scorer/pages/messages"
MIN_N = 3
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
HOSTILE = '<script>alert(1)</script> & "quotes" <b>bold</b>'
JAPANESE = "配送が遅すぎました。"

# Every page route and the scopes its key needs: a new page route fails
# test_every_page_route_has_a_row until it has one (the /v1 routes are in test_scopes.py).
PAGE_ROUTES: dict[str, frozenset[Scope]] = {
    "/dashboard": frozenset({Scope.SCORES_READ}),
    "/dashboard/live": frozenset({Scope.SCORES_READ}),
    "/dashboard/responses": frozenset({Scope.SCORES_READ, Scope.RESPONSES_READ}),
    "/dashboard/customers/{customer_id:path}": frozenset({Scope.SCORES_READ, Scope.RESPONSES_READ}),
}


# ---- Reading the pages ------------------------------------------------------------------------


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def all(self, tag: str | None = None, **attrs: str) -> list[Node]:
        found = []
        for child in self.children:
            if (tag is None or child.tag == tag) and all(
                child.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items()
            ):
                found.append(child)
            found.extend(child.all(tag, **attrs))
        return found

    def has_class(self, name: str) -> bool:
        return name in self.attrs.get("class", "").split()


_VOID = {"input", "br", "meta", "link", "img", "hr", "source", "wbr"}


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {})
        self.stack = [self.root]
        self.by_id: dict[str, Node] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if "id" in node.attrs:
            assert node.attrs["id"] not in self.by_id, f"duplicate id {node.attrs['id']}"
            self.by_id[node.attrs["id"]] = node
        if tag not in _VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        for node in self.stack:
            node.parts.append(data)


@dataclass
class Page:
    status: int
    html: str
    root: Node
    by_id: dict[str, Node]

    def id(self, element_id: str) -> Node:
        assert element_id in self.by_id, f"no #{element_id} in the page"
        return self.by_id[element_id]

    def value(self, element_id: str) -> float | None:
        raw = self.id(element_id).attrs.get("value")
        return None if raw is None else float(raw)


def parse(response: httpx.Response) -> Page:
    builder = _Builder()
    builder.feed(response.text)
    return Page(response.status_code, response.text, builder.root, builder.by_id)


# ---- Fixtures ---------------------------------------------------------------------------------


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def app(
    kafka_settings: KafkaSettings,
    database_url: str,
    auth: AuthSettings,
    scorer_settings: ScorerSettings,
) -> FastAPI:
    settings = scorer_settings.model_copy(update={"min_n": MIN_N})
    return create_app(kafka_settings, DatabaseSettings(url=database_url), auth, settings)


@dataclass
class Site:
    """The app, a browser signed in with the operator key, and the API with the same key."""

    app: FastAPI
    browser: httpx.AsyncClient
    api: httpx.AsyncClient
    database_url: str

    async def page(self, url: str, **params: Any) -> Page:
        response = await self.browser.get(url, params=params or None)
        return parse(response)

    async def json(self, path: str, **params: Any) -> Any:
        response = await self.api.get(path, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    async def sign_in(self, client: httpx.AsyncClient, key: str) -> None:
        token = await sign_in_link_for(
            self.database_url, service="scorer", api_key=key, valid_for=timedelta(minutes=5)
        )
        response = await client.get("/signin/link", params={"token": token})
        assert response.status_code == 303, response.text

    def client(self, **headers: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="http://testserver",
            headers={"Accept-Language": "en", **headers},
        )


@pytest.fixture
async def site(app: FastAPI, api_key: str, database_url: str) -> AsyncIterator[Site]:
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://testserver",
            headers={"Accept-Language": "en"},
        ) as browser,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {api_key}"},
        ) as api,
    ):
        built = Site(app, browser, api, database_url)
        await built.sign_in(browser, api_key)
        yield built


async def apply(engine: AsyncEngine, events: Sequence[Any]) -> None:
    await BatchHandler(engine)([Decoded(None, e) for e in events])


def nps(scores: Sequence[int], at: datetime, **fields: Any) -> list[ResponseSubmitted]:
    return [response_event(score=s, occurred_at=at, received_at=at, **fields) for s in scores]


def ticket(
    kind: str, ticket_id: str, at: datetime, customer: str, **fields: Any
) -> TouchpointEvent:
    return TouchpointEvent.model_validate(
        {
            "event_id": uuid.uuid4(),
            "occurred_at": at,
            "received_at": at,
            "source": "zendesk",
            "channel": "email",
            "customer_id": customer,
            "type": kind,
            "ticket_id": ticket_id,
            **fields,
        }
    )


async def seed_mix(engine: AsyncEngine) -> None:
    """NPS on web and SMS, CSAT and CES 7, this week and the week before."""
    now, before = NOW - timedelta(days=1), NOW - timedelta(days=9)
    await apply(
        engine,
        [
            *nps([10, 10, 9, 9, 8, 3], now, channel="web", segments={"location": "tokyo"}),
            *nps([0, 2, 6, 9], now, channel="sms", segments={"location": "osaka"}),
            *nps([10, 2, 2, 1, 8], before, channel="web"),
            *[
                response_event(metric="csat", scale=5, score=s, occurred_at=now)
                for s in (5, 4, 4, 2, 1)
            ],
            *[
                response_event(metric="csat", scale=5, score=s, occurred_at=before)
                for s in (5, 5, 5, 4)
            ],
            *[
                response_event(metric="ces", scale=7, score=s, occurred_at=now)
                for s in (7, 6, 2, 5)
            ],
        ],
    )


def as_json(answer: BaseModel) -> Any:
    """A service answer as its /v1 route writes it."""
    return json.loads(answer.model_dump_json(by_alias=True))


def tile_key(entry: dict[str, Any]) -> str:
    return str(entry["metric"]) + (str(entry["scale"]) if entry["scale"] is not None else "")


def as_float(value: Any) -> float | None:
    return None if value is None else float(value)


# ---- Tests ------------------------------------------------------------------------------------


class TestTiles:
    async def assert_tiles_match_the_api(self, site: Site, page: Page, **params: str) -> None:
        headline = await site.json("/v1/headline", **params)
        for entry in headline["scores"]:
            key = tile_key(entry)
            assert page.value(f"tile-{key}-score") == as_float(entry["score"]), key
            assert page.value(f"tile-{key}-n") == entry["n"], key
            assert page.value(f"tile-{key}-delta") == as_float(entry["change"]["delta"]), key
            assert page.value(f"tile-{key}-margin") == as_float(entry["margin"]), key
            flag = page.id(f"tile-{key}").all(data_flag="significant")[0]
            assert ("hidden" not in flag.attrs) is entry["change"]["significant"], key
        scores = await site.json("/v1/scores", metric="nps", **params)
        assert page.value("tile-nps-score") == scores["score"]
        split = page.id("tile-nps").all("data", data_field="promoters")[0]
        assert float(split.attrs["value"]) == scores["promoters"]

    async def test_tiles_show_exactly_the_numbers_of_the_api(
        self, site: Site, engine: AsyncEngine
    ) -> None:
        await seed_mix(engine)
        page = await site.page("/dashboard", window="7d")
        assert page.status == 200
        assert {"tile-nps", "tile-csat", "tile-ces7"} <= page.by_id.keys()
        await self.assert_tiles_match_the_api(site, page, window="7d")
        # CES carries its margin too (from the sums of squares), in its own points.
        assert page.value("tile-ces7-margin") is not None
        no_margin = page.id("tile-ces7").all(data_flag="no-margin")[0]
        assert "hidden" in no_margin.attrs
        # 30 days (the default) holds both periods' answers.
        await self.assert_tiles_match_the_api(site, await site.page("/dashboard"), window="30d")

    async def test_custom_dates_are_whole_days_in_the_viewers_time_zone(
        self, site: Site, engine: AsyncEngine
    ) -> None:
        await seed_mix(engine)
        tokyo = timezone(timedelta(hours=9))
        last = (NOW - timedelta(days=1)).astimezone(tokyo).date()
        first = last - timedelta(days=6)
        page = await site.page(
            "/dashboard", **{"from": first.isoformat(), "to": last.isoformat(), "tz": "Asia/Tokyo"}
        )
        assert page.status == 200
        since = datetime.combine(first, datetime.min.time(), tokyo)
        until = datetime.combine(last + timedelta(days=1), datetime.min.time(), tokyo)
        await self.assert_tiles_match_the_api(
            site, page, **{"from": since.isoformat(), "to": until.isoformat()}
        )
        assert "vs the period of equal length before" in page.id("tile-nps").text

    async def test_a_half_hour_zone_counts_whole_utc_hours_as_its_answers_list_does(
        self, site: Site, engine: AsyncEngine
    ) -> None:
        kolkata = timezone(timedelta(hours=5, minutes=30))
        day = (NOW - timedelta(days=2)).astimezone(kolkata).date()
        asked_since = datetime.combine(day, datetime.min.time(), kolkata)  # hh:30 UTC
        hour = asked_since.astimezone(UTC).replace(minute=0)  # the hour it is moved back to
        # 23:40 in Kolkata the day before: in the hour the range starts with, so counted.
        before = response_event(score=10, occurred_at=hour + timedelta(minutes=10))
        # 23:40 on the day itself: after the last whole hour, so neither counted nor listed.
        after = response_event(score=0, occurred_at=hour + timedelta(days=1, minutes=10))
        inside = response_event(score=9, occurred_at=hour + timedelta(hours=5))
        await apply(engine, [before, after, inside])
        params = {"from": day.isoformat(), "to": day.isoformat(), "tz": "Asia/Kolkata"}
        page = await site.page("/dashboard", **params)
        assert page.status == 200
        assert "whole UTC hours" in page.id("range-shifted").text
        shown = [t.attrs["datetime"] for t in page.id("range-effective").all("time")]
        since, until = hour, hour + timedelta(days=1)
        assert [datetime.fromisoformat(t) for t in shown] == [since, until]
        assert page.value("tile-nps-n") == 2
        scores = await site.json(
            "/v1/scores", metric="nps", **{"from": since.isoformat(), "to": until.isoformat()}
        )
        assert scores["n"] == 2
        answers = await site.page("/dashboard/responses", **params)
        ids = {li.attrs["data-event-id"] for li in answers.root.all("li") if li.has_class("answer")}
        assert ids == {str(before.event_id), str(inside.event_id)}
        assert "range-shifted" in answers.by_id
        # A day in a whole-hour zone is not moved, and says nothing about it.
        tokyo = await site.page("/dashboard", **{**params, "tz": "Asia/Tokyo"})
        assert "range-shifted" not in tokyo.by_id

    async def test_range_times_written_by_the_server_are_in_utc(self, site: Site) -> None:
        page = await site.page(
            "/dashboard", **{"from": "2026-01-10", "to": "2026-01-11", "tz": "Asia/Tokyo"}
        )
        first = page.id("range-effective").all("time")[0]
        assert first.attrs["datetime"] == "2026-01-09T15:00:00+00:00"
        assert first.text == "2026-01-09 15:00 UTC"

    async def test_a_channel_link_filters_the_whole_page(
        self, site: Site, engine: AsyncEngine
    ) -> None:
        await seed_mix(engine)
        page = await site.page("/dashboard", window="7d")
        links = {
            a.attrs["href"]: a for a in page.id("breakdown-channel").all("a", data_filter="channel")
        }
        (href,) = [h for h in links if "channel=sms" in h]
        assert parse_qs(urlsplit(href).query) == {"window": ["7d"], "channel": ["sms"]}
        filtered = await site.page(href)
        assert filtered.status == 200
        await self.assert_tiles_match_the_api(site, filtered, window="7d", channel="sms")
        assert filtered.value("tile-nps-n") == 4
        chips = [li.text for li in filtered.root.all("li") if li.has_class("chip")]
        assert any("Channel" in c and "SMS" in c for c in chips)
        # The chip's link removes the filter again.
        (remove,) = [a for a in filtered.root.all("a") if a.has_class("chip-remove")]
        assert parse_qs(urlsplit(remove.attrs["href"]).query) == {"window": ["7d"]}

    async def test_breakdown_rows_carry_score_n_and_margin(
        self, site: Site, engine: AsyncEngine
    ) -> None:
        await seed_mix(engine)
        page = await site.page("/dashboard", window="7d")
        api = await site.json("/v1/scores", metric="nps", window="7d", group_by="channel")
        rows = {
            tr.attrs["data-group"]: tr
            for tr in page.id("breakdown-channel").all("tr")
            if "data-group" in tr.attrs
        }
        for group in api["groups"]:
            row = rows[group["group"]]
            (score,) = row.all("data", data_field="score")
            (n,) = row.all("data", data_field="n")
            (margin,) = row.all("data", data_field="margin")
            assert float(score.attrs["value"]) == group["score"]
            assert float(n.attrs["value"]) == group["n"]
            assert float(margin.attrs["value"]) == group["margin"]

    async def test_insufficient_sample_is_marked_below_min_n(
        self, site: Site, engine: AsyncEngine
    ) -> None:
        await apply(engine, nps([10, 0], NOW - timedelta(hours=2)))
        page = await site.page("/dashboard")
        flag = page.id("tile-nps").all(data_flag="insufficient")[0]
        assert "hidden" not in flag.attrs
        assert "Insufficient sample" in flag.text
        assert page.id("tile-nps").has_class("is-insufficient")
        await apply(engine, nps([9, 9], NOW - timedelta(hours=2)))
        page = await site.page("/dashboard")
        assert "hidden" in page.id("tile-nps").all(data_flag="insufficient")[0].attrs

    async def test_an_empty_database_says_what_to_do(self, site: Site) -> None:
        page = await site.page("/dashboard")
        assert page.status == 200
        empty = page.id("empty-state").text
        assert "No answers yet" in empty
        assert "cxloop simulate" in empty
        assert "No tickets in this range" in page.id("service-times").text
        assert "No customer activity yet" in page.id("retention").text
        assert "No NPS answers in this range" in page.id("drivers").text
        assert "No answers yet" in page.id("latest-empty").text
        assert "value" not in page.id("tile-nps-score").attrs  # no number, a dash
        filtered = await site.page("/dashboard", channel="sms")
        assert "No answers match these filters" in filtered.id("empty-state").text


class TestDrivers:
    async def test_reasons_by_category_as_the_api_counts_them(
        self, site: Site, engine: AsyncEngine
    ) -> None:
        at = NOW - timedelta(hours=3)
        await apply(
            engine,
            [
                *nps([1, 2, 3], at, reasons=("delivery_speed", "price")),
                *nps([0], at, reasons=("delivery_speed",)),
                *nps([10, 9], at, reasons=("agent_attitude",)),
                *nps([8], at),
            ],
        )
        page = await site.page("/dashboard")
        api = await site.json("/v1/drivers")
        detractors = page.id("drivers-detractor")
        names = [li.all("span")[0].text for li in detractors.all("li")]
        assert names == ["Delivery speed", "Price"]
        shares = [float(d.attrs["value"]) for li in detractors.all("li") for d in li.all("data")][
            ::2
        ]
        assert shares == [r["share"] for r in api["top_detractor_reasons"]]
        assert "Agent attitude" in page.id("drivers-promoter").text
        # Two promoters: fewer than MIN_N, so the group's shares are marked unreliable.
        assert "Insufficient sample" in page.id("drivers-promoter").text
        assert "Insufficient sample" not in detractors.text


class TestTrends:
    async def test_the_chart_data_and_its_table_hold_the_series(
        self, site: Site, engine: AsyncEngine
    ) -> None:
        await seed_mix(engine)
        page = await site.page("/dashboard", window="30d", interval="week")
        script = page.id("trend-data-nps")
        assert script.attrs["type"] == "application/json"
        data = json.loads(script.text)
        series = await site.json(
            "/v1/scores/timeseries", metric="nps", window="30d", interval="week"
        )
        shown = [(t, s) for t, s in zip(data["t"], data["score"], strict=True) if s is not None]
        expected = [
            (int(datetime.fromisoformat(p["start"]).timestamp()), p["score"])
            for p in series["points"]
        ]
        assert shown == expected
        assert sum(data["n"]) == sum(p["n"] for p in series["points"])
        table_rows = page.id("trend-nps").all("tbody")[0].all("tr")
        assert len(table_rows) == len(series["points"])
        assert page.id("trend-nps").all("div")[0].attrs["role"] == "img"

    async def test_a_day_is_drawn_by_the_hour_so_a_new_answer_shows(
        self, site: Site, engine: AsyncEngine
    ) -> None:
        # Answers of the last hours, so the 24h window holds them whatever hour the test
        # runs in (seed_mix's are a whole day old: out of the window once the hour turns).
        await apply(engine, nps([10, 9, 3], datetime.now(UTC) - timedelta(hours=2)))
        page = await site.page("/dashboard", window="24h")
        data = json.loads(page.id("trend-data-nps").text)
        assert data["interval"] == "hour"
        assert {b - a for a, b in pairwise(data["t"])} == {3600}
        series = await site.json(
            "/v1/scores/timeseries", metric="nps", window="24h", interval="hour"
        )
        assert sum(data["n"]) == sum(p["n"] for p in series["points"])

    async def test_hours_are_not_offered_over_more_than_a_week(
        self, site: Site, engine: AsyncEngine
    ) -> None:
        await seed_mix(engine)
        page = await site.page("/dashboard", window="90d", interval="hour")
        assert json.loads(page.id("trend-data-nps").text)["interval"] == "day"
        assert ">Hour</a>" not in page.html  # no hourly toggle either


class TestResponses:
    async def test_newest_first_paged_escaped_and_kept(
        self, site: Site, engine: AsyncEngine
    ) -> None:
        start = NOW - timedelta(days=2)
        events = [
            response_event(score=i % 11, occurred_at=start + timedelta(minutes=i), comment=f"n{i}")
            for i in range(30)
        ]
        events.append(
            response_event(
                score=1, occurred_at=start + timedelta(hours=5), comment=HOSTILE, locale="en"
            )
        )
        events.append(
            response_event(
                score=2,
                occurred_at=start + timedelta(hours=6),
                comment=JAPANESE + "\n二行目",
                locale="ja-JP",
                reasons=("delivery_speed",),
            )
        )
        await apply(engine, events)
        first = await site.page("/dashboard/responses")
        assert first.status == 200
        cards = [li for li in first.root.all("li") if li.has_class("answer")]
        assert len(cards) == 25
        times = [c.all("time")[0].attrs["datetime"] for c in cards]
        assert times == sorted(times, reverse=True)
        # The hostile comment is text, not markup; the Japanese one is kept as written.
        assert "<script>alert(1)</script>" not in first.html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in first.html
        comments = [p.text for c in cards for p in c.all("p") if p.has_class("comment")]
        assert comments[0] == JAPANESE + "\n二行目"
        assert comments[1] == HOSTILE
        japanese = next(p for c in cards for p in c.all("p") if p.text.startswith(JAPANESE))
        assert japanese.attrs["lang"] == "ja"
        assert "Delivery speed" in cards[0].text
        older = first.id("older").attrs["href"]
        second = await site.page(older)
        more = [li for li in second.root.all("li") if li.has_class("answer")]
        assert len(more) == 32 - 25
        seen = {c.attrs["data-event-id"] for c in cards}
        assert not seen & {c.attrs["data-event-id"] for c in more}
        assert "older" not in second.by_id
        assert "No older answers" in second.html

    async def test_the_dashboard_filters_carry_over_to_the_answers(
        self, site: Site, engine: AsyncEngine
    ) -> None:
        await seed_mix(engine)
        page = await site.page("/dashboard", window="7d", channel="sms")
        link = next(a for a in page.root.all("a") if a.has_class("see-answers"))
        answers = await site.page(link.attrs["href"])
        cards = [li for li in answers.root.all("li") if li.has_class("answer")]
        assert len(cards) == 4
        assert all("SMS" in c.all("span")[1].text for c in cards)

    async def test_a_bad_cursor_or_filter_is_a_page_not_a_crash(self, site: Site) -> None:
        def cursor(*parts: str) -> str:
            return base64.urlsafe_b64encode("|".join(parts).encode()).decode()

        forged = str(uuid.uuid4())
        for url, params in [
            ("/dashboard/responses", {"cursor": "not-a-cursor"}),
            ("/dashboard/responses", {"cursor": cursor("9999-12-31T23:59:59-10:00", forged)}),
            ("/dashboard/responses", {"cursor": cursor("0001-01-01T00:00:00+14:00", forged)}),
            ("/dashboard/responses", {"cursor": cursor("2026-01-01T00:00:00", forged)}),
            ("/dashboard/customers/c1", {"cursor": cursor("9999-12-31T23:59:59-10:00", forged)}),
            ("/dashboard", {"window": "5y"}),
            ("/dashboard", {"channel": "fax"}),
            ("/dashboard", {"from": "2026-02-30"}),
            ("/dashboard", {"from": "2026-03-02", "to": "2026-03-01"}),
            ("/dashboard", {"from": "9999-12-30", "to": "9999-12-31"}),
            ("/dashboard", {"from": "0001-01-01"}),
            ("/dashboard", {"from": "0001-01-01", "tz": "Asia/Tokyo"}),
            ("/dashboard", {"from": "0001-01-01T00:00+01:00"}),
            ("/dashboard/responses", {"from": "9999-12-31T23:59:59-10:00"}),
            ("/dashboard", {"from": "2020-01-01", "to": "2021-03-01"}),
            ("/dashboard", {"tz": "Mars/Olympus"}),
            ("/dashboard", {"tz": "posixrules"}),
            ("/dashboard", {"tz": "right/UTC"}),
            ("/dashboard", {"tz": "Factory"}),
        ]:
            response = await site.browser.get(url, params=params)
            assert response.status_code == 422, (url, params, response.status_code)
            assert response.headers["content-type"].startswith("text/html")
            assert "That request could not be used" in response.text
        # The poller reads JSON: its refusals are JSON naming the parameter.
        for params, name in [
            ({"cursor": cursor("0001-01-01T00:00:00")}, "cursor"),
            ({"cursor": cursor("0001-01-01T00:00:05+00:00")}, "cursor"),
            ({"cursor": cursor("9999-12-31T23:59:59-10:00")}, "cursor"),
            ({"cursor": "not-a-cursor"}, "cursor"),
            ({"from": "9999-12-30", "to": "9999-12-31"}, "to"),
            ({"tz": "posixrules"}, "tz"),
            ({"channel": "fax"}, "channel"),
        ]:
            response = await site.browser.get("/dashboard/live", params=params)
            assert response.status_code == 422, (params, response.status_code)
            assert response.headers["content-type"].startswith("application/json")
            assert response.json()["field"] == name


class TestCustomer:
    async def test_a_customer_page_lists_their_answers_and_tickets(
        self, site: Site, engine: AsyncEngine
    ) -> None:
        customer = "c/42 二郎?&#"
        at = NOW - timedelta(days=1)
        await apply(
            engine,
            [
                response_event(customer_id=customer, score=3, comment=JAPANESE, occurred_at=at),
                response_event(customer_id=customer, score=9, occurred_at=at - timedelta(hours=1)),
                response_event(customer_id="someone-else", score=10, occurred_at=at),
                ticket("ticket.created", "T-1", at - timedelta(hours=3), customer, priority="high"),
                ticket("ticket.first_response", "T-1", at - timedelta(hours=2), customer),
            ],
        )
        answers = await site.page("/dashboard/responses")
        card = next(
            li for li in answers.root.all("li") if li.has_class("answer") and JAPANESE in li.text
        )
        href = next(a for a in card.all("a") if a.has_class("answer-customer")).attrs["href"]
        assert href == "/dashboard/customers/c%2F42%20%E4%BA%8C%E9%83%8E%3F%26%23"
        page = await site.page(href)
        assert page.status == 200
        assert customer in page.html.replace("&amp;", "&").replace("&#39;", "'")
        cards = [li for li in page.id("customer-answers").all("li") if li.has_class("answer")]
        assert len(cards) == 2
        assert JAPANESE in cards[0].text
        tickets = page.id("customer-tickets").all("tr", data_ticket="T-1")
        assert len(tickets) == 1
        assert "High" in tickets[0].text
        assert "1 h 0 min" in tickets[0].text  # first response after an hour

    async def test_older_answers_are_the_customers_own_pages_whatever_their_age(
        self, site: Site, engine: AsyncEngine
    ) -> None:
        # Fifty-two answers, the oldest two more than 90 days ago.
        await apply(
            engine,
            [
                response_event(customer_id="busy", occurred_at=NOW - timedelta(days=2 * i + 1))
                for i in range(52)
            ],
        )
        first = await site.page("/dashboard/customers/busy")
        assert (
            len([li for li in first.id("customer-answers").all("li") if li.has_class("answer")])
            == 50
        )
        older = first.id("customer-older").attrs["href"]
        assert older.startswith("/dashboard/customers/busy?cursor=")
        second = await site.page(older)
        cards = [li for li in second.id("customer-answers").all("li") if li.has_class("answer")]
        assert len(cards) == 2
        assert "customer-older" not in second.by_id

    async def test_unknown_and_silly_customer_ids(self, site: Site) -> None:
        unknown = await site.page("/dashboard/customers/nobody")
        assert unknown.status == 200
        assert "Nothing recorded for this customer" in unknown.html
        silly = await site.browser.get("/dashboard/customers/" + "x" * 300)
        assert silly.status_code == 404
        assert silly.headers["content-type"].startswith("text/html")
        blank = await site.browser.get("/dashboard/customers/%20")
        assert blank.status_code == 404


class TestReviewedEdges:
    async def test_answers_dated_far_back_or_ahead_do_not_end_the_paging(
        self, site: Site, engine: AsyncEngine
    ) -> None:
        """A sender's wrong clock gives an answer an odd date; its cursor still pages on."""
        odd = [datetime(1999, 6, 1, tzinfo=UTC), NOW + timedelta(days=3)]
        await apply(engine, [response_event(score=5, occurred_at=at) for at in odd])
        await apply(engine, nps([10, 9], NOW - timedelta(hours=1)))
        seen, cursor = 0, None
        for _ in range(6):
            params: dict[str, Any] = {"limit": 1, **({"cursor": cursor} if cursor else {})}
            body = await site.json("/v1/responses", **params)
            seen += len(body["items"])
            cursor = body.get("next_cursor")
            if not cursor:
                break
        assert seen == 4

    async def test_an_open_ended_range_grown_past_the_cap_still_polls(self, site: Site) -> None:
        """A page drawn with a 400-day range keeps polling after midnight makes it longer."""
        since = (NOW - timedelta(days=401)).date().isoformat()
        page = await site.browser.get("/dashboard", params={"from": since})
        assert page.status_code == 422
        live = await site.browser.get("/dashboard/live", params={"from": since})
        assert live.status_code == 200

    async def test_the_database_down_under_the_panels_is_the_503_page(
        self, site: Site, engine: AsyncEngine
    ) -> None:
        await apply(engine, nps([10, 3], NOW - timedelta(hours=1)))
        async with database_down(site.app.state):
            response = await site.browser.get("/dashboard")
        assert response.status_code == 503
        assert response.headers["content-type"].startswith("text/html")


class TestLive:
    async def test_new_answers_since_the_cursor_and_the_tiles(
        self, site: Site, engine: AsyncEngine
    ) -> None:
        await apply(engine, nps([10, 9, 3], NOW - timedelta(hours=1)))
        first = await site.browser.get("/dashboard/live")
        assert first.status_code == 200
        assert first.headers["cache-control"] == "no-store"
        body = first.json()
        assert len(body["items"]) == 3
        nps_tile = next(s for s in body["scores"] if s["key"] == "nps")
        headline = await site.json("/v1/headline")
        assert nps_tile["score"] == headline["scores"][0]["score"]
        assert nps_tile["n"] == 3
        await apply(engine, [response_event(score=0, comment="live one")])
        later = (
            await site.browser.get("/dashboard/live", params={"cursor": body["cursor"]})
        ).json()
        comments = [i["comment"] for i in later["items"]]
        assert "live one" in comments  # earlier ones may repeat: the page drops them by id
        assert later["items"][0]["customer_url"].startswith("/dashboard/customers/")
        assert next(s for s in later["scores"] if s["key"] == "nps")["n"] == 4

    async def test_tiles_only_when_asked_and_a_cursor_when_nothing_matches(
        self, site: Site, engine: AsyncEngine
    ) -> None:
        await apply(engine, nps([10], NOW - timedelta(hours=1), channel="web"))
        quiet = (await site.browser.get("/dashboard/live", params={"tiles": "0"})).json()
        assert "scores" not in quiet
        assert len(quiet["items"]) == 1
        nothing = (await site.browser.get("/dashboard/live", params={"channel": "sms"})).json()
        assert nothing["items"] == []
        assert nothing["cursor"]  # the next poll is bounded in time
        await apply(engine, nps([3], NOW, channel="sms"))
        later = await site.browser.get(
            "/dashboard/live", params={"channel": "sms", "cursor": nothing["cursor"], "tiles": "0"}
        )
        assert [i["score_text"] for i in later.json()["items"]] == ["NPS 3/10"]


class TestServerTiming:
    """Operators read how long each panel's query and the rendering took in the browser's
    developer tools (Server-Timing); bench/queries.py reports the same per panel."""

    PANELS = frozenset(
        {
            "tiles",
            "trends",
            "breakdowns",
            "drivers",
            "service-times",
            "retention",
            "latest",
            "value",
        }
    )

    async def test_the_dashboard_names_each_panel_and_its_rendering(
        self, site: Site, engine: AsyncEngine
    ) -> None:
        await seed_mix(engine)
        response = await site.browser.get("/dashboard")
        assert response.status_code == 200
        parts = parse_header(response.headers["server-timing"])
        assert parts.keys() == self.PANELS | {"render", "total"}
        assert all(ms >= 0 for ms in parts.values())
        # The breakdowns of CSAT leave the NPS split its own call.
        csat = await site.browser.get("/dashboard", params={"metric": "csat"})
        assert parse_header(csat.headers["server-timing"]).keys() == self.PANELS | {
            "nps",
            "render",
            "total",
        }

    async def test_the_live_poll_and_the_answers_page(self, site: Site) -> None:
        live = await site.browser.get("/dashboard/live")
        assert parse_header(live.headers["server-timing"]).keys() == {
            "tiles",
            "nps",
            "latest",
            "total",
        }
        answers = await site.browser.get("/dashboard/responses")
        assert parse_header(answers.headers["server-timing"]).keys() == {
            "answers",
            "render",
            "total",
        }


class TestOneStatementPerPanel:
    """Each panel reads all its groupings in one statement (GROUPING SETS, every metric's
    trend at once); what it gives is exactly what /v1 gives for each grouping alone."""

    async def test_the_dashboards_answers_are_v1s(self, site: Site, engine: AsyncEngine) -> None:
        await seed_mix(engine)
        t0 = NOW - timedelta(days=2)
        await apply(
            engine,
            [
                ticket("ticket.created", "A", t0, "c1", priority="urgent"),
                ticket("ticket.agent_replied", "A", t0 + timedelta(minutes=30), "c1"),
                ticket("ticket.resolved", "A", t0 + timedelta(hours=5), "c1"),
                ticket("ticket.created", "B", t0, "c2", channel="chat"),
                ticket("ticket.agent_replied", "B", t0 + timedelta(hours=3), "c2"),
                ticket("ticket.created", "C", t0 - timedelta(days=1), "c3", priority="low"),
            ],
        )
        # A custom range, so that /v1 answers for the very same one.
        since, until = NOW - timedelta(days=8, hours=5), NOW + timedelta(hours=1)
        span = service.Range(since, until)
        params = {"from": since.isoformat(), "to": until.isoformat()}
        for metric in (Metric.NPS, Metric.CES):
            got = await service.dashboard(
                engine,
                span,
                {},
                metric=metric,
                breakdown_by=list(Dimension),
                interval=Interval.DAY,
                retention_period="month",
                with_latest=False,
                min_n=MIN_N,
                sla_first_response=SlaSettings().first_response_minutes,
                sla_resolution=SlaSettings().resolution_minutes,
            )
            assert got.metric is metric
            assert as_json(got.headline) == await site.json("/v1/headline", **params)
            scale = {"scale": str(got.scale)} if got.scale else {}
            for dimension, out in got.breakdowns.items():
                assert as_json(out) == await site.json(
                    "/v1/scores", metric=metric.value, group_by=dimension.value, **params, **scale
                ), dimension
            # The NPS split: the breakdowns' total when they are of NPS.
            nps = {k: v for k, v in as_json(got.nps).items() if k not in ("group_by", "groups")}
            v1_nps = await site.json("/v1/scores", metric="nps", **params)
            assert nps == {k: v for k, v in v1_nps.items() if k not in ("group_by", "groups")}
            assert [key for key, _ in got.trends] == [
                (Metric.NPS, None),
                (Metric.CSAT, None),
                (Metric.CES, 7),
            ]
            for (m, s), series in got.trends:
                assert as_json(series) == await site.json(
                    "/v1/scores/timeseries",
                    metric=m.value,
                    interval="day",
                    **params,
                    **({"scale": str(s)} if s else {}),
                ), m
            assert as_json(got.drivers) == await site.json("/v1/drivers", **params)
        for group_by, times in got.times.items():
            by = {"group_by": group_by} if group_by else {}
            v1 = await site.json("/v1/service-times", **params, **by)
            assert as_json(times) == v1, group_by
        assert [g["group"] for g in as_json(got.times["priority"])["groups"]] == [
            "low",
            "normal",
            "urgent",
        ]


class TestScopes:
    async def test_every_page_route_has_a_row(self, app: FastAPI) -> None:
        routes: list[APIRoute] = []
        for mounted in app.router.routes:
            router = getattr(mounted, "original_router", None)  # FastAPI >= 0.165
            routes += [
                r for r in (router.routes if router else [mounted]) if isinstance(r, APIRoute)
            ]
        found = {
            route.path: frozenset(s for marker in signed_in_of(route) for s in marker.scopes)
            for route in routes
            if route.path.startswith("/dashboard")
        }
        assert found == PAGE_ROUTES

    async def test_a_key_with_scores_read_only(
        self, site: Site, engine: AsyncEngine, database_url: str
    ) -> None:
        await seed_mix(engine)
        db = create_async_engine(database_url)
        async with db.begin() as conn:
            key, _ = await apikeys.create_key(
                conn, name="scores-only", kind=KeyKind.SECRET, scopes=[Scope.SCORES_READ]
            )
        await db.dispose()
        async with site.client() as browser:
            await site.sign_in(browser, key)
            page = parse(await browser.get("/dashboard"))
            assert page.status == 200
            assert "responses:read" in page.id("latest-scope").text
            assert not [
                a for a in page.root.all("a") if "/dashboard/responses" in a.attrs.get("href", "")
            ]
            live = (await browser.get("/dashboard/live")).json()
            assert "items" not in live
            for path in ("/dashboard/responses", "/dashboard/customers/c1"):
                refused = await browser.get(path)
                assert refused.status_code == 403
                assert refused.headers["content-type"].startswith("text/html")
                assert "Not allowed" in refused.text
                assert "responses:read" in refused.text
                assert "scores-only" in refused.text  # still signed in, and says as whom

    async def test_not_signed_in_is_sent_to_sign_in(self, site: Site) -> None:
        async with site.client() as anonymous:
            for path in ("/dashboard?window=7d", "/dashboard/responses", "/dashboard/live"):
                response = await anonymous.get(path)
                assert response.status_code == 303
                assert response.headers["location"].startswith("/signin?next=%2Fdashboard")


class TestLanguages:
    def test_ja_and_en_have_the_same_keys_and_placeholders(self) -> None:
        assert_catalogues_match(MESSAGES)

    def test_every_message_the_templates_name_exists(self) -> None:
        catalogue = load_catalogue(MESSAGES)["en"]
        templates = Path(MESSAGES.parent, "templates")
        named = set()
        for path in templates.glob("*.html"):
            named |= set(
                re.findall(r"""t\(\s*["'](dash\.[a-z0-9_.]+)["']\s*[,)]""", path.read_text())
            )
        assert named
        assert named - catalogue.keys() == set()

    async def test_japanese_from_accept_language(self, site: Site, engine: AsyncEngine) -> None:
        await seed_mix(engine)
        async with site.client() as browser:
            browser.headers["Accept-Language"] = "ja,en;q=0.5"
            await site.sign_in(browser, site.api.headers["Authorization"].split()[1])
            page = parse(await browser.get("/dashboard"))
            assert '<html lang="ja">' in page.html
            assert "顧客体験ダッシュボード" in page.html
            assert "推奨者" in page.id("tile-nps").text


class TestValuePanel:
    """The "NPS and revenue" panel shows /v1/value's figures, per currency, in the viewer's
    language and money format."""

    async def _seed(self, engine: AsyncEngine, site: Site) -> None:
        at = NOW - timedelta(days=3)
        promoters = [f"p{i}" for i in range(4)]
        detractors = [f"d{i}" for i in range(3)]
        await apply(
            engine,
            [
                *(
                    response_event(score=10, customer_id=c, occurred_at=at - timedelta(hours=1))
                    for c in promoters
                ),
                *(
                    response_event(score=2, customer_id=c, occurred_at=at - timedelta(hours=1))
                    for c in detractors
                ),
                *(
                    order_event(f"o-{c}-{k}", "12800", customer_id=c, occurred_at=at)
                    for c in promoters
                    for k in range(2)
                ),
                *(order_event(f"o-{c}", "4800", customer_id=c, occurred_at=at) for c in detractors),
                order_event("o-usd", "19.90", "USD", customer_id="p0", occurred_at=at),
            ],
        )
        # The page of a rolling window shows the scorer's snapshot, taken at start-up.
        await site.app.state.value_snapshots.refresh(engine)

    async def test_each_currency_and_category_as_the_api_says(
        self, site: Site, engine: AsyncEngine
    ) -> None:
        await self._seed(engine, site)
        # The scorer's 30d snapshot was taken as it started, before the seed: take it again.
        page = await site.page("/dashboard")
        api = await site.json("/v1/value", window="30d")
        by_currency = {c["currency"]: c for c in api["currencies"]}
        assert set(by_currency) == {"JPY", "USD"}
        jpy = page.id("value-JPY")
        assert "In JPY" in jpy.text
        assert format_money(by_currency["JPY"]["revenue"], "JPY", "en") in jpy.text
        assert "¥116,800" in jpy.text  # 8 × 12,800 + 3 × 4,800, no decimals
        at_risk = by_currency["JPY"]["revenue_at_risk"]
        assert at_risk["revenue"] == "14400"
        assert at_risk["customers"] == 3
        assert "¥14,400" in jpy.text
        rows = {
            tr.attrs["class"].removeprefix("value-"): tr
            for tr in jpy.all("tr")
            if tr.attrs.get("class", "").startswith("value-")
        }
        for group in by_currency["JPY"]["by_nps"]:
            row = rows[group["category"]]
            assert row.all("td")[0].text.strip() == str(group["n"])
            per = group["revenue_per_customer"]
            assert (format_money(per, "JPY", "en") if per else "—") in row.text
        assert "¥25,600" in rows["promoter"].text  # two orders of 12,800 each
        assert "$19.90" in page.id("value-USD").text
        # Never added together: the JPY section says nothing of dollars.
        assert "$" not in jpy.text

    async def test_japanese_money_and_labels(self, site: Site, engine: AsyncEngine) -> None:
        await self._seed(engine, site)
        async with site.client(**{"Accept-Language": "ja"}) as browser:
            await site.sign_in(browser, site.api.headers["Authorization"].split()[1])
            page = parse(await browser.get("/dashboard"))
        panel = page.id("value")
        assert "NPSと売上" in panel.text
        assert "￥116,800" in page.id("value-JPY").text
        assert "推奨者" in page.id("value-JPY").text

    async def test_touchpoint_filters_are_said_not_to_apply(
        self, site: Site, engine: AsyncEngine
    ) -> None:
        await self._seed(engine, site)
        page = await site.page("/dashboard", touchpoint="checkout")
        assert page.status == 200
        assert "do not apply here" in page.id("value").text
        assert "¥116,800" in page.id("value-JPY").text

    async def test_no_orders_says_how_to_get_some(self, site: Site) -> None:
        page = await site.page("/dashboard")
        assert "No orders in this range yet" in page.id("value").text


class TestValuePanelSource:
    async def test_a_rolling_window_shows_the_snapshot_and_says_when_it_was_taken(
        self, site: Site
    ) -> None:
        page = await site.page("/dashboard", window="30d")
        api = await site.json("/v1/value", window="30d")
        assert api["snapshot"] is True
        times = page.id("value-as-of").all("time")
        assert [t.attrs["datetime"] for t in times] == [
            datetime.fromisoformat(api["as_of"]).isoformat()
        ]

    async def test_an_order_filter_is_computed_for_the_request(self, site: Site) -> None:
        page = await site.page("/dashboard", window="30d", channel="web")
        assert "value-as-of" not in page.by_id
