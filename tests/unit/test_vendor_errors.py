"""A malformed vendor event is a PermanentError that names its field as an attribute.

The routes no longer read the field back out of the message: the one PermanentError handler
answers 422 with ``exc.field``, so a message may say anything without moving the field.
"""

from __future__ import annotations

from typing import Any

import pytest

from services.collector.sources import ivr, tickets
from shared.errors import PermanentError


class TestTicketEvents:
    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"ticket": {"requester_id": "r", "status": 2}}, "ticket.id"),
            ({"ticket": {"id": 1, "requester_id": "r", "status": "open"}}, "ticket.status"),
            (
                {"ticket": {"id": 1, "requester_id": "r", "status": 2, "created_at": "soon"}},
                "ticket.created_at",
            ),
            ({"ticket": {"id": 1, "requester_id": "r", "status": 2}, "event": "merged"}, "event"),
        ],
    )
    def test_the_field_is_an_attribute(self, body: dict[str, Any], field: str) -> None:
        with pytest.raises(PermanentError) as caught:
            tickets.from_freshdesk(body)
        assert isinstance(caught.value, tickets.MalformedEvent)
        assert caught.value.field == field
        assert str(caught.value).startswith(f"{field} ")


class TestIvrCalls:
    def test_a_malformed_call_is_permanent_and_names_its_field(self) -> None:
        # The parsers raise it (tests/integration/test_ivr_sources.py checks the 422 answers).
        error = ivr.MalformedCall("Details.ContactData.Attributes.customerId", "is required")
        assert isinstance(error, PermanentError)
        assert error.field == "Details.ContactData.Attributes.customerId"
        assert str(error) == "Details.ContactData.Attributes.customerId is required"
