"""The app builder: every service is assembled here, with the whole middleware stack."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import Any

import fastapi.applications
from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.middleware import Middleware
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from shared.apikeys import KeyStore
from shared.http.auth import AuthGateMiddleware, check_declared
from shared.http.errors import document_errors, install_error_handlers
from shared.http.middleware import (
    JSON_ONLY,
    BodyLimitMiddleware,
    BodyPolicy,
    ForwardedHeaderMiddleware,
    NulGuardMiddleware,
    RequestMetricsMiddleware,
)
from shared.http.operations import ReadinessCheck, operations_router
from shared.settings import HttpSettings

log = logging.getLogger(__name__)
_warned_any_proxy: set[str] = set()


def _warn_if_any_proxy(service: str, http: HttpSettings) -> None:
    """Log once per service when every peer may name the client address."""
    trusted = {ip.strip() for ip in http.forwarded_allow_ips.split(",")}
    if "*" in trusted and service not in _warned_any_proxy:
        _warned_any_proxy.add(service)
        log.warning(
            "CXLOOP_%s_FORWARDED_ALLOW_IPS is '*': any client may set its own address with "
            "X-Forwarded-For or Forwarded (and so evade per-address limits); name the proxies",
            service.upper(),
        )


# FastAPI's own OpenTelemetry (0.165 has it; older releases lack the parameter) asks the
# global tracer, meter and logger providers on every request whether any is configured: 2.4%
# of the collector's CPU under single-event load (py-spy), for spans and metrics nobody here
# collects. With all three kinds off, FastAPI skips its telemetry at once. The signature of
# FastAPI's own class is read, not that of ``fastapi.FastAPI``: an instrumentation may swap
# in a subclass taking ``**kwargs``, which would hide the parameter.
NO_NATIVE_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(fastapi.applications.FastAPI.__init__).parameters
    else {}
)


def build_app(
    *,
    service: str,
    description: str,
    lifespan: Any,
    readiness: ReadinessCheck,
    routers: Sequence[APIRouter],
    keystore: KeyStore,
    http: HttpSettings,
    body_policy: BodyPolicy | None = None,
    innermost: Sequence[Middleware] = (),
) -> FastAPI:
    """Return a service's FastAPI app: JSON errors, the open operations endpoints, and the
    one middleware stack every request goes through, outermost first:

    1. ``Forwarded`` read as ``X-Forwarded-For``, then uvicorn's ``ProxyHeadersMiddleware``:
       the client address is the forwarded one only when the peer is in
       ``http.forwarded_allow_ips``;
    2. request metrics (by route template);
    3. the auth gate: a route that :func:`~shared.http.auth.require`-s a scope answers 401/403
       before its body is read;
    4. body limits: 413 from ``Content-Length`` before reading, or as a chunked body passes
       the limit; 415 for a media type not taken. ``body_policy(path)`` gives both per route
       (default: ``http.max_body_bytes`` of JSON);
    5. the NUL guard, which buffers a body, so it comes after the limit;
    6. ``innermost``, a service's own layers, which see only what passed all of the above.
    """
    app = FastAPI(
        title=f"cxloop {service}",
        version="1",
        description=description,
        lifespan=lifespan,
        **NO_NATIVE_TELEMETRY,
    )
    app.state.keystore = keystore
    # For a worker of several (shared.runtime.worker_app), which refreshes its ready gauge.
    app.state.service = service
    app.state.readiness = readiness
    _warn_if_any_proxy(service, http)

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
    policy = body_policy or (lambda path: (http.max_body_bytes, JSON_ONLY))
    # add_middleware wraps what is already there: innermost first.
    for layer in reversed(innermost):
        app.add_middleware(layer.cls, *layer.args, **layer.kwargs)
    app.add_middleware(NulGuardMiddleware)
    app.add_middleware(BodyLimitMiddleware, policy=policy)
    operations = operations_router(service, readiness)
    # Starlette builds its middleware on the first request: check the routes now, so an
    # undeclared route fails the app's construction (and its tests), not a request.
    check_declared([operations, *routers])
    app.add_middleware(AuthGateMiddleware, routers=[operations, *routers])
    app.add_middleware(RequestMetricsMiddleware, service=service)
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=http.forwarded_allow_ips)
    app.add_middleware(ForwardedHeaderMiddleware)
    install_error_handlers(app)
    app.include_router(operations)
    for router in routers:
        app.include_router(router)
    return app
