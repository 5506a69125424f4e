"""What a service's lean path (an innermost ASGI layer that answers a hot route without
FastAPI's machinery; services/collector/lean.py, services/scorer/lean.py) shares: answering
an exception as the app's own exception handlers would.

A service's own middleware sits outside Starlette's ``ExceptionMiddleware``, which only
wraps the router: an exception raised on a lean path would otherwise skip the handlers a
route's exception meets, and reach ``ServerErrorMiddleware`` as a 500.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import Request
from starlette._utils import is_async_callable
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import Response


def handler_for(handlers: Mapping[Any, Any], exc: Exception) -> Any:
    """The exception handler Starlette's ExceptionMiddleware would pick for ``exc``, or None.

    As Starlette's build_middleware_stack, the ``500`` and ``Exception`` keys are left out:
    those are ServerErrorMiddleware's, outside every middleware, so the exception goes on.
    """
    inner = {key: value for key, value in handlers.items() if key not in (500, Exception)}
    if isinstance(exc, HTTPException) and exc.status_code in inner:
        return inner[exc.status_code]
    for cls in type(exc).__mro__:
        if cls in inner:
            return inner[cls]
    return None


async def handled(scope: Any, receive: Any, exc: Exception) -> Response:
    """Return what the app's handler for ``exc`` answers, as it would answer it for a route;
    re-raise ``exc`` if none takes it (to ServerErrorMiddleware: a 500, the route logged)."""
    handler = handler_for(scope["app"].exception_handlers, exc)
    if handler is None:
        raise exc
    request = Request(scope, receive)
    if is_async_callable(handler):
        answer: Response = await handler(request, exc)
    else:  # as Starlette runs a plain function: off the event loop
        answer = await run_in_threadpool(handler, request, exc)
    exc.__traceback__ = None  # as Starlette: a reused exception keeps no traceback
    return answer
