"""The lean path of the score API's two busiest reads: ``GET /v1/scores`` and
``GET /v1/scores/timeseries``.

FastAPI's machinery around a route (resolving its dependencies and twelve query parameters,
its exception wrappers, its router) cost about 0.4 ms of the scorer's CPU per request, a
fifth of a 30-day score's (bench/notes.md, "The score API's lean path (2026-12-04)"). The
same requests are answered here, innermost in the middleware stack, so the request metrics,
auth gate, body limits and NUL guard still see them exactly as before, by the routes' own
functions: the parameters are validated in one model with the routes' types, then
``api.time_range``, ``api.segment_filters`` and the endpoint itself are called with them.
The FastAPI routes stay registered: they feed OpenAPI, and they answer everything this path
does not take: any query a model refuses or a range ``time_range`` refuses (so every 422
for a parameter is FastAPI's own, byte for byte), another method, a mounted app, or an app
with dependency overrides. A refused query is parsed and validated twice (here, then by
FastAPI): only a caller with a valid key of the routes' scope gets that far.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from starlette.datastructures import QueryParams
from starlette.responses import Response

from services.scorer import api
from services.scorer.schemas import Dimension, Interval, ScoreOut, TimeseriesOut, Window
from shared.apikeys import Scope
from shared.events import Channel, Metric, SurveyType
from shared.http.auth import Requirement, admitted_principal
from shared.http.lean import handled
from shared.http.operations import get_engine


class _Query(BaseModel):
    """The query parameters both routes take, as they and their dependencies declare them
    (tests/unit/test_scorer_lean.py pins each one's name, alias, type and default). A
    parameter not named here is ignored, as FastAPI ignores it; a repeated one counts by its
    last value, as FastAPI reads it (tests/integration/test_scorer_lean.py asks both)."""

    model_config = ConfigDict(frozen=True)

    # api.time_range
    window: Window | None = None
    from_: AwareDatetime | None = Field(default=None, alias="from")
    to: AwareDatetime | None = None
    # api.segment_filters
    channel: Channel | None = None
    survey_type: SurveyType | None = None
    touchpoint: str | None = None
    location: str | None = None
    product: str | None = None
    business_unit: str | None = None
    # the endpoint's own
    metric: Metric
    scale: int | None = None


class ScoresQuery(_Query):
    """``GET /v1/scores``'s query (api.get_score)."""

    group_by: Dimension | None = None


class TimeseriesQuery(_Query):
    """``GET /v1/scores/timeseries``'s query (api.get_timeseries)."""

    interval: Interval = Interval.DAY


Endpoint = Callable[..., Awaitable[BaseModel]]


@dataclass(frozen=True)
class LeanGet:
    """A ``GET`` route answered here: its query's model, its endpoint (called with what
    FastAPI would pass it), its response model and the route's own :class:`Requirement`,
    checked again here against the gate's principal."""

    query: type[_Query]
    endpoint: Endpoint
    response: type[BaseModel]
    requirement: Requirement
    own: tuple[str, ...]  # the endpoint's own query parameters

    def body(self, answer: Any) -> str:
        """What FastAPI sends for the route's ``response_model`` (by alias): the answer
        validated as it (a model instance passes as it is), then dumped to JSON."""
        return self.response.model_validate(answer, from_attributes=True).model_dump_json(
            by_alias=True
        )


_READ = Requirement(Scope.SCORES_READ)  # api.READ's
LEAN = {
    "/v1/scores": LeanGet(
        ScoresQuery, api.get_score, ScoreOut, _READ, ("metric", "scale", "group_by")
    ),
    "/v1/scores/timeseries": LeanGet(
        TimeseriesQuery, api.get_timeseries, TimeseriesOut, _READ, ("metric", "interval", "scale")
    ),
}


class LeanQueryMiddleware:
    """Answer a well-formed ``GET`` of the ``routes`` (by path) without FastAPI."""

    def __init__(self, app: Any, *, routes: Mapping[str, LeanGet] = LEAN) -> None:
        self.app = app
        self.routes = dict(routes)
        # How many requests this path answered (the rest went on to FastAPI): what shows a
        # test that it, not the route behind it, gave an answer.
        self.answered = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if (
            route is None
            or scope["method"] != "GET"
            or scope.get("root_path")
            or admitted_principal(scope, route.requirement) is None
            or scope["app"].dependency_overrides  # a test's: FastAPI applies them
        ):
            await self.app(scope, receive, send)
            return
        arguments = await _arguments(scope, route)
        if arguments is None:
            await self.app(scope, receive, send)
            return
        self.answered += 1
        request = Request(scope, receive)
        response: Response
        try:
            answer = await route.endpoint(
                request=request, engine=await get_engine(request), **arguments
            )
            # The route's 200, as FastAPI sends a response_model's JSON.
            response = Response(route.body(answer), media_type="application/json")
        except Exception as exc:
            response = await handled(scope, receive, exc)
        await response(scope, receive, send)


async def _arguments(scope: Any, route: LeanGet) -> dict[str, Any] | None:
    """The endpoint's arguments but ``request`` and ``engine``, by name, or None for a query
    FastAPI answers with a 422 (left to it, so the 422 is its own). Any other exception on
    the way is left to FastAPI as well: these steps are pure, so it meets the same one, and
    answers it with the app's handlers, as for the route."""
    # What FastAPI reads: a name's last value (QueryParams' mapping), any other name ignored.
    params = dict(QueryParams(scope["query_string"]))
    try:
        query = route.query.model_validate(params)
        span = await api.time_range(query.window, query.from_, query.to)
        segments = await api.segment_filters(
            query.channel,
            query.survey_type,
            query.touchpoint,
            query.location,
            query.product,
            query.business_unit,
        )
    except Exception:
        return None
    return {"span": span, "segments": segments} | {n: getattr(query, n) for n in route.own}
