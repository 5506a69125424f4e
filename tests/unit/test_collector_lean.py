"""The collector's lean path (services.collector.lean) on its own: what it hands on to the
FastAPI routes behind it, and what it must never take from them."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.responses import Response

from services.collector import lean
from services.collector.deps import get_ingest
from services.collector.routes.generic import LEAN, router
from shared.apikeys import KeyKind, Principal, Scope
from shared.http.lean import handler_for
from tests.builders import response_payload

JSON = [(b"content-type", b"application/json")]


def principal(*scopes: Scope) -> Principal:
    return Principal("a-key", KeyKind.SECRET, frozenset(s.value for s in scopes))


class Behind:
    """The app behind the lean path: records what reached it and answers 299."""

    def __init__(self) -> None:
        self.messages: list[Any] | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.messages = [await receive()]
        while self.messages[-1].get("more_body", False):
            self.messages.append(await receive())
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def request(path: str, who: Principal, app: Any = None) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "root_path": "",
        "headers": JSON,
        "cxloop.principal": who,
        "app": app,
    }


async def call(
    middleware: lean.LeanSubmitMiddleware, scope: dict[str, Any], messages: list[Any]
) -> list[Any]:
    pending = list(messages)
    sent: list[Any] = []

    async def receive() -> Any:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    await middleware(scope, receive, send)
    return sent


def body() -> dict[str, Any]:
    return {"type": "http.request", "body": json.dumps(response_payload()).encode()}


def test_both_routes_depend_on_exactly_what_the_lean_path_copies() -> None:
    # Adding a dependency or parameter to either route fails here until lean.py copies it.
    for path in ("/v1/responses", "/v1/events"):
        (route,) = [r for r in router.routes if isinstance(r, APIRoute) and r.path == path]
        dependant = route.dependant
        requirement = LEAN[path].requirement
        calls = [d.call for d in dependant.dependencies]
        assert [getattr(c, "requirement", None) for c in calls] == [requirement, None, requirement]
        assert calls[1] is get_ingest
        assert [p.name for p in dependant.header_params] == ["idempotency_key"]
        assert [p.name for p in dependant.body_params] == ["payload"]
        assert dependant.query_params == []
        assert dependant.path_params == []
        assert dependant.cookie_params == []
        assert route.dependency_overrides_provider is None or not getattr(
            route.dependency_overrides_provider, "dependency_overrides", {}
        )


async def test_a_principal_without_the_routes_scope_is_handed_on() -> None:
    # As the gate leaves for a partial match or a signed-in page: never enough for lean.
    behind = Behind()
    middleware = lean.LeanSubmitMiddleware(behind, routes=LEAN)
    sent = await call(middleware, request("/v1/responses", principal(Scope.EVENTS_WRITE)), [body()])
    assert sent[0]["status"] == 299
    assert middleware.answered == 0


@pytest.mark.parametrize(
    "messages",
    [
        [{"type": "http.disconnect"}],
        [
            {"type": "http.request", "body": b'{"metric": ', "more_body": True},
            {"type": "http.disconnect"},
        ],
    ],
)
async def test_a_disconnect_while_reading_hands_on_the_messages_unchanged(
    messages: list[Any],
) -> None:
    behind = Behind()
    middleware = lean.LeanSubmitMiddleware(behind, routes=LEAN)
    who = principal(Scope.RESPONSES_WRITE)
    await call(middleware, request("/v1/responses", who), messages)
    assert behind.messages == messages
    assert middleware.answered == 0


class Boom(Exception):
    pass


class Broken:
    def __getattr__(self, name: str) -> Any:
        raise Boom(name)


async def test_a_plain_function_handler_runs_off_the_event_loop() -> None:
    threads: list[threading.Thread] = []

    def handler(request: Any, exc: Exception) -> Response:
        threads.append(threading.current_thread())
        return Response(b"handled", status_code=418)

    app = SimpleNamespace(
        exception_handlers={Boom: handler}, state=SimpleNamespace(ingest=Broken())
    )

    middleware = lean.LeanSubmitMiddleware(Behind(), routes=LEAN)
    who = principal(Scope.RESPONSES_WRITE)
    sent = await call(middleware, request("/v1/responses", who, app), [body()])
    assert sent[0]["status"] == 418
    assert threads != [threading.main_thread()]
    assert len(threads) == 1


def test_the_500_and_exception_handlers_are_left_to_the_outermost_layer() -> None:
    def handler(request: Any, exc: Exception) -> None:
        return None

    handlers: dict[Any, Any] = {500: handler, Exception: handler}
    assert handler_for(handlers, HTTPException(500)) is None
    assert handler_for(handlers, RuntimeError()) is None
    assert handler_for({**handlers, 503: handler}, HTTPException(503)) is handler
