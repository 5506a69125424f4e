"""Support-system webhooks: Zendesk (signed) and Freshdesk (a per-source token)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.responses import JSONResponse

from services.collector import metrics
from services.collector.deps import ERRORS, IngestDep
from services.collector.schemas import Submitted
from services.collector.service import Ingest, produce_one
from services.collector.sources import tickets
from shared import signatures
from shared.apikeys import Scope
from shared.events import TouchpointEvent, utcnow
from shared.http import FieldErrors, JsonBodyError, load_json, require, signed_by

router = APIRouter(prefix="/v1/sources", tags=["sources"])

IGNORED = {"description": "A well-formed event cxloop does not use: acknowledged, not produced"}


async def _json_body(request: Request, source: str) -> tuple[bytes, dict[str, Any]]:
    raw = await request.body()
    try:
        body = load_json(raw)
    except JsonBodyError:
        metrics.REJECTED.labels(source=source, reason="validation").inc()
        raise
    if not isinstance(body, dict):
        raise FieldErrors([{"field": "body", "detail": "must be a JSON object"}])
    return raw, body


async def _submit(
    ingest: Ingest, body: dict[str, Any], source: str, mapper: Any
) -> Submitted | JSONResponse:
    try:
        change: tickets.TicketChange = mapper(body)
    except tickets.UnsupportedEvent as exc:
        metrics.REJECTED.labels(source=source, reason="unsupported").inc()
        return JSONResponse({"status": "ignored", "detail": f"{exc} is not used"}, status_code=200)
    except tickets.MalformedEvent:
        # A PermanentError: answered 422 naming its field, as every one is.
        metrics.REJECTED.labels(source=source, reason="validation").inc()
        raise
    event_id, key = ingest.resolve_event_id(source, None, change.key)
    received_at = utcnow()
    event = TouchpointEvent(
        event_id=event_id,
        occurred_at=change.occurred_at or received_at,
        received_at=received_at,
        source=source,
        channel=change.channel,
        customer_id=change.customer_id,
        type=change.type,
        ticket_id=change.ticket_id,
        priority=change.priority,
        status=change.status,
        attributes=change.attributes,
    )
    return await produce_one(ingest, event, key, source=source)


@router.post(
    "/zendesk",
    status_code=202,
    response_model=Submitted,
    summary="Zendesk ticket-event webhook (signed)",
    responses={**ERRORS, 200: IGNORED, 403: {"description": "The signature does not match"}},
    dependencies=[
        signed_by("X-Zendesk-Webhook-Signature", "X-Zendesk-Webhook-Signature-Timestamp")
    ],
)
async def zendesk_webhook(
    request: Request,
    ingest: IngestDep,
    signature: Annotated[str | None, Header(alias="X-Zendesk-Webhook-Signature")] = None,
    timestamp: Annotated[str | None, Header(alias="X-Zendesk-Webhook-Signature-Timestamp")] = None,
) -> Submitted | JSONResponse:
    """Map a Zendesk ticket event to a touchpoint event.

    `ticket.created`, `ticket.status_changed` (to solved/closed: `ticket.resolved`; out of
    them: `ticket.reopened`), `ticket.priority_changed`, and public agent comments
    (`ticket.agent_replied`). Other types are acknowledged and ignored. The Zendesk event id
    makes redeliveries harmless; arrival order does not matter.
    """
    secret = request.app.state.sources.zendesk_signing_secret
    if secret is None:
        raise HTTPException(
            503, "the Zendesk source is not configured: set CXLOOP_SOURCES_ZENDESK_SIGNING_SECRET"
        )
    # Read raw, so that a repeated, empty, non-ASCII or huge header is refused unread.
    signature = signatures.single_header(request.scope["headers"], "X-Zendesk-Webhook-Signature")
    timestamp = signatures.single_header(
        request.scope["headers"], "X-Zendesk-Webhook-Signature-Timestamp"
    )
    if signature is None or timestamp is None:
        metrics.REJECTED.labels(source="zendesk", reason="signature").inc()
        raise HTTPException(
            403, "X-Zendesk-Webhook-Signature or its timestamp is missing, repeated or malformed"
        )
    raw = await request.body()
    if not tickets.zendesk_signature_valid(secret.get_secret_value(), timestamp, raw, signature):
        metrics.REJECTED.labels(source="zendesk", reason="signature").inc()
        raise HTTPException(403, "X-Zendesk-Webhook-Signature does not match this request")
    offset = tickets.zendesk_timestamp_offset(timestamp, utcnow())
    if offset is None or offset > tickets.ZENDESK_TOLERANCE:
        metrics.REJECTED.labels(source="zendesk", reason="stale").inc()
        off = "unreadable" if offset is None else f"{offset.total_seconds():.0f}s off"
        raise HTTPException(
            403,
            f"X-Zendesk-Webhook-Signature-Timestamp is {off}; requests signed more than "
            f"{tickets.ZENDESK_TOLERANCE.total_seconds():.0f}s away are refused as replays",
        )
    _, body = await _json_body(request, "zendesk")
    return await _submit(ingest, body, "zendesk", tickets.from_zendesk)


@router.post(
    "/freshdesk",
    status_code=202,
    response_model=Submitted,
    summary="Freshdesk automation webhook (per-source token)",
    responses={**ERRORS, 200: IGNORED},
    dependencies=[require(Scope.EVENTS_WRITE, "freshdesk")],
)
async def freshdesk_webhook(request: Request, ingest: IngestDep) -> Submitted | JSONResponse:
    """Map a Freshdesk ticket to a touchpoint event.

    Freshdesk signs nothing: authenticate with a key made by
    `cxloop keys create --scope events:write --source freshdesk`. Send the ticket's
    placeholders (`id`, `status`, `priority`, `source`, `requester_id`, `created_at`,
    `updated_at`, `due_by`, `fr_due_by`), with `event` = created, updated, agent_replied
    or reopened. Status 4 or 5 on an update becomes `ticket.resolved`.
    """
    _, body = await _json_body(request, "freshdesk")
    return await _submit(ingest, body, "freshdesk", tickets.from_freshdesk)
