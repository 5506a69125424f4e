"""Every scope on every route of the scorer and the alerting service: the one scope a route
needs is let through, every other scope is refused with 403, no key or a wrong key with 401,
and a publishable key (which a browser shows to anyone) reaches none of them.

The table below is the contract. A route added to either app without a row here fails
:meth:`TestRouteTable.test_every_route_has_a_row`, so no route goes untested.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import create_async_engine

from services.alerting.app import create_app as create_alerting
from services.scorer.app import create_app as create_scorer
from shared.apikeys import KeyKind, Scope, create_key
from shared.kafka import ensure_topics
from shared.settings import (
    AlertingSettings,
    AuthSettings,
    DatabaseSettings,
    KafkaSettings,
    ScorerSettings,
)
from tests.conftest import unique
from tests.harness.backends import KafkaServer, PostgresServer
from tests.helpers import serving

OPEN = None  # the operations endpoints need no key
UNKNOWN = str(uuid.UUID(int=7))


@dataclass(frozen=True)
class Call:
    """One route: the scope it needs, and a request that an allowed key gets ``allowed`` for."""

    scope: Scope | None
    allowed: frozenset[int]
    path: str
    params: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None


def call(
    scope: Scope | None,
    allowed: int | set[int],
    path: str,
    *,
    params: dict[str, str] | None = None,
    body: dict[str, Any] | None = None,
) -> Call:
    statuses = frozenset({allowed} if isinstance(allowed, int) else allowed)
    return Call(scope, statuses, path, params or {}, body)


# /readyz may say 503 while the consumer joins its group: the key is not what decides it.
_OPERATIONS = {
    ("GET", "/healthz"): call(OPEN, 200, "/healthz"),
    ("GET", "/readyz"): call(OPEN, {200, 503}, "/readyz"),
    ("GET", "/metrics"): call(OPEN, 200, "/metrics"),
}

ROUTES: dict[str, dict[tuple[str, str], Call]] = {
    "scorer": {
        **_OPERATIONS,
        ("GET", "/v1/scores"): call(Scope.SCORES_READ, 200, "/v1/scores", params={"metric": "nps"}),
        ("GET", "/v1/scores/timeseries"): call(
            Scope.SCORES_READ, 200, "/v1/scores/timeseries", params={"metric": "csat"}
        ),
        ("GET", "/v1/service-times"): call(Scope.SCORES_READ, 200, "/v1/service-times"),
        ("GET", "/v1/drivers"): call(Scope.SCORES_READ, 200, "/v1/drivers"),
        ("GET", "/v1/retention"): call(Scope.SCORES_READ, 200, "/v1/retention"),
        ("GET", "/v1/headline"): call(Scope.SCORES_READ, 200, "/v1/headline"),
        ("GET", "/v1/value"): call(Scope.SCORES_READ, 200, "/v1/value"),
        ("GET", "/v1/responses"): call(Scope.RESPONSES_READ, 200, "/v1/responses"),
        ("GET", "/v1/responses/latest"): call(Scope.RESPONSES_READ, 200, "/v1/responses/latest"),
        ("GET", "/v1/customers/{customer_id}"): call(
            Scope.RESPONSES_READ, 200, "/v1/customers/c-someone"
        ),
        ("DELETE", "/v1/customers/{customer_id}"): call(
            Scope.CUSTOMERS_ERASE, 200, "/v1/customers/c-erase-me"
        ),
    },
    "alerting": {
        **_OPERATIONS,
        ("GET", "/v1/alerts"): call(Scope.ALERTS_READ, 200, "/v1/alerts"),
        ("GET", "/v1/alerts/counts"): call(
            Scope.ALERTS_READ, 200, "/v1/alerts/counts", params={"status": "open"}
        ),
        ("GET", "/v1/alerts/{alert_id}"): call(Scope.ALERTS_READ, 404, f"/v1/alerts/{UNKNOWN}"),
        ("GET", "/v1/alerts/{alert_id}/history"): call(
            Scope.ALERTS_READ, 404, f"/v1/alerts/{UNKNOWN}/history"
        ),
        ("GET", "/v1/alerts/{alert_id}/notifications"): call(
            Scope.ALERTS_READ, 404, f"/v1/alerts/{UNKNOWN}/notifications"
        ),
        ("POST", "/v1/alerts/{alert_id}/ack"): call(
            Scope.ALERTS_WRITE, 404, f"/v1/alerts/{UNKNOWN}/ack", body={"by": "sato"}
        ),
        ("POST", "/v1/alerts/{alert_id}/resolve"): call(
            Scope.ALERTS_WRITE,
            404,
            f"/v1/alerts/{UNKNOWN}/resolve",
            body={"by": "sato", "note": "Called back."},
        ),
        ("POST", "/v1/alerts/{alert_id}/assign"): call(
            Scope.ALERTS_WRITE,
            404,
            f"/v1/alerts/{UNKNOWN}/assign",
            body={"to": "tanaka", "by": "sato"},
        ),
        ("POST", "/v1/alerts/{alert_id}/comments"): call(
            Scope.ALERTS_WRITE,
            404,
            f"/v1/alerts/{UNKNOWN}/comments",
            body={"by": "sato", "text": "Voicemail."},
        ),
        ("GET", "/v1/silences"): call(Scope.ALERTS_READ, 200, "/v1/silences"),
        ("POST", "/v1/silences"): call(
            Scope.ALERTS_WRITE,
            201,
            "/v1/silences",
            body={
                "matchers": {"rule": "detractor", "channel": "sms"},
                "duration_minutes": 5,
                "created_by": "sato",
                "comment": "gateway incident",
            },
        ),
        ("DELETE", "/v1/silences/{silence_id}"): call(
            Scope.ALERTS_WRITE, 404, f"/v1/silences/{UNKNOWN}"
        ),
        ("DELETE", "/v1/customers/{customer_id}"): call(
            Scope.CUSTOMERS_ERASE, 200, "/v1/customers/c-erase-me"
        ),
    },
}

CASES = [
    pytest.param(service, method, template, id=f"{service} {method} {template}")
    for service, routes in ROUTES.items()
    for method, template in routes
]


@dataclass
class Keys:
    """A secret key per scope, each with that one scope, and a publishable key with all."""

    by_scope: dict[Scope, str]
    publishable: str


@dataclass
class Stack:
    """Both services on one database and one set of topics, shared by this module's tests."""

    apps: dict[str, FastAPI]
    clients: dict[str, httpx.AsyncClient]
    keys: Keys
    operator: str


async def _create_keys(database_url: str) -> Keys:
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            by_scope = {
                scope: (
                    await create_key(
                        conn, name=f"only-{scope.value}", kind=KeyKind.SECRET, scopes=[scope]
                    )
                )[0]
                for scope in Scope
            }
            publishable, _ = await create_key(
                conn,
                name="widget-on-the-shop",
                kind=KeyKind.PUBLISHABLE,
                scopes=list(Scope),
                origins=["https://shop.example"],
            )
    finally:
        await engine.dispose()
    return Keys(by_scope, publishable)


@pytest.fixture(scope="module")
async def stack(
    kafka: KafkaServer, postgres: PostgresServer, migrated_template: str
) -> AsyncIterator[Stack]:
    database_url = await postgres.create_database(unique("scopes"), template=migrated_template)
    database = DatabaseSettings(url=database_url)
    kafka_settings = KafkaSettings(
        bootstrap_servers=kafka.bootstrap_servers,
        topic_prefix=f"{unique('scopes')}.",
        idempotence=kafka.supports_idempotence,
    )
    await ensure_topics(kafka_settings)
    operator = "test-" + secrets.token_urlsafe(18)
    auth = AuthSettings(api_key=operator)
    fast: dict[str, Any] = {"batch_timeout_ms": 100, "session_timeout_ms": 6000}
    apps = {
        "scorer": create_scorer(
            kafka_settings, database, auth, ScorerSettings(group_id=unique("scorer"), **fast)
        ),
        "alerting": create_alerting(
            kafka_settings, database, auth, AlertingSettings(group_id=unique("alerting"), **fast)
        ),
    }
    keys = await _create_keys(database_url)
    async with AsyncExitStack() as running:
        clients = {
            name: await running.enter_async_context(serving(app, operator, name))
            for name, app in apps.items()
        }
        yield Stack(apps, clients, keys, operator)


class TestRouteTable:
    @pytest.mark.parametrize("service", sorted(ROUTES))
    def test_every_route_has_a_row(self, stack: Stack, service: str) -> None:
        app = stack.apps[service]
        documented = {
            (method.upper(), path)
            for path, operations in app.openapi()["paths"].items()
            for method in operations
        }
        assert documented == set(ROUTES[service]), "add a row to ROUTES for each new route"


class TestScopes:
    @pytest.mark.parametrize(("service", "method", "template"), CASES)
    async def test_only_the_scope_the_route_needs_is_let_through(
        self, stack: Stack, service: str, method: str, template: str
    ) -> None:
        spec = ROUTES[service][(method, template)]
        client = stack.clients[service]

        async def send(key: str | None) -> httpx.Response:
            request = client.build_request(method, spec.path, params=spec.params, json=spec.body)
            del request.headers["Authorization"]
            if key is not None:
                request.headers["Authorization"] = f"Bearer {key}"
            return await client.send(request)

        answers: dict[str, int] = {}
        if spec.scope is not None:  # an open route answers the same whoever asks
            for scope, key in stack.keys.by_scope.items():
                answers[scope.value] = (await send(key)).status_code
            answers["operator"] = (await send(stack.operator)).status_code
        answers["publishable, every scope"] = (await send(stack.keys.publishable)).status_code
        answers["no key"] = (await send(None)).status_code
        answers["unknown key"] = (await send("cxs_" + "x" * 43)).status_code

        if spec.scope is None:
            expected = dict.fromkeys(answers, spec.allowed)
        else:
            refused, unauthenticated = frozenset({403}), frozenset({401})
            expected = {s.value: spec.allowed if s is spec.scope else refused for s in Scope}
            expected["publishable, every scope"] = refused
            expected["operator"] = spec.allowed
            expected["no key"] = unauthenticated
            expected["unknown key"] = unauthenticated
        wrong = {who: got for who, got in answers.items() if got not in expected[who]}
        assert not wrong, f"answers {wrong}; expected { ({w: expected[w] for w in wrong}) }"
