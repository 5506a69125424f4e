"""Post-call IVR surveys: Amazon Connect contact-flow events and a generic IVR JSON.

Which question measures which metric is configured (``CXLOOP_SOURCES_IVR_SURVEYS``): a
survey id maps each question (an Amazon Connect contact attribute such as
``survey_result_1``, or a key of the generic ``answers``) to a metric and scale.
"""

from __future__ import annotations

import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from shared.errors import PermanentError
from shared.events import Identifier, Label
from shared.privacy import Hasher

_NAMESPACE = uuid.UUID("6a1d6f55-2f7e-5d8a-b3c0-0c6f9a7e4e21")


class MalformedCall(PermanentError):
    """The call lacks what cxloop needs; ``field`` names the field (a dotted path)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}", field=field)


@dataclass(frozen=True)
class IvrCall:
    """One finished survey call, whatever the IVR."""

    call_id: str
    survey: str
    customer_id: str
    touchpoint: str
    ticket_id: str | None
    answers: dict[str, str]
    occurred_at: datetime | None
    locale: str | None

    @property
    def submission_id(self) -> uuid.UUID:
        """The id shared by every answer of this call."""
        return uuid.uuid5(_NAMESPACE, self.call_id)


def from_amazon_connect(body: dict[str, Any], hasher: Hasher) -> IvrCall:
    """Read a ContactFlowEvent: DTMF answers are contact attributes named by the survey."""
    details = body.get("Details")
    contact = details.get("ContactData") if isinstance(details, dict) else None
    if not isinstance(contact, dict) or not contact.get("ContactId"):
        raise MalformedCall("Details.ContactData.ContactId", "is required")
    attributes = contact.get("Attributes") or {}
    if not isinstance(attributes, dict):
        raise MalformedCall("Details.ContactData.Attributes", "must be an object")
    endpoint = contact.get("CustomerEndpoint") or {}
    customer = attributes.get("customerId") or (
        hasher.caller(str(endpoint["Address"])) if endpoint.get("Address") else None
    )
    if not customer:
        raise MalformedCall(
            "Details.ContactData.Attributes.customerId",
            "is required when there is no CustomerEndpoint.Address",
        )
    queue = contact.get("Queue") or {}
    return IvrCall(
        call_id=str(contact.get("InitialContactId") or contact["ContactId"]),
        survey=str(attributes.get("surveyId") or "default"),
        customer_id=str(customer),
        touchpoint=str(attributes.get("touchpoint") or queue.get("Name") or "post_call_survey"),
        ticket_id=str(attributes["ticketId"]) if attributes.get("ticketId") else None,
        answers={str(k): str(v) for k, v in attributes.items() if v is not None},
        occurred_at=None,
        locale=str(attributes["locale"]) if attributes.get("locale") else None,
    )


class GenericIvrCall(BaseModel):
    """A finished survey call from any IVR (Genesys, Twilio Studio, an in-house system)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "call_id": "conv-8f2c",
                    "customer_id": "cust-42",
                    "survey": "default",
                    "queue": "billing",
                    "agent": "agent-17",
                    "answers": {"survey_result_1": "3", "survey_result_2": "2"},
                    "occurred_at": "2026-11-22T10:15:00+09:00",
                }
            ]
        },
    )

    call_id: Identifier
    customer_id: Identifier | None = None
    caller: Annotated[str, Field(max_length=32)] | None = Field(
        default=None, description="The caller's number; stored only as a keyed hash."
    )
    survey: Label = "default"
    queue: Label | None = None
    agent: Label | None = None
    ticket_id: Identifier | None = None
    locale: str | None = Field(default=None, max_length=35)
    answers: dict[Label, Annotated[str, Field(max_length=8)]] = Field(
        min_length=1, max_length=32, description="Question → the digits keyed in."
    )
    occurred_at: AwareDatetime | None = None

    def to_call(self, hasher: Hasher) -> IvrCall:
        if self.customer_id is None and self.caller is None:
            raise MalformedCall("customer_id", "is required when there is no caller")
        return IvrCall(
            call_id=self.call_id,
            survey=self.survey,
            customer_id=self.customer_id or hasher.caller(str(self.caller)),
            touchpoint=self.queue or "post_call_survey",
            ticket_id=self.ticket_id,
            answers=dict(self.answers),
            occurred_at=self.occurred_at,
            locale=self.locale,
        )


def digits(value: str) -> int | None:
    """Return the number keyed in (full-width digits allowed), or None for anything else."""
    plain = unicodedata.normalize("NFKC", value).strip()
    return int(plain) if plain.isdigit() and len(plain) <= 2 else None
