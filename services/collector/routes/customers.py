"""``DELETE /v1/customers/{id}``: erase a customer everywhere; ``GET /v1/erasures/{id}``."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import JSONResponse

from services.collector import erasure
from services.collector.deps import ERRORS, HasherDep
from services.collector.schemas import ErasureAccepted, ErasureStatus, ServiceErasure
from services.collector.service import unavailable
from shared.apikeys import Scope
from shared.events import Identifier
from shared.http import EngineDep, require

router = APIRouter(prefix="/v1", tags=["customers"])

CustomerId = Annotated[Identifier, Path(description="The customer id their events carried.")]


@router.delete(
    "/customers/{customer_id}",
    status_code=202,
    response_model=ErasureAccepted,
    summary="Erase a customer's personal data from every service",
    responses=ERRORS,
    dependencies=[require(Scope.CUSTOMERS_ERASE)],
)
async def erase_customer(
    request: Request,
    engine: EngineDep,
    hasher: HasherDep,
    customer_id: CustomerId,
) -> ErasureAccepted | JSONResponse:
    """Erase the customer everywhere, for good.

    The collector deletes their invitations at once and produces `customer.erased`, keyed by
    the customer id, after every event of theirs already sent; the scorer and the alerting
    service erase when they reach it (`GET /v1/erasures/{id}` shows each one's progress).
    An event for the customer that arrives later is stored under a pseudonym, without its
    free text. Answered 202 only once the broker has acknowledged. A 503 means repeat the
    call: the broker did not acknowledge (nothing was erased), or Postgres was lost, which
    at the very commit may leave the other services erasing while the collector's own part
    is undone until the repeat. Erasure cannot reach backups, nor the copies of
    the customer's events in Kafka until they age out (CXLOOP_KAFKA_RETENTION_DAYS).
    """
    try:
        accepted = await erasure.erase_customer(
            engine, request.app.state.producer, hasher, customer_id
        )
    except erasure.NotAcknowledged:
        return unavailable("the broker did not acknowledge the erasure")
    return ErasureAccepted(id=accepted.event.event_id, requested_at=accepted.event.requested_at)


@router.get(
    "/erasures/{erasure_id}",
    response_model=ErasureStatus,
    tags=["customers"],
    summary="Follow an erasure: each service's completion",
    responses={**ERRORS, 404: {"description": "No erasure has this id"}},
    dependencies=[require(Scope.CUSTOMERS_ERASE)],
)
async def erasure_status(engine: EngineDep, erasure_id: UUID) -> ErasureStatus:
    """Report, for the collector, the scorer and the alerting service, whether each has
    erased the customer (`complete`, with when) or not yet (`pending`)."""
    rows = await erasure.status(engine, erasure_id)
    if not rows:
        raise HTTPException(404, f"no erasure {erasure_id}")
    services = [
        ServiceErasure(
            service=str(r["service"]),
            status="pending" if r["completed_at"] is None else "complete",
            completed_at=r["completed_at"],
        )
        for r in rows
    ]
    return ErasureStatus(
        id=erasure_id,
        requested_at=rows[0]["requested_at"],
        complete=all(s.status == "complete" for s in services),
        services=services,
    )
