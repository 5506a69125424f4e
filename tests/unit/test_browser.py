"""The browser-test helpers, and cxloop.css/cxloop.js on a sample page under a strict CSP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, Route

from tests.browser import (
    DESKTOP,
    PHONE,
    assert_accessible,
    assert_no_page_scroll,
    browser_fixture,  # noqa: F401 (registers the `browser` fixture)
    needs_chromium,
    problems_of,
    run_axe,
    screenshot,
    watched_page,
)

pytestmark = needs_chromium
STATIC = Path(__file__).resolve().parents[2] / "shared/web/static"
ORIGIN = "http://cxloop.test"
CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:"


class TestHelpers:
    async def test_axe_finds_an_unlabelled_input(self, browser: Browser) -> None:
        async with watched_page(browser) as page:
            await page.set_content(
                '<!doctype html><html lang="en"><head><title>t</title></head>'
                "<body><main><input type='text'></main></body></html>"
            )
            assert "label" in {v["id"] for v in await run_axe(page)}

    async def test_axe_passes_a_labelled_input(self, browser: Browser) -> None:
        async with watched_page(browser) as page:
            await page.set_content(
                '<!doctype html><html lang="en"><head><title>t</title></head><body><main>'
                "<label for='q'>Search</label><input id='q' type='text'></main></body></html>"
            )
            await assert_accessible(page)

    async def test_a_csp_violation_fails_the_page(self, browser: Browser) -> None:
        async def inline_script(route: Route) -> None:
            await route.fulfill(
                body="<!doctype html><title>t</title><script>document.title = 'ran'</script>",
                content_type="text/html",
                headers={"Content-Security-Policy": "script-src 'self'"},
            )

        async def visit() -> None:
            async with watched_page(browser) as page:
                await page.route(f"{ORIGIN}/**", inline_script)
                await page.goto(f"{ORIGIN}/")
                assert await page.title() == "t"

        with pytest.raises(AssertionError, match="CSP violation: script-src-elem blocked inline"):
            await visit()

    async def test_a_console_error_fails_the_page_unless_allowed(self, browser: Browser) -> None:
        async def log_error(allow: str | None) -> None:
            async with watched_page(browser) as page:
                if allow:
                    problems_of(page).allow(allow)
                await page.evaluate("console.error('expected: boom')")

        with pytest.raises(AssertionError, match="console error: expected: boom"):
            await log_error(None)
        await log_error("^expected")


SAMPLE = """<!doctype html>
<html lang="{lang}">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="/static/cxloop.css">
<script src="/static/cxloop.js" defer></script>
<script src="/sample.js" defer></script></head>
<body>
<a class="skip-link" href="#main">{skip}</a>
<header class="site-header">
  <a class="brand" href="/">cxloop</a>
  <nav class="site-nav" aria-label="{nav}"><ul>
    <li><a href="/" aria-current="page">{dashboard}</a></li><li><a href="/alerts">{alerts}</a></li>
    <li><a href="/responses">{responses}</a></li><li><a href="/settings">{settings}</a></li>
  </ul></nav>
  <div class="header-tools">
    <span class="live" data-live data-state="connecting" role="status"
      data-label-live="{live}" data-label-offline="{offline}"
      data-label-connecting="{connecting}">{connecting}</span>
    <ul class="lang-switch" aria-label="{language}">
      <li><a href="?lang=en" lang="en">English</a></li>
      <li><a href="?lang=ja" lang="ja">日本語</a></li>
    </ul>
  </div>
</header>
<main id="main" class="page">
  <div class="page-head"><h1 class="page-title">{title}</h1>
    <p class="muted small"><time datetime="2024-05-01T00:30:00Z">2024-05-01 00:30 UTC</time></p>
  </div>
  <ul class="tiles">
    <li class="tile"><h2 class="tile-label">NPS</h2>
      <p class="tile-value"><data class="num" value="42.5" data-decimals="1"
        data-signed>42.5</data></p>
      <div class="split" role="img" aria-label="52% / 38% / 10%"><span class="split-promoters"
        data-share="52"></span><span class="split-passives" data-share="38"></span><span
        class="split-detractors" data-share="10"></span></div>
      <p class="tile-meta">n = <data class="num" value="1234567">1234567</data></p></li>
    <li class="tile"><h2 class="tile-label">CSAT</h2>
      <p class="tile-value"><data class="num" value="0.873" data-style="percent">0.873</data></p>
      <p class="tile-meta"><span class="badge badge-warning">{insufficient}</span></p></li>
    <li class="tile"><h2 class="tile-label">CES</h2><p class="tile-value">5.1</p>
      <p class="tile-meta"><span class="badge badge-critical">critical</span>
      <span class="badge badge-resolved">resolved</span></p></li>
  </ul>
  <section class="panel" aria-labelledby="responses-title">
    <div class="panel-header"><h2 id="responses-title">{responses}</h2>
      <form class="actions" method="post" action="/x" data-confirm="{confirm}">
        <button class="button button-danger button-small" type="submit">{delete}</button></form>
    </div>
    <div class="table-scroll" tabindex="0" role="region" aria-labelledby="responses-title">
      <table class="table"><thead><tr><th>{when}</th><th class="num">{score}</th>
        <th>{comment}</th><th>Touchpoint</th><th>Location</th><th>Channel</th></tr></thead>
      <tbody><tr><td class="nowrap"><time datetime="2024-05-01T09:30:00+09:00">x</time></td>
        <td class="num">3</td><td class="verbatim">{verbatim}</td><td>checkout</td>
        <td>tokyo-shibuya</td><td>web</td></tr></tbody></table></div>
  </section>
  <section class="panel"><div class="panel-body">
    <p class="state state-empty">{empty}</p>
    <p class="state state-error" role="alert">{error}</p></div></section>
</main>
</body></html>
"""

SAMPLE_JS = """
cxloop.poll("/api/data", 100, (data) => {
  document.body.dataset.polled = String(data.n);
});
"""

WORDS = {
    "en": {
        "title": "Dashboard",
        "skip": "Skip to main content",
        "nav": "Main navigation",
        "dashboard": "Dashboard",
        "alerts": "Alerts",
        "responses": "Responses",
        "settings": "Settings",
        "live": "Live",
        "offline": "Offline",
        "connecting": "Connecting…",
        "language": "Language",
        "insufficient": "Insufficient sample",
        "confirm": "Are you sure?",
        "delete": "Delete",
        "when": "When",
        "score": "Score",
        "comment": "Comment",
        "verbatim": "Delivery was far too slow and nobody answered my emails for a week.",
        "empty": "Nothing matches these filters.",
        "error": "This part of the page could not be loaded. Please try again in a moment.",
    },
    "ja": {
        "title": "ダッシュボード",
        "skip": "本文へスキップ",
        "nav": "メインナビゲーション",
        "dashboard": "ダッシュボード",
        "alerts": "アラート",
        "responses": "回答",
        "settings": "設定",
        "live": "ライブ",
        "offline": "オフライン",
        "connecting": "接続中…",
        "language": "表示言語",
        "insufficient": "サンプル不足",
        "confirm": "よろしいですか？",
        "delete": "削除",
        "when": "日時",
        "score": "スコア",
        "comment": "コメント",
        "verbatim": "配送が遅すぎました。一週間メールに返信がなく、とても不安でした。📦",
        "empty": "この条件に一致するデータはありません。",
        "error": "この部分を読み込めませんでした。しばらくしてから再度お試しください。",
    },
}


async def serve_sample(page: Page, lang: str, api_up: list[bool]) -> None:
    async def handle(route: Route) -> None:
        path = route.request.url.removeprefix(ORIGIN).split("?", 1)[0]
        headers = {"Content-Security-Policy": CSP}
        if path.startswith("/static/"):
            body = (STATIC / path.removeprefix("/static/")).read_bytes()
            kind = "text/css" if path.endswith(".css") else "text/javascript"
            await route.fulfill(body=body, content_type=kind, headers=headers)
        elif path == "/sample.js":
            await route.fulfill(body=SAMPLE_JS, content_type="text/javascript")
        elif path == "/api/data":
            if api_up[0]:
                await route.fulfill(body=json.dumps({"n": 7}), content_type="application/json")
            else:
                await route.abort("connectionrefused")
        else:
            html = SAMPLE.format(**WORDS[lang], lang=lang)
            await route.fulfill(body=html, content_type="text/html", headers=headers)

    await page.route(f"{ORIGIN}/**", handle)


class TestSamplePage:
    @pytest.mark.parametrize("lang", ["en", "ja"])
    async def test_it_is_accessible_and_fits_at_both_sizes(
        self, browser: Browser, lang: str
    ) -> None:
        for name, viewport, across in (("desktop", DESKTOP, 3), ("phone", PHONE, 1)):
            async with watched_page(
                browser, "ja" if lang == "ja" else "en", viewport, timezone_id="Asia/Tokyo"
            ) as page:
                await serve_sample(page, lang, [True])
                await page.goto(f"{ORIGIN}/")
                await page.wait_for_selector("body[data-polled='7']")
                await page.wait_for_selector(".live[data-state='live']")
                await assert_accessible(page)
                await assert_no_page_scroll(page)
                lefts = await page.eval_on_selector_all(
                    ".tile", "tiles => new Set(tiles.map(t => t.getBoundingClientRect().left)).size"
                )
                assert lefts == across
                await screenshot(page, f"sample-{lang}-{name}")

    async def test_intl_formats_times_and_numbers_in_the_page_language(
        self, browser: Browser
    ) -> None:
        async with watched_page(browser, "ja", timezone_id="Asia/Tokyo") as page:
            await serve_sample(page, "ja", [True])
            await page.goto(f"{ORIGIN}/")
            await page.wait_for_selector("body[data-polled]")
            assert await page.inner_text(".page-head time") == "2024/05/01 9:30"
            values = await page.eval_on_selector_all(
                "data.num", "els => els.map(e => e.textContent)"
            )
            assert values == ["+42.5", "1,234,567", "87%"]
            basis = await page.eval_on_selector(".split-promoters", "e => e.style.flexBasis")
            assert basis == "52%"

    async def test_polling_goes_offline_and_recovers_by_itself(self, browser: Browser) -> None:
        api_up = [False]
        async with watched_page(browser) as page:
            problems_of(page).allow("ERR_CONNECTION_REFUSED|Failed to load resource")
            await serve_sample(page, "en", api_up)
            await page.goto(f"{ORIGIN}/")
            await page.wait_for_selector(".live[data-state='offline']")
            assert await page.inner_text(".live") == "Offline"
            api_up[0] = True
            await page.wait_for_selector(".live[data-state='live']", timeout=10_000)
            assert await page.inner_text(".live") == "Live"

    async def test_a_confirmed_form_asks_first(self, browser: Browser) -> None:
        async with watched_page(browser) as page:
            await serve_sample(page, "en", [True])
            await page.goto(f"{ORIGIN}/")
            asked: list[str] = []

            async def decline(dialog: object) -> None:
                asked.append(dialog.message)  # type: ignore[attr-defined]
                await dialog.dismiss()  # type: ignore[attr-defined]

            page.on("dialog", decline)
            await page.click("form[data-confirm] button")
            await page.wait_for_function("() => true")
            assert asked == ["Are you sure?"]
            assert page.url == f"{ORIGIN}/"
