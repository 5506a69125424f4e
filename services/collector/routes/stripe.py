"""``POST /v1/sources/stripe``: Stripe payment and refund events, signed by Stripe."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.responses import JSONResponse

from services.collector import payments
from services.collector.deps import ERRORS, IngestDep
from services.collector.schemas import Ignored, Submitted
from shared import signatures
from shared.http import signed_by

router = APIRouter(prefix="/v1/sources", tags=["sources"])
PATH = "/v1/sources/stripe"

IGNORED = {
    "model": Ignored,
    "description": "A well-signed event that becomes no order event (another type or mode, "
    "a connected account not allowed, a charge not captured, no customer, an amount its "
    "currency cannot hold, a refund whose amount the event does not say, or one the order "
    "ledger refuses): acknowledged with its reason, not produced, so Stripe does not retry "
    "it",
}
REFUSED = {"description": "Stripe-Signature is missing, malformed, forged or too old"}
_RESPONSES = {k: v for k, v in ERRORS.items() if k not in (401, 403)}


@router.post(
    "/stripe",
    status_code=202,
    response_model=Submitted,
    summary="Stripe webhook: payments and refunds as order events (signed)",
    responses={**_RESPONSES, 200: IGNORED, 400: REFUSED},
    dependencies=[signed_by("Stripe-Signature", status=400)],
)
async def stripe_webhook(
    request: Request,
    ingest: IngestDep,
    signature: Annotated[
        str,
        Header(
            alias="Stripe-Signature",
            description="Stripe's signature of the body: `t=<unix seconds>,v1=<hex>[,v1=…]`.",
        ),
    ],
) -> Submitted | JSONResponse:
    """Turn `charge.succeeded` and `payment_intent.succeeded` into `order.completed`, and
    `charge.refunded` into `order.refunded`.

    The order id is the PaymentIntent's (`pi_…`), else the charge's (`ch_…`); the customer
    is `metadata.cxloop_customer_id`, else the Stripe customer (`cus_…`, behind
    `CXLOOP_SOURCES_STRIPE_CUSTOMER_PREFIX`, `stripe:` by default). A charge counts once
    captured, for its `amount_captured`; a PaymentIntent for its `amount_received`. The
    Stripe event id makes retries harmless and names each refund. Other event types, events
    of the other mode (`CXLOOP_SOURCES_STRIPE_LIVEMODE`) or of a connected account not
    listed, and events that cannot become an order event, are answered 200 `ignored` with a
    reason. Signed with a secret in `CXLOOP_SOURCES_STRIPE_WEBHOOK_SECRETS` (503 while none
    is set). Bodies up to 512 KiB.
    """
    sources = request.app.state.sources
    if not sources.stripe_secrets():
        raise HTTPException(503, payments.NOT_CONFIGURED)
    # Read raw, so that a repeated, empty, non-ASCII or huge header is refused unread.
    header = signatures.single_header(request.scope["headers"], "Stripe-Signature")
    raw = await request.body()
    payments.verify(sources, header, raw)
    return await payments.receive(ingest, sources, raw)
