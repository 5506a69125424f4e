"""Zendesk and Freshdesk events in cxloop's terms."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.collector.sources import tickets
from services.collector.sources.tickets import from_freshdesk, from_zendesk
from tests.builders_vendors import freshdesk_ticket, zendesk_event, zendesk_headers


class TestZendesk:
    def test_created(self) -> None:
        change = from_zendesk(zendesk_event("ticket.created"))
        assert (change.type, change.ticket_id, change.customer_id) == (
            "ticket.created",
            "35436",
            "zendesk:8447388090495",
        )
        assert change.channel == "web"
        assert change.priority == "high"
        assert change.occurred_at == datetime(2026, 11, 22, 1, 23, 48, tzinfo=UTC)

    @pytest.mark.parametrize(
        ("previous", "current", "expected"),
        [
            ("OPEN", "SOLVED", "ticket.resolved"),
            ("PENDING", "CLOSED", "ticket.resolved"),
            ("SOLVED", "OPEN", "ticket.reopened"),
            ("NEW", "OPEN", "ticket.status_changed"),
        ],
    )
    def test_status_changes(self, previous: str, current: str, expected: str) -> None:
        body = zendesk_event(
            "ticket.status_changed", event={"previous": previous, "current": current}
        )
        change = from_zendesk(body)
        assert (change.type, change.status) == (expected, current.lower())

    def test_public_agent_comment_is_a_reply_others_are_ignored(self) -> None:
        staff = {
            "comment": {
                "id": "1",
                "body": "Hi",
                "is_public": True,
                "author": {"id": "2", "is_staff": True, "name": "Sato"},
            }
        }
        assert from_zendesk(zendesk_event("ticket.comment_added", event=staff)).type == (
            "ticket.agent_replied"
        )
        private = {"comment": {**staff["comment"], "is_public": False}}
        with pytest.raises(tickets.UnsupportedEvent):
            from_zendesk(zendesk_event("ticket.comment_added", event=private))

    def test_unused_types_are_ignored_and_broken_ones_named(self) -> None:
        with pytest.raises(tickets.UnsupportedEvent):
            from_zendesk(zendesk_event("ticket.tags_changed"))
        body = zendesk_event("ticket.created")
        del body["detail"]["requester_id"]
        with pytest.raises(tickets.MalformedEvent, match=r"detail\.requester_id is required"):
            from_zendesk(body)

    def test_signature(self) -> None:
        body = b'{"id": "x"}'
        headers = zendesk_headers("s3cret", body)
        sig, ts = (
            headers["X-Zendesk-Webhook-Signature"],
            headers["X-Zendesk-Webhook-Signature-Timestamp"],
        )
        assert tickets.zendesk_signature_valid("s3cret", ts, body, sig)
        assert not tickets.zendesk_signature_valid("other", ts, body, sig)
        assert not tickets.zendesk_signature_valid("s3cret", ts, body + b" ", sig)


class TestFreshdesk:
    def test_created_keeps_sla_deadlines(self) -> None:
        change = from_freshdesk(freshdesk_ticket())
        assert (change.type, change.channel, change.priority) == (
            "ticket.created",
            "call_center",
            "high",
        )
        assert change.attributes["fr_due_by"] == "2026-11-22T13:00:00+09:00"
        assert change.customer_id == "freshdesk:5012"

    @pytest.mark.parametrize(
        ("status", "expected"),
        [(4, "ticket.resolved"), (5, "ticket.resolved"), (3, "ticket.status_changed")],
    )
    def test_updates(self, status: int, expected: str) -> None:
        change = from_freshdesk(
            freshdesk_ticket(event="updated", status=status, updated_at="2026-11-22T15:00:00+09:00")
        )
        assert change.type == expected

    def test_the_same_update_names_the_same_event(self) -> None:
        a = from_freshdesk(freshdesk_ticket(event="updated", status=4))
        b = from_freshdesk(freshdesk_ticket(event="updated", status=4))
        c = from_freshdesk(
            freshdesk_ticket(event="updated", status=4, updated_at="2026-11-23T00:00:00Z")
        )
        assert a.key == b.key != c.key

    def test_bad_fields_are_named(self) -> None:
        with pytest.raises(tickets.MalformedEvent, match=r"ticket\.status must be a number"):
            from_freshdesk(freshdesk_ticket(status="Resolved"))
        with pytest.raises(tickets.MalformedEvent, match="event 'merged'"):
            from_freshdesk(freshdesk_ticket(event="merged"))
