"""A score read is answered by the lean path (services.scorer.lean) exactly as FastAPI's route
answers it: same status, headers and body, for every kind of answer a caller gets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.middleware import Middleware

from services.scorer import service
from services.scorer.app import create_app
from services.scorer.consumer import BatchHandler
from services.scorer.lean import LeanQueryMiddleware
from shared.apikeys import Scope
from shared.kafka import Decoded
from shared.settings import AuthSettings, DatabaseSettings, KafkaSettings, ScorerSettings
from tests.builders import response_event
from tests.helpers import database_down, lean_answered, secret_key, serving

# Every answer is computed at this moment, so that a rolling window's `to` is the same in
# both apps' answers.
NOW = datetime.now(UTC).replace(microsecond=0)
FROM = (NOW - timedelta(days=3)).strftime("%Y-%m-%dT%H:00:00Z")
TO = (NOW + timedelta(hours=9)).strftime("%Y-%m-%dT%H:%M:%S") + "%2B09:00"  # NOW, in Tokyo
TOKYO = "%E6%9D%B1%E4%BA%AC"  # 東京

# What callers ask, right and wrong, and whether the lean path answers it (else FastAPI).
ASKED: list[tuple[str, bool]] = [
    ("/v1/scores?metric=nps", True),
    ("/v1/scores?metric=nps&group_by=channel", True),
    ("/v1/scores?metric=nps&window=7d&channel=web&touchpoint=checkout", True),
    (f"/v1/scores?metric=csat&from={FROM}&to={TO}", True),
    (f"/v1/scores?metric=nps&from={FROM}", True),
    ("/v1/scores?metric=ces&scale=7&group_by=touchpoint", True),
    ("/v1/scores?metric=ces", True),  # 422 from the endpoint: no scale for ces
    ("/v1/scores?metric=nps&scale=7", True),  # 422 from the endpoint: nps has no other scale
    ("/v1/scores?metric=nps&metric=csat", True),  # the last value counts
    ("/v1/scores?metric=nps&x=1&from_=2001-01-01T00:00:00Z", True),  # unknown names ignored
    ("/v1/scores?metric=nps&touchpoint=", True),  # an empty filter is a filter
    (f"/v1/scores?metric=nps&location={TOKYO}&group_by=location", True),
    ("/v1/scores?metric=nps&touchpoint=a+b&location=%FF", True),  # a space; U+FFFD
    ("/v1/scores?metric=ces&scale=07&metr%69c=ces", True),  # an encoded name is a name
    (f"/v1/scores?metric=nps&from=2001-01-01T00:00:00Z&from={FROM}", True),  # the last
    ("/v1/scores/timeseries?metric=nps", True),
    ("/v1/scores/timeseries?metric=nps&interval=hour&window=7d", True),
    ("/v1/scores/timeseries?metric=nps&interval=hour&window=90d", True),  # 422: over 31 days
    ("/v1/scores/timeseries?metric=csat&interval=week&channel=sms", True),
    ("/v1/scores?metric=bogus", False),
    ("/v1/scores", False),
    ("/v1/scores?metric=nps&scale=five", False),
    ("/v1/scores?metric=nps&group_by=colour", False),
    ("/v1/scores?metric=nps&from=2026-01-01T00:00:00", False),  # no UTC offset
    (f"/v1/scores?metric=nps&from={TO}&to={FROM}", False),  # refused by api.time_range
    ("/v1/scores?metric=nps&window=", False),
    ("/v1/scores/timeseries?metric=nps&interval=fortnight", False),
    ("/v1/scores?metric=NPS", False),
]


@pytest.fixture(autouse=True)
def frozen_now(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "utcnow", lambda: NOW)


def is_lean(layer: Middleware) -> bool:
    return layer.cls is cast(Any, LeanQueryMiddleware)


def answered(app: FastAPI) -> int:
    return lean_answered(app, LeanQueryMiddleware)


def build(
    kafka: KafkaSettings, database_url: str, auth: AuthSettings, settings: ScorerSettings
) -> FastAPI:
    return create_app(kafka, DatabaseSettings(url=database_url), auth, settings)


def plain(app: FastAPI) -> FastAPI:
    app.user_middleware = [m for m in app.user_middleware if not is_lean(m)]
    return app


Answer = tuple[int, list[tuple[str, str]], bytes]
ROUTES = ("/v1/scores", "/v1/scores/timeseries")


def counted() -> dict[str, float]:
    """The 200s request metrics counted so far, by route template."""
    return {
        route: REGISTRY.get_sample_value(
            "cxloop_http_requests_total",
            {"service": "scorer", "method": "GET", "route": route, "status": "200"},
        )
        or 0.0
        for route in ROUTES
    }


async def answers(
    app: FastAPI, api_key: str, asked: list[str], other_key: str | None = None
) -> tuple[list[Answer], set[int], dict[str, float]]:
    """Return the answers to ``asked`` (then to each again with ``other_key``), which of
    them the lean path gave, and the 200s the request metrics counted meanwhile."""
    at_first = counted()
    async with serving(app, api_key, "scorer") as client:
        seen, taken = [], set()
        keys = [api_key] if other_key is None else [api_key, other_key]
        for n, (path, key) in enumerate((p, k) for k in keys for p in asked):
            before = answered(app)
            r = await client.get(path, headers={"Authorization": f"Bearer {key}"})
            seen.append((r.status_code, sorted(r.headers.items()), r.content))
            if answered(app) > before:
                taken.add(n)
    return seen, taken, {route: n - at_first[route] for route, n in counted().items()}


async def seed(database_url: str) -> None:
    engine = create_async_engine(database_url)
    try:
        at = NOW - timedelta(hours=5)
        answers = [(9, "web", "東京"), (3, "sms", "大阪"), (10, "web", "東京"), (7, "email", None)]
        events = [
            response_event(metric="nps", score=s, channel=c, location=loc, occurred_at=at)
            for s, c, loc in answers
        ] + [
            response_event(metric="csat", scale=5, score=s, channel="sms", occurred_at=at)
            for s in (5, 4, 1)
        ] + [
            response_event(metric="ces", scale=7, score=6, occurred_at=at, touchpoint="返品")
        ]  # fmt: skip
        await BatchHandler(engine)([Decoded(None, e) for e in events])
    finally:
        await engine.dispose()


async def scoped_key(database_url: str, scope: Scope) -> str:
    return await secret_key(database_url, scope, "other")


async def test_the_lean_path_answers_as_the_routes_do(
    kafka_settings: KafkaSettings,
    database_url: str,
    auth: AuthSettings,
    api_key: str,
    scorer_settings: ScorerSettings,
) -> None:
    await seed(database_url)
    writer = await scoped_key(database_url, Scope.RESPONSES_WRITE)
    settings = scorer_settings.model_copy(update={"min_n": 2})
    lean = build(kafka_settings, database_url, auth, settings)
    assert any(is_lean(m) for m in lean.user_middleware)
    fastapi_only = plain(build(kafka_settings, database_url, auth, settings))
    paths = [path for path, _ in ASKED]

    lean_answers, lean_took, lean_counted = await answers(lean, api_key, paths, writer)
    plain_answers, plain_took, plain_counted = await answers(fastapi_only, api_key, paths, writer)

    statuses = [status for status, _, _ in lean_answers]
    assert statuses == [
        *(200, 200, 200, 200, 200, 200, 422, 422, 200, 200, 200, 200, 200, 200, 200),
        *(200, 200, 422, 200),
        *(422,) * 9,
        *(403,) * len(ASKED),  # a key without scores:read: the gate's answer
    ]
    assert lean_answers == plain_answers
    assert lean_took == {n for n, (_, lean_takes) in enumerate(ASKED) if lean_takes}
    assert plain_took == set()
    # Each route's 200s are counted under its template, whoever answered them.
    oks = [path.split("?")[0] for (path, _), s in zip(ASKED, statuses, strict=False) if s == 200]
    assert lean_counted == plain_counted == {route: oks.count(route) for route in ROUTES}
    # The answers hold what was seeded: not two empty answers alike.
    assert b'"n":4' in lean_answers[0][2]
    assert "東京".encode() in lean_answers[11][2]
    assert b'"touchpoint":"a b","location":"\xef\xbf\xbd"' in lean_answers[12][2]


async def test_the_lean_path_answers_the_database_down_as_the_route_does(
    kafka_settings: KafkaSettings,
    database_url: str,
    auth: AuthSettings,
    api_key: str,
    scorer_settings: ScorerSettings,
) -> None:
    asked = ["/v1/scores?metric=nps", "/v1/scores/timeseries?metric=nps"]
    got = []
    for app in (
        build(kafka_settings, database_url, auth, scorer_settings),
        plain(build(kafka_settings, database_url, auth, scorer_settings)),
    ):
        async with serving(app, api_key, "scorer") as client, database_down(app.state):
            seen = []
            for path in asked:
                r = await client.get(path)
                seen.append((r.status_code, sorted(r.headers.items()), r.content))
            got.append((seen, answered(app)))
    (lean_answers, lean_took), (plain_answers, plain_took) = got
    assert [status for status, _, _ in lean_answers] == [503, 503]
    assert lean_answers == plain_answers
    assert (lean_took, plain_took) == (2, 0)
