"""A malformed vendor event is a PermanentError that names its field as an attribute.

The routes no longer read the field back out of the message: the one PermanentError handler
answers 422 with ``exc.field``, so a message may say anything without moving the field.
"""

from __future__ import annotations

from typing import Any

import pytest

from services.collector.sources import ivr, tickets
from shared.errors import PermanentError
from shared.privacy import Hasher

HASHER = Hasher(b"test-key")


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
    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"Details": {"ContactData": {}}}, "Details.ContactData.ContactId"),
            (
                {"Details": {"ContactData": {"ContactId": "c1", "Attributes": ["1"]}}},
                "Details.ContactData.Attributes",
            ),
            (
                {"Details": {"ContactData": {"ContactId": "c1", "Attributes": {"q1": "3"}}}},
                "Details.ContactData.Attributes.customerId",
            ),
        ],
        ids=["no-contact", "attributes-not-an-object", "no-customer"],
    )
    def test_amazon_connect_names_the_field(self, body: dict[str, Any], field: str) -> None:
        with pytest.raises(PermanentError) as caught:
            ivr.from_amazon_connect(body, HASHER)
        assert isinstance(caught.value, ivr.MalformedCall)
        assert caught.value.field == field
        assert str(caught.value).startswith(f"{field} ")

    def test_a_generic_call_without_customer_or_caller_names_customer_id(self) -> None:
        call = ivr.GenericIvrCall.model_validate({"call_id": "x1", "answers": {"q1": "3"}})
        with pytest.raises(PermanentError) as caught:
            call.to_call(HASHER)
        assert isinstance(caught.value, ivr.MalformedCall)
        assert caught.value.field == "customer_id"
