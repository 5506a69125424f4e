"""HTTP plumbing every service mounts, one module per concern.

* :mod:`shared.http.errors`: the one JSON error shape, its handlers and its OpenAPI.
* :mod:`shared.http.auth`: bearer keys and the scope each route requires.
* :mod:`shared.http.operations`: ``/healthz``, ``/readyz``, ``/metrics``.
* :mod:`shared.http.middleware`: body limits, the NUL guard, request metrics.
* :mod:`shared.http.app`: :func:`build_app`, which assembles a service with all of them.
* :mod:`shared.http.lean`: what a service's lean path (a hot route answered without FastAPI's
  machinery) shares: answering an exception with the app's own handlers.

The names below are re-exported so ``from shared.http import X`` keeps working.
"""

from shared.http.app import build_app
from shared.http.auth import get_principal, public, require, signed_by, signed_in
from shared.http.errors import (
    ErrorBody,
    FieldError,
    FieldErrors,
    JsonBodyError,
    document_errors,
    error_body,
    install_error_handlers,
    load_json,
    send_error,
)
from shared.http.middleware import (
    JSON_ONLY,
    BodyLimitMiddleware,
    BodyPolicy,
    NulGuardMiddleware,
    RequestMetricsMiddleware,
)
from shared.http.operations import EngineDep, ReadinessCheck, get_engine, operations_router

__all__ = [
    "JSON_ONLY",
    "BodyLimitMiddleware",
    "BodyPolicy",
    "EngineDep",
    "ErrorBody",
    "FieldError",
    "FieldErrors",
    "JsonBodyError",
    "NulGuardMiddleware",
    "ReadinessCheck",
    "RequestMetricsMiddleware",
    "build_app",
    "document_errors",
    "error_body",
    "get_engine",
    "get_principal",
    "install_error_handlers",
    "load_json",
    "operations_router",
    "public",
    "require",
    "send_error",
    "signed_by",
    "signed_in",
]
