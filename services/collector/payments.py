"""Payments from Stripe: a verified webhook becomes an order event, produced once.

The route (``routes/stripe.py``) only reads the request; this checks the signature, maps
the event (``sources/stripe.py``, pure) and produces it through the order ledger. A
well-signed event that cannot become an order event, or that the ledger refuses (a
conflict, a refund over what remains), is acknowledged with 200 and counted: Stripe
retries any other answer for days, and a retry would be refused the same way.
"""

from __future__ import annotations

from typing import Final

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from services.collector import metrics
from services.collector.schemas import Ignored, Submitted
from services.collector.service import BROKER_MISSED, Ingest, Item, Status, unavailable
from services.collector.sources import stripe
from shared.events import TouchpointEvent, utcnow
from shared.http import JsonBodyError, load_json
from shared.settings import SourceSettings

SOURCE: Final = "stripe"
NOT_CONFIGURED: Final = (
    "the Stripe source is not configured: set CXLOOP_SOURCES_STRIPE_WEBHOOK_SECRETS"
)


# Stripe events can be far larger than an API call's body (a charge with its refunds, long
# metadata): the route takes up to this, whatever CXLOOP_COLLECTOR_MAX_BODY_BYTES says.
MAX_BODY_BYTES: Final = 512 * 1024


def verify(sources: SourceSettings, header: str | None, raw: bytes) -> None:
    """Raise the 400 Stripe's documentation expects for a missing, forged or stale signature."""
    if header is None:
        metrics.REJECTED.labels(source=SOURCE, reason="signature").inc()
        raise HTTPException(400, "Stripe-Signature is missing, repeated or malformed")
    check = stripe.check_signature(
        sources.stripe_secrets(), header, raw, utcnow(), sources.stripe_tolerance_seconds
    )
    if check is stripe.Check.STALE:
        metrics.REJECTED.labels(source=SOURCE, reason="stale").inc()
        raise HTTPException(
            400,
            "Stripe-Signature was made more than "
            f"{sources.stripe_tolerance_seconds:.0f}s from now; refused as a replay",
        )
    if check is not stripe.Check.VALID:
        metrics.REJECTED.labels(source=SOURCE, reason="signature").inc()
        raise HTTPException(400, "Stripe-Signature does not match this request")


def ignored(kind: str, reason: str, detail: str) -> JSONResponse:
    """Acknowledge a well-signed event that produced nothing, saying why."""
    metrics.STRIPE_EVENTS.labels(type=kind, outcome=reason).inc()
    return JSONResponse(Ignored(reason=reason, detail=detail).model_dump())


def _type_label(body: object) -> str:
    kind = body.get("type") if isinstance(body, dict) else None
    return kind if kind in stripe.TYPES else "other"


async def receive(ingest: Ingest, sources: SourceSettings, raw: bytes) -> Submitted | JSONResponse:
    """Map a verified Stripe event to an order event and produce it (2xx only once acked)."""
    try:
        body = load_json(raw)
    except JsonBodyError:
        return ignored("other", "malformed", "the body is not JSON")
    kind = _type_label(body)
    try:
        order = stripe.order_of(
            body,
            customer_prefix=sources.stripe_customer_prefix,
            default_channel=sources.stripe_default_channel,
            livemode=sources.stripe_livemode,
            accounts=sources.stripe_connect_accounts,
        )
    except stripe.Ignored as exc:
        return ignored(kind, exc.reason, exc.detail)
    event_id, key = ingest.resolve_event_id(SOURCE, None, order.key)
    received_at = utcnow()
    try:
        event = TouchpointEvent(
            event_id=event_id,
            occurred_at=order.occurred_at or received_at,
            received_at=received_at,
            source=SOURCE,
            channel=order.channel,
            customer_id=order.customer_id,
            type=order.type,
            segments=order.segments,
            order_id=order.order_id,
            refund_id=order.refund_id,
            currency=order.currency,
            amount=order.amount,
        )
    except ValidationError as exc:
        fields = ", ".join(sorted({".".join(map(str, e["loc"])) for e in exc.errors()}))
        return ignored(kind, "malformed", f"not a valid order event: {fields}")
    item = Item(event, key, order_amount_minor=order.order_amount_minor)
    (outcome,) = await ingest.submit([item], source=SOURCE)
    if outcome.status is Status.UNAVAILABLE:
        metrics.STRIPE_EVENTS.labels(type=kind, outcome="unavailable").inc()
        return unavailable(outcome.cause or BROKER_MISSED, outcome.event_id)
    if outcome.error is not None:
        return ignored(kind, outcome.reason or "refused", outcome.error["detail"])
    assert outcome.status in (Status.ACCEPTED, Status.DUPLICATE)
    metrics.STRIPE_EVENTS.labels(type=kind, outcome=outcome.status.value).inc()
    return Submitted(event_id=outcome.event_id, status=outcome.status.value)
