"""The widget in a real browser: Debian's Chromium, driven by Playwright, on a localhost page.

Pictures of each state go to ``CXLOOP_TEST_SCREENSHOTS`` (default
``/tmp/cxloop-screenshots``), for a person to look at.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from services.collector.app import create_app
from services.servers import free_port
from shared.apikeys import KeyKind, Scope, create_key
from shared.events import ResponseSubmitted
from shared.settings import AuthSettings, CollectorSettings, DatabaseSettings, KafkaSettings
from shared.topics import Topic
from tests.browser import assert_accessible, needs_chromium, screenshot_dir
from tests.helpers import eventually, http_server, read_topic

pytestmark = needs_chromium
SCREENSHOTS = screenshot_dir()

# What shops' stylesheets do to every button and box; none of it may reach the widget.
HOSTILE_CSS = """
html { font-size: 10px }
body { letter-spacing: .2em; text-transform: uppercase; text-align: center }
* { box-sizing: content-box; line-height: 3 }
button { font-size: 22px; padding: 12px }
p { margin: 3em 0 }
label { display: block; font-size: 30px }
textarea { width: 50% }
"""


def page(collector_url: str, key: str, locale: str, request: Request | None = None) -> Response:
    """A shop's order page embedding the widget; ``?hostile`` adds a hostile stylesheet and
    ``?csp`` a policy that allows no inline script or style."""
    query = request.query_params if request is not None else {}
    sheet = '<link rel="stylesheet" href="/hostile.css">' if "hostile" in query else ""
    headers = {}
    if "csp" in query:
        headers["Content-Security-Policy"] = (
            f"default-src 'none'; script-src {collector_url}; connect-src {collector_url}; "
            "style-src 'self'"
        )
    return HTMLResponse(
        f"""<!doctype html><html lang="{locale[:2]}"><head><meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>Order complete</title>{sheet}</head>
        <body><h1>Thanks for your order</h1><div id="feedback"></div>
        <script src="{collector_url}/widget.js" async data-key="{key}"
          data-metric="nps" data-touchpoint="checkout" data-customer-id="cust-browser"
          data-locale="{locale}" data-target="#feedback" data-location="tokyo-shibuya"
          data-reasons="price,delivery_speed,ease_of_use"></script></body></html>""",
        headers=headers,
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
            Route("/ja", lambda r: page(collector_url, key, "ja-JP", r)),
            Route("/en", lambda r: page(collector_url, key, "en-US", r)),
            Route("/hostile.css", lambda r: Response(HOSTILE_CSS, media_type="text/css")),
        ]
    )
    async with http_server(collector, collector_port), http_server(shop_app, page_port):
        yield shop, collector_url


# Boxes in CSS pixels; an end label's box is its text's (a Range), not its element's.
LAYOUT = """() => {
  const root = document.querySelector("cxloop-widget").shadowRoot;
  const box = (n) => {
    const r = n.getBoundingClientRect();
    return {left: r.left, right: r.right, top: r.top, bottom: r.bottom, width: r.width,
            height: r.height};
  };
  const text = (n) => { const r = document.createRange(); r.selectNodeContents(n); return box(r); };
  const all = (selector) => [...root.querySelectorAll(selector)].filter(
    (n) => n.getClientRects().length).map(box);
  return {
    scores: all(".cxloop-score"),
    low: text(root.querySelector(".cxloop-low")),
    high: text(root.querySelector(".cxloop-high")),
    card: box(root.querySelector(".cxloop-widget")),
    controls: all(".cxloop-reason, .cxloop-comment, .cxloop-submit, .cxloop-question"),
    submit: all(".cxloop-submit"),
    pageWidth: document.documentElement.scrollWidth,
    viewport: window.innerWidth,
  };
}"""

# The element focused inside the widget, if any.
FOCUSED = """() => {
  const host = document.activeElement;
  const node = host && host.shadowRoot ? host.shadowRoot.activeElement : null;
  if (!node) return null;
  return {cls: node.className, score: node.dataset.score ?? null, value: node.value ?? null};
}"""


async def layout(page: Page) -> dict[str, Any]:
    result: dict[str, Any] = await page.evaluate(LAYOUT)
    return result


async def checked(page: Page) -> list[str]:
    """The scores whose radio says it is checked."""
    radios = page.locator(".cxloop-score[aria-checked='true']")
    return [await r.inner_text() for r in await radios.all()]


def assert_one_row_of_thumb_sized_buttons(box: dict[str, Any], where: str) -> None:
    scores = box["scores"]
    assert len(scores) == 11, where
    tops = [s["top"] for s in scores]
    assert max(tops) - min(tops) < 0.5, (where, "rows", tops)
    for score, s in enumerate(scores):
        assert s["width"] >= 24, (where, score, "width", s["width"])
        assert s["height"] >= 44, (where, score, "height", s["height"])
    first, last, low, high = scores[0], scores[-1], box["low"], box["high"]
    assert abs(low["left"] - first["left"]) <= 1, (where, "low label under 0", low, first)
    assert abs(high["right"] - last["right"]) <= 1, (where, "high label under 10", high, last)
    assert low["top"] >= first["bottom"], (where, "low label below the scale")
    assert high["top"] >= last["bottom"], (where, "high label below the scale")
    assert low["right"] < high["left"] or low["bottom"] <= high["top"], (where, low, high)
    assert box["pageWidth"] <= box["viewport"], (where, "the page scrolls sideways")
    assert box["card"]["right"] <= box["viewport"], (where, box["card"])


def assert_inside_the_card(box: dict[str, Any], where: str) -> None:
    card = box["card"]
    for control in box["controls"]:
        assert card["left"] <= control["left"], (where, control, card)
        assert control["right"] <= card["right"], (where, control, card)
    assert box["pageWidth"] <= box["viewport"], (where, "the page scrolls sideways")


class TestWidgetInChromium:
    async def test_japanese_visitor_answers_and_is_thanked(
        self, site: tuple[str, str], browser: Browser, kafka_settings: KafkaSettings
    ) -> None:
        shop, _ = site
        page = await browser.new_page()
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
        self, site: tuple[str, str], browser: Browser, kafka_settings: KafkaSettings
    ) -> None:
        shop, _ = site
        page = await browser.new_page()
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

    async def test_a_refused_answer_says_so_and_can_be_sent_again(
        self, site: tuple[str, str], browser: Browser, kafka_settings: KafkaSettings
    ) -> None:
        shop, _ = site
        page = await browser.new_page(viewport={"width": 390, "height": 844})
        await page.route("**/v1/widget/responses?*", lambda route: route.fulfill(status=503))
        await page.goto(f"{shop}/ja")
        await page.click(".cxloop-score[data-score='6']")
        await page.click(".cxloop-submit")
        await page.wait_for_selector(".cxloop-error")
        assert await page.inner_text(".cxloop-error") == (
            "送信できませんでした。もう一度お試しください。"
        )
        await page.screenshot(path=str(SCREENSHOTS / "widget-ja-390x844-failed.png"))

        await page.unroute("**/v1/widget/responses?*")
        await page.click(".cxloop-submit")
        await page.wait_for_selector(".cxloop-thanks")
        (record,) = await read_topic(kafka_settings, Topic.RESPONSES, 1)
        assert ResponseSubmitted.model_validate_json(record.value).score == 6


VIEWPORTS = [(320, 640), (390, 844), (1280, 800)]


class TestWidgetLayout:
    """One row of thumb-sized scores at any width, whatever the page's own CSS says."""

    @pytest.mark.parametrize("hostile", [False, True], ids=["plain", "hostile-css"])
    @pytest.mark.parametrize("size", VIEWPORTS, ids=[f"{w}px" for w, _ in VIEWPORTS])
    async def test_the_scale_is_one_row_with_its_ends_under_0_and_10(
        self, site: tuple[str, str], browser: Browser, size: tuple[int, int], hostile: bool
    ) -> None:
        shop, _ = site
        width, height = size
        for lang in ("en", "ja"):
            where = f"{lang} at {width}px{' under hostile CSS' if hostile else ''}"
            name = f"widget-{lang}-{width}x{height}{'-hostile' if hostile else ''}"
            page = await browser.new_page(viewport={"width": width, "height": height})
            await page.goto(f"{shop}/{lang}{'?hostile' if hostile else ''}")
            await page.wait_for_selector(".cxloop-score[data-score='10']")
            assert_one_row_of_thumb_sized_buttons(await layout(page), where)
            await assert_accessible(page)
            await page.screenshot(path=str(SCREENSHOTS / f"{name}-scale.png"), full_page=True)

            await page.click(".cxloop-score[data-score='7']")
            await page.check(".cxloop-reason input[value='ease_of_use']")
            await page.fill(".cxloop-comment", "とても使いやすい" if lang == "ja" else "Easy")
            box = await layout(page)
            assert_one_row_of_thumb_sized_buttons(box, where)
            assert_inside_the_card(box, where)
            assert box["submit"][0]["height"] >= 44, where
            await assert_accessible(page)
            await page.screenshot(path=str(SCREENSHOTS / f"{name}-form.png"), full_page=True)

            await page.click(".cxloop-submit")
            await page.wait_for_selector(".cxloop-thanks")
            await assert_accessible(page)
            await page.screenshot(path=str(SCREENSHOTS / f"{name}-thanks.png"), full_page=True)
            await page.close()

    async def test_without_constructed_stylesheets_a_style_element_styles_it(
        self, site: tuple[str, str], browser: Browser
    ) -> None:
        shop, _ = site
        page = await browser.new_page(viewport={"width": 320, "height": 640})
        # An engine older than adoptedStyleSheets (Safari before 16.4).
        await page.add_init_script("delete ShadowRoot.prototype.adoptedStyleSheets")
        await page.goto(f"{shop}/en?hostile")
        await page.wait_for_selector(".cxloop-score[data-score='10']")
        styles = await page.evaluate(
            "() => document.querySelector('cxloop-widget').shadowRoot.querySelectorAll('style')"
            ".length"
        )
        assert styles == 1
        assert_one_row_of_thumb_sized_buttons(await layout(page), "with a <style> element")


class TestWidgetUnderStrictCsp:
    async def test_no_inline_script_or_style_is_needed(
        self, site: tuple[str, str], browser: Browser
    ) -> None:
        shop, _ = site
        page = await browser.new_page(viewport={"width": 390, "height": 844})
        console: list[str] = []
        page.on("console", lambda message: console.append(message.text))
        await page.goto(f"{shop}/ja?csp&hostile")
        await page.wait_for_selector(".cxloop-score[data-score='10']")
        sheets = await page.evaluate(
            "() => document.querySelector('cxloop-widget').shadowRoot.adoptedStyleSheets.length"
        )
        assert sheets == 1
        assert_one_row_of_thumb_sized_buttons(await layout(page), "under a strict CSP")
        assert not [m for m in console if "Content Security Policy" in m], console

    async def test_a_keyboard_alone_chooses_9_and_sends_it(
        self, site: tuple[str, str], browser: Browser, kafka_settings: KafkaSettings
    ) -> None:
        shop, _ = site
        page = await browser.new_page(viewport={"width": 390, "height": 844})
        await page.goto(f"{shop}/en?csp&hostile")
        await page.wait_for_selector(".cxloop-score[data-score='10']")
        keys = page.keyboard

        await keys.press("Tab")
        assert await page.evaluate(FOCUSED) == {"cls": "cxloop-score", "score": "0", "value": ""}
        assert await checked(page) == []
        await keys.press("Space")
        assert await checked(page) == ["0"]
        for _ in range(9):
            await keys.press("ArrowRight")
        assert (await page.evaluate(FOCUSED))["score"] == "9"
        await keys.press("Enter")
        assert await checked(page) == ["9"]
        # Roving tabindex: the chosen radio is the group's one stop in the tab order.
        tab_stops = page.locator(".cxloop-score[tabindex='0']")
        assert [await r.inner_text() for r in await tab_stops.all()] == ["9"]
        snapshot = await page.locator("cxloop-widget").aria_snapshot()
        assert '- radio "9" [checked]' in snapshot, snapshot
        # The ends are read with the radios they stand under.
        await expect(page.locator(".cxloop-score[data-score='0']")).to_have_accessible_description(
            "Not at all likely"
        )
        await expect(page.locator(".cxloop-score[data-score='10']")).to_have_accessible_description(
            "Extremely likely"
        )
        await page.screenshot(path=str(SCREENSHOTS / "widget-en-390x844-keyboard.png"))

        await keys.press("Tab")
        assert await page.evaluate(FOCUSED) == {"cls": "", "score": None, "value": "price"}
        await keys.press("Space")
        for _ in range(3):
            await keys.press("Tab")
        assert (await page.evaluate(FOCUSED))["cls"] == "cxloop-comment"
        await keys.type("Fast checkout")
        await keys.press("Tab")
        assert (await page.evaluate(FOCUSED))["cls"] == "cxloop-submit"
        await keys.press("Enter")
        await page.wait_for_selector(".cxloop-thanks")
        # The thank-you keeps the focus that was on the button, and is announced.
        assert (await page.evaluate(FOCUSED))["cls"] == "cxloop-status cxloop-thanks"
        assert await page.get_attribute(".cxloop-status", "role") == "status"

        (record,) = await read_topic(kafka_settings, Topic.RESPONSES, 1)
        event = ResponseSubmitted.model_validate_json(record.value)
        assert (event.score, event.reasons, event.comment) == (9, ("price",), "Fast checkout")
