"""Signing in to the pages: an API key exchanged for a session cookie, CSRF, sign-out,
one-time links, and the headers every page carries. Run against both services' apps."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import create_async_engine

from shared import apikeys
from shared.apikeys import KeyKind, Scope
from shared.web.sessions import sign_in_link_for
from tests.helpers import database_down

SERVICES = {
    "scorer": ("/dashboard", Scope.SCORES_READ, Scope.ALERTS_READ),
    "alerting": ("/console", Scope.ALERTS_READ, Scope.SCORES_READ),
}


@pytest.fixture(params=sorted(SERVICES))
def service(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@asynccontextmanager
async def browser(app: FastAPI, scheme: str = "http") -> AsyncIterator[httpx.AsyncClient]:
    """A client that keeps cookies, as a browser does, and sends no Authorization header."""
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url=f"{scheme}://testserver",
            follow_redirects=False,
        ) as client,
    ):
        yield client


def hidden(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no hidden {name} in the page"
    return found.group(1)


async def sign_in(client: httpx.AsyncClient, key: str, next: str = "") -> httpx.Response:
    form = await client.get("/signin")
    assert form.status_code == 200
    return await client.post(
        "/signin",
        data={"api_key": key, "csrf_token": hidden(form.text, "csrf_token"), "next": next},
    )


async def stored_key(
    database_url: str, *scopes: Scope, name: str = "manager", kind: KeyKind = KeyKind.SECRET
) -> str:
    engine = create_async_engine(database_url)
    origins = ["https://shop.example"] if kind is KeyKind.PUBLISHABLE else []
    try:
        async with engine.begin() as conn:
            key, _ = await apikeys.create_key(
                conn, name=name, kind=kind, scopes=scopes, origins=origins
            )
    finally:
        await engine.dispose()
    return key


class TestSignIn:
    async def test_a_page_redirects_to_sign_in_then_back(
        self, service: str, make_app: Callable[[], FastAPI], api_key: str
    ) -> None:
        home = SERVICES[service][0]
        async with browser(make_app()) as client:
            first = await client.get(home + "?window=week")
            assert first.status_code == 303
            assert first.headers["location"] == "/signin?next=%2F" + home[1:] + "%3Fwindow%3Dweek"
            signed = await sign_in(client, api_key, next=home + "?window=week")
            assert signed.status_code == 303
            assert signed.headers["location"] == home + "?window=week"
            page = await client.get(home)
            assert page.status_code == 200
            assert '<span class="actor">' in page.text
            assert re.search(r'<span class="actor">.*operator</span>', page.text)

    async def test_the_cookie_is_httponly_strict_and_named_per_service(
        self, service: str, make_app: Callable[[], FastAPI], api_key: str
    ) -> None:
        async with browser(make_app()) as client:
            cookie = (await sign_in(client, api_key)).headers["set-cookie"]
        assert cookie.startswith(f"cxloop-{service}=")
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
        assert "Secure" not in cookie  # plain http: a Secure cookie would never come back

    async def test_over_https_the_cookie_is_secure_and_host_only(
        self, service: str, make_app: Callable[[], FastAPI], api_key: str
    ) -> None:
        async with browser(make_app(), scheme="https") as client:
            response = await sign_in(client, api_key)
            cookie = response.headers["set-cookie"]
            assert cookie.startswith(f"__Host-cxloop-{service}=")
            assert "Secure" in cookie
            assert "Domain" not in cookie
            assert (await client.get(SERVICES[service][0])).status_code == 200

    async def test_a_key_without_the_scope_is_refused(
        self, service: str, make_app: Callable[[], FastAPI], database_url: str
    ) -> None:
        other_scope = SERVICES[service][2]
        key = await stored_key(database_url, other_scope)
        async with browser(make_app()) as client:
            response = await sign_in(client, key)
            assert response.status_code == 403
            assert f"cxloop-{service}=" not in response.headers.get("set-cookie", "")
            assert (await client.get(SERVICES[service][0])).status_code == 303

    async def test_a_wrong_key_is_refused(
        self, service: str, make_app: Callable[[], FastAPI]
    ) -> None:
        async with browser(make_app()) as client:
            response = await sign_in(client, "cxs_not-a-key")
            assert response.status_code == 401
            assert (await client.get(SERVICES[service][0])).status_code == 303

    async def test_sign_in_without_its_csrf_cookie_is_refused(
        self, service: str, make_app: Callable[[], FastAPI], api_key: str
    ) -> None:
        async with browser(make_app()) as client:
            form = await client.get("/signin")
            token = hidden(form.text, "csrf_token")
            client.cookies.clear()
            response = await client.post("/signin", data={"api_key": api_key, "csrf_token": token})
            assert response.status_code == 403
            assert (await client.get(SERVICES[service][0])).status_code == 303

    @pytest.mark.parametrize("next", ["//evil.example/x", "https://evil.example/", "/\\evil"])
    async def test_next_never_leaves_the_site(
        self, service: str, make_app: Callable[[], FastAPI], api_key: str, next: str
    ) -> None:
        async with browser(make_app()) as client:
            response = await sign_in(client, api_key, next=next)
        assert response.headers["location"] == SERVICES[service][0]

    async def test_a_revoked_key_ends_its_sessions(
        self, service: str, make_app: Callable[[], FastAPI], database_url: str
    ) -> None:
        key = await stored_key(database_url, SERVICES[service][1])
        app = make_app()
        app.state.keystore._ttl = 0  # see the revocation at once
        async with browser(app) as client:
            assert (await sign_in(client, key)).status_code == 303
            assert (await client.get(SERVICES[service][0])).status_code == 200
            engine = create_async_engine(database_url)
            async with engine.begin() as conn:
                for row in await apikeys.list_keys(conn):
                    if row["name"] == "manager":
                        await apikeys.revoke_key(conn, row["id"])
            await engine.dispose()
            assert (await client.get(SERVICES[service][0])).status_code == 303

    async def test_a_wrong_csrf_token_is_refused_even_with_its_cookie(
        self, service: str, make_app: Callable[[], FastAPI], api_key: str
    ) -> None:
        async with browser(make_app()) as client:
            await client.get("/signin")
            response = await client.post(
                "/signin", data={"api_key": api_key, "csrf_token": "not-the-one"}
            )
            assert response.status_code == 403
            assert (await client.get(SERVICES[service][0])).status_code == 303

    @pytest.mark.parametrize(
        "headers",
        [
            {"Origin": "http://evil.example"},
            {"Origin": "null"},
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site"},
        ],
        ids=["origin", "origin-null", "cross-site", "same-site"],
    )
    async def test_a_sign_in_posted_from_another_site_is_refused(
        self,
        service: str,
        make_app: Callable[[], FastAPI],
        api_key: str,
        headers: dict[str, str],
    ) -> None:
        """Login CSRF: another site that planted the form's cookie still cannot sign the
        browser in to its own key."""
        async with browser(make_app()) as client:
            form = await client.get("/signin")
            response = await client.post(
                "/signin",
                data={"api_key": api_key, "csrf_token": hidden(form.text, "csrf_token")},
                headers=headers,
            )
            assert response.status_code == 403
            assert (await client.get(SERVICES[service][0])).status_code == 303

    async def test_a_publishable_key_never_signs_in(
        self, service: str, make_app: Callable[[], FastAPI], database_url: str
    ) -> None:
        key = await stored_key(database_url, *Scope, name="widget", kind=KeyKind.PUBLISHABLE)
        async with browser(make_app()) as client:
            assert (await sign_in(client, key)).status_code == 403
            assert (await client.get(SERVICES[service][0])).status_code == 303

    async def test_an_expired_session_signs_nobody_in(
        self, service: str, make_app: Callable[[], FastAPI], api_key: str, database_url: str
    ) -> None:
        async with browser(make_app()) as client:
            await sign_in(client, api_key)
            assert (await client.get(SERVICES[service][0])).status_code == 200
            engine = create_async_engine(database_url)
            async with engine.begin() as conn:
                await conn.execute(
                    sa.text("UPDATE web_sessions SET expires_at = now() - interval '1 second'")
                )
            await engine.dispose()
            assert (await client.get(SERVICES[service][0])).status_code == 303

    async def test_one_services_session_does_not_open_the_other(
        self, service: str, make_app: Callable[[], FastAPI], api_key: str, database_url: str
    ) -> None:
        other = next(s for s in SERVICES if s != service)
        async with browser(make_app()) as client:
            await sign_in(client, api_key)
            token = client.cookies[f"cxloop-{service}"]
        async with browser(make_app()) as thief:
            thief.cookies.set(f"cxloop-{other}", token)
            thief.cookies.set(f"cxloop-{service}", token)
            # The token is this service's: under the other's name it signs nothing in.
            client_other = thief.cookies.get(f"cxloop-{other}")
            assert client_other == token
        engine = create_async_engine(database_url)
        async with engine.begin() as conn:
            services = (await conn.execute(sa.text("SELECT service FROM web_sessions"))).all()
        await engine.dispose()
        assert [row.service for row in services] == [service]

    async def test_a_cookie_planted_beside_the_real_one_does_not_lock_the_user_out(
        self, service: str, make_app: Callable[[], FastAPI], api_key: str
    ) -> None:
        home = SERVICES[service][0]
        async with browser(make_app()) as client:
            await sign_in(client, api_key)
            real = client.cookies[f"cxloop-{service}"]
            response = await client.get(
                home, headers={"Cookie": f"cxloop-{service}=planted; cxloop-{service}={real}"}
            )
            assert response.status_code == 200

    async def test_an_overlong_page_address_still_leads_to_the_sign_in_form(
        self, service: str, make_app: Callable[[], FastAPI]
    ) -> None:
        async with browser(make_app()) as client:
            first = await client.get(SERVICES[service][0] + "?q=" + "x" * 3000)
            assert first.status_code == 303
            form = await client.get(first.headers["location"])
            assert form.status_code == 200
            assert form.headers["content-type"].startswith("text/html")


class TestSignOut:
    async def test_sign_out_ends_the_session_for_every_copy_of_the_cookie(
        self, service: str, make_app: Callable[[], FastAPI], api_key: str
    ) -> None:
        home = SERVICES[service][0]
        async with browser(make_app()) as client:
            await sign_in(client, api_key)
            page = await client.get(home)
            stolen = dict(client.cookies)
            out = await client.post(
                "/signout", data={"csrf_token": hidden(page.text, "csrf_token")}
            )
            assert out.status_code == 303
            assert out.headers["location"] == "/signin"
            client.cookies.clear()
            client.cookies.update(stolen)
            assert (await client.get(home)).status_code == 303

    async def test_sign_out_without_the_csrf_token_is_refused(
        self, service: str, make_app: Callable[[], FastAPI], api_key: str
    ) -> None:
        home = SERVICES[service][0]
        async with browser(make_app()) as client:
            await sign_in(client, api_key)
            refused = await client.post("/signout", data={"csrf_token": "guess"})
            assert refused.status_code == 403
            missing = await client.post("/signout", data={"other": "x"})
            assert missing.status_code == 403
            assert (await client.get(home)).status_code == 200

    async def test_a_form_from_another_site_is_refused(
        self, service: str, make_app: Callable[[], FastAPI], api_key: str
    ) -> None:
        home = SERVICES[service][0]
        async with browser(make_app()) as client:
            await sign_in(client, api_key)
            page = await client.get(home)
            token = hidden(page.text, "csrf_token")
            for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
                refused = await client.post("/signout", data={"csrf_token": token}, headers=headers)
                assert refused.status_code == 403, (headers, refused.headers, client.cookies)
            assert (await client.get(home)).status_code == 200

    async def test_signing_out_after_the_session_expired_just_forgets_the_cookie(
        self, service: str, make_app: Callable[[], FastAPI]
    ) -> None:
        async with browser(make_app()) as client:
            client.cookies.set(f"cxloop-{service}", "long-gone")
            out = await client.post("/signout", data={"csrf_token": "whatever"})
            assert out.status_code == 303
            assert out.headers["location"] == "/signin"
            assert f"cxloop-{service}=" in out.headers["set-cookie"]
            assert "Max-Age=0" in out.headers["set-cookie"]


class TestOneTimeLinks:
    async def test_a_link_signs_in_once(
        self, service: str, make_app: Callable[[], FastAPI], database_url: str, api_key: str
    ) -> None:
        home = SERVICES[service][0]
        token, expired = [
            await sign_in_link_for(
                database_url, service=service, api_key=api_key, valid_for=valid_for
            )
            for valid_for in (timedelta(hours=1), timedelta(0))
        ]
        async with browser(make_app()) as client:
            used = await client.get("/signin/link", params={"token": token})
            assert used.status_code == 303
            assert used.headers["location"] == home
            assert (await client.get(home)).status_code == 200
        async with browser(make_app()) as again:
            assert (await again.get("/signin/link", params={"token": token})).status_code == 400
            assert (await again.get("/signin/link", params={"token": expired})).status_code == 400
            assert (await again.get(home)).status_code == 303

    async def test_a_preview_or_prefetch_does_not_use_the_link_up(
        self, service: str, make_app: Callable[[], FastAPI], database_url: str, api_key: str
    ) -> None:
        token = await sign_in_link_for(
            database_url, service=service, api_key=api_key, valid_for=timedelta(hours=1)
        )
        async with browser(make_app()) as client:
            head = await client.head("/signin/link", params={"token": token})
            assert head.status_code == 204
            assert "set-cookie" not in head.headers
            prefetch = await client.get(
                "/signin/link", params={"token": token}, headers={"Sec-Purpose": "prefetch"}
            )
            assert prefetch.status_code == 204
            assert "set-cookie" not in prefetch.headers
            used = await client.get("/signin/link", params={"token": token})
            assert used.status_code == 303

    async def test_a_link_for_the_other_service_does_not_sign_in_here(
        self, service: str, make_app: Callable[[], FastAPI], database_url: str, api_key: str
    ) -> None:
        other = next(s for s in SERVICES if s != service)
        token = await sign_in_link_for(
            database_url, service=other, api_key=api_key, valid_for=timedelta(hours=1)
        )
        async with browser(make_app()) as client:
            assert (await client.get("/signin/link", params={"token": token})).status_code == 400


class TestHeaders:
    async def test_pages_carry_a_strict_csp_and_no_store(
        self, service: str, make_app: Callable[[], FastAPI], api_key: str
    ) -> None:
        async with browser(make_app()) as client:
            await sign_in(client, api_key)
            for path in ("/signin", SERVICES[service][0]):
                response = await client.get(path)
                csp = response.headers["content-security-policy"]
                assert "script-src 'self'" in csp
                assert "unsafe-inline" not in csp
                assert "frame-ancestors 'none'" in csp
                assert response.headers["cache-control"] == "no-store"
                assert response.headers["x-content-type-options"] == "nosniff"

    async def test_error_pages_carry_the_same_headers(
        self, service: str, make_app: Callable[[], FastAPI], api_key: str
    ) -> None:
        async with browser(make_app()) as client:
            await sign_in(client, api_key)
            missing = await client.get(SERVICES[service][0] + "/no-such-page")
            assert missing.status_code == 404
            assert missing.headers["content-type"].startswith("text/html")
            assert "script-src 'self'" in missing.headers["content-security-policy"]
            assert missing.headers["cache-control"] == "no-store"

    async def test_the_database_down_gives_a_503_page_with_its_headers(
        self, service: str, make_app: Callable[[], FastAPI], api_key: str
    ) -> None:
        app = make_app()
        async with browser(app) as client:
            await sign_in(client, api_key)
            async with database_down(app.state.keystore):
                app.state.keystore._known.clear()
                response = await client.get(SERVICES[service][0])
            assert response.status_code == 503
            assert response.headers["content-type"].startswith("text/html")
            assert "script-src 'self'" in response.headers["content-security-policy"]

    async def test_language_from_accept_language_and_the_switch(
        self, service: str, make_app: Callable[[], FastAPI]
    ) -> None:
        async with browser(make_app()) as client:
            ja = await client.get("/signin", headers={"Accept-Language": "ja,en;q=0.5"})
            assert '<html lang="ja">' in ja.text
            assert "サインイン" in ja.text
            en = await client.get("/signin?lang=en", headers={"Accept-Language": "ja"})
            assert '<html lang="en">' in en.text
            # The switch is remembered.
            later = await client.get("/signin", headers={"Accept-Language": "ja"})
            assert '<html lang="en">' in later.text

    async def test_the_api_still_answers_json_errors(
        self, service: str, make_app: Callable[[], FastAPI]
    ) -> None:
        path = "/v1/scores" if service == "scorer" else "/v1/alerts"
        async with browser(make_app()) as client:
            response = await client.get(path)
        assert response.status_code == 401
        assert response.headers["content-type"].startswith("application/json")
