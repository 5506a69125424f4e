"""Vendor payloads mangled every way a real network and a careless integrator manage:
truncated, wrong types, huge fields, the wrong encoding, forged or replayed signatures and
stale timestamps. None gets a 5xx, every refusal says why, and nothing refused is produced.

The mutations come from a seeded generator, so a failure names a case that reproduces.
"""

from __future__ import annotations

import json
import random
import secrets
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from twilio.request_validator import RequestValidator

from services.collector.sources import sms
from shared.settings import CollectorSettings, KafkaSettings, SourceSettings
from shared.topics import Topic
from tests.builders_vendors import zendesk_event, zendesk_headers
from tests.conftest import CollectorFactory
from tests.helpers import read_topic

TOKEN = "twilio-token-for-fuzzing-0123"
SECRET = "zendesk-secret-for-fuzzing-0123"
PUBLIC = "https://cx.example.com"
TWILIO = "/v1/sources/twilio/sms"
CASES = 60


@pytest.fixture
async def collector(collector_app: CollectorFactory) -> AsyncIterator[httpx.AsyncClient]:
    sources = SourceSettings(twilio_auth_token=TOKEN, zendesk_signing_secret=SECRET)
    async with collector_app(CollectorSettings(public_url=PUBLIC), sources) as client:
        yield client


def mangle(rng: random.Random, value: Any) -> Any:
    """Return ``value`` with one part replaced by the wrong type, a huge string or junk."""
    if isinstance(value, dict) and value:
        key = rng.choice(sorted(value))
        if rng.random() < 0.2:
            return {k: v for k, v in value.items() if k != key}
        return {**value, key: mangle(rng, value[key])}
    if isinstance(value, list) and value:
        return [mangle(rng, value[0]), *value[1:]]
    return rng.choice(
        [
            None,
            -1,
            2**63,
            3.5,
            True,
            "",
            "x" * rng.choice([300, 20_000, 200_000]),
            "九" * 5000,
            "\u202e\u0301" * 50,
            [],
            {},
            {"nested": [1, "two", None]},
        ]
    )


def truncate(rng: random.Random, raw: bytes) -> bytes:
    return raw[: rng.randint(0, max(0, len(raw) - 1))]


def in_wrong_encoding(text: str) -> bytes:
    return text.encode("shift_jis", errors="replace")


async def accepted_ids(
    response: httpx.Response, statuses: dict[str, int], accepted: set[str]
) -> None:
    statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        body = response.json()
        assert body["detail"], "a refusal says why"
    elif response.headers.get("content-type", "").startswith("application/json"):
        body = response.json()
        if body.get("status") == "accepted":
            accepted.add(body["event_id"])


class TestZendesk:
    async def test_mangled_bodies_are_refused_with_a_reason_and_never_produced(
        self, collector: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        rng = random.Random(11)
        statuses: dict[str, int] = {}
        accepted: set[str] = set()
        for case in range(CASES):
            body = zendesk_event(
                "ticket.created",
                ticket=1000 + case,
                time=datetime.now(UTC).isoformat(),
            )
            how = case % 4
            if how == 0:
                raw = truncate(rng, json.dumps(body).encode())
            elif how == 1:
                raw = json.dumps(mangle(rng, body)).encode()
            elif how == 2:
                raw = json.dumps(
                    {**body, "detail": {**body["detail"], "subject": "件名" * 100_000}},
                    ensure_ascii=False,
                ).encode()
            else:
                raw = in_wrong_encoding(json.dumps(body, ensure_ascii=False) + "配送")
            r = await collector.post(
                "/v1/sources/zendesk", content=raw, headers=zendesk_headers(SECRET, raw)
            )
            await accepted_ids(r, statuses, accepted)
        assert statuses.get("422", 0) >= CASES // 4, statuses
        await _only_these_were_produced(kafka_settings, Topic.TOUCHPOINTS, accepted)

    async def test_forged_replayed_and_stale_requests_are_refused_and_never_produced(
        self, collector: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        body = zendesk_event("ticket.created", ticket=77, time=datetime.now(UTC).isoformat())
        raw = json.dumps(body).encode()
        good = zendesk_headers(SECRET, raw)

        forged = zendesk_headers("not-the-secret-at-all-0123", raw)
        r = await collector.post("/v1/sources/zendesk", content=raw, headers=forged)
        assert r.status_code == 403
        assert "does not match" in r.json()["detail"]

        tampered = raw.replace(b'"HIGH"', b'"URGENT"')
        r = await collector.post("/v1/sources/zendesk", content=tampered, headers=good)
        assert r.status_code == 403

        an_hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
        stale = zendesk_headers(SECRET, raw, timestamp=an_hour_ago)
        r = await collector.post("/v1/sources/zendesk", content=raw, headers=stale)
        assert r.status_code == 403
        assert "refused as replays" in r.json()["detail"]

        unreadable = zendesk_headers(SECRET, raw, timestamp="yesterday-ish")
        r = await collector.post("/v1/sources/zendesk", content=raw, headers=unreadable)
        assert r.status_code == 403

        first = await collector.post("/v1/sources/zendesk", content=raw, headers=good)
        assert first.status_code == 202, first.text
        # A captured request replayed within the window: same event id, so nothing new.
        again = await collector.post("/v1/sources/zendesk", content=raw, headers=good)
        assert again.status_code == 202
        assert again.json() == {"event_id": first.json()["event_id"], "status": "duplicate"}
        await _only_these_were_produced(
            kafka_settings, Topic.TOUCHPOINTS, {first.json()["event_id"]}
        )


def _signed(form: dict[str, str], token: str = TOKEN) -> dict[str, str]:
    return {
        "X-Twilio-Signature": RequestValidator(token).compute_signature(PUBLIC + TWILIO, form),
        "Content-Type": "application/x-www-form-urlencoded",
    }


def _sms(body: str, phone: str = "+819012345678") -> dict[str, str]:
    sid = "SM" + secrets.token_hex(16)
    return {"MessageSid": sid, "SmsSid": sid, "AccountSid": "AC" + "0" * 32, "From": phone,
            "To": "+815012345678", "Body": body, "NumMedia": "0"}  # fmt: skip


class TestTwilio:
    async def test_mangled_signed_forms_never_5xx_and_answer_twiml_or_a_reason(
        self, collector: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        rng = random.Random(12)
        # One open invitation per case, each to its own number: every case can be accepted,
        # and what was produced names the case that produced it.
        phones = {case: f"+8190{case:08d}" for case in range(CASES)}
        for case, phone in phones.items():
            r = await collector.post(
                "/v1/invitations",
                json={
                    "customer_id": f"c-{case}",
                    "phone": phone,
                    "metric": "nps",
                    "touchpoint": "support_call",
                    "locale": "ja-JP",
                },
            )
            assert r.status_code == 201, r.text
            assert r.json()["status"] != "suppressed", r.text
        thanks = sms.twiml(sms.text("thanks", "ja-JP"))
        accepted: set[str] = set()
        for case in range(CASES):
            form = _sms(
                rng.choice(["９", "十点", "nine", "10/10", "I'd say 8", "STOP", "?"]), phones[case]
            )
            how = case % 5
            if how == 0:
                form["Body"] = "配送が遅い" * rng.choice([10, 400, 4000])
            elif how == 1:
                form[rng.choice(sorted(form))] = ""
            elif how == 2:
                del form[rng.choice(["From", "MessageSid", "Body"])]
            elif how == 3:
                form["Body"] = "".join(chr(rng.randint(0x20, 0x2FFF)) for _ in range(200))
            if how == 4:
                # The bytes of Shift_JIS text where UTF-8 is expected, signed as sent.
                raw = urlencode({**form, "Body": "x"}).replace(
                    "Body=x", "Body=" + "".join(f"%{b:02X}" for b in in_wrong_encoding("九点"))
                )
                headers = _signed({**form, "Body": _latin_roundtrip("九点")})
                r = await collector.post(TWILIO, content=raw.encode(), headers=headers)
            else:
                r = await collector.post(TWILIO, content=urlencode(form), headers=_signed(form))
            assert r.status_code < 500, (case, r.text)
            if r.status_code == 200:
                assert r.headers["content-type"].startswith("text/xml")
                # Only the thanks for an answer means "stored"; "no open survey", a re-ask,
                # help and an opt-out's silence are answers too, and produce nothing.
                if r.text == thanks:
                    accepted.add(f"c-{case}")
            else:
                assert r.json()["detail"]
        assert len(accepted) >= CASES // 5, "the fuzz must also reach the accepting path"
        # Read past what should be there, so that anything extra would show.
        records = await read_topic(kafka_settings, Topic.RESPONSES, len(accepted) + 1, timeout=4)
        produced = [json.loads(r.value)["customer_id"] for r in records]
        assert sorted(produced) == sorted(accepted)

    async def test_forged_and_replayed_signatures(
        self, collector: httpx.AsyncClient, kafka_settings: KafkaSettings
    ) -> None:
        form = _sms("9")
        forged = _signed(form, token="someone-else-entirely-012")
        r = await collector.post(TWILIO, content=urlencode(form), headers=forged)
        assert r.status_code == 403
        assert "signature" in r.json()["detail"].lower()
        changed = {**form, "Body": "0"}
        r = await collector.post(TWILIO, content=urlencode(changed), headers=_signed(form))
        assert r.status_code == 403
        records = await read_topic(kafka_settings, Topic.RESPONSES, 1, timeout=3)
        assert records == []


class TestIvr:
    @pytest.mark.parametrize(
        ("path", "valid"),
        [
            ("/v1/sources/ivr", lambda: {
                "call_id": str(uuid.uuid4()), "customer_id": "c-9", "survey": "default",
                "queue": "billing", "answers": {"survey_result_1": "9"}}),
            ("/v1/sources/amazon-connect", lambda: {
                "Name": "ContactFlowEvent",
                "Details": {"ContactData": {
                    "ContactId": str(uuid.uuid4()), "Channel": "VOICE",
                    "CustomerEndpoint": {"Address": "+819012345678", "Type": "TELEPHONE_NUMBER"},
                    "Queue": {"Name": "billing"},
                    "Attributes": {"surveyId": "default", "survey_result_1": "9"}},
                    "Parameters": {}}}),
        ],
    )  # fmt: skip
    async def test_mangled_calls_never_5xx_and_refusals_are_never_produced(
        self,
        collector: httpx.AsyncClient,
        kafka_settings: KafkaSettings,
        path: str,
        valid: Callable[[], dict[str, Any]],
    ) -> None:
        rng = random.Random(13)
        statuses: dict[str, int] = {}
        accepted: set[str] = set()
        ok = await collector.post(path, json=valid())
        assert ok.status_code in (200, 202), ok.text
        for case in range(CASES):
            how = case % 3
            if how == 0:
                raw = truncate(rng, json.dumps(valid()).encode())
            elif how == 1:
                raw = json.dumps(mangle(rng, valid())).encode()
            else:
                raw = in_wrong_encoding(json.dumps(valid(), ensure_ascii=False) + "九")
            r = await collector.post(
                path, content=raw, headers={"Content-Type": "application/json"}
            )
            await accepted_ids(r, statuses, accepted)
            if r.status_code == 200 and "results" in r.json():
                accepted |= {
                    i["event_id"] for i in r.json()["results"] if i["status"] == "accepted"
                }
        assert statuses.get("422", 0) + statuses.get("400", 0) >= CASES // 3, statuses
        first = {i["event_id"] for i in ok.json().get("results", [ok.json()])}
        expected = accepted | first
        records = await read_topic(kafka_settings, Topic.RESPONSES, len(expected) + 1, timeout=4)
        produced = {json.loads(r.value)["event_id"] for r in records}
        assert produced <= expected, "a refused call was produced"


def _latin_roundtrip(text: str) -> str:
    # What a server decoding the Shift_JIS bytes as UTF-8 with replacement would read.
    return in_wrong_encoding(text).decode("utf-8", errors="replace")


async def _only_these_were_produced(kafka: KafkaSettings, topic: Topic, ids: set[str]) -> None:
    records = await read_topic(kafka, topic, len(ids) + 1, timeout=5)
    produced = {json.loads(r.value)["event_id"] for r in records}
    assert produced == ids
