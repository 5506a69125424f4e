"""``POST /v1/invitations``: record a survey about to be sent, or learn to skip it."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter

from services.collector import invitations
from services.collector.deps import ERRORS, HasherDep, IngestDep
from services.collector.schemas import InvitationIn, InvitationOut
from shared.apikeys import Scope
from shared.http import EngineDep, require

router = APIRouter(prefix="/v1", tags=["invitations"])


@router.post(
    "/invitations",
    status_code=201,
    response_model=InvitationOut,
    summary="Record a survey invitation (SMS replies are matched to it)",
    responses=ERRORS,
    dependencies=[require(Scope.INVITATIONS_WRITE)],
)
async def create_invitation(
    payload: InvitationIn, engine: EngineDep, ingest: IngestDep, hasher: HasherDep
) -> InvitationOut:
    """Record an invitation before sending it.

    `suppressed` means do not send: the number opted out (`opted_out`), or the customer was
    invited within CXLOOP_COLLECTOR_FATIGUE_DAYS (`surveyed_recently`). A reply from the
    phone is matched to its newest open, unexpired invitation. The number is kept only as a
    keyed hash, and the invitation is purged CXLOOP_COLLECTOR_INVITATION_RETENTION_DAYS after
    it was created. An erased customer is never invited again: 422 naming `customer_id`.
    """
    fatigue = timedelta(days=ingest.settings.fatigue_days)
    async with engine.begin() as conn:
        invitation_id, status, reason, expires_at = await invitations.create(
            conn, payload, fatigue=fatigue, hasher=hasher
        )
    return InvitationOut.model_validate(
        {"id": invitation_id, "status": status, "reason": reason, "expires_at": expires_at}
    )
