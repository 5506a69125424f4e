"""The dashboard's routes: each parses its query (``query.parse``), calls
:mod:`services.scorer.service` (the functions every ``/v1`` route calls), and renders.

    GET /dashboard                          tiles, trends, breakdowns, drivers, service times,
                                            retention, latest answers (scores:read)
    GET /dashboard/live                     JSON for dashboard.js: new answers since a cursor
                                            and the tiles' numbers (scores:read)
    GET /dashboard/responses                the answers behind a view, newest first, paged
                                            (scores:read and responses:read)
    GET /dashboard/customers/{customer_id}  one customer's answers and tickets (the same)
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy.ext.asyncio import AsyncEngine

from services.scorer import service
from services.scorer.models import ORDER_DIMENSIONS
from services.scorer.pages import query, view
from services.scorer.schemas import ValueOut, ValueWindow
from services.scorer.snapshots import ValueSnapshots
from shared.apikeys import Scope
from shared.events import Metric
from shared.http import EngineDep, FieldErrors, error_body, signed_in
from shared.settings import ScorerSettings, SlaSettings
from shared.timing import Timings
from shared.web.pages import Pages
from shared.web.sessions import SESSION_SCOPE, Session

T = TypeVar("T")
R = TypeVar("R", bound=Response)

LATEST_ON_PAGE = 10
RESPONSES_PER_PAGE = 25
_READ = [signed_in(Scope.SCORES_READ)]
_READ_RESPONSES = [signed_in(Scope.SCORES_READ, Scope.RESPONSES_READ)]


def _settings(request: Request) -> ScorerSettings:
    settings: ScorerSettings = request.app.state.scorer_settings
    return settings


def _may_read_responses(request: Request) -> bool:
    session = request.scope.get(SESSION_SCOPE)
    return isinstance(session, Session) and session.principal.may(Scope.RESPONSES_READ)


def _timed(response: R, timings: Timings, started: float) -> R:
    timings.add("total", time.perf_counter() - started)
    response.headers["Server-Timing"] = timings.header()
    return response


def _view(request: Request) -> query.View:
    return query.parse(request.query_params)


async def _checked(call: Awaitable[T]) -> T:
    """A service call whose refusal of a parameter (a cursor it did not give) is a 422 page."""
    try:
        return await call
    except FieldErrors as exc:
        raise HTTPException(422, str(exc)) from None


def _value_snapshot(
    request: Request, engine: AsyncEngine, v: query.View
) -> Callable[[], Awaitable[ValueOut]] | None:
    """The scorer's snapshot of the view's rolling window, as ``GET /v1/value`` answers it,
    when no order filter applies (None: the panel is computed for the request)."""
    snapshots: ValueSnapshots = request.app.state.value_snapshots
    window = v.window
    if (
        window is None
        or not snapshots.covers(window)
        or any(d in v.filters for d in ORDER_DIMENSIONS)
    ):
        return None
    return functools.partial(snapshots.value, engine, ValueWindow(window))


def router(pages: Pages) -> APIRouter:
    """The dashboard's pages."""
    routes = APIRouter(include_in_schema=False)

    @routes.get("/dashboard", dependencies=_READ)
    async def dashboard(request: Request, engine: EngineDep) -> HTMLResponse:
        """Scores over a range and segment, where they go, why, and the latest answers.
        ``Server-Timing`` says how long each panel's query and the rendering took."""
        timings, started = Timings(), time.perf_counter()
        v = _view(request)
        min_n = _settings(request).min_n
        sla: SlaSettings = request.app.state.sla
        can_read = _may_read_responses(request)
        got = await service.dashboard(
            engine,
            v.span,
            v.filters,
            metric=v.metric,
            breakdown_by=query.BREAKDOWNS,
            interval=v.interval,
            retention_period=v.period,
            # The page shows the newest few; dashboard.js knows every id the first live call
            # can repeat (it looks back a few seconds), so only new answers arrive as new.
            with_latest=can_read,
            min_n=min_n,
            sla_first_response=sla.first_response_minutes,
            sla_resolution=sla.resolution_minutes,
            timings=timings,
            value_of=_value_snapshot(request, engine, v),
        )
        with timings.part("render"):
            response = pages.render(
                request,
                "dashboard.html",
                v=v,
                min_n=min_n,
                latest_shown=LATEST_ON_PAGE,
                **view.dashboard(got),
                **_helpers(request, pages),
            )
        return _timed(response, timings, started)

    @routes.get("/dashboard/live", dependencies=_READ)
    async def live(request: Request, engine: EngineDep) -> JSONResponse:
        """(With responses:read) the answers stored since ``cursor``: an answer may repeat
        one sent before (dashboard.js drops it by id); and the tiles' numbers now, unless
        ``tiles=0``. A parameter it cannot use is a JSON 422 naming it (the caller is a
        script)."""
        timings, started = Timings(), time.perf_counter()
        try:
            # An open-ended range grows while the page stays open: not refused for it.
            v = query.parse(request.query_params, growing=True)
        except query.BadParameter as exc:
            return _refused(exc.field, exc.reason)
        body: dict[str, Any] = {}
        if _may_read_responses(request):
            try:
                latest = await timings.run(
                    "latest", service.latest_responses(engine, v.cursor, v.filters)
                )
            except FieldErrors as exc:
                return _refused(exc.errors[0]["field"], exc.errors[0]["detail"])
            t = _translator(request, pages)
            body["cursor"] = latest.cursor
            body["items"] = [view.answer(t, item) for item in latest.items]
        if request.query_params.get("tiles") != "0":
            min_n = _settings(request).min_n
            headline, nps = await asyncio.gather(
                timings.run("tiles", service.headline(engine, v.span, v.filters, min_n)),
                timings.run(
                    "nps", service.scores(engine, v.span, v.filters, Metric.NPS, None, min_n)
                ),
            )
            body["scores"] = view.live_scores(headline, nps)
        return _timed(JSONResponse(body, headers={"Cache-Control": "no-store"}), timings, started)

    @routes.get("/dashboard/responses", dependencies=_READ_RESPONSES)
    async def responses(request: Request, engine: EngineDep) -> HTMLResponse:
        """The answers behind the dashboard's view, newest first, a page at a time."""
        timings, started = Timings(), time.perf_counter()
        v = _view(request)
        filters: dict[str, Any] = dict(v.filters)
        if v.metric is not None:
            filters["metric"] = v.metric.value
        if v.customer_id is not None:
            filters["customer_id"] = v.customer_id
        page = await timings.run(
            "answers",
            _checked(
                service.responses_page(
                    engine, filters, v.span.since, v.span.until, v.cursor, RESPONSES_PER_PAGE
                )
            ),
        )
        t = _translator(request, pages)
        with timings.part("render"):
            response = pages.render(
                request,
                "responses.html",
                v=v,
                page=page,
                answers=[view.answer(t, item) for item in page.items],
                **_helpers(request, pages),
            )
        return _timed(response, timings, started)

    @routes.get("/dashboard/customers/{customer_id:path}", dependencies=_READ_RESPONSES)
    async def customer(request: Request, engine: EngineDep, customer_id: str) -> HTMLResponse:
        """One customer's latest answers and tickets; ``cursor`` pages to older answers."""
        if not customer_id.strip() or len(customer_id) > query.CUSTOMER_ID_MAX:
            raise HTTPException(404, "no such customer id")
        cursor = query.parse_cursor(request.query_params)
        found = await _checked(service.customer(engine, customer_id, cursor=cursor))
        t = _translator(request, pages)
        return pages.render(
            request,
            "customer.html",
            customer=found,
            older=service.customer_cursor(found),
            answers=[view.answer(t, item, with_customer=False) for item in found.responses],
            **_helpers(request, pages),
        )

    return routes


def _refused(field: str, detail: str) -> JSONResponse:
    """The JSON 422 of the live route, in the API's error shape."""
    return JSONResponse(
        error_body(422, f"{field}: {detail}", field),
        status_code=422,
        headers={"Cache-Control": "no-store"},
    )


def _translator(request: Request, pages: Pages) -> view.Translate:
    """The viewer's catalogue, for text made outside a template (the live JSON, cards)."""
    return pages.texts.translator(pages.language(request)).t


def _helpers(request: Request, pages: Pages) -> dict[str, Any]:
    lang = pages.language(request)
    t = _translator(request, pages)
    return {
        "F": view.Formats(lang, t),
        "num": view.number_html,
        "segment_label": lambda d, value: view.segment_label(t, d, value),
        "reason_label": lambda r: view.reason_label(t, r),
        "metric_label": lambda m, scale=None: view.metric_label(t, m, scale),
        "customer_url": query.customer_url,
        "answer_card": lambda item: view.answer(t, item),
        "filters": query.FILTERS,
        "windows": query.WINDOWS,
        "sort_groups": view.sort_groups,
        "chart": view.chart,
        "summary": lambda m, series: view.summary(t, view.Formats(lang, t), m, series),
        "can_read": _may_read_responses(request),
        "utc": view.in_utc,
    }
