"""The scorer's lean path (services.scorer.lean) on its own: that it copies exactly what the
two routes declare, and what it hands on to the FastAPI routes behind it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.datastructures import DefaultPlaceholder
from fastapi.dependencies.utils import get_flat_params
from fastapi.routing import APIRoute

from services.scorer import api, lean
from shared.apikeys import KeyKind, Principal, Scope
from shared.http.operations import get_engine


def principal(*scopes: Scope) -> Principal:
    return Principal("a-key", KeyKind.SECRET, frozenset(s.value for s in scopes))


class Behind:
    """The app behind the lean path: answers 299."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def request(
    path: str, query: bytes, who: Principal | None, method: str = "GET", **overrides: Any
) -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "root_path": "",
        "query_string": query,
        "headers": [],
        "cxloop.principal": who,
        # No state: anything the path reached past its checks would fail on it.
        "app": SimpleNamespace(dependency_overrides=overrides),
    }


async def call(middleware: lean.LeanQueryMiddleware, scope: dict[str, Any]) -> list[Any]:
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    await middleware(scope, receive, send)
    return sent


def route(path: str) -> APIRoute:
    (found,) = [r for r in api.router.routes if isinstance(r, APIRoute) and r.path == path]
    return found


@pytest.mark.parametrize("path", sorted(lean.LEAN))
def test_both_routes_depend_on_exactly_what_the_lean_path_copies(path: str) -> None:
    # Adding a dependency or a parameter to either route, or changing one's type, alias or
    # default, fails here until lean.py copies it.
    dependant = route(path).dependant
    copied = lean.LEAN[path]
    assert route(path).endpoint is copied.endpoint
    # What FastAPI sends: the response model by alias, nothing left out, a plain 200.
    assert route(path).response_model is copied.response
    assert route(path).response_model_by_alias
    assert not any(
        getattr(route(path), f"response_model_{option}")
        for option in ("include", "exclude", "exclude_unset", "exclude_defaults", "exclude_none")
    )
    assert route(path).status_code is None
    assert isinstance(route(path).response_class, DefaultPlaceholder)
    calls = [d.call for d in dependant.dependencies]
    assert getattr(calls[0], "requirement", None) == copied.requirement
    assert calls[1:] == [get_engine, api.time_range, api.segment_filters]
    assert dependant.request_param_name == "request"
    # The names the lean path passes them by.
    assert [d.name for d in dependant.dependencies[1:]] == ["engine", "span", "segments"]
    assert [p.name for p in dependant.query_params] == list(copied.own)
    assert [p.name for p in dependant.dependencies[2].query_params] == ["window", "from_", "to"]
    assert [p.name for p in dependant.dependencies[3].query_params] == [
        "channel", "survey_type", "touchpoint", "location", "product", "business_unit"
    ]  # fmt: skip
    assert dependant.header_params == dependant.cookie_params == dependant.path_params == []
    assert dependant.body_params == []

    declared = {
        f.name: (f.alias, f.field_info.annotation, f.field_info.default, f.field_info.metadata)
        for f in get_flat_params(dependant)
    }
    model = {
        name: (f.alias or name, f.annotation, f.default, f.metadata)
        for name, f in copied.query.model_fields.items()
    }
    assert model == declared


@pytest.mark.parametrize(
    ("query", "who", "method"),
    [
        (b"metric=nps", principal(Scope.RESPONSES_READ), "GET"),  # the gate's, not enough
        (b"metric=nps", None, "GET"),  # no principal at all
        (b"metric=nps", principal(Scope.SCORES_READ), "POST"),
        (b"metric=bogus", principal(Scope.SCORES_READ), "GET"),
        (b"window=30d", principal(Scope.SCORES_READ), "GET"),  # no metric
        (b"metric=nps&scale=five", principal(Scope.SCORES_READ), "GET"),
        (b"metric=nps&from=2026-01-01T00:00:00", principal(Scope.SCORES_READ), "GET"),
        # Ranges api.time_range refuses, so FastAPI's 422.
        (
            b"metric=nps&from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
            principal(Scope.SCORES_READ),
            "GET",
        ),
        (b"metric=nps&from=1999-01-01T00:00:00Z", principal(Scope.SCORES_READ), "GET"),
    ],
)
async def test_what_fastapi_must_answer_is_handed_on(
    query: bytes, who: Principal, method: str
) -> None:
    behind = Behind()
    middleware = lean.LeanQueryMiddleware(behind)
    sent = await call(middleware, request("/v1/scores", query, who, method))
    assert sent[0]["status"] == 299
    assert (behind.calls, middleware.answered) == (1, 0)


async def test_an_app_with_dependency_overrides_is_left_to_fastapi() -> None:
    behind = Behind()
    middleware = lean.LeanQueryMiddleware(behind)
    who = principal(Scope.SCORES_READ)
    await call(middleware, request("/v1/scores", b"metric=nps", who, x=lambda: None))
    assert (behind.calls, middleware.answered) == (1, 0)


async def test_a_mounted_app_and_other_paths_are_handed_on() -> None:
    behind = Behind()
    middleware = lean.LeanQueryMiddleware(behind)
    mounted = request("/v1/scores", b"metric=nps", principal(Scope.SCORES_READ))
    await call(middleware, {**mounted, "root_path": "/api"})
    await call(middleware, request("/v1/headline", b"", principal(Scope.SCORES_READ)))
    assert (behind.calls, middleware.answered) == (2, 0)
