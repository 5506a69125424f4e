"""The app builder: every service is assembled here, with the whole middleware stack."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi

from shared.apikeys import KeyStore
from shared.http.errors import document_errors, install_error_handlers
from shared.http.middleware import NulGuardMiddleware, RequestMetricsMiddleware
from shared.http.operations import ReadinessCheck, operations_router


def build_app(
    *,
    service: str,
    description: str,
    lifespan: Any,
    readiness: ReadinessCheck,
    routers: Sequence[APIRouter],
    keystore: KeyStore,
) -> FastAPI:
    """Return a service's FastAPI app: JSON errors and the open operations endpoints.

    Routes declare the scope they need with :func:`require`.
    """
    app = FastAPI(
        title=f"cxloop {service}", version="1", description=description, lifespan=lifespan
    )
    app.state.keystore = keystore

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(NulGuardMiddleware)
    app.add_middleware(RequestMetricsMiddleware, service=service)
    install_error_handlers(app)
    app.include_router(operations_router(service, readiness))
    for router in routers:
        app.include_router(router)
    return app
