"""The shared ASGI layers, driven directly: request metrics per label set, the body limit's
reading of its two headers, and FastAPI's native telemetry left off."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.util import find_spec
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY

from shared.apikeys import KeyStore
from shared.http.app import NO_NATIVE_TELEMETRY, build_app
from shared.http.middleware import JSON_ONLY, BodyLimitMiddleware, RequestMetricsMiddleware
from shared.settings import HttpSettings


class _Route:
    def __init__(self, path: str) -> None:
        self.path = path


def _app_answering(status: int, template: str | None) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if template is not None:
            scope["route"] = _Route(template)
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


async def _call(
    app: Any,
    method: str = "GET",
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"",
    path: str = "/x",
) -> list[Any]:
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": headers or []}
    await app(scope, receive, send)
    return sent


def _count(service: str, method: str, route: str, status: str) -> float:
    labels = {"service": service, "method": method, "route": route, "status": status}
    return REGISTRY.get_sample_value("cxloop_http_requests_total", labels) or 0.0


def _timed(service: str, route: str) -> float:
    labels = {"service": service, "route": route}
    return REGISTRY.get_sample_value("cxloop_http_request_seconds_count", labels) or 0.0


class TestRequestMetrics:
    async def test_each_label_set_is_counted_on_its_own(self) -> None:
        # A service name of its own: the registry is shared with every other test.
        service = f"unit-{uuid.uuid4().hex[:8]}"

        async def app(scope: Any, receive: Any, send: Any) -> None:
            # "/<status>/<template or nothing>": one layer answers every label set.
            status, _, template = scope["path"][1:].partition("/")
            if template:
                scope["route"] = _Route("/" + template)
            await send({"type": "http.response.start", "status": int(status), "headers": []})
            await send({"type": "http.response.body", "body": b""})

        middleware = RequestMetricsMiddleware(app, service=service)
        for _ in range(3):
            await _call(middleware, path="/202/v1/a")
        await _call(middleware, method="POST", path="/202/v1/a")
        await _call(middleware, path="/404/v1/a")
        await _call(middleware, path="/202/v1/c")
        await _call(middleware, path="/202")
        await _call(middleware, path="/404")

        assert _count(service, "GET", "/v1/a", "202") == 3
        assert _count(service, "POST", "/v1/a", "202") == 1
        assert _count(service, "GET", "/v1/a", "404") == 1
        assert _count(service, "GET", "/v1/c", "202") == 1
        assert _count(service, "GET", "unmatched", "202") == 1
        assert _count(service, "GET", "unmatched", "404") == 1
        assert _timed(service, "/v1/a") == 5
        assert _timed(service, "/v1/c") == 1
        assert _timed(service, "unmatched") == 2

        # Two services' layers count the same label set each under its own service.
        other = f"unit-{uuid.uuid4().hex[:8]}"
        await _call(RequestMetricsMiddleware(app, service=other), path="/202/v1/a")
        assert _count(other, "GET", "/v1/a", "202") == 1
        assert _count(service, "GET", "/v1/a", "202") == 3

    async def test_a_made_up_method_is_counted_as_other(self) -> None:
        service = f"unit-{uuid.uuid4().hex[:8]}"
        middleware = RequestMetricsMiddleware(_app_answering(405, "/v1/a"), service=service)
        for method in ("BREW", "X" * 300, "DELETE"):
            await _call(middleware, method=method)
        assert _count(service, "other", "/v1/a", "405") == 2
        assert _count(service, "DELETE", "/v1/a", "405") == 1
        assert _count(service, "BREW", "/v1/a", "405") == 0

    async def test_an_app_that_raises_is_counted_500(self) -> None:
        service = f"unit-{uuid.uuid4().hex[:8]}"

        async def broken(scope: Any, receive: Any, send: Any) -> None:
            scope["route"] = _Route("/v1/b")
            raise RuntimeError("boom")

        middleware = RequestMetricsMiddleware(broken, service=service)
        for _ in range(2):
            with pytest.raises(RuntimeError):
                await _call(middleware)
        assert _count(service, "GET", "/v1/b", "500") == 2


def _limited(max_bytes: int = 100) -> BodyLimitMiddleware:
    return BodyLimitMiddleware(
        _app_answering(202, "/x"), policy=lambda path: (max_bytes, JSON_ONLY)
    )


class TestBodyLimitHeaders:
    @pytest.mark.parametrize(
        ("headers", "status"),
        [
            ([(b"content-type", b"application/json")], 202),
            ([(b"content-type", b"Application/JSON; charset=utf-8")], 202),
            ([(b"Content-Type", b"application/json")], 202),
            ([(b"content-type", b"text/plain")], 415),
            ([], 415),
            # A header sent twice: the last one counts.
            ([(b"content-type", b"text/plain"), (b"content-type", b"application/json")], 202),
            ([(b"content-type", b"application/json"), (b"content-type", b"text/plain")], 415),
            ([(b"content-type", b"application/json"), (b"content-length", b"101")], 413),
            ([(b"content-type", b"application/json"), (b"Content-Length", b" 101 ")], 413),
            ([(b"content-type", b"application/json"), (b"content-length", b"100")], 202),
            # A digit outside ASCII is no length at all (int() would raise on it).
            (
                [
                    (b"content-type", b"application/json"),
                    (b"content-length", "²".encode("latin-1")),
                ],
                202,
            ),
            (
                [
                    (b"content-length", b"101"),
                    (b"content-type", b"application/json"),
                    (b"content-length", b"5"),
                ],
                202,
            ),
        ],
    )
    async def test_the_declared_length_and_type(
        self, headers: list[tuple[bytes, bytes]], status: int
    ) -> None:
        sent = await _call(_limited(), method="POST", headers=headers, body=b"{}")
        assert sent[0]["status"] == status


class _Configured:
    """An OpenTelemetry provider FastAPI takes for a configured one (not one of its deferred
    ones), which fails whatever is asked of it: a request that uses it fails."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the provider was used: {name}")


@pytest.fixture
def providers_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry import _logs, metrics, trace

    monkeypatch.setattr(trace, "get_tracer_provider", _Configured)
    monkeypatch.setattr(metrics, "get_meter_provider", _Configured)
    monkeypatch.setattr(_logs, "get_logger_provider", _Configured)


@asynccontextmanager
async def _no_lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield


async def _ready() -> dict[str, bool]:
    return {}


async def _healthz(app: FastAPI) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://unit") as client:
        return await client.get("/healthz")


@pytest.mark.usefixtures("providers_configured")
async def test_a_services_app_leaves_a_configured_provider_alone() -> None:
    if find_spec("fastapi.telemetry") is None:
        pytest.skip("this FastAPI has no native telemetry")
    assert NO_NATIVE_TELEMETRY, "FastAPI has native telemetry, but the services leave it on"
    # The control: FastAPI's default uses the providers, and the request fails.
    default = FastAPI()
    default.add_api_route("/healthz", _ready)
    with pytest.raises(AssertionError, match="the provider was used"):
        await _healthz(default)

    app = build_app(
        service="unit",
        description="",
        lifespan=_no_lifespan,
        readiness=_ready,
        routers=[],
        keystore=KeyStore(["k"]),
        http=HttpSettings(),
    )
    assert (await _healthz(app)).status_code == 200
