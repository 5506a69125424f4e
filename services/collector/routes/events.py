"""``POST /v1/events`` and ``/v1/events/batch``: touchpoint events in generic JSON."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.collector import service
from services.collector.deps import ERRORS, BatchIn, IdempotencyKey, IngestDep, check_batch_size
from services.collector.schemas import BatchResult, EventIn, Submitted
from shared.apikeys import Scope
from shared.http import require

router = APIRouter(prefix="/v1", tags=["events"])


@router.post(
    "/events",
    status_code=202,
    response_model=Submitted,
    summary="Submit one touchpoint event",
    responses=ERRORS,
    dependencies=[require(Scope.EVENTS_WRITE, "api")],
)
async def submit_event(
    payload: EventIn, ingest: IngestDep, idempotency_key: IdempotencyKey = None
) -> Submitted | JSONResponse:
    """Accept one ticket, purchase or custom event; 202 only once Kafka has acknowledged it.

    A repeat of an `event_id` (or `Idempotency-Key`) within the window is answered 202 with
    `status: duplicate` and is not produced again. A 503 means nothing was stored.
    """
    return await service.submit_one(
        ingest, payload, service.EVENTS, source="api", idempotency_key=idempotency_key
    )


@router.post(
    "/events/batch",
    response_model=BatchResult,
    summary="Submit up to 500 touchpoint events at once",
    responses=ERRORS,
    dependencies=[require(Scope.EVENTS_WRITE, "api")],
)
async def submit_events(
    body: BatchIn, ingest: IngestDep, idempotency_key: IdempotencyKey = None
) -> BatchResult | JSONResponse:
    """Validate each event on its own and produce the valid ones.

    The result lists every item in order: `accepted`, `duplicate`, `rejected` (with every
    bad field named) or `unavailable`. If any item is unavailable the answer is 503 with
    the same body: resend the batch, and what was stored comes back `duplicate`.
    """
    check_batch_size(body, ingest)
    result = await service.submit_batch(
        ingest, body.items, service.EVENTS, source="api", idempotency_key=idempotency_key
    )
    return service.batch_response(result)
