"""The dashboard's routes: each parses its query, calls :mod:`services.scorer.service`,
and renders."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from shared.apikeys import Scope
from shared.http import signed_in
from shared.web.pages import Pages


def router(pages: Pages) -> APIRouter:
    """The dashboard's pages."""
    routes = APIRouter(include_in_schema=False)

    @routes.get("/dashboard", dependencies=[signed_in(Scope.SCORES_READ)])
    async def dashboard(request: Request) -> HTMLResponse:
        return pages.render(request, "dashboard.html")

    return routes
