"""Post-call IVR surveys from Amazon Connect and a generic IVR."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from shared.events import ResponseSubmitted
from shared.settings import (
    IvrQuestion,
    KafkaSettings,
    SourceSettings,
)
from shared.topics import Topic
from tests.conftest import CollectorFactory
from tests.helpers import read_topic

SURVEYS = {
    "default": {"survey_result_1": IvrQuestion(metric="nps")},
    "post-call-v2": {
        "survey_result_1": IvrQuestion(metric="nps"),
        "survey_result_2": IvrQuestion(metric="ces", scale=7),
        "survey_result_3": IvrQuestion(metric="csat"),
    },
}


@pytest.fixture
async def collector(collector_app: CollectorFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with collector_app(sources=SourceSettings(ivr_surveys=SURVEYS)) as client:
        yield client


def contact_flow_event(attributes: dict[str, str], contact_id: str | None = None) -> dict[str, Any]:
    """A ContactFlowEvent as Amazon Connect hands it to a Lambda."""
    contact_id = contact_id or str(uuid.uuid4())
    return {
        "Name": "ContactFlowEvent",
        "Details": {
            "ContactData": {
                "Attributes": attributes,
                "Channel": "VOICE",
                "ContactId": contact_id,
                "CustomerEndpoint": {"Address": "+819012345678", "Type": "TELEPHONE_NUMBER"},
                "InitialContactId": contact_id,
                "InitiationMethod": "INBOUND",
                "InstanceARN": "arn:aws:connect:ap-northeast-1:123456789012:instance/abc",
                "PreviousContactId": contact_id,
                "Queue": {"Name": "billing", "ARN": "arn:aws:connect:::queue/q"},
                "SystemEndpoint": {"Address": "+815012345678", "Type": "TELEPHONE_NUMBER"},
            },
            "Parameters": {},
        },
    }


class TestAmazonConnect:
    async def test_each_question_is_a_response_sharing_one_submission(
        self, collector: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        body = contact_flow_event(
            {
                "surveyId": "post-call-v2",
                "customerId": "cust-9",
                "ticketId": "T-3",
                "survey_result_1": "10",
                "survey_result_2": "２",
                "survey_result_3": "9",
            }
        )
        r = await collector.post("/v1/sources/amazon-connect", json=body)
        assert r.status_code == 200, r.text
        result = r.json()
        assert [(x["question"], x["status"]) for x in result["results"]] == [
            ("survey_result_1", "accepted"),
            ("survey_result_2", "accepted"),
            ("survey_result_3", "rejected"),
        ]
        assert result["results"][2]["errors"][0]["detail"] == "score 9 is outside 1–5 for csat"

        records = await read_topic(kafka_settings, Topic.RESPONSES, 2)
        events = sorted(
            (ResponseSubmitted.model_validate_json(r.value) for r in records),
            key=lambda e: e.metric,
        )
        assert [(e.metric, e.score, e.scale) for e in events] == [("ces", 2, 7), ("nps", 10, 10)]
        assert len({e.submission_id for e in events}) == 1
        assert {(e.customer_id, e.ticket_id, e.touchpoint, e.channel) for e in events} == {
            ("cust-9", "T-3", "billing", "call_center")
        }

        again = await collector.post("/v1/sources/amazon-connect", json=body)
        assert [x["status"] for x in again.json()["results"]][:2] == ["duplicate", "duplicate"]

    async def test_the_caller_number_is_never_stored(
        self, collector: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        r = await collector.post(
            "/v1/sources/amazon-connect", json=contact_flow_event({"survey_result_1": "3"})
        )
        assert r.json()["accepted"] == 1
        (record,) = await read_topic(kafka_settings, Topic.RESPONSES, 1)
        assert b"9012345678" not in record.value
        assert ResponseSubmitted.model_validate_json(record.value).customer_id.startswith("caller:")

    async def test_hang_up_and_unknown_survey(self, collector: httpx.AsyncClient) -> None:
        r = await collector.post(
            "/v1/sources/amazon-connect",
            json=contact_flow_event(
                {"surveyId": "post-call-v2", "customerId": "c", "survey_result_1": "8"}
            ),
        )
        statuses = [x["status"] for x in r.json()["results"]]
        assert statuses == ["accepted", "rejected", "rejected"]
        assert "no answer" in r.json()["results"][1]["errors"][0]["detail"]
        r = await collector.post(
            "/v1/sources/amazon-connect",
            json=contact_flow_event(
                {"surveyId": "nope", "customerId": "c", "survey_result_1": "8"}
            ),
        )
        assert r.status_code == 422
        assert r.json()["field"] == "survey"

    async def test_missing_contact_id_is_named(self, collector: httpx.AsyncClient) -> None:
        r = await collector.post(
            "/v1/sources/amazon-connect", json={"Details": {"ContactData": {}}}
        )
        assert r.status_code == 422
        assert r.json()["field"] == "Details.ContactData.ContactId"


class TestGenericIvr:
    async def test_generic_call(
        self, collector: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        r = await collector.post(
            "/v1/sources/ivr",
            json={
                "call_id": "conv-1",
                "customer_id": "cust-1",
                "queue": "support",
                "answers": {"survey_result_1": "6"},
                "occurred_at": "2026-11-22T10:00:00+09:00",
            },
        )
        assert r.status_code == 200, r.text
        (record,) = await read_topic(kafka_settings, Topic.RESPONSES, 1)
        event = ResponseSubmitted.model_validate_json(record.value)
        assert (event.score, event.touchpoint, event.source) == (6, "support", "ivr")
        assert event.occurred_at.isoformat() == "2026-11-22T10:00:00+09:00"

    async def test_unknown_fields_and_missing_customer(self, collector: httpx.AsyncClient) -> None:
        r = await collector.post(
            "/v1/sources/ivr", json={"call_id": "c", "answers": {"q": "1"}, "dtmf": 1}
        )
        assert r.status_code == 422
        assert r.json()["field"] == "dtmf"
        r = await collector.post("/v1/sources/ivr", json={"call_id": "c", "answers": {"q": "1"}})
        assert r.status_code == 422
        assert r.json()["field"] == "customer_id"
