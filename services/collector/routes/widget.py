"""The web widget: an embeddable ``widget.js`` and the endpoint it posts answers to.

The widget holds a publishable key (``cxp_…``), which may only submit answers, only from
its configured origins, and only within the per-address and per-key rate limits. Answers
may arrive as ``text/plain`` JSON so that ``navigator.sendBeacon`` can deliver them while
the page unloads.
"""

from __future__ import annotations

import math
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from services.collector import metrics, service
from services.collector.deps import IngestDep
from services.collector.ratelimit import RateLimiter
from services.collector.schemas import ResponseIn, Submitted
from services.collector.service import validation_errors
from shared.apikeys import KeyKind, KeyStore, Principal, Scope
from shared.db import DATABASE_ERRORS, database_unavailable
from shared.http import JsonBodyError, error_body, load_json, public
from shared.http.errors import DATABASE_RETRY_AFTER, DATABASE_UNAVAILABLE

# Open to the auth gate: a page carries a publishable key in the query, checked here with
# its origins, after the per-address rate limit.
router = APIRouter(
    tags=["widget"], dependencies=[public("browsers; the publishable key is checked here")]
)

SOURCE = "widget"
PATH = "/v1/widget/responses"
_WIDGET_JS = resources.files("services.collector").joinpath("static/widget.js")


def _cors(response: Response, origin: str) -> Response:
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Vary"] = "Origin"
    return response


def _error(
    status: int, detail: str, origin: str | None = None, field: str | None = None, **extra: Any
) -> Response:
    metrics.REJECTED.labels(source=SOURCE, reason=str(status)).inc()
    response = JSONResponse(error_body(status, detail, field, **extra), status_code=status)
    return _cors(response, origin) if origin else response


def _too_many(wait: float, origin: str | None) -> Response:
    response = _error(429, "too many answers; slow down", origin)
    response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
    return response


def _address_limited(request: Request, limiter: RateLimiter, origin: str | None) -> Response | None:
    """Take a token from the client address's bucket, or answer 429 (before any key lookup).

    A key is looked up only for an address within its limit, so unknown keys sent from one
    address cost it its budget, not a database query each.
    """
    address = request.client.host if request.client else "unknown"
    wait = limiter.check(address)
    # The origin is echoed unchecked: a 429 says nothing about the key, and the page may
    # read its Retry-After.
    return _too_many(wait, origin) if wait else None


async def _admit(request: Request, key: str, origin: str | None) -> Principal | Response:
    store: KeyStore = request.app.state.keystore
    try:
        principal = await store.authenticate(key)
    except DATABASE_ERRORS as exc:
        if not database_unavailable(exc):
            raise
        # Echoed unchecked, as a 429's: the page may read the Retry-After, and learns
        # nothing of the key.
        response = _error(503, DATABASE_UNAVAILABLE, origin)
        response.headers["Retry-After"] = DATABASE_RETRY_AFTER
        return response
    if principal is None or principal.kind is not KeyKind.PUBLISHABLE:
        return _error(401, "unknown publishable key")
    if not principal.may(Scope.RESPONSES_WRITE, SOURCE):
        return _error(403, "this key may not submit widget answers")
    if origin is None or origin not in principal.origins:
        return _error(403, f"origin {origin or '(none)'} is not allowed for this key")
    return principal


KeyParam = Annotated[str, Query(description="The publishable key (cxp_…).", max_length=200)]
OriginHeader = Annotated[str | None, Header(alias="Origin")]


@router.get("/widget.js", summary="The embeddable widget", response_class=Response)
async def widget_js() -> Response:
    """Serve the widget. Embed it with a `<script>` tag; see the README for its attributes."""
    return Response(
        _WIDGET_JS.read_text(encoding="utf-8"),
        media_type="text/javascript; charset=utf-8",
        headers={"Cache-Control": "public, max-age=300", "Access-Control-Allow-Origin": "*"},
    )


@router.options(
    PATH,
    summary="CORS preflight for the widget",
    status_code=204,
    responses={
        401: {"description": "Unknown publishable key"},
        403: {"description": "The page's origin is not allowed for the key"},
        429: {"description": "Rate limit reached; see Retry-After"},
    },
)
async def preflight(request: Request, key: KeyParam, origin: OriginHeader = None) -> Response:
    """Answer a browser's preflight: allowed only for the key's configured origins."""
    limited = _address_limited(request, request.app.state.widget_limits.preflight, origin)
    if limited is not None:
        return limited
    admitted = await _admit(request, key, origin)
    if isinstance(admitted, Response):
        return admitted
    assert origin is not None
    response = Response(status_code=204)
    response.headers["Access-Control-Allow-Methods"] = "POST"
    response.headers["Access-Control-Allow-Headers"] = "Content-Type"
    response.headers["Access-Control-Max-Age"] = "600"
    return _cors(response, origin)


@router.post(
    PATH,
    status_code=202,
    response_model=Submitted,
    summary="Submit a widget answer (publishable key, allowed origins only)",
    responses={
        401: {"description": "Unknown publishable key"},
        403: {"description": "The page's origin is not allowed for the key"},
        409: {"description": "The event_id was already used for a different answer"},
        422: {"description": "A field is invalid; every bad field is named"},
        429: {"description": "Rate limit reached; see Retry-After"},
        503: {"description": "The broker did not acknowledge; retry with the same event_id"},
    },
)
async def submit_widget_response(
    request: Request, ingest: IngestDep, key: KeyParam, origin: OriginHeader = None
) -> Response:
    """Accept one answer from the widget; the body is JSON, sent as application/json or text/plain.

    The body is a response as for `POST /v1/responses`; the widget sets `event_id`, so a
    resend (say by `sendBeacon` after a `fetch` that seemed to fail) counts once.
    """
    limits = request.app.state.widget_limits
    limited = _address_limited(request, limits.per_address, origin)
    if limited is not None:
        return limited
    admitted = await _admit(request, key, origin)
    if isinstance(admitted, Response):
        return admitted
    assert origin is not None
    wait = limits.per_key.check(key)
    if wait:
        return _too_many(wait, origin)
    try:
        payload = ResponseIn.model_validate(load_json(await request.body()))
    except JsonBodyError as exc:
        return _error(422, f"body: {exc.detail}", origin, field="body")
    except ValidationError as exc:
        errors = validation_errors(exc)
        detail = "; ".join(f"{e['field']}: {e['detail']}" for e in errors)
        return _error(422, detail, origin, field=errors[0]["field"], errors=errors)
    errors = service.configured_set_errors(payload, ingest.settings)
    if errors:
        return _error(422, errors[0]["detail"], origin, field=errors[0]["field"], errors=errors)
    result = await service.submit_one(
        ingest,
        payload,
        service.RESPONSES,
        source=SOURCE,
        idempotency_key=None,
        caller=admitted.caller,
    )
    if isinstance(result, Response):
        return _cors(result, origin)
    return _cors(JSONResponse(result.model_dump(mode="json"), status_code=202), origin)
