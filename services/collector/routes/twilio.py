"""``POST /v1/sources/twilio/sms``: SMS replies to survey invitations, as Twilio sends them."""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import parse_qsl

from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.responses import Response

from services.collector import invitations, metrics
from services.collector.deps import HasherDep, IngestDep
from services.collector.service import Item, Status
from services.collector.sources import sms, twilio_signature
from shared import signatures
from shared.events import ResponseSubmitted, Segments, score_range, utcnow
from shared.http import EngineDep, signed_by

router = APIRouter(prefix="/v1/sources", tags=["sources"])

SOURCE = "twilio"
_MESSAGE_SID = re.compile(r"^(SM|MM)[0-9a-f]{32}$")


def _twiml(message: str | None = None, status_code: int = 200) -> Response:
    return Response(sms.twiml(message), status_code=status_code, media_type="text/xml")


def _signed_url(request: Request, public_url: str | None) -> str:
    if public_url is None:
        return str(request.url)
    query = f"?{request.url.query}" if request.url.query else ""
    return public_url.rstrip("/") + request.url.path + query


@router.post(
    "/twilio/sms",
    summary="Twilio inbound SMS webhook (TwiML replies)",
    response_class=Response,
    responses={
        200: {"content": {"text/xml": {}}, "description": "TwiML: thanks, a re-ask, or help"},
        403: {"description": "X-Twilio-Signature is missing or wrong"},
        503: {"description": "Not configured, or the broker did not acknowledge"},
    },
    dependencies=[signed_by("X-Twilio-Signature")],
)
async def inbound_sms(
    request: Request,
    engine: EngineDep,
    ingest: IngestDep,
    hasher: HasherDep,
    signature: Annotated[str | None, Header(alias="X-Twilio-Signature")] = None,
) -> Response:
    """Read a reply to a survey invitation and answer in TwiML.

    The reply is matched to the newest open invitation sent to `From`. A score is read as
    people write it ("9 - great", "nine", "10/10", "９", "九"); the rest becomes the comment.
    STOP/START/HELP are honoured and opt-outs kept. A reply with no score is politely
    re-asked. `MessageSid` makes Twilio's retries harmless.
    """
    token = request.app.state.sources.twilio_auth_token
    if token is None:
        raise HTTPException(
            503, "the Twilio source is not configured: set CXLOOP_SOURCES_TWILIO_AUTH_TOKEN"
        )
    # Read raw, so that a repeated, empty, non-ASCII or huge header is refused unread.
    signature = signatures.single_header(request.scope["headers"], "X-Twilio-Signature")
    if signature is None:
        metrics.REJECTED.labels(source=SOURCE, reason="signature").inc()
        raise HTTPException(403, "X-Twilio-Signature is missing, repeated or malformed")
    params = parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
    urls = twilio_signature.candidate_urls(_signed_url(request, ingest.settings.public_url))
    if not twilio_signature.valid(token.get_secret_value(), urls, params, signature):
        metrics.REJECTED.labels(source=SOURCE, reason="signature").inc()
        raise HTTPException(403, "X-Twilio-Signature does not match this request")
    fields = dict(params)
    sid, phone, body = fields.get("MessageSid", ""), fields.get("From", ""), fields.get("Body", "")
    if not _MESSAGE_SID.match(sid) or not phone:
        metrics.REJECTED.labels(source=SOURCE, reason="validation").inc()
        raise HTTPException(400, "MessageSid and From are required")
    # The number is only ever looked up, and kept, as its keyed hash.
    phone_hash = hasher.phone(phone)

    event_id, key = ingest.resolve_event_id(SOURCE, None, sid)
    assert key is not None
    if await ingest.store.was_produced(key):
        # Twilio retried a message whose answer is already in Kafka: thank again, change nothing.
        async with engine.connect() as conn:
            locale = await invitations.locale_for_phone(conn, phone_hash)
        return _twiml(sms.text("thanks", locale))

    keyword = sms.keyword(body)
    async with engine.begin() as conn:
        if keyword is sms.Keyword.STOP:
            await invitations.opt_out(conn, phone_hash, sms.normalise(body).lower())
            return _twiml()
        if keyword is sms.Keyword.START:
            await invitations.opt_in(conn, phone_hash)
        invitation = await invitations.open_for_phone(conn, phone_hash)
        locale = invitation["locale"] if invitation else None
        if keyword is sms.Keyword.START:
            return _twiml(sms.text("resubscribed", locale))
        if keyword is sms.Keyword.HELP:
            return _twiml(sms.text("help", locale))
        if invitation is None:
            metrics.REJECTED.labels(source=SOURCE, reason="no_invitation").inc()
            return _twiml(sms.text("no_survey", locale))
        low, high = score_range(invitation["metric"], invitation["scale"])
        parsed = sms.parse_reply(body, low, high)
        if parsed is None:
            await invitations.note_reask(conn, invitation["id"])
            metrics.REJECTED.labels(source=SOURCE, reason="unparseable").inc()
            return _twiml(sms.text("reask", locale, low=low, high=high))
        now = utcnow()
        event = ResponseSubmitted(
            event_id=event_id,
            occurred_at=now,
            received_at=now,
            source=SOURCE,
            channel=invitation["channel"],
            customer_id=invitation["customer_id"],
            metric=invitation["metric"],
            scale=invitation["scale"],
            score=parsed.score,
            survey_type=invitation["survey_type"],
            touchpoint=invitation["touchpoint"],
            ticket_id=invitation["ticket_id"],
            comment=parsed.comment,
            segments=Segments.model_validate(invitation["segments"]),
            locale=locale,
        )
        (outcome,) = await ingest.submit([Item(event, key)], source=SOURCE)
        if outcome.status is Status.UNAVAILABLE:
            # Rolls back: the invitation stays open for Twilio's retry of this message.
            raise HTTPException(
                503, "the broker did not acknowledge; retry", headers={"Retry-After": "5"}
            )
        await invitations.mark_answered(conn, invitation["id"])
    return _twiml(sms.text("thanks", locale))
