"""Payloads as the vendors send them (shapes from their public documentation)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from datetime import UTC, datetime
from typing import Any


def zendesk_event(
    kind: str,
    *,
    ticket: int = 35436,
    event: dict[str, Any] | None = None,
    status: str = "OPEN",
    time: str = "2026-11-22T01:23:48Z",
) -> dict[str, Any]:
    """A Zendesk event-subscription webhook body for a ticket event."""
    return {
        "type": f"zen:event-type:{kind}",
        "account_id": 12514403,
        "id": str(uuid.uuid4()),
        "time": time,
        "zendesk_event_version": "2022-11-06",
        "subject": f"zen:ticket:{ticket}",
        "detail": {
            "actor_id": "8447388090494",
            "assignee_id": "8447388090494",
            "brand_id": "8447346621310",
            "created_at": "2026-11-22T01:00:00Z",
            "custom_status": "8447388088126",
            "description": "Parcel never arrived",
            "external_id": None,
            "form_id": "8646151517092",
            "group_id": "8447346622974",
            "id": str(ticket),
            "is_public": True,
            "organization_id": "8447346622590",
            "priority": "HIGH",
            "requester_id": "8447388090495",
            "status": status,
            "subject": "配送について",
            "submitter_id": "8447388090495",
            "tags": ["delivery"],
            "type": "INCIDENT",
            "updated_at": time,
            "via": {"channel": "web_form"},
        },
        "event": event or {},
    }


def zendesk_headers(secret: str, body: bytes, timestamp: str | None = None) -> dict[str, str]:
    """Headers Zendesk signs a webhook with: base64(HMAC-SHA256(secret, timestamp + body)),
    signed now unless ``timestamp`` says otherwise."""
    timestamp = timestamp or datetime.now(UTC).isoformat(timespec="seconds")
    digest = hmac.new(secret.encode(), timestamp.encode() + body, hashlib.sha256).digest()
    return {
        "X-Zendesk-Webhook-Signature": base64.b64encode(digest).decode(),
        "X-Zendesk-Webhook-Signature-Timestamp": timestamp,
        "Content-Type": "application/json",
    }


def freshdesk_ticket(**overrides: Any) -> dict[str, Any]:
    """A Freshdesk automation webhook body built from ticket placeholders."""
    ticket: dict[str, Any] = {
        "id": 7001,
        "status": 2,
        "priority": 3,
        "source": 3,
        "requester_id": 5012,
        "responder_id": 88,
        "group_id": 4,
        "created_at": "2026-11-22T09:00:00+09:00",
        "updated_at": "2026-11-22T09:00:00+09:00",
        "due_by": "2026-11-23T09:00:00+09:00",
        "fr_due_by": "2026-11-22T13:00:00+09:00",
    }
    event = overrides.pop("event", "created")
    ticket.update(overrides)
    return {"event": event, "ticket": ticket}


def stripe_id(prefix: str) -> str:
    """A Stripe object id such as ``ch_3Nf…``."""
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def stripe_charge(**overrides: Any) -> dict[str, Any]:
    """A Stripe Charge object (the fields cxloop reads, and a few it does not)."""
    charge: dict[str, Any] = {
        "id": stripe_id("ch"),
        "object": "charge",
        "amount": 1999,
        "amount_captured": 1999,
        "amount_refunded": 0,
        "captured": True,
        "currency": "usd",
        "customer": stripe_id("cus"),
        "livemode": False,
        "metadata": {},
        "paid": True,
        "payment_intent": stripe_id("pi"),
        "refunded": False,
        "status": "succeeded",
    }
    charge.update(overrides)
    if "amount" in overrides and "amount_captured" not in overrides:
        charge["amount_captured"] = charge["amount"]  # captured whole, as by default
    return charge


def stripe_payment_intent(charge: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """The PaymentIntent that made ``charge``."""
    intent: dict[str, Any] = {
        "id": charge["payment_intent"],
        "object": "payment_intent",
        "amount": charge["amount"],
        "amount_received": charge["amount_captured"],
        "currency": charge["currency"],
        "customer": charge["customer"],
        "latest_charge": charge["id"],
        "livemode": False,
        "metadata": charge["metadata"],
        "status": "succeeded",
    }
    intent.update(overrides)
    return intent


def stripe_event(
    kind: str,
    obj: dict[str, Any],
    *,
    previous_attributes: dict[str, Any] | None = None,
    created: int = 1795000000,
    livemode: bool = False,
    account: str | None = None,
) -> dict[str, Any]:
    """A Stripe Event, as its webhook delivers it (test mode by default; ``account``: an
    event of a connected account, Stripe Connect)."""
    data: dict[str, Any] = {"object": obj}
    if previous_attributes is not None:
        data["previous_attributes"] = previous_attributes
    extra = {} if account is None else {"account": account}
    return {
        **extra,
        "id": stripe_id("evt"),
        "object": "event",
        "api_version": "2024-06-20",
        "created": created,
        "data": data,
        "livemode": livemode,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": kind,
    }
