"""Support-system webhooks mapped to touchpoint events: Zendesk and Freshdesk.

Both may deliver out of order (a `solved` before the `created` it follows); events keep the
vendor's own timestamps and the scorer orders them by ``occurred_at``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from shared import signatures
from shared.errors import PermanentError
from shared.events import Channel, TicketPriority

# A public reply by an agent; the scorer takes a ticket's earliest as its first response.
AGENT_REPLIED: Final = "ticket.agent_replied"


@dataclass(frozen=True)
class TicketChange:
    """One support-system event in cxloop's terms; ``key`` names it for idempotency."""

    key: str
    type: str
    ticket_id: str
    customer_id: str
    channel: Channel
    occurred_at: datetime | None
    priority: TicketPriority | None = None
    status: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)


class UnsupportedEvent(Exception):
    """A well-formed event cxloop has no use for; acknowledged and ignored."""


class MalformedEvent(PermanentError):
    """An event that lacks what cxloop needs; ``field`` names the field (a dotted path)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}", field=field)


def zendesk_signature_valid(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """Check X-Zendesk-Webhook-Signature: base64(HMAC-SHA256(secret, timestamp + body))."""
    digest = hmac.new(secret.encode(), timestamp.encode() + body, hashlib.sha256).digest()
    return signatures.matches(base64.b64encode(digest).decode(), signature)


# A signed request older (or newer) than this is a replay, or a clock badly off: refused.
ZENDESK_TOLERANCE: Final = timedelta(minutes=5)


def zendesk_timestamp_offset(timestamp: str, now: datetime) -> timedelta | None:
    """Return how far X-Zendesk-Webhook-Signature-Timestamp is from ``now`` (ISO 8601 or
    unix seconds), or None when it is not a timestamp with a zone."""
    try:
        at = (
            datetime.fromtimestamp(int(timestamp), UTC)
            if timestamp.isdigit()
            else datetime.fromisoformat(timestamp)
        )
    except (ValueError, OverflowError, OSError):
        return None
    if at.tzinfo is None:
        return None
    return abs(now - at)


_ZENDESK_CHANNELS: Final = {
    "email": Channel.EMAIL, "web": Channel.WEB, "web_form": Channel.WEB,
    "chat": Channel.CHAT, "native_messaging": Channel.CHAT, "voice": Channel.CALL_CENTER,
    "phone": Channel.CALL_CENTER, "sms": Channel.SMS, "mobile": Channel.IN_APP,
    "mobile_sdk": Channel.IN_APP, "twitter": Channel.SOCIAL, "facebook": Channel.SOCIAL,
}  # fmt: skip
_DONE: Final = {"SOLVED", "CLOSED"}


def _need(mapping: Any, name: str, where: str) -> Any:
    if not isinstance(mapping, dict) or mapping.get(name) in (None, ""):
        raise MalformedEvent(f"{where}.{name}", "is required")
    return mapping[name]


def _time(value: Any, where: str) -> datetime | None:
    if value in (None, ""):
        return None
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise MalformedEvent(where, f"is not an ISO 8601 time: {value!r}") from None
    if moment.tzinfo is None:
        raise MalformedEvent(where, f"has no UTC offset: {value!r}")
    return moment


def _priority(value: Any) -> TicketPriority | None:
    try:
        return TicketPriority(str(value).lower()) if value else None
    except ValueError:
        return None


def from_zendesk(body: dict[str, Any]) -> TicketChange:
    """Map a Zendesk ticket event (event-subscription webhook) to a ticket change."""
    kind = str(_need(body, "type", "body")).removeprefix("zen:event-type:")
    event_id = str(_need(body, "id", "body"))
    detail = _need(body, "detail", "body")
    ticket_id = str(_need(detail, "id", "detail"))
    requester = str(_need(detail, "requester_id", "detail"))
    via = detail.get("via") or {}
    base = TicketChange(
        key=event_id,
        type=kind,
        ticket_id=ticket_id,
        customer_id=f"zendesk:{requester}",
        channel=_ZENDESK_CHANNELS.get(str(via.get("channel", "")).lower(), Channel.OTHER),
        occurred_at=_time(body.get("time"), "time")
        or _time(detail.get("updated_at"), "detail.updated_at"),
        priority=_priority(detail.get("priority")),
        status=str(detail.get("status") or "").lower() or None,
    )
    event = body.get("event") or {}
    if kind == "ticket.created":
        return base
    if kind == "ticket.status_changed":
        current = str(event.get("current") or detail.get("status") or "").upper()
        previous = str(event.get("previous") or "").upper()
        if current in _DONE:
            kind = "ticket.resolved"
        elif previous in _DONE:
            kind = "ticket.reopened"
        return replace(base, type=kind, status=current.lower() or None)
    if kind == "ticket.priority_changed":
        return replace(base, priority=_priority(event.get("current")) or base.priority)
    if kind == "ticket.comment_added":
        comment = event.get("comment") or {}
        author = comment.get("author") or {}
        if comment.get("is_public") and author.get("is_staff"):
            return replace(base, type=AGENT_REPLIED)
    raise UnsupportedEvent(kind)


_FRESHDESK_STATUS: Final = {2: "open", 3: "pending", 4: "resolved", 5: "closed"}
_FRESHDESK_PRIORITY: Final = {1: TicketPriority.LOW, 2: TicketPriority.NORMAL,
                              3: TicketPriority.HIGH, 4: TicketPriority.URGENT}  # fmt: skip
_FRESHDESK_SOURCE: Final = {1: Channel.EMAIL, 2: Channel.WEB, 3: Channel.CALL_CENTER,
                            7: Channel.CHAT, 9: Channel.WEB, 10: Channel.EMAIL}  # fmt: skip
_FRESHDESK_EVENTS: Final = {"created": "ticket.created", "agent_replied": AGENT_REPLIED,
                            "reopened": "ticket.reopened"}  # fmt: skip


def _int(value: Any, where: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise MalformedEvent(where, f"must be a number, not {value!r}") from None


def from_freshdesk(body: dict[str, Any]) -> TicketChange:
    """Map a Freshdesk automation webhook to a ticket change.

    The body is the ticket (at the top level, or under ``ticket`` or ``freshdesk_webhook``)
    with an optional ``event``: created, updated (the default), agent_replied or reopened.
    """
    ticket = body.get("ticket") or body.get("freshdesk_webhook") or body
    ticket_id = str(_need(ticket, "id", "ticket"))
    requester = str(_need(ticket, "requester_id", "ticket"))
    status = _int(_need(ticket, "status", "ticket"), "ticket.status")
    updated = _time(ticket.get("updated_at"), "ticket.updated_at")
    created = _time(ticket.get("created_at"), "ticket.created_at")
    event = str(body.get("event") or "updated")
    if event == "updated":
        kind = "ticket.resolved" if status in (4, 5) else "ticket.status_changed"
    elif event in _FRESHDESK_EVENTS:
        kind = _FRESHDESK_EVENTS[event]
    else:
        raise MalformedEvent(
            "event", f"{event!r} is not created, updated, agent_replied or reopened"
        )
    attributes = {
        name: str(ticket[name])
        for name in ("due_by", "fr_due_by", "responder_id", "group_id")
        if ticket.get(name) not in (None, "")
    }
    occurred = created if kind == "ticket.created" else (updated or created)
    return TicketChange(
        # Freshdesk sends no event id: the ticket, the event and its time name it.
        key=f"{ticket_id}:{kind}:{status}:{(occurred.isoformat() if occurred else '')}",
        type=kind,
        ticket_id=ticket_id,
        customer_id=f"freshdesk:{requester}",
        channel=_FRESHDESK_SOURCE.get(
            _int(ticket.get("source", 0), "ticket.source"), Channel.OTHER
        ),
        occurred_at=occurred,
        priority=_FRESHDESK_PRIORITY.get(_int(ticket.get("priority", 2), "ticket.priority")),
        status=_FRESHDESK_STATUS.get(status, str(status)),
        attributes=attributes,
    )
