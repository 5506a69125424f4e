"""SMS surveys through Twilio, with requests signed by Twilio's own library."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from twilio.request_validator import RequestValidator

from shared.events import ResponseSubmitted
from shared.settings import (
    CollectorSettings,
    KafkaSettings,
    SourceSettings,
)
from shared.topics import Topic
from tests.conftest import CollectorFactory
from tests.helpers import read_topic

TOKEN = "twilio-auth-token-for-tests"
PUBLIC = "https://cx.example.com"
PATH = "/v1/sources/twilio/sms"


@pytest.fixture
async def collector(collector_app: CollectorFactory) -> AsyncIterator[httpx.AsyncClient]:
    settings = CollectorSettings(public_url=PUBLIC, fatigue_days=30)
    async with collector_app(settings, SourceSettings(twilio_auth_token=TOKEN)) as client:
        yield client


def twilio_form(body: str, phone: str, sid: str | None = None) -> dict[str, str]:
    """The fields Twilio posts for an inbound SMS (it adds more without notice)."""
    return {
        "ToCountry": "JP",
        "SmsMessageSid": sid or "SM" + secrets.token_hex(16),
        "NumMedia": "0",
        "FromCountry": "JP",
        "SmsSid": sid or "SM" + secrets.token_hex(16),
        "Body": body,
        "To": "+815012345678",
        "NumSegments": "1",
        "MessageSid": sid or "SM" + secrets.token_hex(16),
        "AccountSid": "AC" + "0" * 32,
        "From": phone,
        "ApiVersion": "2010-04-01",
        "SomeFieldTwilioAddsLater": "x",
    }


async def send_sms(
    client: httpx.AsyncClient, form: dict[str, str], *, token: str = TOKEN
) -> httpx.Response:
    signature = RequestValidator(token).compute_signature(PUBLIC + PATH, form)
    return await client.post(
        PATH,
        data=form,
        headers={"X-Twilio-Signature": signature, "Authorization": ""},
    )


async def invite(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    body = {
        "customer_id": "cust-1",
        "phone": "+819011112222",
        "metric": "nps",
        "touchpoint": "support_call",
        "ticket_id": "T-5",
        "locale": "ja-JP",
        **fields,
    }
    r = await client.post("/v1/invitations", json=body)
    assert r.status_code == 201, r.text
    result: dict[str, Any] = r.json()
    return result


class TestReplies:
    async def test_full_width_reply_becomes_a_scored_response(
        self,
        collector: httpx.AsyncClient,
        kafka_settings: KafkaSettings,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        caplog.set_level(logging.DEBUG)
        assert (await invite(collector))["status"] == "open"
        sid = "SM" + secrets.token_hex(16)
        r = await send_sms(collector, twilio_form("９ 最高でした", "+819011112222", sid))
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/xml")
        assert "<Message>ご回答ありがとうございました。</Message>" in r.text

        (record,) = await read_topic(kafka_settings, Topic.RESPONSES, 1)
        event = ResponseSubmitted.model_validate_json(record.value)
        assert (event.score, event.comment, event.metric) == (9, "最高でした", "nps")
        assert (event.customer_id, event.ticket_id, event.touchpoint) == (
            "cust-1",
            "T-5",
            "support_call",
        )
        assert (event.source, event.channel, event.locale) == ("twilio", "sms", "ja-JP")

        retry = await send_sms(collector, twilio_form("９ 最高でした", "+819011112222", sid))
        assert "ご回答ありがとうございました。" in retry.text
        assert len(await read_topic(kafka_settings, Topic.RESPONSES, 2, timeout=3)) == 1
        # Nothing personal reaches the logs, even at DEBUG: not the number, not the words.
        for secret in ("9011112222", "最高でした", TOKEN):
            assert secret not in caplog.text

    async def test_unparseable_reply_is_re_asked_then_answered(
        self, collector: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        await invite(collector, locale="en-US", phone="+14155550100", customer_id="c-en")
        r = await send_sms(collector, twilio_form("it was fine I guess", "+14155550100"))
        assert "Please reply with a number from 0 to 10." in r.text
        r = await send_sms(collector, twilio_form("11", "+14155550100"))
        assert "Please reply with a number" in r.text
        r = await send_sms(collector, twilio_form("I'd say 8", "+14155550100"))
        assert "Thank you for your feedback!" in r.text
        (record,) = await read_topic(kafka_settings, Topic.RESPONSES, 1)
        assert ResponseSubmitted.model_validate_json(record.value).score == 8

    async def test_a_number_with_no_invitation_is_not_scored(
        self, collector: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        r = await send_sms(collector, twilio_form("10", "+819099998888"))
        assert "回答受付中のアンケートはありません" not in r.text  # no invitation: no locale known
        assert "no open survey" in r.text
        assert await read_topic(kafka_settings, Topic.RESPONSES, 1, timeout=2) == []


class TestSignatures:
    async def test_wrong_or_missing_signature_is_refused(
        self, collector: httpx.AsyncClient
    ) -> None:
        form = twilio_form("9", "+819011112222")
        assert (await send_sms(collector, form, token="not-the-token")).status_code == 403
        r = await collector.post(PATH, data=form, headers={"Authorization": ""})
        assert r.status_code == 403

    async def test_a_tampered_body_is_refused(self, collector: httpx.AsyncClient) -> None:
        form = twilio_form("2", "+819011112222")
        signature = RequestValidator(TOKEN).compute_signature(PUBLIC + PATH, form)
        form["Body"] = "10"
        r = await collector.post(PATH, data=form, headers={"X-Twilio-Signature": signature})
        assert r.status_code == 403


class TestOptOutAndFatigue:
    async def test_stop_persists_and_suppresses_until_start(
        self, collector: httpx.AsyncClient
    ) -> None:
        phone = "+819033334444"
        await invite(collector, phone=phone, customer_id="c-stop")
        r = await send_sms(collector, twilio_form("ＳＴＯＰ", phone))
        assert r.status_code == 200
        assert "<Message>" not in r.text
        later = await invite(collector, phone=phone, customer_id="c-other")
        assert (later["status"], later["reason"]) == ("suppressed", "opted_out")
        r = await send_sms(collector, twilio_form("9", phone))
        assert "no open survey" in r.text or "回答受付中" in r.text

        r = await send_sms(collector, twilio_form("START", phone))
        assert "STOP" in r.text
        again = await invite(collector, phone=phone, customer_id="c-third")
        assert again["status"] == "open"

    async def test_help_explains_how_to_stop(self, collector: httpx.AsyncClient) -> None:
        await invite(collector, phone="+819055556666", customer_id="c-help")
        r = await send_sms(collector, twilio_form("HELP", "+819055556666"))
        assert "STOP" in r.text

    async def test_a_customer_surveyed_recently_is_suppressed(
        self, collector: httpx.AsyncClient
    ) -> None:
        first = await invite(collector, customer_id="c-fatigue", phone="+819077778888")
        second = await invite(collector, customer_id="c-fatigue", phone="+819077778899")
        assert first["status"] == "open"
        assert (second["status"], second["reason"]) == ("suppressed", "surveyed_recently")

    async def test_invitation_validation(self, collector: httpx.AsyncClient) -> None:
        r = await collector.post(
            "/v1/invitations",
            json={
                "customer_id": "c",
                "phone": "090-1234-5678",
                "metric": "ces",
                "touchpoint": "x",
            },
        )
        assert r.status_code == 422
        fields = {e["field"] for e in r.json()["errors"]}
        assert fields == {"phone", "scale"}
