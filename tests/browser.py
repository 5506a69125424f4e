"""Browser tests: Debian's Chromium through Playwright, watched for errors, checked by axe.

    from tests.browser import DESKTOP, PHONE, assert_accessible, browser_fixture, page_fixture
    from tests.browser import needs_chromium, screenshot, set_language, set_viewport

    pytestmark = needs_chromium
    # the fixtures `browser` (one Chromium per session) and `page` (a fresh context per test)
    # are registered by importing them: from tests.browser import browser_fixture, page_fixture

    async def test_dashboard(page: Page, base_url: str) -> None:
        await set_language(page, "ja")
        await set_viewport(page, PHONE)
        await page.goto(f"{base_url}/dashboard")
        await assert_accessible(page)
        await assert_no_page_scroll(page)
        await screenshot(page, "dashboard-ja-phone")

The `page` fixture fails the test (at teardown) if the page logged a console error, threw
an uncaught exception or broke its Content-Security-Policy; `problems_of(page)` gives the
record, and `.allow(regex)` accepts an error the test provokes on purpose (an offline poll).
Without a fixture: `async with launch_chromium() as browser, watched_page(browser) as page`.
CSP violations are recorded by an init script on each navigation; a page made with
`set_content` reports them only as the console errors Chromium logs (document.open drops
the listener), so test CSP on pages you `goto`.

Playwright never downloads a browser here: it drives /usr/bin/chromium (CI installs it).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import pytest
from playwright.async_api import (
    Browser,
    ConsoleMessage,
    Error,
    Page,
    ViewportSize,
    async_playwright,
)

ROOT: Final = Path(__file__).resolve().parents[1]
CHROMIUM: Final = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS: Final = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and os.environ.get("CI") != "true",
    reason="needs Debian's chromium (apt-get install chromium); CI installs it",
)

DESKTOP: Final = ViewportSize(width=1280, height=800)
PHONE: Final = ViewportSize(width=390, height=844)
VIEWPORTS: Final = {"desktop": DESKTOP, "phone": PHONE}
LOCALES: Final = {"en": "en-US", "ja": "ja-JP"}
ACCEPT_LANGUAGE: Final = {"en": "en-US,en;q=0.9", "ja": "ja-JP,ja;q=0.9"}

(AXE_JS,) = sorted((ROOT / "tests/vendor").glob("axe-core-*/axe.min.js"))
BLOCKING_IMPACTS: Final = ("serious", "critical")


# ---- Launching ----------------------------------------------------------------------------


@asynccontextmanager
async def launch_chromium() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, driven by Playwright; closed on exit."""
    assert CHROMIUM is not None, "CI must install Debian's chromium"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=list(CHROMIUM_ARGS)
        )
        try:
            yield browser
        finally:
            await browser.close()


# ---- Watching a page ----------------------------------------------------------------------

# Runs in every document before its own scripts; Playwright injects it past the page's CSP.
_WATCH_CSP = """
window.addEventListener("securitypolicyviolation", (event) => {
  window.__cxloopCspViolation(
    `${event.effectiveDirective} blocked ${event.blockedURI || "inline"}` +
      (event.sourceFile ? ` at ${event.sourceFile}:${event.lineNumber}` : "")
  );
}, true);
"""


@dataclass
class Problems:
    """What went wrong in a page: console errors, uncaught exceptions, CSP violations."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    csp_violations: list[str] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=list)

    def allow(self, pattern: str) -> None:
        """Accept console errors and exceptions matching `pattern` (one the test provokes)."""
        self.allowed.append(re.compile(pattern))

    def _counts(self, text: str) -> bool:
        return not any(pattern.search(text) for pattern in self.allowed)

    def found(self) -> list[str]:
        return (
            [f"console error: {m}" for m in self.console_errors if self._counts(m)]
            + [f"uncaught: {m}" for m in self.page_errors if self._counts(m)]
            + [f"CSP violation: {m}" for m in self.csp_violations]
        )

    def assert_none(self) -> None:
        found = self.found()
        assert not found, "the page reported problems:\n  " + "\n  ".join(found)


_problems: weakref.WeakKeyDictionary[Page, Problems] = weakref.WeakKeyDictionary()


async def watch(page: Page) -> Problems:
    """Start recording the page's problems; call before the first navigation."""
    problems = Problems()

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            where = message.location.get("url", "")
            problems.console_errors.append(f"{message.text} ({where})" if where else message.text)

    def on_csp_violation(report: str) -> None:
        problems.csp_violations.append(report)

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.page_errors.append(str(error)))
    await page.expose_function("__cxloopCspViolation", on_csp_violation)
    await page.add_init_script(_WATCH_CSP)
    _problems[page] = problems
    return problems


def problems_of(page: Page) -> Problems:
    """The record `watch` keeps for this page."""
    return _problems[page]


async def settle(page: Page) -> None:
    """Let queued tasks run (CSP reports are delivered in a task of their own)."""
    await page.evaluate("() => new Promise((r) => setTimeout(() => setTimeout(r, 0), 0))")


@asynccontextmanager
async def watched_page(
    browser: Browser,
    lang: Literal["en", "ja"] = "en",
    viewport: ViewportSize = DESKTOP,
    *,
    timezone_id: str | None = None,
) -> AsyncIterator[Page]:
    """A page in a fresh context (the language's locale and Accept-Language, the viewport,
    optionally a time zone); on a clean exit, raises if the page reported problems."""
    context = await browser.new_context(
        viewport=viewport,
        locale=LOCALES[lang],
        timezone_id=timezone_id,
        extra_http_headers={"Accept-Language": ACCEPT_LANGUAGE[lang]},
    )
    try:
        page = await context.new_page()
        problems = await watch(page)
        yield page
        if not page.is_closed():
            await settle(page)
        problems.assert_none()
    finally:
        await context.close()


@pytest.fixture(name="browser", scope="session")
async def browser_fixture() -> AsyncIterator[Browser]:
    """One Chromium for the session; import this function to register `browser`."""
    async with launch_chromium() as browser:
        yield browser


@pytest.fixture(name="page")
async def page_fixture(browser: Browser) -> AsyncIterator[Page]:
    """A fresh English desktop page that fails the test if it logs an error or breaks its CSP."""
    async with watched_page(browser) as page:
        yield page


# ---- Viewports and languages --------------------------------------------------------------


async def set_viewport(page: Page, viewport: ViewportSize) -> None:
    """Resize the page: DESKTOP (1280×800) or PHONE (390×844)."""
    await page.set_viewport_size(viewport)


async def set_language(page: Page, lang: Literal["en", "ja"]) -> None:
    """Send `Accept-Language` for `lang` from now on (navigator.language stays the context's;
    use watched_page(browser, lang) for both)."""
    await page.set_extra_http_headers({"Accept-Language": ACCEPT_LANGUAGE[lang]})


async def assert_no_page_scroll(page: Page) -> None:
    """The page itself never scrolls sideways (wide tables scroll inside their panel); a
    failure names the elements that reach past the viewport."""
    widths = await page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    if widths[0] > widths[1]:
        wide = await page.evaluate(
            """(limit) => [...document.querySelectorAll('body *')]
                .filter(e => e.getBoundingClientRect().right > limit + 0.5)
                .slice(0, 8)
                .map(e => e.tagName.toLowerCase() + (e.className ? '.' + e.className : '')
                     + ' ' + Math.round(e.getBoundingClientRect().right) + 'px')""",
            widths[1],
        )
        raise AssertionError(
            f"the page scrolls sideways: {widths[0]}px in {widths[1]}px; too wide: {wide}"
        )


# ---- Accessibility ------------------------------------------------------------------------


async def run_axe(
    page: Page, *, disable: Sequence[str] = (), impacts: Sequence[str] = BLOCKING_IMPACTS
) -> list[dict[str, Any]]:
    """axe-core's violations of the given impacts (serious and critical by default).

    The vendored axe is evaluated through DevTools, so the page's CSP neither blocks it nor
    reports it. `disable` turns off rules by id (say why at the call site).
    """
    if not await page.evaluate("() => typeof window.axe === 'object'"):
        await page.evaluate(AXE_JS.read_text(encoding="utf-8"))
    options = {
        "resultTypes": ["violations"],
        "rules": {rule: {"enabled": False} for rule in disable},
    }
    results: dict[str, Any] = await page.evaluate(
        "(options) => window.axe.run(document, options)", options
    )
    return [v for v in results["violations"] if v.get("impact") in impacts]


def describe_violations(violations: Sequence[dict[str, Any]]) -> str:
    lines = []
    for violation in violations:
        targets = [", ".join(node["target"]) for node in violation["nodes"][:5]]
        lines.append(
            f"{violation['impact']}: {violation['id']}: {violation['help']} "
            f"({violation['helpUrl']})\n      at {'; '.join(targets)}"
        )
    return "\n  ".join(lines)


async def assert_accessible(page: Page, *, disable: Sequence[str] = ()) -> None:
    """Fail on any serious or critical axe-core violation."""
    violations = await run_axe(page, disable=disable)
    assert not violations, "axe-core found:\n  " + describe_violations(violations)


# ---- Screenshots --------------------------------------------------------------------------


def screenshot_dir() -> Path:
    """$CXLOOP_TEST_SCREENSHOTS, or cxloop-screenshots in the temporary directory."""
    configured = os.environ.get("CXLOOP_TEST_SCREENSHOTS")
    return Path(configured) if configured else Path(tempfile.gettempdir(), "cxloop-screenshots")


async def screenshot(page: Page, name: str, *, full_page: bool = True) -> Path:
    """Save `<name>.png` for a person to look at; returns its path."""
    path = screenshot_dir() / f"{name}.png"
    try:
        await page.screenshot(path=str(path), full_page=full_page)
    except Error as error:
        raise AssertionError(f"screenshot {name} failed: {error}") from error
    return path
