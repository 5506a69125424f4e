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
