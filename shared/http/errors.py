"""Every error answer in one JSON shape, and the OpenAPI that documents it.

Every error is JSON shaped ``{"error": "<kind>", "detail": "...", "field": "..."}``; a 422
also lists every bad field under ``errors``. A 5xx never carries a stack trace.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.db import DATABASE_ERRORS, database_unavailable
from shared.errors import PermanentError
from shared.logs import route_template

log = logging.getLogger(__name__)

_ERROR_KINDS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "rate_limited",
    503: "unavailable",
}


class FieldError(BaseModel):
    """One bad field of a request, named by its dotted path."""

    field: str
    detail: str


class ErrorBody(BaseModel):
    """The body of every 4xx and 5xx answer."""

    model_config = ConfigDict(extra="allow")

    error: str = Field(description="A stable kind: validation_failed, unauthorized, ...")
    detail: str = Field(description="What went wrong, for a person.")
    field: str | None = Field(default=None, description="The first bad field, if one is.")
    errors: list[FieldError] | None = Field(
        default=None, description="Every bad field, when the request had several."
    )


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Make every documented 4xx/5xx answer of an OpenAPI ``schema`` an :class:`ErrorBody`.

    FastAPI documents 422 as its own HTTPValidationError, which is not what these services
    send: their handlers answer every error in one shape.
    """
    ref = {"$ref": "#/components/schemas/ErrorBody"}
    for path in schema.get("paths", {}).values():
        for method, operation in path.items():
            responses = operation.setdefault("responses", {})
            # Answered by middleware (shared.http.app) on any route: the NUL guard (422),
            # the body limits (413, 415) and, where a bearer key is needed, the auth gate.
            responses.setdefault("422", {"description": "A field is invalid; it is named"})
            if operation.get("security"):
                responses.setdefault("401", {"description": "Missing or invalid API key"})
                responses.setdefault("403", {"description": "The key may not use this route"})
                responses.setdefault(
                    "503", {"description": "The database is unavailable; retry after Retry-After"}
                )
            if method in ("post", "put", "patch"):
                responses.setdefault("413", {"description": "Body larger than the limit"})
                responses.setdefault("415", {"description": "Body of a media type not taken"})
            for status, response in responses.items():
                if status[0] in "45" and not _has_own_model(response):
                    response["content"] = {"application/json": {"schema": ref}}
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    error_schema = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(error_schema.pop("$defs", {}))
    components["ErrorBody"] = error_schema
    return schema


def _has_own_model(response: dict[str, Any]) -> bool:
    # A route may document an error answer of its own (the batch 503 lists every item).
    content = response.get("content", {}).get("application/json", {}).get("schema", {})
    ref = content.get("$ref", "")
    return bool(ref) and not ref.endswith(("/HTTPValidationError", "/ErrorBody"))


def error_body(status: int, detail: str, field: str | None = None, **extra: Any) -> dict[str, Any]:
    """Return the JSON body of an error response."""
    body: dict[str, Any] = {"error": _ERROR_KINDS.get(status, "error"), "detail": detail}
    if field is not None:
        body["field"] = field
    body.update(extra)
    return body


class FieldErrors(Exception):
    """Raise to answer 422 naming each bad field, in the same shape as schema errors."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['field']}: {e['detail']}" for e in errors))
        self.errors = errors


class JsonBodyError(FieldErrors):
    """A request body that is not JSON a route can read: answered 422 naming ``body``."""

    def __init__(self, detail: str) -> None:
        super().__init__([{"field": "body", "detail": detail}])
        self.detail = detail


def load_json(raw: bytes) -> Any:
    """Parse a request body as JSON, or raise :class:`JsonBodyError`.

    A body nested past the interpreter's recursion limit (a few kilobytes of ``[``) is
    refused as "is nested too deeply" instead of escaping as a RecursionError, a 500.
    """
    try:
        return json.loads(raw)
    except RecursionError:
        raise JsonBodyError(NESTED_TOO_DEEPLY) from None
    except (ValueError, UnicodeDecodeError):
        raise JsonBodyError("is not valid UTF-8 JSON") from None


NESTED_TOO_DEEPLY = "is nested too deeply"


async def _field_errors(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FieldErrors)
    return JSONResponse(
        error_body(422, str(exc), exc.errors[0]["field"], errors=exc.errors), status_code=422
    )


async def _permanent_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PermanentError)
    if exc.field is None:
        return JSONResponse(error_body(422, str(exc)), status_code=422)
    errors = [{"field": exc.field, "detail": str(exc)}]
    return JSONResponse(error_body(422, str(exc), exc.field, errors=errors), status_code=422)


def _field_of(loc: Sequence[int | str]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def _message(err: dict[str, Any]) -> str:
    msg = str(err.get("msg", "invalid"))
    return msg.removeprefix("Value error, ")


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"field": _field_of(e["loc"]), "detail": _message(e)} for e in exc.errors()]
    detail = "; ".join(f"{e['field']}: {e['detail']}" for e in errors)
    return JSONResponse(
        error_body(422, detail, errors[0]["field"] if errors else None, errors=errors),
        status_code=422,
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse(
        error_body(exc.status_code, str(exc.detail)),
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # The route's template: the raw path may carry a customer id.
    route = route_template(request.scope)
    log.error("unhandled error on %s %s", request.method, route, exc_info=exc)
    return JSONResponse(error_body(500, "internal error; see the service log"), status_code=500)


# shared.db.DATABASE_ERRORS: each handled by :func:`database_error`, which answers 503 only
# for the database's own (an OSError of a file or another socket stays a 500).
# How long a client is asked to wait before it retries a request the database missed.
DATABASE_RETRY_AFTER = "2"
DATABASE_UNAVAILABLE = "the database is unavailable; retry shortly"


async def database_error(request: Request, exc: Exception) -> Response:
    """Answer 503 with Retry-After when the database is unavailable (the request may succeed
    once it is back); any other error is a 500, as an unexpected one is.

    A write cut off at its commit may have been applied: the 503 says the database was out
    of reach, not that nothing was stored.

    Logged by the route's template and the error's kind only: a driver's message can quote
    the values of the statement, a customer's id among them.
    """
    if not database_unavailable(exc):
        return await _unexpected_error(request, exc)
    log.warning(
        "the database was unavailable to %s %s (%s); answered 503",
        request.method,
        route_template(request.scope),
        type(exc).__name__,
    )
    return JSONResponse(
        error_body(503, DATABASE_UNAVAILABLE),
        status_code=503,
        headers={"Retry-After": DATABASE_RETRY_AFTER},
    )


def install_error_handlers(app: FastAPI) -> None:
    """Make every error response JSON in cxloop's shape."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(FieldErrors, _field_errors)
    app.add_exception_handler(PermanentError, _permanent_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for kind in DATABASE_ERRORS:
        app.add_exception_handler(kind, database_error)
    app.add_exception_handler(Exception, _unexpected_error)


async def send_error(
    send: Any,
    status: int,
    detail: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> None:
    """Answer an error from ASGI middleware, in the same shape as the handlers."""
    body = json.dumps(error_body(status, detail, field)).encode("utf-8")
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
