"""The widget in a real browser: Debian's Chromium, driven by Playwright, on a localhost page."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from services.collector.app import create_app
from services.servers import free_port
from shared.apikeys import KeyKind, Scope, create_key
from shared.events import ResponseSubmitted
from shared.settings import AuthSettings, CollectorSettings, DatabaseSettings, KafkaSettings
from shared.topics import Topic
from tests.browser import CHROMIUM, launch_chromium
from tests.helpers import eventually, http_server, read_topic

pytestmark = pytest.mark.skipif(
    CHROMIUM is None and os.environ.get("CI") != "true",
    reason="needs Debian's chromium (apt-get install chromium); CI installs it",
)
SCREENSHOTS = Path(os.environ.get("CXLOOP_TEST_ARTIFACTS", "/tmp/cxloop-artifacts"))


def page(collector_url: str, key: str, locale: str) -> HTMLResponse:
    return HTMLResponse(
        f"""<!doctype html><html><head><meta charset="utf-8"><title>Order complete</title></head>
        <body><h1>Thanks for your order</h1><div id="feedback"></div>
        <script src="{collector_url}/widget.js" async data-key="{key}" data-metric="nps"
          data-touchpoint="checkout" data-customer-id="cust-browser" data-locale="{locale}"
          data-target="#feedback" data-location="tokyo-shibuya"
          data-reasons="price,delivery_speed,ease_of_use"></script></body></html>"""
    )


@pytest.fixture
async def site(
    kafka_settings: KafkaSettings, database_url: str, auth: AuthSettings
) -> AsyncIterator[tuple[str, str]]:
    """A collector and a shop page on two localhost origins; yields the page URLs' base."""
    page_port, collector_port = free_port(), free_port()
    shop = f"http://127.0.0.1:{page_port}"
    engine = create_async_engine(database_url)
    async with engine.begin() as conn:
        key, _ = await create_key(
            conn,
            name="shop",
            kind=KeyKind.PUBLISHABLE,
            scopes=[Scope.RESPONSES_WRITE],
            sources=["widget"],
            origins=[shop],
        )
    await engine.dispose()
    collector = create_app(
        kafka=kafka_settings,
        database=DatabaseSettings(url=database_url),
        auth=auth,
        settings=CollectorSettings(),
    )
    collector_url = f"http://localhost:{collector_port}"
    shop_app = Starlette(
        routes=[
            Route("/ja", lambda r: page(collector_url, key, "ja-JP")),
            Route("/en", lambda r: page(collector_url, key, "en-US")),
        ]
    )
    async with http_server(collector, collector_port), http_server(shop_app, page_port):
        yield shop, collector_url


@pytest.fixture
async def browser() -> AsyncIterator[object]:
    async with launch_chromium() as browser:
        yield browser


class TestWidgetInChromium:
    async def test_japanese_visitor_answers_and_is_thanked(
        self, site: tuple[str, str], browser: object, kafka_settings: KafkaSettings
    ) -> None:
        shop, _ = site
        page = await browser.new_page()  # type: ignore[attr-defined]
        await page.goto(f"{shop}/ja")
        await page.wait_for_selector(".cxloop-score[data-score='10']")
        assert "友人や同僚に薦める" in await page.inner_text(".cxloop-question")
        await page.click(".cxloop-score[data-score='3']")
        await page.check(".cxloop-reason input[value='delivery_speed']")
        await page.fill(".cxloop-comment", "配送が遅すぎました 📦")
        await page.click(".cxloop-submit")
        await page.wait_for_selector(".cxloop-thanks")
        assert await page.inner_text(".cxloop-thanks") == "ご回答ありがとうございました。"
        # Playwright creates the directory; the picture is for a person checking the widget.
        await page.screenshot(path=str(SCREENSHOTS / "widget-ja-thanks.png"))

        (record,) = await read_topic(kafka_settings, Topic.RESPONSES, 1)
        event = ResponseSubmitted.model_validate_json(record.value)
        assert (event.score, event.comment, event.reasons) == (
            3,
            "配送が遅すぎました 📦",
            ("delivery_speed",),
        )
        assert (event.source, event.channel, event.locale) == ("widget", "web", "ja-JP")
        assert event.segments.location == "tokyo-shibuya"
        assert event.occurred_at.tzinfo is not None

    async def test_a_score_chosen_before_leaving_arrives_by_beacon(
        self, site: tuple[str, str], browser: object, kafka_settings: KafkaSettings
    ) -> None:
        shop, _ = site
        page = await browser.new_page()  # type: ignore[attr-defined]
        await page.goto(f"{shop}/en")
        await page.wait_for_selector(".cxloop-score[data-score='9']")
        assert "recommend us" in await page.inner_text(".cxloop-question")
        await page.click(".cxloop-score[data-score='9']")
        await page.goto("about:blank")
        records = await eventually(
            lambda: read_topic(kafka_settings, Topic.RESPONSES, 1, timeout=2), lambda r: len(r) == 1
        )
        event = ResponseSubmitted.model_validate_json(records[0].value)
        assert (event.score, event.locale) == (9, "en-US")
