"""A single event is answered by the lean path (services.collector.lean) exactly as FastAPI's
route answers it: same status, headers and body, for every kind of answer a caller gets."""

from __future__ import annotations

import gc
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

from fastapi import FastAPI
from starlette.middleware import Middleware

from services.collector.app import create_app
from services.collector.lean import LeanSubmitMiddleware
from services.servers import free_port
from shared.apikeys import Scope
from shared.settings import AuthSettings, CollectorSettings, DatabaseSettings, KafkaSettings
from tests.builders import response_payload
from tests.helpers import eventually, lean_answered, secret_key, serving

UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
JSON = {"Content-Type": "application/json"}
# A body, or what makes a fresh chunked one; headers as a list, so a name may repeat.
Body = bytes | Callable[[], AsyncIterator[bytes]]
Sent = tuple[str, Body, list[tuple[str, str]] | dict[str, str]]


def chunked(body: bytes) -> Callable[[], AsyncIterator[bytes]]:
    async def chunks() -> AsyncIterator[bytes]:
        yield body[:10]
        yield body[10:]

    return chunks


def requests(events_only: str) -> list[Sent]:
    """What callers send, right and wrong; ids are fresh per call."""
    event_id = str(uuid.uuid4())
    one = response_payload(event_id=event_id, customer_id="c-1", reasons=["wait_time"])
    body = json.dumps(one).encode()
    other = json.dumps({**one, "score": 3}).encode()
    key = str(uuid.uuid4())  # masked in answers, as every id
    keyed = response_payload()
    keyed_other = json.dumps({**keyed, "score": 3}).encode()
    event = {
        "type": "purchase",
        "customer_id": "c",
        "channel": "web",
        "event_id": str(uuid.uuid4()),
    }
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
        (
            "/v1/responses",
            body,
            [*JSON.items(), ("Idempotency-Key", key), ("Idempotency-Key", key)],
        ),
        ("/v1/responses", chunked(json.dumps(response_payload()).encode()), JSON),
        ("/v1/events", json.dumps(event).encode(), JSON),
        ("/v1/events", json.dumps({**event, "channel": "email"}).encode(), JSON),  # 409
        ("/v1/responses", body, {**JSON, "Authorization": f"Bearer {events_only}"}),  # 403
    ]


# The requests above that the lean path answers; FastAPI's route (or the gate) the rest.
LEAN_TAKES = {0, 1, 2, 3, 4, 5, 11, 12, 15, 16, 17}


Answer = tuple[int, list[Any], bytes]


async def answers(
    app: FastAPI, api_key: str, sent: list[Sent], *, ready: bool = True
) -> tuple[list[Answer], set[int]]:
    """Return the answers to ``sent``, and which of them the lean path gave."""
    async with serving(app, api_key, "collector") as client:
        if ready:
            await eventually(lambda: client.get("/readyz"), lambda r: r.status_code == 200)
        seen = []
        taken = set()
        for n, (path, body, headers) in enumerate(sent):
            before = answered(app)
            content = body if isinstance(body, bytes) else body()
            r = await client.post(path, content=content, headers=headers)
            seen.append((r.status_code, sorted(r.headers.items()), UUID.sub(b"<id>", r.content)))
            if answered(app) > before:
                taken.add(n)
        metrics = (await client.get("/metrics")).text
    assert 'route="/v1/responses",service="collector"' in metrics
    return seen, taken


def answered(app: FastAPI) -> int:
    return lean_answered(app, LeanSubmitMiddleware)


def is_lean(layer: Middleware) -> bool:
    return layer.cls is cast(Any, LeanSubmitMiddleware)


async def scoped_key(database_url: str, scope: Scope) -> str:
    return await secret_key(database_url, scope, "helpdesk")


def build(
    kafka: KafkaSettings, database_url: str, auth: AuthSettings, broker_wait: float = 5
) -> FastAPI:
    return create_app(
        kafka=kafka,
        database=DatabaseSettings(url=database_url),
        auth=auth,
        settings=CollectorSettings(reason_codes=["wait_time"], broker_wait_seconds=broker_wait),
    )


async def test_the_lean_path_answers_as_the_route_does(
    kafka_settings: KafkaSettings, database_url: str, auth: AuthSettings, api_key: str
) -> None:
    events_only = await scoped_key(database_url, Scope.EVENTS_WRITE)
    lean = build(kafka_settings, database_url, auth)
    assert any(is_lean(m) for m in lean.user_middleware)
    plain = build(kafka_settings, database_url, auth)
    plain.user_middleware = [m for m in plain.user_middleware if not is_lean(m)]

    lean_answers, lean_took = await answers(lean, api_key, requests(events_only))
    plain_answers, plain_took = await answers(plain, api_key, requests(events_only))

    statuses = [status for status, _, _ in lean_answers]
    assert statuses == [
        *(202, 202, 409, 202, 409, 422, 422, 422, 422, 422, 422, 202, 202, 422),
        *(202, 202, 202, 409, 403),
    ]
    assert lean_answers == plain_answers
    assert lean_took == LEAN_TAKES
    assert plain_took == set()


async def test_the_lean_path_answers_a_broker_outage_as_the_route_does(
    database_url: str, auth: AuthSettings, api_key: str
) -> None:
    down = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", produce_timeout_seconds=1)
    sent: list[Sent] = [("/v1/responses", json.dumps(response_payload()).encode(), JSON)]
    lean = build(down, database_url, auth, broker_wait=0)
    plain = build(down, database_url, auth, broker_wait=0)
    plain.user_middleware = [m for m in plain.user_middleware if not is_lean(m)]

    lean_answers, lean_took = await answers(lean, api_key, sent, ready=False)
    plain_answers, _ = await answers(plain, api_key, sent, ready=False)

    ((status, headers, _),) = lean_answers
    assert status == 503
    assert "retry-after" in dict(headers)
    assert lean_answers == plain_answers
    assert lean_took == {0}


async def test_an_in_process_collector_keeps_cpythons_gc_thresholds(
    kafka_settings: KafkaSettings, database_url: str, auth: AuthSettings, api_key: str
) -> None:
    # Only a service's own process tunes its GC (shared.runtime.own_gc): in a test run, what
    # a test sees must not depend on which test started a service first.
    async with serving(build(kafka_settings, database_url, auth), api_key, "collector") as client:
        await eventually(lambda: client.get("/readyz"), lambda r: r.status_code == 200)
        assert gc.get_threshold() == (700, 10, 10)
