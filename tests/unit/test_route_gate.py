"""Every route declares who may reach it, and an app with a route that does not is not built.

The collector's table below is the contract, as tests/integration/test_scopes.py is for the
scorer and alerting: a route added to the collector without a row fails here.
"""

from __future__ import annotations

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from services.collector.app import create_app as create_collector
from shared.apikeys import KeyStore
from shared.http import build_app, public
from shared.http.auth import publics_of, requirements_of, signatures_of
from shared.settings import AuthSettings, CollectorSettings

PUBLIC = "public"
ZENDESK = ("X-Zendesk-Webhook-Signature", "X-Zendesk-Webhook-Signature-Timestamp")

# (method, path) -> ("require", scope, source) | ("signed", headers) | PUBLIC
COLLECTOR: dict[tuple[str, str], object] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("POST", "/v1/responses"): ("require", "responses:write", "api"),
    ("POST", "/v1/responses/batch"): ("require", "responses:write", "api"),
    ("POST", "/v1/events"): ("require", "events:write", "api"),
    ("POST", "/v1/events/batch"): ("require", "events:write", "api"),
    ("POST", "/v1/invitations"): ("require", "invitations:write", None),
    ("DELETE", "/v1/customers/{customer_id}"): ("require", "customers:erase", None),
    ("GET", "/v1/erasures/{erasure_id}"): ("require", "customers:erase", None),
    ("POST", "/v1/sources/twilio/sms"): ("signed", ("X-Twilio-Signature",)),
    ("POST", "/v1/sources/zendesk"): ("signed", ZENDESK),
    ("POST", "/v1/sources/stripe"): ("signed", ("Stripe-Signature",)),
    ("POST", "/v1/sources/freshdesk"): ("require", "events:write", "freshdesk"),
    ("POST", "/v1/sources/amazon-connect"): ("require", "responses:write", "amazon_connect"),
    ("POST", "/v1/sources/ivr"): ("require", "responses:write", "ivr"),
    ("GET", "/widget.js"): PUBLIC,
    ("OPTIONS", "/v1/widget/responses"): PUBLIC,
    ("POST", "/v1/widget/responses"): PUBLIC,
}


def _declared(route: APIRoute) -> list[object]:
    found: list[object] = [("require", r.scope.value, r.source) for r in requirements_of(route)]
    found += [("signed", s.headers) for s in signatures_of(route)]
    found += [PUBLIC for _ in publics_of(route)]
    return found


def _routes(app: FastAPI) -> list[APIRoute]:
    routes: list[APIRoute] = []
    for mounted in app.router.routes:
        router = getattr(mounted, "original_router", None)  # FastAPI >= 0.165
        for route in router.routes if router is not None else [mounted]:
            if isinstance(route, APIRoute):
                routes.append(route)
    return routes


def test_every_collector_route_declares_the_access_in_the_table() -> None:
    app = create_collector(auth=AuthSettings(api_key="k" * 20))
    table = {
        (method, route.path): _declared(route)
        for route in _routes(app)
        for method in route.methods or ()
    }
    assert table == {key: [access] for key, access in COLLECTOR.items()}


def _app(router: APIRouter) -> FastAPI:
    async def ready() -> dict[str, bool]:
        return {}

    return build_app(
        service="test",
        description="",
        lifespan=None,
        readiness=ready,
        routers=[router],
        keystore=KeyStore([]),
        http=CollectorSettings(),
    )


def test_a_route_that_declares_nothing_is_refused_when_the_app_is_built() -> None:
    router = APIRouter()

    @router.post("/v1/forgotten")
    async def forgotten() -> None:
        """Declares neither require(), signed_by() nor public()."""

    with pytest.raises(TypeError, match="POST /v1/forgotten"):
        _app(router)


def test_a_route_marked_public_is_built() -> None:
    router = APIRouter()

    @router.get("/v1/open", dependencies=[public("a test")])
    async def open_route() -> None:
        """Open on purpose."""

    assert _app(router).title == "cxloop test"
