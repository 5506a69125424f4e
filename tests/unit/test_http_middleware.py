"""The shared ASGI layers, driven directly: request metrics per label set, the body limit's
reading of its two headers, and FastAPI's native telemetry left off."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY

from shared.http.app import NO_NATIVE_TELEMETRY
from shared.http.middleware import JSON_ONLY, BodyLimitMiddleware, RequestMetricsMiddleware


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
    """A tracer provider FastAPI takes for a configured one (not one of its deferred ones)."""

    def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("no tracer may be asked for")


def test_native_telemetry_is_off_even_with_a_provider_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not NO_NATIVE_TELEMETRY:
        pytest.skip("this FastAPI has no native telemetry")
    from opentelemetry import trace

    monkeypatch.setattr(trace, "get_tracer_provider", lambda: _Configured())
    # The default would trace every request under that provider; the services' setting not.
    assert FastAPI()._native_telemetry.enabled()
    assert not FastAPI(**NO_NATIVE_TELEMETRY)._native_telemetry.enabled()
