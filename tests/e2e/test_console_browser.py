"""The on-call console in a real browser (Debian's Chromium through Playwright), against the
three services as processes on real Kafka and Postgres, fed by ``cxloop simulate``.

Pictures of every page, in ja and en, at 1280×800 and 390×844, go to
``CXLOOP_TEST_SCREENSHOTS`` (default ``/tmp/cxloop-screenshots``) for a person to look at.
"""

from __future__ import annotations

import re
import uuid
from typing import Any, Literal

import httpx
import pytest
from playwright.async_api import Browser, Page, ViewportSize, expect

from tests.browser import (
    DESKTOP,
    PHONE,
    assert_accessible,
    assert_no_page_scroll,
    browser_fixture,
    needs_chromium,
    problems_of,
    screenshot,
    watched_page,
)
from tests.builders import response_payload
from tests.e2e.pages_stack import PagesStack

pytestmark = needs_chromium
__all__ = ["browser_fixture"]  # registers the session's `browser` fixture

# Long enough for a first Kafka group join on a loaded machine; an expectation returns as
# soon as it holds, so this bounds a failure, never a pass.
ARRIVAL_MS = 30_000
ZONES = {"en": "America/New_York", "ja": "Asia/Tokyo"}


@pytest.fixture(scope="module")
async def fed(pages: PagesStack) -> PagesStack:
    """The stack with simulated traffic, so the queue holds detractor alerts."""
    await pages.simulate(60)
    return pages


async def api(stack: PagesStack, path: str) -> Any:
    async with httpx.AsyncClient(
        base_url=stack.alerting.url, headers={"Authorization": f"Bearer {stack.api_key}"}
    ) as client:
        response = await client.get(path)
        assert response.status_code == 200, response.text
        return response.json()


async def signed_in(page: Page, stack: PagesStack) -> None:
    """Sign in by a one-time link, as `cxloop up` prints it; it lands on the queue."""
    await page.goto(await stack.sign_in_link("alerting"))
    await expect(page).to_have_url(stack.page("alerting"))
    await expect(page.locator("tr[data-id]").first).to_be_visible(timeout=ARRIVAL_MS)


async def post_detractor(stack: PagesStack, comment: str) -> None:
    async with httpx.AsyncClient(base_url=stack.collector.url) as client:
        response = await client.post(
            "/v1/responses",
            json=response_payload(score=0, comment=comment, channel="web"),
            headers={"Authorization": f"Bearer {stack.api_key}"},
        )
    assert response.status_code in (200, 201, 202), response.text


async def tab_to(page: Page, selector: str, most: int = 80) -> None:
    """Press Tab until ``selector`` has the focus, as a keyboard user would."""
    for _ in range(most):
        if await page.evaluate("(s) => document.activeElement?.matches(s) ?? false", selector):
            return
        await page.keyboard.press("Tab")
    raise AssertionError(f"{selector} never took the focus by Tab")


async def assert_no_inner_scroll(page: Page, selector: str) -> None:
    widths = await page.locator(selector).evaluate("(e) => [e.scrollWidth, e.clientWidth]")
    assert widths[0] <= widths[1], f"{selector} scrolls sideways: {widths[0]}px in {widths[1]}px"


class TestOnCall:
    async def test_a_new_detractor_arrives_live_and_is_handled_by_keyboard(
        self, browser: Browser, fed: PagesStack
    ) -> None:
        async with watched_page(browser, "ja", DESKTOP, timezone_id=ZONES["ja"]) as page:
            await signed_in(page, fed)
            await expect(page.locator(".live")).to_have_attribute("data-state", "live")
            # A mark that a reload would wipe: the row must arrive without one.
            await page.evaluate("() => { window.__sameDocument = true; }")
            comment = f"店員の態度がひどかった（{uuid.uuid4().hex[:6]}）"
            await post_detractor(fed, comment)
            row = page.locator("tr[data-id]", has_text=comment)
            await expect(row).to_be_visible(timeout=ARRIVAL_MS)
            assert await page.evaluate("() => window.__sameDocument === true")
            alert_id = await row.get_attribute("data-id")

            await row.locator("a.q-link").click()
            await expect(page).to_have_url(f"{fed.alerting.url}/console/alerts/{alert_id}")
            await expect(page.locator("blockquote.comment")).to_have_text(comment)
            await page.get_by_role("button", name="対応を開始").click()
            await expect(page.locator(".notice-ok")).to_be_visible()
            await expect(page.locator(".status-big")).to_have_text("対応中")

            # Resolve by keyboard alone: Tab to the note, type it, Tab to the button, Enter.
            note = "お客様に電話し、お詫びして返金しました。"
            await tab_to(page, "textarea#note")
            await page.keyboard.type(note)
            await tab_to(page, "form.action-resolve button[type=submit]")
            await page.keyboard.press("Enter")
            await expect(page.locator(".status-big")).to_have_text("解決済み")
            await expect(page.locator(".notice-ok")).to_contain_text("解決済みにしました")
            actor = (await page.locator(".signout .actor").inner_text()).strip()

            body = await api(fed, f"/v1/alerts/{alert_id}")
            assert body["status"] == "resolved"
            assert body["note"] == note
            assert body["comment"] == comment
            assert body["acknowledged_actor"] == body["resolved_actor"]
            assert actor.endswith(body["resolved_actor"])
            history = (await api(fed, f"/v1/alerts/{alert_id}/history"))["items"]
            assert [e["action"] for e in history][-2:] == ["acknowledged", "resolved"]

    async def test_a_form_without_its_csrf_token_is_refused(
        self, browser: Browser, fed: PagesStack
    ) -> None:
        async with watched_page(browser, "en", DESKTOP) as page:
            problems_of(page).allow(r"status of 403")  # the refusal this test provokes
            await signed_in(page, fed)
            first = page.locator("tr[data-id]").first
            alert_id = await first.get_attribute("data-id")
            await first.locator("a.q-link").click()
            before = (await api(fed, f"/v1/alerts/{alert_id}/history"))["items"]
            await page.fill("textarea#text", "this comment must not be recorded")
            await page.evaluate(
                '() => document.querySelector(\'form[action$="/comment"] '
                "input[name=csrf_token]').remove()"
            )
            async with page.expect_response(lambda r: r.request.method == "POST") as posted:
                await page.get_by_role("button", name="Add comment").click()
            assert (await posted.value).status == 403
            await expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
            assert (await api(fed, f"/v1/alerts/{alert_id}/history"))["items"] == before

    async def test_offline_is_said_and_recovers_by_itself(
        self, browser: Browser, fed: PagesStack
    ) -> None:
        async with watched_page(browser, "ja", PHONE) as page:
            problems_of(page).allow(r"ERR_INTERNET_DISCONNECTED")  # the polls this cuts off
            await signed_in(page, fed)
            live = page.locator(".live")
            await expect(live).to_have_attribute("data-state", "live")
            await page.context.set_offline(True)
            await expect(live).to_have_attribute("data-state", "offline")
            await expect(live).to_have_text("オフライン")
            await expect(page.locator("#offline-note")).to_be_visible()
            await screenshot(page, "console-ja-phone-offline", full_page=False)
            await page.context.set_offline(False)
            await expect(live).to_have_attribute("data-state", "live")
            await expect(page.locator("#offline-note")).to_be_hidden()

    async def test_a_session_that_ends_goes_to_sign_in_by_itself(
        self, browser: Browser, fed: PagesStack
    ) -> None:
        async with watched_page(browser, "en", PHONE) as page:
            await signed_in(page, fed)
            await expect(page.locator(".live")).to_have_attribute("data-state", "live")
            await page.context.clear_cookies()  # as an expired or revoked session would
            await expect(page).to_have_url(re.compile(r"/signin\?next=%2Fconsole$"))
            await expect(page.locator("#api_key")).to_be_visible()


Viewport = Literal["desktop", "phone"]
VIEWPORTS: dict[Viewport, ViewportSize] = {"desktop": DESKTOP, "phone": PHONE}


class TestEveryPage:
    @pytest.mark.parametrize("lang", ["en", "ja"])
    @pytest.mark.parametrize("size", ["desktop", "phone"])
    async def test_accessible_unscrolled_and_pictured(
        self, browser: Browser, fed: PagesStack, lang: Literal["en", "ja"], size: Viewport
    ) -> None:
        viewport = VIEWPORTS[size]
        async with watched_page(browser, lang, viewport, timezone_id=ZONES[lang]) as page:
            await signed_in(page, fed)
            await expect(page.locator(".live")).to_have_attribute("data-state", "live")
            await assert_accessible(page)
            await assert_no_page_scroll(page)
            if size == "desktop":  # at 1280 px the whole queue fits, nothing scrolls sideways
                await assert_no_inner_scroll(page, ".queue-panel .table-scroll")
            await screenshot(page, f"console-{lang}-{size}")

            # An open alert's page, with its forms; then a silence made from it.
            open_row = page.locator("tr[data-id]").first
            await open_row.locator("a.q-link").click()
            await expect(page.locator("h1")).to_be_visible()
            await assert_accessible(page)
            await assert_no_page_scroll(page)
            await screenshot(page, f"alert-{lang}-{size}")

            await page.locator(".area-silence summary").click()
            await page.fill("#silence-comment", f"screenshot {lang} {size}")
            await page.locator(".area-silence button[type=submit]").click()
            await expect(page).to_have_url(f"{fed.alerting.url}/console/silences?done=silenced")
            await assert_accessible(page)
            await assert_no_page_scroll(page)
            await screenshot(page, f"silences-{lang}-{size}")

            # The focus, as a keyboard user sees it: Tab from the top of the queue.
            await page.goto(fed.page("alerting"))
            await tab_to(page, ".status-tabs a")
            await screenshot(page, f"console-{lang}-{size}-focus", full_page=False)
