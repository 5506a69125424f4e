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
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse

from services.scorer import service
from services.scorer.pages import query, view
from services.scorer.schemas import HeadlineOut, ScoreOut
from shared.apikeys import Scope
from shared.events import Metric
from shared.http import EngineDep, FieldErrors, signed_in
from shared.settings import ScorerSettings, SlaSettings
from shared.timing import Timings
from shared.web.pages import Pages
from shared.web.sessions import SESSION_SCOPE, Session

T = TypeVar("T")

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


def _view(request: Request) -> query.View:
    return query.parse(request.query_params)


async def _checked(call: Awaitable[T]) -> T:
    """A service call whose refusal of a parameter (a cursor it did not give) is a 422 page."""
    try:
        return await call
    except FieldErrors as exc:
        raise HTTPException(422, str(exc)) from None


def _ces_scale(headline: HeadlineOut) -> int | None:
    """The CES scale answered most (the headline lists it first), if any."""
    return next((s.scale for s in headline.scores if s.metric == "ces"), None)


def _trend_metrics(headline: HeadlineOut) -> list[tuple[Metric, int | None]]:
    return [(Metric(s.metric), s.scale) for s in headline.scores]


def router(pages: Pages) -> APIRouter:
    """The dashboard's pages."""
    routes = APIRouter(include_in_schema=False)

    @routes.get("/dashboard", dependencies=_READ)
    async def dashboard(request: Request, engine: EngineDep) -> HTMLResponse:
        """Scores over a range and segment, where they go, why, and the latest answers."""
        timings = Timings()
        started = time.perf_counter()
        v = _view(request)
        settings = _settings(request)
        sla: SlaSettings = request.app.state.sla
        min_n = settings.min_n
        span, filters = v.span, v.filters
        headline = await timings.run("headline", service.headline(engine, span, filters, min_n))
        metric = v.metric or Metric.NPS
        scale = _ces_scale(headline) if metric is Metric.CES else None
        if metric is Metric.CES and scale is None:
            metric = Metric.NPS  # nobody answered CES in either period: nothing to break down
        trend_metrics = _trend_metrics(headline)
        ticket_filters = {k: filters[k] for k in ("channel",) if k in filters}
        can_read = _may_read_responses(request)

        def times(group_by: str | None) -> Awaitable[Any]:
            return service.service_times(
                engine,
                span,
                ticket_filters,
                group_by,
                sla_first_response=sla.first_response_minutes,
                sla_resolution=sla.resolution_minutes,
            )

        calls: dict[str, Awaitable[Any]] = {
            **{
                f"breakdown-{d.value}": service.breakdown(
                    engine, span, filters, metric, scale, d, min_n
                )
                for d in query.BREAKDOWNS
            },
            **{
                f"trend-{i}": service.trend(engine, span, filters, m, s, min_n, interval=v.interval)
                for i, (m, s) in enumerate(trend_metrics)
            },
            "drivers": service.drivers(engine, span, filters),
            "times": times(None),
            "times-priority": times("priority"),
            "times-channel": times("channel"),
            "retention": service.retention(engine, v.period, None, None),
        }
        if metric is not Metric.NPS:  # else the breakdowns' total has the NPS split
            calls["nps"] = service.scores(engine, span, filters, Metric.NPS, None, min_n)
        if can_read:
            # The page shows the newest few; dashboard.js knows every id the first live call
            # can repeat (it looks back a few seconds), so only new answers arrive as new.
            calls["latest"] = service.latest_responses(engine, None, filters)
        got = dict(
            zip(
                calls,
                await asyncio.gather(*(timings.run(k, c) for k, c in calls.items())),
                strict=True,
            )
        )
        breakdowns = {d: got[f"breakdown-{d.value}"] for d in query.BREAKDOWNS}
        nps: ScoreOut = got.get("nps") or breakdowns[query.BREAKDOWNS[0]]
        trends = [(ms, got[f"trend-{i}"]) for i, ms in enumerate(trend_metrics)]
        drivers, retention = got["drivers"], got["retention"]
        times_all, times_priority, times_channel = (
            got["times"],
            got["times-priority"],
            got["times-channel"],
        )
        latest = got.get("latest")
        with timings.part("render"):
            response = pages.render(
                request,
                "dashboard.html",
                v=v,
                min_n=min_n,
                headline=headline,
                tiles=view.tiles(headline, nps),
                nps=nps,
                metric=metric,
                scale=scale,
                metric_options=[
                    Metric.NPS,
                    Metric.CSAT,
                    *([Metric.CES] if _ces_scale(headline) else []),
                ],
                breakdowns=breakdowns,
                trends=trends,
                drivers=drivers,
                times_all=times_all,
                times_priority=times_priority,
                times_channel=times_channel,
                retention=retention,
                latest=latest,
                latest_shown=LATEST_ON_PAGE,
                answered=any(s.n or s.previous.n for s in headline.scores),
                **_helpers(request, pages),
            )
        timings.add("total", time.perf_counter() - started)
        response.headers["Server-Timing"] = timings.header()
        return response

    @routes.get("/dashboard/live", dependencies=_READ)
    async def live(request: Request, engine: EngineDep) -> JSONResponse:
        """The tiles' numbers now, and (with responses:read) the answers stored since
        ``cursor``: an answer may repeat one sent before (dashboard.js drops it by id)."""
        v = _view(request)
        min_n = _settings(request).min_n
        headline, nps = await asyncio.gather(
            service.headline(engine, v.span, v.filters, min_n),
            service.scores(engine, v.span, v.filters, Metric.NPS, None, min_n),
        )
        body: dict[str, Any] = {"scores": view.live_scores(headline, nps)}
        if _may_read_responses(request):
            latest = await _checked(service.latest_responses(engine, v.cursor, v.filters))
            t = _translator(request, pages)
            body["cursor"] = latest.cursor
            body["items"] = [view.answer(t, item) for item in latest.items]
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    @routes.get("/dashboard/responses", dependencies=_READ_RESPONSES)
    async def responses(request: Request, engine: EngineDep) -> HTMLResponse:
        """The answers behind the dashboard's view, newest first, a page at a time."""
        v = _view(request)
        filters: dict[str, Any] = dict(v.filters)
        if v.metric is not None:
            filters["metric"] = v.metric.value
        if v.customer_id is not None:
            filters["customer_id"] = v.customer_id
        page = await _checked(
            service.responses_page(
                engine, filters, v.span.since, v.span.until, v.cursor, RESPONSES_PER_PAGE
            )
        )
        t = _translator(request, pages)
        return pages.render(
            request,
            "responses.html",
            v=v,
            page=page,
            answers=[view.answer(t, item) for item in page.items],
            **_helpers(request, pages),
        )

    @routes.get("/dashboard/customers/{customer_id:path}", dependencies=_READ_RESPONSES)
    async def customer(request: Request, engine: EngineDep, customer_id: str) -> HTMLResponse:
        """One customer's latest answers and tickets."""
        if not customer_id.strip() or len(customer_id) > query.CUSTOMER_ID_MAX:
            raise HTTPException(404, "no such customer id")
        found = await service.customer(engine, customer_id)
        t = _translator(request, pages)
        return pages.render(
            request,
            "customer.html",
            customer=found,
            answers=[view.answer(t, item, with_customer=False) for item in found.responses],
            **_helpers(request, pages),
        )

    return routes


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
    }
