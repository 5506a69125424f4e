"""The operations endpoints (``/healthz``, ``/readyz``, ``/metrics``) and the engine dependency."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import metrics
from shared.http.auth import public


async def get_engine(request: Request) -> AsyncEngine:
    """Return the service's database engine, which its lifespan put on ``app.state``."""
    engine: AsyncEngine = request.app.state.engine
    return engine


EngineDep = Annotated[AsyncEngine, Depends(get_engine)]

ReadinessCheck = Callable[[], Awaitable[dict[str, bool]]]


def record_ready(service: str, checks: dict[str, bool]) -> bool:
    """Set the service's ready gauge from ``checks``; return whether all of them pass."""
    ready = all(checks.values())
    metrics.READY.labels(service=service).set(1 if ready else 0)
    return ready


def operations_router(service: str, readiness: ReadinessCheck) -> APIRouter:
    """Return ``/healthz``, ``/readyz`` and ``/metrics``, which need no API key."""
    router = APIRouter(
        tags=["operations"], dependencies=[public("probes and scrapers carry no key")]
    )

    @router.get("/healthz", summary="The process is alive")
    async def healthz() -> dict[str, str]:
        """Answer 200 whenever the process can serve HTTP at all."""
        return {"status": "ok"}

    @router.get(
        "/readyz",
        summary="The broker and the database answer",
        responses={503: {"description": "A dependency does not answer"}},
    )
    async def readyz() -> JSONResponse:
        """Answer 200 when every dependency answers, 503 naming the ones that do not."""
        checks = await readiness()
        ready = record_ready(service, checks)
        return JSONResponse(
            {"status": "ready" if ready else "not_ready", "checks": checks},
            status_code=200 if ready else 503,
        )

    @router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus_metrics() -> Response:
        """Expose every metric in the Prometheus text format."""
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    return router
