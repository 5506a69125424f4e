"""``POST /v1/responses``: one survey answer from any caller holding an API key."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from services.collector import service
from services.collector.schemas import Accepted, ResponseIn
from shared.errors import BrokerUnavailableError
from shared.events import utcnow
from shared.runtime import ProducerHandle

router = APIRouter(prefix="/v1", tags=["responses"])


def get_producer(request: Request) -> ProducerHandle:
    handle: ProducerHandle = request.app.state.producer
    return handle


ProducerDep = Annotated[ProducerHandle, Depends(get_producer)]


@router.post(
    "/responses",
    status_code=202,
    response_model=Accepted,
    summary="Submit one NPS, CSAT or CES answer",
    responses={
        401: {"description": "Missing or invalid API key"},
        413: {"description": "Body larger than CXLOOP_COLLECTOR_MAX_BODY_BYTES"},
        415: {"description": "Body is not application/json"},
        422: {"description": "A field is invalid; every bad field is named"},
        503: {"description": "The broker did not acknowledge; retry with the same event_id"},
    },
)
async def submit_response(payload: ResponseIn, producer: ProducerDep) -> Accepted | JSONResponse:
    """Accept one answer and answer 202 only once Kafka has acknowledged it.

    A 503 means nothing was promised: retry with the `event_id` it returns, and the
    answer is never counted twice.
    """
    event = service.response_event(payload, received_at=utcnow(), source="api")
    try:
        await service.publish(producer, event, source="api")
    except BrokerUnavailableError as exc:
        return service.unavailable(str(exc), event.event_id)
    return Accepted(event_id=event.event_id)
