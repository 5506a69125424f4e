"""No personal data and no secret in any log line of any service, at DEBUG, as text or JSON.

The three services run as processes on one test's topics and database. Planted personal
data goes through every way in (the JSON API, the widget, an invitation and a Twilio SMS
reply, IVR calls by customer id and by caller number), through requests refused with 422
and 404, through an erasure, and through database errors forced in the collector (a 500),
the scorer and alerting (a failing batch): Postgres quotes the failing row in its error,
and SQLAlchemy the statement's parameters, unless cxloop keeps both out of its logs. The
secrets (the API key, the Twilio token, the privacy hash key, a webhook's whsec_ secret and
receiver URLs with tokens in their paths, which fail because nothing listens) are planted
too.
"""

from __future__ import annotations

import base64
import functools
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from twilio.request_validator import RequestValidator

from services.servers import free_port
from shared.apikeys import KeyKind, Scope, create_key
from shared.kafka import HEADER_DLQ_REASON
from shared.settings import KafkaSettings
from shared.topics import Topic
from tests.builders import response_payload
from tests.helpers import produce, read_topic
from tests.processes import TEST_HASH_KEY, Service, wait_for

TOKEN = "twilio-token-" + secrets.token_hex(8)
WEBHOOK_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
SHOP = "https://shop.example.com"
PUBLIC = "https://cx.example.com"
SMS = "/v1/sources/twilio/sms"


class Planted:
    """Personal data unique to one run, so that any occurrence in a log came from it."""

    def __init__(self) -> None:
        tag = secrets.token_hex(4)
        digits = str(int(tag, 16) % 10**8).zfill(8)
        self.customer = f"cust-pii-{tag}"
        self.boom = f"cust-boom-{tag}"  # the customer whose rows the database refuses
        self.stalled = f"cust-stall-{tag}"  # ... and the one whose rows fail for a while
        self.invited = f"cust-sms-{tag}"
        self.email = f"hana.{tag}@example.com"
        self.phone = f"+8190{digits}"
        self.caller = f"+8180{digits}"
        self.stranger = f"+8170{digits}"  # texts without an invitation
        self.ascii_comment = f"parcel-late-{tag}-never-again"
        self.comment = f"配送が遅すぎる {tag} 二度と頼まない {self.ascii_comment}"
        self.widget_words = f"widget-said-{tag}"
        self.sms_words = f"最悪でした {tag}"

    def strings(self) -> dict[str, str]:
        phones = {p: p.removeprefix("+") for p in (self.phone, self.caller, self.stranger)}
        return {
            "customer id": self.customer,
            "refused customer id": self.boom,
            "stalled customer id": self.stalled,
            "invited customer id": self.invited,
            "email": self.email,
            "comment": self.comment,
            "ASCII comment token": self.ascii_comment,
            "widget comment": self.widget_words,
            "SMS words": self.sms_words,
            **{f"phone {p}": digits for p, digits in phones.items()},
        }


# Not the data's fault (SQLSTATE 55000, object not in prerequisite state), so a consumer
# retries the batch; the detail quotes the row, as Postgres's own errors do.
STALLING_TRIGGER = """
CREATE FUNCTION pii_stall() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.customer_id = 'STALLED' THEN
        RAISE EXCEPTION 'not now' USING ERRCODE = '55000',
            DETAIL = 'Failing row contains (' || NEW.customer_id || ')';
    END IF;
    RETURN NEW;
END $$
"""


class Receivers:
    """A webhook and a Slack receiver with secrets in their URLs, on a port nothing serves,
    so every delivery fails and is logged."""

    def __init__(self, directory: Path) -> None:
        dead = f"http://127.0.0.1:{free_port()}"
        self.webhook_url = f"{dead}/hooks/tok_{secrets.token_hex(12)}"
        self.slack_url = f"{dead}/services/T0PII/B0PII/{secrets.token_urlsafe(18)}"
        self.path = directory / "alerting.yaml"
        self.path.write_text(
            "receivers:\n"
            f"  - {{name: oncall, type: webhook, url: '{self.webhook_url}',"
            " secret_env: PII_WEBHOOK_SECRET}\n"
            f"  - {{name: team, type: slack, url: '{self.slack_url}'}}\n"
            "routes:\n"
            "  - {receiver: oncall, continue: true}\n"
            "  - {receiver: team}\n"
        )


@pytest.fixture
def receivers(tmp_path: Path) -> Receivers:
    return Receivers(tmp_path)


def secrets_of(env: dict[str, str], receivers: Receivers) -> dict[str, str]:
    """The secrets a run's services were given, none of which may reach a log line."""
    found = {
        "API key": env["CXLOOP_API_KEY"],
        "Twilio token": TOKEN,
        "privacy hash key": env["CXLOOP_PRIVACY_HASH_KEY"],
        "webhook secret": WEBHOOK_SECRET,
        "webhook secret's key": WEBHOOK_SECRET.removeprefix("whsec_"),
        "webhook URL's token": receivers.webhook_url.rsplit("/", 1)[1],
        "Slack URL's token": receivers.slack_url.rsplit("/", 1)[1],
    }
    password = make_url(env["CXLOOP_DATABASE_URL"]).password
    if password:
        found["database password"] = password
    return found


@pytest.fixture(params=["text", "json"])
async def services(
    request: pytest.FixtureRequest,
    stack_env: dict[str, str],
    api_key: str,
    receivers: Receivers,
) -> AsyncIterator[dict[str, Service]]:
    env = stack_env | {
        "CXLOOP_LOG_LEVEL": "DEBUG",
        "CXLOOP_LOG_FORMAT": request.param,
        "CXLOOP_SOURCES_TWILIO_AUTH_TOKEN": TOKEN,
        "CXLOOP_COLLECTOR_PUBLIC_URL": PUBLIC,
        "CXLOOP_COLLECTOR_FATIGUE_DAYS": "0",
        "CXLOOP_ALERTING_CONFIG_PATH": str(receivers.path),
        "PII_WEBHOOK_SECRET": WEBHOOK_SECRET,
        # A retry budget spent within a second: each failed delivery is logged as failed.
        "CXLOOP_ALERTING_NOTIFICATION_MAX_AGE_HOURS": "0.0002",
    }
    assert env["CXLOOP_PRIVACY_HASH_KEY"] == TEST_HASH_KEY
    started = {name: Service(name, env, api_key) for name in ("collector", "scorer", "alerting")}
    try:
        for service in started.values():
            await service.start()
        yield started
    finally:
        for service in started.values():
            await service.stop()


async def sms(collector: Service, phone: str, body: str) -> httpx.Response:
    form = {
        "MessageSid": "SM" + secrets.token_hex(16),
        "AccountSid": "AC" + "0" * 32,
        "From": phone,
        "To": "+815012345678",
        "Body": body,
    }
    signature = RequestValidator(TOKEN).compute_signature(PUBLIC + SMS, form)
    async with httpx.AsyncClient(base_url=collector.url, timeout=30) as client:
        return await client.post(SMS, data=form, headers={"X-Twilio-Signature": signature})


def records(lines: list[str], fmt: str) -> list[dict[str, Any]]:
    """The log records in ``lines``: level, logger, message and any exception text."""
    found: list[dict[str, Any]] = []
    for line in lines:
        if fmt == "json":
            found.append(json.loads(line))
            continue
        # date, time, level, service, "logger:", message; other lines continue a record.
        parts = line.split(" ", 5)
        if len(parts) == 6 and parts[2] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            found.append({"level": parts[2], "logger": parts[4].rstrip(":"), "message": parts[5]})
        elif found:
            found[-1]["exception"] = found[-1].get("exception", "") + line + "\n"
    return found


async def consumed(service: Service) -> float:
    async with service.client() as client:
        text = (await client.get("/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("cxloop_consumer_records_total")
    )


async def execute(database_url: str, sql: str) -> None:
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text(sql))
    finally:
        await engine.dispose()


async def publishable_key(database_url: str) -> str:
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            key, _ = await create_key(
                conn,
                name="pii-shop",
                kind=KeyKind.PUBLISHABLE,
                scopes=[Scope.RESPONSES_WRITE],
                sources=["widget"],
                origins=[SHOP],
            )
    finally:
        await engine.dispose()
    return key


async def test_no_planted_personal_data_reaches_any_log_line(
    services: dict[str, Service],
    database_url: str,
    kafka_settings: KafkaSettings,
    receivers: Receivers,
) -> None:
    collector, scorer, alerting = services["collector"], services["scorer"], services["alerting"]
    fmt = collector.env["CXLOOP_LOG_FORMAT"]
    planted = Planted()
    # The database refuses the rows of one customer for good (a constraint), and fails the
    # rows of another for now (an error that is not the data's fault, quoting the row).
    await execute(database_url, STALLING_TRIGGER.replace("STALLED", planted.stalled))
    for table in ("invitations", "responses", "alerts"):
        await execute(
            database_url,
            f"ALTER TABLE {table} ADD CONSTRAINT pii_probe CHECK (customer_id <> '{planted.boom}')",
        )
        await execute(
            database_url,
            f"CREATE TRIGGER pii_stall BEFORE INSERT ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION pii_stall()",
        )
    produced = 0
    async with collector.client() as api:
        answer = response_payload(
            customer_id=planted.customer,
            score=2,
            comment=f"{planted.comment} {planted.email}",
        )
        r = await api.post("/v1/responses", json=answer)
        assert r.status_code == 202, r.text
        produced += 1
        refused = {**answer, "score": 99}
        r = await api.post("/v1/responses", json=refused, params={"customer": planted.customer})
        assert r.status_code == 422, r.text

        invitation = {
            "customer_id": planted.invited,
            "phone": planted.phone,
            "metric": "nps",
            "touchpoint": "support_call",
            "locale": "ja-JP",
        }
        r = await api.post("/v1/invitations", json=invitation)
        assert r.status_code == 201, r.text
        r = await sms(collector, planted.phone, f"3 {planted.sms_words}")
        assert r.status_code == 200, r.text
        produced += 1
        r = await sms(collector, planted.stranger, f"9 {planted.sms_words}")
        assert r.status_code == 200, r.text

        for caller in ({"caller": planted.caller}, {"customer_id": planted.email}):
            call = {"call_id": f"call-{uuid.uuid4()}", "answers": {"survey_result_1": "4"}}
            r = await api.post("/v1/sources/ivr", json=call | caller)
            assert r.status_code == 200, r.text
            produced += 1

        # A database error in a request (a refused value, not an outage): the collector
        # answers 500 and logs it. On a connection of its own, should the server close it.
        async with collector.client() as own:
            r = await own.post("/v1/invitations", json=invitation | {"customer_id": planted.boom})
        assert r.status_code == 500, r.text
        # ... and in batches: the scorer and alerting dead-letter the refused answer, and
        # retry the stalled one, logging the error each time.
        marks = {s.name: len(s.log) for s in (scorer, alerting)}
        for customer in (planted.boom, planted.stalled):
            answer = response_payload(customer_id=customer, score=1, comment=planted.comment)
            r = await api.post("/v1/responses", json=answer)
            assert r.status_code == 202, r.text
            produced += 1
    # A record that fails validation in every consumer (a producer of another version, say).
    poison = response_payload(
        customer_id=planted.customer, score=planted.email, comment=planted.comment
    )
    await produce(kafka_settings, Topic.RESPONSES, [json.dumps(poison).encode()])
    produced += 1

    for service in (scorer, alerting):

        async def tracebacks(s: Service = service) -> list[dict[str, Any]]:
            logged = records(s.log[marks[s.name] :], fmt)
            return [e for e in logged if e["level"] == "ERROR" and "exception" in e]

        await wait_for(tracebacks, bool, timeout=60)
    for table in ("invitations", "responses", "alerts"):
        await execute(database_url, f"ALTER TABLE {table} DROP CONSTRAINT pii_probe")
        await execute(database_url, f"DROP TRIGGER pii_stall ON {table}")
    for service in (scorer, alerting):
        await wait_for(functools.partial(consumed, service), lambda n: n >= produced, timeout=60)

    async with alerting.client() as api:
        r = await api.get("/v1/alerts", params={"customer_id": planted.customer})
        assert r.status_code == 200, r.text
        r = await api.get(f"/v1/alerts/{planted.customer}")
        assert r.status_code in (404, 422), r.text
        r = await api.get("/v1/alerts", params={"status": planted.email})
        assert r.status_code == 422, r.text
    async with scorer.client() as api:
        r = await api.get(f"/v1/nothing/{planted.customer}")
        assert r.status_code == 404, r.text

    # Both receivers were tried (nothing listens), and their failures logged.
    async def failures_logged() -> set[str]:
        logged = records(alerting.log, fmt)
        return {
            receiver
            for e in logged
            if e["logger"] == "services.alerting.outbox" and e["level"] == "ERROR"
            for receiver in ("oncall", "team")
            if f"to {receiver} failed" in e["message"]
        }

    await wait_for(failures_logged, lambda tried: {"oncall", "team"} <= tried, timeout=60)

    widget_key = await publishable_key(database_url)
    async with collector.client() as api:
        api.headers.pop("Authorization")
        answer = response_payload(customer_id=planted.customer, score=3,
                                  comment=f"{planted.widget_words} {planted.phone}")  # fmt: skip
        r = await api.post(
            "/v1/widget/responses", params={"key": widget_key}, json=answer,
            headers={"Origin": SHOP},
        )  # fmt: skip
        assert r.status_code == 202, r.text
    async with collector.client() as api:
        r = await api.delete(f"/v1/customers/{planted.customer}")
        assert r.status_code == 202, r.text
        r = await api.get(f"/v1/erasures/{r.json()['id']}")
        assert r.status_code == 200, r.text

    dead = await read_topic(kafka_settings, Topic.DEAD_LETTERS, 10, timeout=3)
    reasons = [v.decode() for r in dead for k, v in r.headers if k == HEADER_DLQ_REASON]
    assert len(reasons) >= 2, "each consumer dead-letters the record that fails validation"
    for service in services.values():
        await service.stop()  # every line is flushed

    leaks = [
        f"{service.name}: {what} in {line!r}"
        for service in services.values()
        for line in service.log + [f"dead letter reason {r}" for r in reasons]
        for what, value in (planted.strings() | secrets_of(collector.env, receivers)).items()
        if value in _readable(line)
    ]
    assert not leaks, "\n".join(leaks[:20])

    # The run did what it claims: the failures were logged, with their tracebacks.
    collector_log = records(collector.log, fmt)
    assert any(
        "Traceback" in e.get("exception", "") for e in collector_log if e["level"] == "ERROR"
    )
    assert any(SMS in e["message"] for e in collector_log if e["logger"] == "cxloop.access")
    if fmt == "json":
        for service in services.values():
            for line in service.log:
                assert isinstance(json.loads(line), dict), line


def _readable(line: str) -> str:
    """A JSON line as its values read (a \\u escape would hide a comment from ``in``)."""
    try:
        return json.dumps(json.loads(line), ensure_ascii=False)
    except ValueError:
        return line
