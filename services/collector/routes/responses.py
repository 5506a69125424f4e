"""``POST /v1/responses`` and ``/v1/responses/batch``: survey answers from any keyed caller."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.collector import service
from services.collector.deps import ERRORS, BatchIn, IdempotencyKey, IngestDep, check_batch_size
from services.collector.schemas import BatchResult, ResponseIn, Submitted
from shared.apikeys import Scope
from shared.http import require

router = APIRouter(prefix="/v1", tags=["responses"])


@router.post(
    "/responses",
    status_code=202,
    response_model=Submitted,
    summary="Submit one NPS, CSAT or CES answer",
    responses=ERRORS,
    dependencies=[require(Scope.RESPONSES_WRITE, "api")],
)
async def submit_response(
    payload: ResponseIn, ingest: IngestDep, idempotency_key: IdempotencyKey = None
) -> Submitted | JSONResponse:
    """Accept one answer; 202 only once Kafka has acknowledged it.

    A repeat of an `event_id` (or `Idempotency-Key`) within the window is answered 202 with
    `status: duplicate` and is not produced again. A 503 means nothing was stored.
    """
    return await service.submit_one(
        ingest, payload, service.RESPONSES, source="api", idempotency_key=idempotency_key
    )


@router.post(
    "/responses/batch",
    response_model=BatchResult,
    summary="Submit up to 500 answers at once",
    responses=ERRORS,
    dependencies=[require(Scope.RESPONSES_WRITE, "api")],
)
async def submit_responses(
    body: BatchIn, ingest: IngestDep, idempotency_key: IdempotencyKey = None
) -> BatchResult | JSONResponse:
    """Validate each answer on its own and produce the valid ones.

    The result lists every item in order: `accepted`, `duplicate`, `rejected` (with every
    bad field named) or `unavailable`. If any item is unavailable the answer is 503 with
    the same body: resend the batch, and what was stored comes back `duplicate`.
    """
    check_batch_size(body, ingest)
    result = await service.submit_batch(
        ingest, body.items, service.RESPONSES, source="api", idempotency_key=idempotency_key
    )
    return service.batch_response(result)
