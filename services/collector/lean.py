"""The lean path of the busiest routes: one event to ``POST /v1/responses`` or ``/v1/events``.

FastAPI's machinery around a route (resolving its dependencies, its exception wrappers, its
router) cost several times what the route itself does per single event (py-spy). The same
requests are answered here, innermost in the middleware stack, so the access log, request
metrics, auth gate, body limits and NUL guard still see them exactly as before. The FastAPI
routes stay registered: they feed OpenAPI, and they answer everything this path does not
take: any request whose body is not a valid payload (so every 422 for a schema error is
FastAPI's own, byte for byte), an unusual ``Idempotency-Key`` header, or a mounted app.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from starlette.responses import Response

from services.collector import service
from services.collector.schemas import EventIn, ResponseIn, Submitted
from shared.http.auth import Requirement, admitted_principal
from shared.http.lean import handled

_IDEMPOTENCY_KEY = b"idempotency-key"
_MAX_KEY_CHARS = 255  # as the routes' Header(max_length=255)


@dataclass(frozen=True)
class LeanRoute:
    """A ``POST`` route answered here: what its FastAPI twin's ``submit_one`` calls, and the
    twin's own :class:`Requirement`, checked again here against the gate's principal."""

    submission: service.Submission
    requirement: Requirement
    source: str = "api"


class LeanSubmitMiddleware:
    """Answer a well-formed single event to the ``routes`` (by path) without FastAPI."""

    def __init__(self, app: Any, *, routes: Mapping[str, LeanRoute]) -> None:
        self.app = app
        self.routes = dict(routes)
        # How many requests this path answered (the rest went on to FastAPI): what shows a
        # test that it, not the route behind it, gave an answer.
        self.answered = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if route is None or scope["method"] != "POST" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        received: list[Any] = []
        body = await _read_body(receive, received)
        if body is None:  # a disconnect (or any other message) before the whole body
            await self.app(scope, _replay_messages(received, receive), send)
            return
        replay = _replay(body, receive)
        principal = admitted_principal(scope, route.requirement)
        idempotency_key, usual = _idempotency_key(scope["headers"])
        payload = _payload(body, route, scope["headers"]) if usual and principal else None
        if payload is None or principal is None:
            await self.app(scope, replay, send)
            return
        self.answered += 1
        answer: Submitted | Response
        try:
            answer = await service.submit_one(
                scope["app"].state.ingest,
                payload,
                route.submission,
                source=route.source,
                idempotency_key=idempotency_key,
                caller=principal.caller,
            )
        except Exception as exc:
            answer = await handled(scope, replay, exc)
        response: Response
        if isinstance(answer, Submitted):
            # What FastAPI sends for the route's response_model and status_code.
            response = Response(
                answer.model_dump_json(by_alias=True).encode(),
                status_code=202,
                media_type="application/json",
            )
        else:
            response = answer
        await response(scope, replay, send)


async def _read_body(receive: Any, received: list[Any]) -> bytes | None:
    """Return the whole body, or None if a message other than ``http.request`` (a
    disconnect) came first: never a partial body. Every message read is kept in
    ``received``, to hand on unchanged."""
    chunks = []
    while True:
        message = await receive()
        received.append(message)
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay_messages(messages: list[Any], receive: Any) -> Any:
    """A ``receive`` that gives ``messages`` again, in order, then reads on."""
    pending = list(messages)

    async def replay() -> Any:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replay() -> Any:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _idempotency_key(headers: list[tuple[bytes, bytes]]) -> tuple[str | None, bool]:
    """Return the ``Idempotency-Key`` and whether it is one the lean path may take: absent,
    or once with 1 to 255 characters. Anything else goes to FastAPI, which answers it."""
    values = [value for name, value in headers if name.lower() == _IDEMPOTENCY_KEY]
    if not values:
        return None, True
    key = values[0].decode("latin-1")
    return key, len(values) == 1 and 0 < len(key) <= _MAX_KEY_CHARS


def _payload(
    body: bytes, route: LeanRoute, headers: list[tuple[bytes, bytes]]
) -> ResponseIn | EventIn | None:
    """Return the body validated as FastAPI would validate it, or None for anything that is
    not a JSON object of a valid payload (FastAPI then answers it, with its own 422)."""
    content_types = [value for name, value in headers if name.lower() == b"content-type"]
    if not body or len(content_types) != 1:
        return None
    if content_types[0].split(b";")[0].strip().lower() != b"application/json":
        return None
    try:
        # json.loads, as Starlette's Request.json(): what FastAPI validates.
        return route.submission.model.model_validate(json.loads(body), from_attributes=True)
    except (ValueError, ValidationError, RecursionError):
        return None
