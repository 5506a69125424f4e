"""The dashboard in a real browser (Debian's Chromium through Playwright) against the three
services as processes on real Kafka and Postgres, fed by ``cxloop simulate``.

Signing in by the one-time link, the NPS tile against /v1/scores, the drill-down by clicks
from a channel to its answers to a customer, a new answer arriving without a reload, no
console error or CSP violation, axe-core on every page, and a screenshot of every page in
ja and en at 1280×800 and 390×844 (in ``tests.browser.screenshot_dir()``) for a person to
look at,
full pages and their first screens (README's pictures come from those).
"""

from __future__ import annotations

import random
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx
import pytest
from playwright.async_api import Browser, Page, ViewportSize, expect

from services import simulate
from tests.browser import (
    DESKTOP,
    PHONE,
    assert_accessible,
    assert_no_page_scroll,
    browser_fixture,
    needs_chromium,
    screenshot,
    screenshot_dir,
    watched_page,
)
from tests.e2e.pages_stack import PagesStack
from tests.helpers import eventually

pytestmark = needs_chromium
__all__ = ["browser_fixture"]  # registers the session's `browser` fixture

WAIT_MS = 20_000  # an upper bound for the browser to see something, never a timing claim


async def headline(stack: PagesStack) -> dict[str, Any]:
    async with httpx.AsyncClient(
        base_url=stack.scorer.url, headers={"Authorization": f"Bearer {stack.api_key}"}
    ) as client:
        response = await client.get("/v1/headline")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body


def history(days: int = 28, seed: int = 11) -> list[dict[str, Any]]:
    """Answers spread over the past ``days`` days, as `cxloop simulate` would have sent them
    over a month (it sends only now): moods by channel and location, slowly improving."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    items: list[dict[str, Any]] = []
    for ago in range(1, days + 1):
        drift = (days - ago) / days - 0.5
        for _ in range(rng.randint(8, 18)):
            at = now - timedelta(days=ago, minutes=rng.randint(0, 24 * 60 - 1))
            channel = rng.choice(["web", "web", "email", "call_center"])
            location = rng.choice(list(simulate.LOCATIONS))
            metric = rng.choice(["nps", "nps", "csat", "ces"])
            mood = simulate.CHANNEL_MOOD[channel] + simulate.LOCATIONS[location] + drift
            nps = max(0, min(10, round(7.5 + mood + rng.gauss(0, 2.2))))
            item: dict[str, Any] = {
                "metric": metric,
                "channel": channel,
                "survey_type": "transactional",
                "touchpoint": rng.choice(["checkout", "delivery", "support_call"]),
                "customer_id": f"cust-{rng.randint(1, 400)}",
                "segments": {"location": location, "product": rng.choice(["app", "store"])},
                "occurred_at": at.isoformat(),
                "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            }
            if metric == "nps":
                item["score"], high = nps, 10
            elif metric == "csat":
                item["score"], high = max(1, min(5, round(nps / 2))), 5
            else:
                item |= {"scale": 7, "score": max(1, min(7, round(nps * 0.7)))}
                high = 7
            band = (
                "low"
                if item["score"] <= high * 0.6
                else "mid"
                if item["score"] < high * 0.9
                else "high"
            )
            comment, reasons = rng.choice(simulate.COMMENTS[band])
            if comment:
                item["comment"] = comment
            item["reasons"] = reasons
            items.append(item)
    return items


REGULAR = "cust-42"  # a customer with answers and tickets, for the customer page


def regular_customer() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Three answers and two tickets (one resolved after a reopening, one open) of one
    customer over the last two weeks."""
    now = datetime.now(UTC)
    base = {"channel": "email", "survey_type": "transactional", "customer_id": REGULAR}
    answers = [
        base | {"metric": "nps", "score": 2, "touchpoint": "delivery", "locale": "ja-JP",
                "comment": "配送が遅すぎました。二度と使いません。", "reasons": ["delivery_speed"],
                "segments": {"location": "tokyo-shibuya"},
                "occurred_at": (now - timedelta(days=12)).isoformat()},
        base | {"metric": "csat", "score": 3, "touchpoint": "support_call", "locale": "ja-JP",
                "comment": "担当者の説明が分かりにくかったです",
                "reasons": ["agent_knowledge"], "segments": {"location": "tokyo-shibuya"},
                "occurred_at": (now - timedelta(days=9)).isoformat()},
        base | {"metric": "nps", "score": 9, "touchpoint": "support_call", "locale": "en-US",
                "comment": "Sorted out on the second call, thank you.",
                "reasons": ["agent_attitude"], "segments": {"location": "tokyo-shibuya"},
                "occurred_at": (now - timedelta(days=2)).isoformat()},
    ]  # fmt: skip
    created = now - timedelta(days=12, hours=-1)

    def event(kind: str, ticket: str, at: datetime, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "ticket_id": ticket, "customer_id": REGULAR, "channel": "email",
                "occurred_at": at.isoformat(), **fields}  # fmt: skip

    events = [
        event("ticket.created", "ZD-1042", created, priority="high"),
        event("ticket.first_response", "ZD-1042", created + timedelta(hours=5)),
        event("ticket.resolved", "ZD-1042", created + timedelta(days=1)),
        event("ticket.reopened", "ZD-1042", created + timedelta(days=2)),
        event("ticket.resolved", "ZD-1042", created + timedelta(days=3, hours=2)),
        event("ticket.created", "ZD-1107", now - timedelta(hours=30), priority="normal"),
        event("ticket.first_response", "ZD-1107", now - timedelta(hours=29, minutes=40)),
    ]
    return answers, events


@pytest.fixture(scope="module")
async def fed(pages: PagesStack) -> PagesStack:
    """The stack after a month of answers and `cxloop simulate`'s traffic, all counted."""
    async with httpx.AsyncClient(
        base_url=pages.collector.url, headers={"Authorization": f"Bearer {pages.api_key}"}
    ) as client:
        answers, events = regular_customer()
        items = history() + answers
        for path, batch in [
            *(("/v1/responses/batch", items[i : i + 250]) for i in range(0, len(items), 250)),
            ("/v1/events/batch", events),
        ]:
            sent = await client.post(path, json={"items": batch})
            assert sent.status_code == 200, sent.text
            assert sent.json()["accepted"] == len(batch), sent.text
    await pages.simulate(160, rate=40)
    seen: list[int] = []

    async def total() -> int:
        body = await headline(pages)
        seen.append(sum(s["n"] for s in body["scores"]))
        return seen[-1]

    # Counted when the total stops moving over several probes (the pipeline has drained).
    await eventually(
        total,
        lambda n: n > 0 and len(seen) > 5 and len(set(seen[-6:])) == 1,
        timeout=60,
        interval=0.5,
    )
    return pages


async def signed_in(page: Page, stack: PagesStack) -> None:
    await page.goto(await stack.sign_in_link("scorer"))
    await expect(page).to_have_url(stack.page("scorer"))


async def drawn(page: Page) -> None:
    """The dashboard with its charts drawn and its live updates running."""
    await expect(page.locator(".chart .uplot").first).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator(".live[data-state='live']")).to_have_count(1, timeout=WAIT_MS)


class TestDashboard:
    async def test_the_nps_tile_is_the_api_score(self, browser: Browser, fed: PagesStack) -> None:
        async with watched_page(browser, "en", DESKTOP) as page:
            await signed_in(page, fed)
            try:
                await drawn(page)
            except AssertionError:
                print("\n".join(fed.scorer.log[-80:]))
                raise
            shown = await page.locator("#tile-nps-score").get_attribute("value")
            async with httpx.AsyncClient(
                base_url=fed.scorer.url, headers={"Authorization": f"Bearer {fed.api_key}"}
            ) as client:
                api = (await client.get("/v1/scores", params={"metric": "nps"})).json()
            assert shown is not None
            assert float(shown) == api["score"]
            n = await page.locator("#tile-nps-n").get_attribute("value")
            assert n is not None
            assert int(float(n)) == api["n"]

    async def test_drill_down_from_a_channel_to_a_customer(
        self, browser: Browser, fed: PagesStack
    ) -> None:
        async with watched_page(browser, "en", DESKTOP) as page:
            await signed_in(page, fed)
            channel = page.locator("#breakdown-channel a[data-filter='channel']").first
            name = (await channel.text_content() or "").strip()
            await channel.click()
            await expect(page).to_have_url(re.compile(re.escape("channel=")))
            await expect(page.locator(".chip").first).to_contain_text(name)
            await page.locator("a.see-answers").click()
            await expect(page).to_have_url(re.compile(re.escape("/dashboard/responses?")))
            assert "channel=" in page.url
            with_comment = page.locator("li.answer:has(p.comment:not(.comment-none))").first
            await expect(with_comment).to_be_visible()
            comment = (await with_comment.locator("p.comment").text_content() or "").strip()
            assert comment
            await expect(with_comment.locator(".answer-where")).to_contain_text(name)
            await with_comment.locator("a.answer-customer").click()
            await expect(page).to_have_url(re.compile(re.escape("/dashboard/customers/")))
            await expect(page.locator("#customer-answers li.answer").first).to_be_visible()
            await expect(page.locator("#customer-answers")).to_contain_text(comment)

    async def test_a_new_answer_appears_without_a_reload(
        self, browser: Browser, fed: PagesStack
    ) -> None:
        distinctive = f"ライブ確認 {uuid.uuid4().hex[:8]} <b>not bold</b>"
        async with watched_page(browser, "ja", DESKTOP) as page:
            await signed_in(page, fed)
            await drawn(page)
            await page.evaluate("() => { window.__notReloaded = true; }")
            n_before = await page.locator("#tile-nps-n").get_attribute("value")
            assert n_before is not None
            async with httpx.AsyncClient(
                base_url=fed.collector.url, headers={"Authorization": f"Bearer {fed.api_key}"}
            ) as client:
                response = await client.post(
                    "/v1/responses",
                    json={
                        "metric": "nps",
                        "score": 2,
                        "channel": "web",
                        "survey_type": "transactional",
                        "touchpoint": "checkout",
                        "customer_id": "cust-live-check",
                        "comment": distinctive,
                        "reasons": ["delivery_speed"],
                        "locale": "ja-JP",
                        "event_id": str(uuid.uuid4()),
                    },
                )
                assert response.status_code in (200, 201, 202), response.text
            arrived = page.locator("#latest-list li.answer").filter(has_text=distinctive)
            await expect(arrived).to_have_count(1, timeout=WAIT_MS)
            await expect(arrived.locator("p.comment")).to_have_text(distinctive)
            # The tiles are asked for again after new answers: the NPS tile counts this one.
            await page.wait_for_function(
                "(before) => Number(document.getElementById('tile-nps-n').getAttribute('value'))"
                " > before",
                arg=float(n_before),
                timeout=WAIT_MS,
            )
            assert await page.evaluate("() => window.__notReloaded === true")
            # Later polls send it again (they look back a few seconds): it is shown once.
            for _ in range(2):
                async with page.expect_response(lambda r: "/dashboard/live" in r.url):
                    pass
            assert await arrived.count() == 1


Lang = Literal["en", "ja"]
SIZES: dict[str, ViewportSize] = {"1280x800": DESKTOP, "390x844": PHONE}


class TestLookAndAccessibility:
    @pytest.mark.parametrize("lang", ["en", "ja"])
    @pytest.mark.parametrize("size", sorted(SIZES))
    async def test_every_page_is_accessible_fits_and_is_photographed(
        self, browser: Browser, fed: PagesStack, lang: Lang, size: str
    ) -> None:
        async with watched_page(browser, lang, SIZES[size], timezone_id="Asia/Tokyo") as page:
            await signed_in(page, fed)
            await drawn(page)
            await assert_accessible(page)
            await assert_no_page_scroll(page)
            await screenshot(page, f"dashboard-{lang}-{size}")
            await page.evaluate("() => window.scrollTo(0, 0)")
            await screenshot(page, f"dashboard-{lang}-{size}-first-screen", full_page=False)
            # The head of the page down to the trends: what README shows.
            bottom = await page.evaluate(
                "() => document.querySelector('#trends').getBoundingClientRect().bottom + 16"
            )
            await page.screenshot(
                path=str(screenshot_dir() / f"dashboard-{lang}-{size}-overview.png"),
                full_page=True,
                clip={"x": 0, "y": 0, "width": SIZES[size]["width"], "height": bottom},
            )

            await page.goto(fed.scorer.url + "/dashboard/responses")
            await expect(page.locator("li.answer").first).to_be_visible()
            await assert_accessible(page)
            await assert_no_page_scroll(page)
            await screenshot(page, f"responses-{lang}-{size}")
            await page.evaluate("() => window.scrollTo(0, 0)")
            await screenshot(page, f"responses-{lang}-{size}-first-screen", full_page=False)

            await page.goto(fed.scorer.url + "/dashboard/customers/" + REGULAR)
            await expect(page.locator("#customer-tickets tbody tr")).to_have_count(2)
            await assert_accessible(page)
            await assert_no_page_scroll(page)
            await screenshot(page, f"customer-{lang}-{size}")
            await page.evaluate("() => window.scrollTo(0, 0)")
            await screenshot(page, f"customer-{lang}-{size}-first-screen", full_page=False)

    async def test_keyboard_reaches_the_filters_and_the_skip_link(
        self, browser: Browser, fed: PagesStack
    ) -> None:
        async with watched_page(browser, "en", DESKTOP) as page:
            await signed_in(page, fed)
            await page.keyboard.press("Tab")
            skip = page.locator("a.skip-link")
            await expect(skip).to_be_focused()
            await page.keyboard.press("Enter")
            await expect(page.locator("#main")).to_be_focused()
            # The first breakdown link is reachable and opens the filtered page by Enter.
            link = page.locator("#breakdown-channel a[data-filter='channel']").first
            await link.focus()
            await page.keyboard.press("Enter")
            await expect(page).to_have_url(re.compile(re.escape("channel=")))
