"""A single event is answered by the lean path (services.collector.lean) exactly as FastAPI's
route answers it: same status, headers and body, for every kind of answer a caller gets."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, cast

from fastapi import FastAPI
from starlette.middleware import Middleware

from services.collector.app import create_app
from services.collector.lean import LeanSubmitMiddleware
from shared.settings import AuthSettings, CollectorSettings, DatabaseSettings, KafkaSettings
from tests.builders import response_payload
from tests.helpers import eventually, serving

UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
JSON = {"Content-Type": "application/json"}


def requests() -> list[tuple[str, bytes, dict[str, str]]]:
    """What callers send, right and wrong; ids are fresh per call."""
    event_id = str(uuid.uuid4())
    one = response_payload(event_id=event_id, customer_id="c-1", reasons=["wait_time"])
    body = json.dumps(one).encode()
    other = json.dumps({**one, "score": 3}).encode()
    key = str(uuid.uuid4())  # masked in answers, as every id
    keyed = response_payload()
    keyed_other = json.dumps({**keyed, "score": 3}).encode()
    return [
        ("/v1/responses", body, JSON),
        ("/v1/responses", body, JSON),  # duplicate
        ("/v1/responses", other, JSON),  # same event_id, other body: 409
        ("/v1/responses", json.dumps(keyed).encode(), {**JSON, "Idempotency-Key": key}),
        ("/v1/responses", keyed_other, {**JSON, "Idempotency-Key": key}),
        ("/v1/responses", json.dumps(response_payload(reasons=["nope"])).encode(), JSON),
        ("/v1/responses", json.dumps(response_payload(score=11, scroe=1)).encode(), JSON),
        ("/v1/responses", b'{"metric": "nps",', JSON),
        ("/v1/responses", b"[1, 2]", JSON),
        ("/v1/responses", b"", JSON),
        ("/v1/responses", body, {**JSON, "Idempotency-Key": "k" * 256}),
        ("/v1/responses", body, {"Content-Type": "application/json; charset=utf-8"}),
        (
            "/v1/events",
            b'{"type": "ticket.created", "ticket_id": "T-1", "customer_id": "c", '
            b'"channel": "email"}',
            JSON,
        ),
        ("/v1/events", b'{"type": "Ticket Created!", "customer_id": "c", "channel": "web"}', JSON),
    ]


async def answers(app: FastAPI, api_key: str) -> list[tuple[int, list[Any], bytes]]:
    async with serving(app, api_key, "collector") as client:
        await eventually(lambda: client.get("/readyz"), lambda r: r.status_code == 200)
        seen = []
        for path, body, headers in requests():
            r = await client.post(path, content=body, headers=headers)
            seen.append((r.status_code, sorted(r.headers.items()), UUID.sub(b"<id>", r.content)))
        metrics = (await client.get("/metrics")).text
    assert 'route="/v1/responses",service="collector",status="202"' in metrics
    return seen


def is_lean(layer: Middleware) -> bool:
    return layer.cls is cast(Any, LeanSubmitMiddleware)


def build(kafka: KafkaSettings, database_url: str, auth: AuthSettings) -> FastAPI:
    return create_app(
        kafka=kafka,
        database=DatabaseSettings(url=database_url),
        auth=auth,
        settings=CollectorSettings(reason_codes=["wait_time"]),
    )


async def test_the_lean_path_answers_as_the_route_does(
    kafka_settings: KafkaSettings, database_url: str, auth: AuthSettings, api_key: str
) -> None:
    lean = build(kafka_settings, database_url, auth)
    assert any(is_lean(m) for m in lean.user_middleware)
    plain = build(kafka_settings, database_url, auth)
    plain.user_middleware = [m for m in plain.user_middleware if not is_lean(m)]

    lean_answers = await answers(lean, api_key)
    plain_answers = await answers(plain, api_key)

    statuses = [status for status, _, _ in lean_answers]
    assert statuses == [202, 202, 409, 202, 409, 422, 422, 422, 422, 422, 422, 202, 202, 422]
    assert lean_answers == plain_answers
