"""HTTP plumbing every service mounts: bearer auth, JSON errors, and the operations endpoints.

Every error is JSON shaped ``{"error": "<kind>", "detail": "...", "field": "..."}``; a 422
also lists every bad field under ``errors``. A 5xx never carries a stack trace.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared import metrics
from shared.apikeys import KeyStore, Principal, Scope

log = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")

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
            # Answered by middleware on any route: NulGuardMiddleware, and on bodies
            # BodyLimitMiddleware where a service installs it.
            responses.setdefault("422", {"description": "A field is invalid; it is named"})
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


def get_principal(source: str | None = None) -> Any:
    """Return a dependency that authenticates the bearer key and yields its Principal."""

    async def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise HTTPException(
                401,
                "missing credentials: send Authorization: Bearer <key>",
                headers={"WWW-Authenticate": "Bearer"},
            )
        store: KeyStore = request.app.state.keystore
        principal = await store.authenticate(credentials.credentials)
        if principal is None:
            raise HTTPException(
                401,
                "invalid API key",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return principal

    return dependency


def require(scope: Scope, source: str | None = None) -> Any:
    """Return a dependency that admits only keys allowed ``scope`` (through ``source``)."""

    # A default rather than Annotated: the dependency is built here, so a string annotation
    # (from __future__ import annotations) could not name it.
    async def dependency(principal: Principal = Depends(get_principal(source))) -> Principal:  # noqa: B008
        if not principal.may(scope, source):
            through = f" through {source}" if source else ""
            raise HTTPException(403, f"this key may not use {scope.value}{through}")
        return principal

    return Depends(dependency)


class FieldErrors(Exception):
    """Raise to answer 422 naming each bad field, in the same shape as schema errors."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['field']}: {e['detail']}" for e in errors))
        self.errors = errors


async def _field_errors(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FieldErrors)
    return JSONResponse(
        error_body(422, str(exc), exc.errors[0]["field"], errors=exc.errors), status_code=422
    )


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
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(error_body(500, "internal error; see the service log"), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    """Make every error response JSON in cxloop's shape."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(FieldErrors, _field_errors)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)


async def get_engine(request: Request) -> AsyncEngine:
    """Return the service's database engine, which its lifespan put on ``app.state``."""
    engine: AsyncEngine = request.app.state.engine
    return engine


EngineDep = Annotated[AsyncEngine, Depends(get_engine)]

ReadinessCheck = Callable[[], Awaitable[dict[str, bool]]]


def operations_router(service: str, readiness: ReadinessCheck) -> APIRouter:
    """Return ``/healthz``, ``/readyz`` and ``/metrics``, which need no API key."""
    router = APIRouter(tags=["operations"])

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
        ready = all(checks.values())
        metrics.READY.labels(service=service).set(1 if ready else 0)
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


BodyPolicy = Callable[[str], tuple[int, frozenset[str]]]
JSON_ONLY = frozenset({"application/json"})


class NulGuardMiddleware:
    """Refuse (422, naming the field) any request carrying U+0000 in its path, query or body.

    Postgres text cannot hold it: accepted, it would fail a query with a 500, or, in an
    answer's comment, fail every consumer's insert of that event for good.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope["path"]:
            await _send_error(send, 422, _NUL, field="path")
            return
        query = scope.get("query_string", b"")
        if b"\x00" in query or b"%00" in query:
            for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
                if "\x00" in value or "\x00" in name:
                    await _send_error(send, 422, f"{name}: {_NUL}", field=name)
                    return
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        field = _nul_field(body)
        if field is not None:
            await _send_error(send, 422, f"{field}: {_NUL}", field=field)
            return
        await self.app(scope, _replay([{"type": "http.request", "body": body}], receive), send)


_NUL = "must not contain the NUL character (U+0000)"


def _nul_field(body: bytes) -> str | None:
    """Return where in ``body`` a NUL is (a JSON path or form field), or None."""
    lowered = body.lower()
    if b"\x00" not in body and b"\\u0000" not in lowered and b"%00" not in body:
        return None
    try:
        return _nul_path(json.loads(body), "")
    except (ValueError, UnicodeDecodeError):
        pass
    for name, value in parse_qsl(body.decode("latin-1"), keep_blank_values=True):
        if "\x00" in value or "\x00" in name:
            return name
    return "body" if b"\x00" in body else None


def _nul_path(value: Any, path: str) -> str | None:
    if isinstance(value, str):
        return (path or "body") if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                return where
            found = _nul_path(item, where)
            if found:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _nul_path(item, f"{path}.{index}" if path else str(index))
            if found:
                return found
    return None


def _replay(messages: list[Any], then: Any = None) -> Any:
    pending = list(messages)

    async def receive() -> Any:
        if pending:
            return pending.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


class BodyLimitMiddleware:
    """Refuse bodies over a path's size limit (413) or of a media type it does not take (415).

    ``policy(path)`` gives the limit in bytes and the accepted media types. The size is
    checked against Content-Length first and against the bytes actually received as well,
    so a chunked upload cannot slip past the limit.
    """

    def __init__(self, app: Any, *, policy: BodyPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        max_bytes, media_types = self.policy(scope["path"])
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type not in media_types:
            accepted = " or ".join(sorted(media_types))
            await _send_error(
                send,
                415,
                f"content-type {media_type or '(none)'} is not supported: send {accepted}",
            )
            return
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            await _send_error(send, 413, f"body is {declared} bytes; the limit is {max_bytes}")
            return
        received = 0
        too_large = False

        async def limited_receive() -> Any:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    # Hand the app an empty end of body; what it answers is dropped below.
                    too_large = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def guarded_send(message: Any) -> None:
            if not too_large:
                await send(message)

        await self.app(scope, limited_receive, guarded_send)
        if too_large:
            await _send_error(send, 413, f"body exceeds the limit of {max_bytes} bytes")


async def _send_error(send: Any, status: int, detail: str, field: str | None = None) -> None:
    body = json.dumps(error_body(status, detail, field)).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestMetricsMiddleware:
    """Counts requests by route template (never the raw path, so labels stay bounded)."""

    def __init__(self, app: Any, *, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            metrics.HTTP_REQUESTS.labels(
                service=self.service, method=scope["method"], route=template, status=str(status)
            ).inc()
            metrics.HTTP_SECONDS.labels(service=self.service, route=template).observe(
                time.perf_counter() - started
            )


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
