"""The generic JSON API: ``/v1/responses`` and ``/v1/events``, one at a time or in batches."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.collector import service
from services.collector.deps import ERRORS, BatchIn, IdempotencyKey, IngestDep, check_batch_size
from services.collector.lean import LeanRoute
from services.collector.schemas import BatchResult, EventIn, ResponseIn, Submitted
from shared.apikeys import Principal, Scope
from shared.http import require

router = APIRouter(prefix="/v1")
# The single-event routes, also answered by services.collector.lean without FastAPI.
LEAN: dict[str, LeanRoute] = {}

CONFLICT = {"description": "The Idempotency-Key or event_id was used for a different body"}

_ONE = """\
A repeat of an `event_id` (or `Idempotency-Key`) with the same body within the window is
answered 202 with `status: duplicate` and is not produced again. The same key with a
different body is refused with 409, naming the key; an `Idempotency-Key` belongs to the API
key that sent it, so another caller's equal key is another event. A 503 means nothing was
stored: retry with the same `event_id`."""

_MANY = """\
Each item is validated on its own. The result lists every item in order: `accepted`,
`duplicate`, `rejected` (with every bad field named) or `unavailable`. If any item is
unavailable the answer is 503 with the same body: resend the batch, and what was stored
comes back `duplicate`. Under an `Idempotency-Key` each item is matched by its content, not
its position: a resend in any order answers each item with its own first result, and an
item the batch first sent under that key did not hold is `conflict` (nothing produced; send
it under a new key). An item with its own `event_id` is matched by that."""


def _register(
    path: str,
    tag: str,
    scope: Scope,
    model: type[ResponseIn] | type[EventIn],
    submission: service.Submission,
    what: str,
) -> None:
    # One dependency object, so the route's auth and its `caller` are one call per request.
    authenticated = require(scope, "api")
    auth = [authenticated]

    async def submit_one(
        payload: Any,
        ingest: IngestDep,
        idempotency_key: IdempotencyKey = None,
        caller: Principal = authenticated,
    ) -> Submitted | JSONResponse:
        return await service.submit_one(
            ingest,
            payload,
            submission,
            source="api",
            idempotency_key=idempotency_key,
            caller=caller.caller,
        )

    async def submit_many(
        body: BatchIn,
        ingest: IngestDep,
        idempotency_key: IdempotencyKey = None,
        caller: Principal = authenticated,
    ) -> BatchResult | JSONResponse:
        check_batch_size(body, ingest)
        result = await service.submit_batch(
            ingest,
            body.items,
            submission,
            source="api",
            idempotency_key=idempotency_key,
            caller=caller.caller,
        )
        return service.batch_response(result)

    submit_one.__annotations__["payload"] = model
    LEAN[f"{router.prefix}{path}"] = LeanRoute(submission, authenticated.dependency.requirement)
    router.add_api_route(
        path,
        submit_one,
        methods=["POST"],
        status_code=202,
        response_model=Submitted,
        summary=f"Submit one {what}",
        description=f"Accept one {what}; 202 only once Kafka has acknowledged it.\n\n{_ONE}",
        responses={**ERRORS, 409: CONFLICT},
        dependencies=auth,
        tags=[tag],
        operation_id=f"submit_{tag}",
    )
    router.add_api_route(
        f"{path}/batch",
        submit_many,
        methods=["POST"],
        response_model=BatchResult,
        summary=f"Submit up to 500 of: {what}",
        description=_MANY,
        responses=ERRORS,
        dependencies=auth,
        tags=[tag],
        operation_id=f"submit_{tag}_batch",
    )


_register(
    "/responses",
    "responses",
    Scope.RESPONSES_WRITE,
    ResponseIn,
    service.RESPONSES,
    "NPS, CSAT or CES answer",
)
_register(
    "/events",
    "events",
    Scope.EVENTS_WRITE,
    EventIn,
    service.EVENTS,
    "touchpoint event (ticket, purchase or custom)",
)
