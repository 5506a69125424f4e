"""The console's routes: each parses its query or form, calls
:mod:`services.alerting.service`, and renders or redirects."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from shared.apikeys import Scope
from shared.http import signed_in
from shared.web.pages import Pages


def router(pages: Pages) -> APIRouter:
    """The console's pages."""
    routes = APIRouter(include_in_schema=False)

    @routes.get("/console", dependencies=[signed_in(Scope.ALERTS_READ)])
    async def console(request: Request) -> HTMLResponse:
        return pages.render(request, "console.html")

    return routes
