"""The edge of every service: hostile requests are refused cheaply, in the same order.

Bodies here are generators that count what the service pulled, so "refused before reading"
is checked by what was read, not by how long it took.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy.ext.asyncio import create_async_engine
from twilio.request_validator import RequestValidator

from services.alerting.app import create_app as create_alerting
from services.collector.app import create_app as create_collector
from services.scorer.app import create_app as create_scorer
from shared import logs
from shared.apikeys import KeyKind, KeyStore, Principal, Scope, create_key
from shared.settings import (
    AlertingSettings,
    AuthSettings,
    CollectorSettings,
    DatabaseSettings,
    KafkaSettings,
    ScorerSettings,
    SourceSettings,
)
from tests.builders import response_payload
from tests.builders_vendors import zendesk_event, zendesk_headers
from tests.conftest import CollectorFactory
from tests.helpers import eventually, serving

LIMIT = 4096
HUGE = 200 * 1024 * 1024
CHUNK = 64 * 1024
TWILIO_TOKEN = "twilio-auth-token-for-edge-tests"
ZENDESK_SECRET = "zendesk-secret-for-edge-tests"
PUBLIC = "https://cx.example.com"
SHOP = "https://shop.example"

Factory = Callable[[], AbstractAsyncContextManager[httpx.AsyncClient]]


class CountingBody:
    """A request body of ``total`` bytes, produced only as the service pulls it."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.pulled < self.total:
            chunk = b"x" * min(CHUNK, self.total - self.pulled)
            self.pulled += len(chunk)
            yield chunk


@pytest.fixture
def services(
    collector_app: CollectorFactory,
    kafka_settings: KafkaSettings,
    database_url: str,
    auth: AuthSettings,
    api_key: str,
    scorer_settings: ScorerSettings,
    alerting_settings: AlertingSettings,
) -> dict[str, Factory]:
    """Each service with a small body limit, by name."""
    database = DatabaseSettings(url=database_url)

    def collector() -> AbstractAsyncContextManager[httpx.AsyncClient]:
        return collector_app(
            CollectorSettings(max_body_bytes=LIMIT, public_url=PUBLIC),
            SourceSettings(twilio_auth_token=TWILIO_TOKEN, zendesk_signing_secret=ZENDESK_SECRET),
        )

    def scorer() -> AbstractAsyncContextManager[httpx.AsyncClient]:
        settings = scorer_settings.model_copy(update={"max_body_bytes": LIMIT})
        return serving(create_scorer(kafka_settings, database, auth, settings), api_key, "scorer")

    def alerting() -> AbstractAsyncContextManager[httpx.AsyncClient]:
        settings = alerting_settings.model_copy(update={"max_body_bytes": LIMIT})
        app = create_alerting(kafka_settings, database, auth, settings)
        return serving(app, api_key, "alerting")

    return {"collector": collector, "scorer": scorer, "alerting": alerting}


# A route of each service that takes a body and needs a key. The scorer takes no body on
# any route: a POST to one of its protected paths must be refused as cheaply.
WRITES = {
    "collector": "/v1/responses",
    "scorer": "/v1/scores",
    "alerting": f"/v1/alerts/{uuid.uuid4()}/comments",
}
ANONYMOUS = {"Authorization": ""}
JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize("name", list(WRITES))
class TestCheapRefusal:
    async def test_a_declared_oversized_body_is_413_and_never_read(
        self, services: dict[str, Factory], name: str
    ) -> None:
        body = CountingBody(HUGE)
        async with services[name]() as client:
            r = await client.post(
                WRITES[name], content=body, headers={**JSON, "Content-Length": str(HUGE)}
            )
        assert r.status_code == 413
        assert r.json()["error"] == "payload_too_large"
        assert body.pulled == 0

    async def test_a_chunked_oversized_body_is_cut_off_at_the_limit(
        self, services: dict[str, Factory], name: str
    ) -> None:
        body = CountingBody(HUGE)
        async with services[name]() as client:
            r = await client.post(WRITES[name], content=body, headers=JSON)
        assert r.status_code == 413
        assert body.pulled <= LIMIT + CHUNK

    async def test_an_anonymous_oversized_body_is_401_and_never_read(
        self, services: dict[str, Factory], name: str
    ) -> None:
        body = CountingBody(HUGE)
        async with services[name]() as client:
            r = await client.post(
                WRITES[name],
                content=body,
                headers={**ANONYMOUS, **JSON, "Content-Length": str(HUGE)},
            )
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert body.pulled == 0

    @pytest.mark.parametrize("authorization", ["", "Bearer not-a-key", "Basic Zm9vOmJhcg=="])
    async def test_anonymous_junk_is_401_not_a_schema_422(
        self, services: dict[str, Factory], name: str, authorization: str
    ) -> None:
        async with services[name]() as client:
            r = await client.post(
                WRITES[name],
                content=b'{"junk": true, "score": "\\u0000"}',
                headers={**JSON, "Authorization": authorization},
            )
        assert r.status_code == 401
        assert "errors" not in r.json()


class TestProtectedRoutesWithoutABody:
    async def test_an_anonymous_erasure_is_401_on_the_scorer_and_alerting(
        self, services: dict[str, Factory]
    ) -> None:
        for name in ("scorer", "alerting"):
            async with services[name]() as client:
                r = await client.delete("/v1/customers/c1", headers=ANONYMOUS)
            assert r.status_code == 401, name


class TestOperationsStayOpen:
    async def test_healthz_needs_no_key(self, services: dict[str, Factory]) -> None:
        async with services["scorer"]() as client:
            r = await client.get("/healthz", headers=ANONYMOUS)
        assert r.status_code == 200


def _twilio_form() -> dict[str, str]:
    return {"MessageSid": "SM" + "0" * 32, "From": "+14155550100", "Body": "9"}


# A header value that must be refused, not compared: each as raw bytes on the wire.
BAD_VALUES: dict[str, list[bytes]] = {
    "non_ascii": ["é".encode("latin-1")],
    "non_ascii_utf8": ["Ωmega=".encode()],
    "huge": [b"A" * 100_000],
    "empty": [b""],
}


class TestSignatureHeaders:
    @pytest.mark.parametrize("kind", list(BAD_VALUES))
    async def test_a_bad_twilio_signature_is_403_never_500(
        self, services: dict[str, Factory], kind: str
    ) -> None:
        headers = [(b"Content-Type", b"application/x-www-form-urlencoded")]
        headers += [(b"X-Twilio-Signature", value) for value in BAD_VALUES[kind]]
        async with services["collector"]() as client:
            client.headers.pop("Authorization")
            r = await client.post(
                "/v1/sources/twilio/sms", content=_encode(_twilio_form()), headers=headers
            )
        assert r.status_code == 403

    async def test_a_repeated_twilio_signature_is_403_even_if_one_is_right(
        self, services: dict[str, Factory]
    ) -> None:
        form = _twilio_form()
        signature = RequestValidator(TWILIO_TOKEN).compute_signature(
            PUBLIC + "/v1/sources/twilio/sms", form
        )
        headers = [
            (b"Content-Type", b"application/x-www-form-urlencoded"),
            (b"X-Twilio-Signature", signature.encode()),
            (b"X-Twilio-Signature", b"forged"),
        ]
        async with services["collector"]() as client:
            client.headers.pop("Authorization")
            r = await client.post("/v1/sources/twilio/sms", content=_encode(form), headers=headers)
        assert r.status_code == 403

    @pytest.mark.parametrize("kind", list(BAD_VALUES))
    @pytest.mark.parametrize(
        "header", ["X-Zendesk-Webhook-Signature", "X-Zendesk-Webhook-Signature-Timestamp"]
    )
    async def test_a_bad_zendesk_header_is_403_never_500(
        self, services: dict[str, Factory], kind: str, header: str
    ) -> None:
        body = json.dumps(zendesk_event("ticket.created")).encode()
        signed = zendesk_headers(ZENDESK_SECRET, body)
        headers = [(k.encode(), v.encode()) for k, v in signed.items() if k != header]
        headers += [(header.encode(), value) for value in BAD_VALUES[kind]]
        async with services["collector"]() as client:
            client.headers.pop("Authorization")
            r = await client.post("/v1/sources/zendesk", content=body, headers=headers)
        assert r.status_code == 403

    async def test_a_repeated_zendesk_signature_is_403_even_if_one_is_right(
        self, services: dict[str, Factory]
    ) -> None:
        body = json.dumps(zendesk_event("ticket.created")).encode()
        signed = zendesk_headers(ZENDESK_SECRET, body)
        headers = [(k.encode(), v.encode()) for k, v in signed.items()]
        headers.append((b"X-Zendesk-Webhook-Signature", b"forged"))
        async with services["collector"]() as client:
            client.headers.pop("Authorization")
            r = await client.post("/v1/sources/zendesk", content=body, headers=headers)
        assert r.status_code == 403

    @pytest.mark.parametrize(
        ("path", "header"),
        [
            ("/v1/sources/twilio/sms", "X-Twilio-Signature"),
            ("/v1/sources/zendesk", "X-Zendesk-Webhook-Signature"),
        ],
    )
    async def test_an_unusable_signature_header_is_refused_before_the_body_is_read(
        self, services: dict[str, Factory], path: str, header: str
    ) -> None:
        body = CountingBody(LIMIT)
        media = "application/x-www-form-urlencoded" if "twilio" in path else "application/json"
        headers = [(b"Content-Type", media.encode()), (header.encode(), "é".encode("latin-1"))]
        async with services["collector"]() as client:
            client.headers.pop("Authorization")
            r = await client.post(path, content=body, headers=headers)
        assert r.status_code == 403
        assert body.pulled == 0

    async def test_a_non_ascii_bearer_key_is_401_never_500(
        self, services: dict[str, Factory]
    ) -> None:
        for name in WRITES:
            async with services[name]() as client:
                r = await client.get(
                    "/v1/scores" if name == "scorer" else "/healthz",
                    headers=[(b"Authorization", "Bearer cxs_é".encode("latin-1"))],
                )
            assert r.status_code in (200, 401), name  # /healthz is open
            if name == "scorer":
                assert r.status_code == 401


def _encode(form: dict[str, str]) -> bytes:
    return urlencode(form).encode()


async def _publishable(
    database_url: str, scopes: list[Scope], sources: tuple[str, ...] = ("widget",)
) -> str:
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            key, _ = await create_key(
                conn,
                name="site",
                kind=KeyKind.PUBLISHABLE,
                scopes=scopes,
                sources=sources,
                origins=[SHOP],
            )
    finally:
        await engine.dispose()
    return key


class TestPublishableKeys:
    async def test_a_publishable_key_reaches_no_server_route_whatever_its_scopes(
        self, services: dict[str, Factory], database_url: str
    ) -> None:
        # Every scope and no source: only the publishable kind itself can refuse it, so a
        # route that forgot to would let the key through.
        key = await _publishable(database_url, list(Scope), sources=())
        bearer = {"Authorization": f"Bearer {key}"}
        calls = {
            "scorer": [("GET", "/v1/scores?metric=nps"), ("DELETE", "/v1/customers/c1")],
            "alerting": [("GET", "/v1/alerts"), ("DELETE", "/v1/customers/c1")],
            "collector": [
                ("POST", "/v1/responses"),
                ("POST", "/v1/responses/batch"),
                ("POST", "/v1/events"),
                ("POST", "/v1/events/batch"),
                ("POST", "/v1/invitations"),
                ("DELETE", "/v1/customers/c1"),
                ("GET", f"/v1/erasures/{uuid.uuid4()}"),
                ("POST", "/v1/sources/freshdesk"),
                ("POST", "/v1/sources/amazon-connect"),
                ("POST", "/v1/sources/ivr"),
            ],
        }
        for name, requests in calls.items():
            async with services[name]() as client:
                for method, path in requests:
                    body = response_payload() if method == "POST" else None
                    r = await client.request(method, path, json=body, headers=bearer)
                    assert r.status_code == 403, (name, method, path, r.text)

    async def test_it_still_submits_widget_answers(
        self, services: dict[str, Factory], database_url: str
    ) -> None:
        key = await _publishable(database_url, [Scope.RESPONSES_WRITE])
        async with services["collector"]() as client:
            client.headers.pop("Authorization")
            r = await client.post(
                f"/v1/widget/responses?key={key}",
                json=response_payload(),
                headers={"Origin": SHOP},
            )
        assert r.status_code == 202


def _deep(depth: int, nul: bool) -> bytes:
    """A JSON object a few KB long whose ``b`` is ``depth`` lists deep (``a`` a NUL, if asked)."""
    head = b'{"a":"\\u0000",' if nul else b"{"
    return head + b'"b":' + b"[" * depth + b"]" * depth + b"}"


class TestDeeplyNestedJson:
    """A body nested past the parser's recursion limit is a 422 naming ``body``, not a 500."""

    DEPTH = 1500  # json.loads raises RecursionError from about 1,000; 3 KB, under LIMIT

    async def _check(self, r: httpx.Response) -> None:
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "body"
        assert "nested too deeply" in r.json()["detail"]

    @pytest.mark.parametrize("depth", [DEPTH, 950])
    async def test_the_nul_guard(self, services: dict[str, Factory], depth: int) -> None:
        # 950 parses, but walking it for the NUL passes the recursion limit.
        async with services["collector"]() as client:
            r = await client.post("/v1/responses", content=_deep(depth, nul=True), headers=JSON)
        await self._check(r)

    @pytest.mark.parametrize("path", ["/v1/sources/amazon-connect", "/v1/sources/freshdesk"])
    async def test_json_sources(self, services: dict[str, Factory], path: str) -> None:
        async with services["collector"]() as client:
            r = await client.post(path, content=_deep(self.DEPTH, nul=False), headers=JSON)
        await self._check(r)

    async def test_zendesk(self, services: dict[str, Factory]) -> None:
        body = _deep(self.DEPTH, nul=False)
        async with services["collector"]() as client:
            r = await client.post(
                "/v1/sources/zendesk", content=body, headers=zendesk_headers(ZENDESK_SECRET, body)
            )
        await self._check(r)

    async def test_the_widget(self, services: dict[str, Factory], database_url: str) -> None:
        key = await _publishable(database_url, [Scope.RESPONSES_WRITE])
        async with services["collector"]() as client:
            client.headers.pop("Authorization")
            r = await client.post(
                f"/v1/widget/responses?key={key}",
                content=_deep(self.DEPTH, nul=False),
                headers={**JSON, "Origin": SHOP},
            )
        await self._check(r)
        assert r.headers["access-control-allow-origin"] == SHOP


class TestRefusedWidgetKeysAreCheap:
    """Unknown publishable keys from one address cost one key lookup, then 429s."""

    async def test_the_address_limit_comes_before_the_key_lookup(
        self, collector_app: CollectorFactory, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        lookups: list[bytes] = []
        real = KeyStore._lookup

        async def counted(store: KeyStore, digest: bytes) -> Principal | None:
            lookups.append(digest)
            return await real(store, digest)

        monkeypatch.setattr(KeyStore, "_lookup", counted)
        settings = CollectorSettings(widget_rate_per_minute=1)
        async with collector_app(settings) as client:
            client.headers.pop("Authorization")
            statuses = []
            for n in range(5):
                for method in ("OPTIONS", "POST"):
                    r = await client.request(
                        method,
                        f"/v1/widget/responses?key=cxp_{n:040d}",
                        json=response_payload() if method == "POST" else None,
                        headers={"Origin": SHOP},
                    )
                    statuses.append(r.status_code)
        # One preflight and one answer admitted to the lookup; the rest refused unlooked.
        assert statuses == [401, 401] + [429] * 8
        assert len(lookups) == 1  # the second lookup of cxp_0… is the refused-key cache's

    async def test_the_same_unknown_key_is_looked_up_once(
        self, collector_app: CollectorFactory, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        lookups: list[bytes] = []
        real = KeyStore._lookup

        async def counted(store: KeyStore, digest: bytes) -> Principal | None:
            lookups.append(digest)
            return await real(store, digest)

        monkeypatch.setattr(KeyStore, "_lookup", counted)
        async with collector_app(CollectorSettings(widget_rate_per_minute=1000)) as client:
            client.headers.pop("Authorization")
            for _ in range(20):
                r = await client.post(
                    f"/v1/widget/responses?key=cxp_{'z' * 40}",
                    json=response_payload(),
                    headers={"Origin": SHOP},
                )
                assert r.status_code == 401
        assert len(lookups) == 1


class TestBehindAProxy:
    async def _answers(
        self,
        collector_app: CollectorFactory,
        key: str,
        trusted: str,
        forwarded: list[dict[str, str]],
    ) -> list[int]:
        settings = CollectorSettings(widget_rate_per_minute=1, forwarded_allow_ips=trusted)
        statuses = []
        async with collector_app(settings) as client:
            client.headers.pop("Authorization")
            for headers in forwarded:
                r = await client.post(
                    f"/v1/widget/responses?key={key}",
                    json=response_payload(),
                    headers={"Origin": SHOP, **headers},
                )
                statuses.append(r.status_code)
        return statuses

    async def test_a_trusted_proxy_gives_each_visitor_their_own_bucket(
        self, collector_app: CollectorFactory, database_url: str
    ) -> None:
        key = await _publishable(database_url, [Scope.RESPONSES_WRITE])
        visitors: list[dict[str, str]] = [
            {"X-Forwarded-For": "203.0.113.1"},
            {"X-Forwarded-For": "203.0.113.2"},
            {"Forwarded": 'for="198.51.100.7:4711";proto=https'},
            {"Forwarded": "for=198.51.100.8"},
            {"X-Forwarded-For": "198.51.100.7"},
            {"X-Forwarded-For": "10.1.1.1, 203.0.113.1"},
        ]
        # The test client's peer is 127.0.0.1: trusted here. Each visitor has a bucket of one.
        statuses = await self._answers(collector_app, key, "127.0.0.1", visitors)
        assert statuses == [202, 202, 202, 202, 429, 429]

    async def test_forwarded_is_believed_over_a_passed_on_x_forwarded_for(
        self, collector_app: CollectorFactory, database_url: str
    ) -> None:
        # A proxy that writes only Forwarded passes on the client's own X-Forwarded-For:
        # picking a new one each time must not give the client a new bucket.
        key = await _publishable(database_url, [Scope.RESPONSES_WRITE])
        visitors: list[dict[str, str]] = [
            {"Forwarded": "for=198.51.100.9", "X-Forwarded-For": f"203.0.113.{n}"} for n in range(3)
        ]
        statuses = await self._answers(collector_app, key, "127.0.0.1", visitors)
        assert statuses == [202, 429, 429]

    async def test_an_untrusted_peer_is_limited_by_its_own_address(
        self, collector_app: CollectorFactory, database_url: str
    ) -> None:
        key = await _publishable(database_url, [Scope.RESPONSES_WRITE])
        visitors: list[dict[str, str]] = [
            {"X-Forwarded-For": "203.0.113.1"},
            {"X-Forwarded-For": "203.0.113.2"},
        ]
        assert await self._answers(collector_app, key, "10.0.0.0/8", visitors) == [202, 429]


class TestKeysCli:
    def _keys(self, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CXLOOP_")}
        env["CXLOOP_DATABASE_URL"] = database_url
        return subprocess.run(
            [sys.executable, "-m", "services.cli", "keys", *args],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )

    async def test_publishable_refuses_scope(self, database_url: str) -> None:
        result = await asyncio.to_thread(
            self._keys,
            database_url,
            "create", "--name", "site", "--publishable", "--origin", SHOP,
            "--scope", "scores:read", "--scope", "customers:erase",
        )  # fmt: skip
        assert result.returncode == 2
        assert "--publishable takes no --scope" in result.stderr
        listing = await asyncio.to_thread(self._keys, database_url, "list")
        assert "site" not in listing.stdout


async def test_behind_a_forwarding_proxy_the_access_log_names_the_route(
    kafka_settings: KafkaSettings,
    database_url: str,
    auth: AuthSettings,
    api_key: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = create_collector(
        kafka=kafka_settings,
        database=DatabaseSettings(url=database_url),
        auth=auth,
        settings=CollectorSettings(forwarded_allow_ips="127.0.0.1"),
    )
    caplog.set_level(logging.DEBUG, logger="cxloop.access")
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=logs.AccessLogMiddleware(app)),
            base_url="http://collector",
            headers={"Authorization": f"Bearer {api_key}"},
        ) as client,
    ):
        await eventually(lambda: client.get("/readyz"), lambda r: r.status_code == 200)
        r = await client.post(
            "/v1/responses", json=response_payload(), headers={"Forwarded": "for=198.51.100.7"}
        )
    assert r.status_code == 202
    lines = [r.getMessage() for r in caplog.records if r.name == "cxloop.access"]
    assert any(line.startswith("POST /v1/responses 202") for line in lines)
