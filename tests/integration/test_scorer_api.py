"""The scorer's query API over events applied as the consumer would apply them."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.scorer.app import create_app
from services.scorer.consumer import BatchHandler
from services.scorer.rebuild import rebuild
from shared.events import TouchpointEvent
from shared.kafka import Decoded
from shared.settings import AuthSettings, DatabaseSettings, KafkaSettings, ScorerSettings
from tests.builders import response_event
from tests.helpers import serving

NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
MIDNIGHT = NOW.replace(hour=0)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def scorer(
    kafka_settings: KafkaSettings,
    database_url: str,
    auth: AuthSettings,
    api_key: str,
    scorer_settings: ScorerSettings,
) -> AsyncIterator[httpx.AsyncClient]:
    settings = scorer_settings.model_copy(update={"min_n": 3})
    app = create_app(kafka_settings, DatabaseSettings(url=database_url), auth, settings)
    async with serving(app, api_key, "scorer") as client:
        yield client


async def apply(engine: AsyncEngine, events: Sequence[Any]) -> None:
    await BatchHandler(engine)([Decoded(None, e) for e in events])


def ticket(kind: str, ticket_id: str, at: datetime, **fields: Any) -> TouchpointEvent:
    return TouchpointEvent.model_validate(
        {
            "event_id": uuid.uuid4(),
            "occurred_at": at,
            "received_at": at,
            "source": "zendesk",
            "channel": fields.pop("channel", "email"),
            "customer_id": "c1",
            "type": kind,
            "ticket_id": ticket_id,
            **fields,
        }
    )


async def get(client: httpx.AsyncClient, path: str, **params: Any) -> Any:
    r = await client.get(path, params=params)
    assert r.status_code == 200, r.text
    return r.json()


class TestScores:
    async def test_group_by_and_minimum_n(
        self, scorer: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        await apply(
            engine,
            [response_event(score=s, channel="web") for s in (10, 9, 2)]
            + [response_event(score=0, channel="sms")],
        )
        body = await get(scorer, "/v1/scores", metric="nps", group_by="channel")
        assert body["n"] == 4
        assert body["insufficient"] is False
        groups = {g["group"]: g for g in body["groups"]}
        assert groups["web"]["score"] == pytest.approx(100 / 3)
        # p = 2/3, d = 1/3: p + d − (p − d)² = 8/9; sqrt(8/9 / 3) = 0.544331; × 196 = 106.689.
        assert groups["web"]["margin"] == pytest.approx(106.689, abs=1e-3)
        assert (groups["sms"]["n"], groups["sms"]["insufficient"]) == (1, True)

    async def test_custom_range_and_daily_series(
        self, scorer: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        await apply(
            engine,
            [
                response_event(score=10, occurred_at=MIDNIGHT - timedelta(days=2, hours=-12)),
                response_event(score=0, occurred_at=MIDNIGHT - timedelta(days=2, hours=-11)),
                response_event(score=9, occurred_at=MIDNIGHT - timedelta(days=1, hours=-12)),
            ],
        )
        # Anchored at midnight: a test run just after 00:00 UTC must see the same days.
        since = (MIDNIGHT - timedelta(days=1, hours=-11)).isoformat()
        assert (await get(scorer, "/v1/scores", metric="nps", **{"from": since}))["n"] == 1
        series = await get(
            scorer, "/v1/scores/timeseries", metric="nps", interval="day", window="7d"
        )
        assert [p["n"] for p in series["points"]] == [2, 1]
        assert all(p["start"].endswith(("T00:00:00Z", "T00:00:00+00:00")) for p in series["points"])
        bad = await scorer.get(
            "/v1/scores", params={"metric": "nps", "from": "2026-11-22T10:00:00"}
        )
        assert bad.status_code == 422
        assert bad.json()["field"] == "from"


def nps(scores: Sequence[int], at: datetime, **fields: Any) -> list[Any]:
    return [response_event(score=s, occurred_at=at, **fields) for s in scores]


def csat(scores: Sequence[int], at: datetime) -> list[Any]:
    return [response_event(metric="csat", scale=5, score=s, occurred_at=at) for s in scores]


class TestHeadline:
    async def test_change_against_the_previous_period_and_its_significance(
        self, scorer: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        now, before = NOW - timedelta(days=2), NOW - timedelta(days=9)
        await apply(
            engine,
            [
                *nps([10] * 8 + [0] * 2, now),
                *nps([10] * 2 + [0] * 8, before),
                *csat([5, 4, 4, 1], now),
                *csat([5, 4, 2, 1], before),
                *[
                    response_event(metric="ces", scale=7, score=s, occurred_at=now)
                    for s in (7, 6, 2)
                ],
                response_event(metric="ces", scale=5, score=4, occurred_at=before),
            ],
        )
        body = await get(scorer, "/v1/headline", window="7d")
        assert body["previous_to"] == body["from"]
        scores = {(s["metric"], s["scale"]): s for s in body["scores"]}
        assert list(scores) == [("nps", None), ("csat", None), ("ces", 7), ("ces", 5)]

        # NPS 60 (8 of 10 promoters, 2 detractors) against −60. Each margin:
        # 0.8 + 0.2 − 0.6² = 0.64; sqrt(0.064) × 196 = 49.5847. Combined: 49.5847 × √2 = 70.1238.
        nps_ = scores[("nps", None)]
        assert (nps_["score"], nps_["n"], nps_["insufficient"]) == (60.0, 10, False)
        assert nps_["margin"] == pytest.approx(49.5847, abs=1e-3)
        assert nps_["previous"]["score"] == pytest.approx(-60.0)
        assert nps_["change"]["delta"] == pytest.approx(120.0)
        assert nps_["change"]["margin"] == pytest.approx(70.1238, abs=1e-3)
        assert nps_["change"]["significant"] is True

        # CSAT 75% (±42.435) against 50% (sqrt(0.25 / 4) × 196 = ±49): combined
        # sqrt(42.435² + 49²) = 64.82; a rise of 25 points is within it.
        csat_ = scores[("csat", None)]
        assert (csat_["score"], csat_["previous"]["score"]) == (75.0, 50.0)
        assert csat_["change"]["margin"] == pytest.approx(64.82, abs=1e-2)
        assert csat_["change"]["significant"] is False

        # CES: scales apart, the most answered first. 7, 6, 2: squares 89, variance
        # (89 − 15²/3) / 2 = 7; 1.96 × sqrt(7 / 3) = 2.993949. No earlier score, no change.
        ces7, ces5 = scores[("ces", 7)], scores[("ces", 5)]
        assert (ces7["n"], ces7["score"]) == (3, 5.0)
        assert ces7["margin"] == pytest.approx(2.993949, abs=1e-5)
        assert ces7["change"] == {"delta": None, "margin": None, "significant": False}
        assert (ces5["n"], ces5["insufficient"], ces5["previous"]["n"]) == (0, True, 1)

    async def test_too_few_answers_are_flagged_and_never_significant(
        self, scorer: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        # All promoters against all detractors: both margins are 0, but n = 2 < min_n = 3.
        await apply(
            engine,
            [
                *nps([10, 10], NOW - timedelta(days=2), channel="sms"),
                *nps([0, 0], NOW - timedelta(days=9), channel="sms"),
                *nps([10] * 5, NOW - timedelta(days=2), channel="web"),
            ],
        )
        body = await get(scorer, "/v1/headline", window="7d", channel="sms")
        assert body["filters"] == {"channel": "sms"}
        nps_ = body["scores"][0]
        assert (nps_["n"], nps_["insufficient"], nps_["previous"]["insufficient"]) == (
            2,
            True,
            True,
        )
        assert nps_["change"]["delta"] == pytest.approx(200.0)
        assert nps_["change"]["significant"] is False
        csat_ = body["scores"][1]
        assert (csat_["n"], csat_["score"], csat_["insufficient"]) == (0, None, True)
        assert csat_["change"] == {"delta": None, "margin": None, "significant": False}


def ces5(scores: Sequence[int], at: datetime, **fields: Any) -> list[Any]:
    return [
        response_event(metric="ces", scale=5, score=s, occurred_at=at, **fields) for s in scores
    ]


class TestCesMargin:
    # 1, 2, 3, 4, 5: mean 3, sample sd sqrt(10 / 4) = 1.581139, margin 1.96 × 1.581139 / √5
    # = 1.385929. Web's 1, 2, 3: sd 1, 1.96 / √3 = 1.131607. Sms's 4, 5: sd √0.5,
    # 1.96 × √0.5 / √2 = 0.98.
    async def test_margin_survives_redelivery_rebuild_and_erasure(
        self, scorer: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        # Two days ago is a whole day (read from score_days); this hour is read by the hour.
        events = [
            *ces5([1, 2, 3], NOW - timedelta(days=2), channel="web", customer_id="erase-me"),
            *ces5([4, 5], NOW, channel="sms"),
        ]
        await apply(engine, events)
        params = {"metric": "ces", "scale": 5, "window": "7d"}
        body = await get(scorer, "/v1/scores", **params)
        assert (body["n"], body["score"]) == (5, 3.0)
        assert body["margin"] == pytest.approx(1.385929, abs=1e-5)
        by_channel = await get(scorer, "/v1/scores", **params, group_by="channel")
        margins = {g["group"]: g["margin"] for g in by_channel["groups"]}
        assert margins == {
            "web": pytest.approx(1.131607, abs=1e-5),
            "sms": pytest.approx(0.98, abs=1e-5),
        }
        series = await get(scorer, "/v1/scores/timeseries", **params, interval="day")
        assert [p["margin"] for p in series["points"]] == [
            pytest.approx(1.131607, abs=1e-5),
            pytest.approx(0.98, abs=1e-5),
        ]

        await apply(engine, events)  # redelivered: the ledger drops them, squares too
        assert (await get(scorer, "/v1/scores", **params))["margin"] == body["margin"]
        assert (await rebuild(engine)).responses == 5
        assert (await get(scorer, "/v1/scores", **params))["margin"] == body["margin"]
        r = await scorer.delete("/v1/customers/erase-me")
        assert (r.status_code, r.json()["responses_deleted"]) == (200, 3)
        assert (await get(scorer, "/v1/scores", **params))["margin"] == body["margin"]

    async def test_headline_calls_a_ces_change_significant(
        self, scorer: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        # Before: 5, 5, 5, 5, 4: mean 4.8, variance (116 − 24²/5) / 4 = 0.2, margin
        # 1.96 × sqrt(0.2 / 5) = 0.392. Now 3 (±1.385929): a fall of 1.8 against
        # sqrt(1.385929² + 0.392²) = 1.440300.
        await apply(
            engine,
            [
                *ces5([1, 2, 3, 4, 5], NOW - timedelta(days=2)),
                *ces5([5, 5, 5, 5, 4], NOW - timedelta(days=9)),
            ],
        )
        body = await get(scorer, "/v1/headline", window="7d")
        (ces,) = [s for s in body["scores"] if s["metric"] == "ces"]
        assert ces["margin"] == pytest.approx(1.385929, abs=1e-5)
        assert ces["previous"]["margin"] == pytest.approx(0.392, abs=1e-5)
        assert ces["change"]["delta"] == pytest.approx(-1.8)
        assert ces["change"]["margin"] == pytest.approx(1.440300, abs=1e-5)
        assert ces["change"]["significant"] is True


class TestCustomer:
    async def test_answers_and_tickets_newest_first(
        self, scorer: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        t0 = NOW - timedelta(days=3)
        answers = [
            response_event(
                customer_id="cust-42",
                score=2,
                comment="Slow refund",
                reasons=["refund"],
                ticket_id="A",
                occurred_at=t0 + timedelta(hours=6),
            ),
            response_event(customer_id="cust-42", metric="csat", scale=5, score=5, occurred_at=t0),
        ]
        await apply(
            engine,
            [
                *answers,
                response_event(customer_id="someone-else"),
                ticket("ticket.created", "A", t0, customer_id="cust-42", priority="high"),
                ticket(
                    "ticket.agent_replied", "A", t0 + timedelta(minutes=30), customer_id="cust-42"
                ),
                ticket("ticket.resolved", "A", t0 + timedelta(hours=5), customer_id="cust-42"),
                ticket("ticket.created", "B", t0 + timedelta(days=1), customer_id="cust-42"),
                ticket(
                    "ticket.resolved", "B", t0 + timedelta(days=1, hours=1), customer_id="cust-42"
                ),
                ticket(
                    "ticket.reopened", "B", t0 + timedelta(days=1, hours=2), customer_id="cust-42"
                ),
                ticket("ticket.created", "C", t0 + timedelta(days=2), customer_id="cust-42"),
                ticket("ticket.created", "D", t0, customer_id="someone-else"),
            ],
        )
        body = await get(scorer, "/v1/customers/cust-42")
        assert [r["event_id"] for r in body["responses"]] == [str(e.event_id) for e in answers]
        first = body["responses"][0]
        assert (first["score"], first["comment"], first["reasons"]) == (
            2,
            "Slow refund",
            ["refund"],
        )
        assert (first["channel"], first["touchpoint"], first["ticket_id"]) == (
            "web",
            "checkout",
            "A",
        )
        tickets = body["tickets"]
        assert [(t["ticket_id"], t["status"]) for t in tickets] == [
            ("C", "open"),
            ("B", "reopened"),
            ("A", "resolved"),
        ]
        a = tickets[2]
        assert (a["priority"], a["first_response_seconds"], a["resolution_seconds"]) == (
            "high",
            1800.0,
            18000.0,
        )
        assert tickets[1]["resolution_seconds"] is None
        assert (body["more_responses"], body["more_tickets"]) == (False, False)

    async def test_bounded_validated_and_empty_once_erased(
        self, scorer: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        await apply(
            engine,
            [
                response_event(customer_id="busy", occurred_at=NOW - timedelta(minutes=i))
                for i in range(52)
            ],
        )
        body = await get(scorer, "/v1/customers/busy")
        assert (len(body["responses"]), body["more_responses"]) == (50, True)

        too_long = await scorer.get("/v1/customers/" + "x" * 257)
        assert too_long.status_code == 422
        assert too_long.json()["field"] == "customer_id"

        assert (await scorer.delete("/v1/customers/busy")).status_code == 200
        assert (await get(scorer, "/v1/customers/busy"))["responses"] == []


class TestLatestResponses:
    async def test_newer_than_the_cursor_and_a_late_commit_is_not_missed(
        self, scorer: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        base = datetime.now(UTC) - timedelta(minutes=10)

        async def stored(events: Sequence[Any], at: datetime) -> None:
            await apply(engine, events)
            async with engine.begin() as conn:
                await conn.execute(
                    sa.text("UPDATE responses SET stored_at = :at WHERE event_id = ANY(:ids)"),
                    {"at": at, "ids": [e.event_id for e in events]},
                )

        old = response_event()
        seen = [response_event(), response_event()]
        await stored([old], base)
        await stored(seen[:1], base + timedelta(seconds=60))
        await stored(seen[1:], base + timedelta(seconds=61))
        first = await get(scorer, "/v1/responses/latest", limit=2)
        assert [r["event_id"] for r in first["items"]] == [
            str(seen[1].event_id),
            str(seen[0].event_id),
        ]
        assert first["truncated"] is True

        # Stored 5 s before the cursor but committed after it was given (a batch that began
        # earlier and finished later), then a new one.
        late, new = response_event(), response_event()
        await stored([late], base + timedelta(seconds=56))
        await apply(engine, [new])
        then = await get(scorer, "/v1/responses/latest", cursor=first["cursor"])
        ids = [r["event_id"] for r in then["items"]]
        # The new one first; the seen ones again (within the look-back); the late one; not old.
        assert ids == [str(e.event_id) for e in (new, seen[1], seen[0], late)]
        assert then["truncated"] is False
        assert (await get(scorer, "/v1/responses/latest", cursor=then["cursor"]))["items"][0][
            "event_id"
        ] == str(new.event_id)

    async def test_filters_and_a_bad_cursor(
        self, scorer: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        sms = response_event(channel="sms")
        await apply(engine, [sms, response_event(channel="web")])
        body = await get(scorer, "/v1/responses/latest", channel="sms")
        assert [r["event_id"] for r in body["items"]] == [str(sms.event_id)]
        empty = await get(scorer, "/v1/responses/latest", channel="email")
        assert empty["items"] == []
        assert empty["cursor"] is not None  # the read's time: the next call is bounded by it
        bad = await scorer.get("/v1/responses/latest", params={"cursor": "not-a-cursor"})
        assert (bad.status_code, bad.json()["field"]) == (422, "cursor")

    async def test_an_empty_first_poll_gives_a_cursor_the_next_finds_a_new_answer_by(
        self, scorer: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        await apply(engine, [response_event(channel="web")])
        first = await get(scorer, "/v1/responses/latest", channel="sms")
        assert first["items"] == []
        assert first["cursor"] is not None
        again = await get(scorer, "/v1/responses/latest", channel="sms", cursor=first["cursor"])
        assert again["items"] == []
        new = response_event(channel="sms")
        await apply(engine, [new])
        then = await get(scorer, "/v1/responses/latest", channel="sms", cursor=again["cursor"])
        assert [r["event_id"] for r in then["items"]] == [str(new.event_id)]

    async def test_the_first_call_looks_back_a_day_only(
        self, scorer: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        old, recent = response_event(), response_event()
        await apply(engine, [old, recent])
        async with engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "UPDATE responses SET stored_at = now() - interval '2 days'"
                    " WHERE event_id = :id"
                ),
                {"id": old.event_id},
            )
        body = await get(scorer, "/v1/responses/latest")
        assert [r["event_id"] for r in body["items"]] == [str(recent.event_id)]

    @pytest.mark.parametrize(
        "moment",
        [
            "0001-01-01T00:00:00",  # naive, and minus the look-back: before the calendar
            "0001-01-01T00:00:05+00:00",
            "9999-12-31T23:59:59-10:00",
            "2026-01-01T00:00:00",  # naive
        ],
    )
    async def test_a_forged_cursor_is_a_422(self, scorer: httpx.AsyncClient, moment: str) -> None:
        cursor = base64.urlsafe_b64encode(moment.encode()).decode()
        bad = await scorer.get("/v1/responses/latest", params={"cursor": cursor})
        assert (bad.status_code, bad.json()["field"]) == (422, "cursor")


def page_cursor(moment: str) -> str:
    return base64.urlsafe_b64encode(f"{moment}|{uuid.uuid4()}".encode()).decode()


class TestOutOfRange:
    """Times past what a range may cover are a 422 naming the field, never an overflow."""

    @pytest.mark.parametrize(
        ("params", "field"),
        [
            ({"from": "0001-01-01T00:00+01:00"}, "from"),
            ({"from": "1999-12-31T23:00+00:00"}, "from"),
            ({"from": "2026-01-01T00:00+00:00", "to": "9999-12-31T23:59:59-10:00"}, "to"),
            ({"from": "2020-01-01T00:00+00:00", "to": "2021-02-05T00:00+00:00"}, "from"),
        ],
    )
    @pytest.mark.parametrize(
        "path", ["/v1/scores?metric=nps", "/v1/scores/timeseries?metric=nps", "/v1/headline"]
    )
    async def test_ranges_are_clamped_and_capped(
        self, scorer: httpx.AsyncClient, path: str, params: dict[str, str], field: str
    ) -> None:
        response = await scorer.get(path, params=params)
        assert response.status_code == 422, response.text
        assert response.json()["field"] == field
        if "2020" in params["from"]:
            assert "400 days" in response.json()["detail"]
        else:
            assert "2000-01-01" in response.json()["detail"]

    async def test_a_long_range_of_400_days_is_fine(self, scorer: httpx.AsyncClient) -> None:
        since = NOW - timedelta(days=400)
        await get(scorer, "/v1/scores", metric="nps", **{"from": since, "to": NOW})

    async def test_hours_over_more_than_31_days_are_refused(
        self, scorer: httpx.AsyncClient
    ) -> None:
        response = await scorer.get(
            "/v1/scores/timeseries", params={"metric": "nps", "interval": "hour", "window": "90d"}
        )
        assert (response.status_code, response.json()["field"]) == (422, "interval")
        assert "31 days" in response.json()["detail"]
        month = await get(scorer, "/v1/scores/timeseries", metric="nps", interval="hour")
        assert month["interval"] == "hour"  # 30 days (the default window) by the hour

    @pytest.mark.parametrize(
        "moment", ["9999-12-31T23:59:59-10:00", "0001-01-01T00:00:00+14:00", "2026-01-01T00:00:00"]
    )
    async def test_a_forged_page_cursor_is_a_422(
        self, scorer: httpx.AsyncClient, moment: str
    ) -> None:
        response = await scorer.get("/v1/responses", params={"cursor": page_cursor(moment)})
        assert (response.status_code, response.json()["field"]) == (422, "cursor")

    async def test_the_answers_list_range_is_clamped(self, scorer: httpx.AsyncClient) -> None:
        response = await scorer.get("/v1/responses", params={"from": "0001-01-01T00:00+01:00"})
        assert (response.status_code, response.json()["field"]) == (422, "from")


class TestServiceTimes:
    async def test_times_reopens_and_sla_breaches(
        self, scorer: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        t0 = NOW - timedelta(days=2)
        # Delivered out of order: resolution before creation.
        await apply(
            engine,
            [
                ticket("ticket.resolved", "A", t0 + timedelta(hours=5)),
                ticket("ticket.created", "A", t0, priority="urgent"),
                ticket("ticket.agent_replied", "A", t0 + timedelta(minutes=30)),
                ticket("ticket.agent_replied", "A", t0 + timedelta(hours=2)),
                ticket("ticket.created", "B", t0, priority="urgent"),
                ticket("ticket.agent_replied", "B", t0 + timedelta(hours=3)),
                ticket("ticket.resolved", "B", t0 + timedelta(hours=4)),
                ticket("ticket.reopened", "B", t0 + timedelta(hours=6)),
            ],
        )
        body = await get(scorer, "/v1/service-times", window="7d", group_by="priority")
        (urgent,) = body["groups"]
        assert (urgent["group"], urgent["tickets"]) == ("urgent", 2)
        fr, res = urgent["first_response"], urgent["resolution"]
        assert fr["median_seconds"] == pytest.approx((30 * 60 + 3 * 3600) / 2)
        assert (fr["breaches"], fr["due"], fr["breach_rate"]) == (1, 2, 50.0)
        assert res["n"] == 1  # B was reopened and is not resolved again
        assert res["mean_seconds"] == pytest.approx(5 * 3600)
        assert (res["breaches"], res["due"]) == (2, 2)  # A resolved in 5h > 4h SLA; B still open


class TestDriversAndRetention:
    async def test_detractor_reasons(self, scorer: httpx.AsyncClient, engine: AsyncEngine) -> None:
        await apply(
            engine,
            [
                response_event(score=2, reasons=["wait_time", "price"]),
                response_event(score=3, reasons=["wait_time"]),
                response_event(score=10, reasons=["app"]),
            ],
        )
        body = await get(scorer, "/v1/drivers")
        assert body["top_detractor_reasons"][0] == {
            "reason": "wait_time",
            "count": 2,
            "share": 100.0,
        }
        assert body["categories"]["promoter"]["reasons"] == [
            {"reason": "app", "count": 1, "share": 100.0}
        ]

    async def test_weekly_retention(self, scorer: httpx.AsyncClient, engine: AsyncEngine) -> None:
        monday = (NOW - timedelta(days=NOW.weekday() + 14)).replace(hour=12)
        await apply(
            engine,
            [
                response_event(customer_id="a", occurred_at=monday),
                response_event(customer_id="b", occurred_at=monday),
                response_event(customer_id="a", occurred_at=monday + timedelta(days=7)),
            ],
        )
        body = await get(scorer, "/v1/retention", period="week")
        first = body["points"][0]
        assert (first["active"], first["retained"], first["rate"]) == (2, 1, 50.0)


class TestDrillDownAndErasure:
    async def test_cursor_pages_and_erasure_keep_counts(
        self, scorer: httpx.AsyncClient, engine: AsyncEngine, api_key: str
    ) -> None:
        mine = [
            response_event(
                customer_id="erase-me",
                score=s,
                comment="個人的な意見",
                occurred_at=NOW - timedelta(minutes=s),
            )
            for s in range(7)
        ]
        await apply(engine, [*mine, response_event(customer_id="other")])
        seen, cursor = [], None
        while True:
            params = {
                "customer_id": "erase-me",
                "limit": 3,
                **({"cursor": cursor} if cursor else {}),
            }
            page = await get(scorer, "/v1/responses", **params)
            seen += [r["event_id"] for r in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == [str(e.event_id) for e in mine]

        before = await get(scorer, "/v1/scores", metric="nps")
        r = await scorer.delete("/v1/customers/erase-me")
        assert r.status_code == 200
        assert r.json()["responses_deleted"] == 7
        assert (await get(scorer, "/v1/responses", customer_id="erase-me"))["items"] == []
        await apply(engine, mine)  # redelivered after erasure: still recognised
        after = await get(scorer, "/v1/scores", metric="nps")
        assert {**after, "to": None} == {**before, "to": None}


class TestGauges:
    async def test_scores_sample_sizes_and_times_reach_metrics(
        self, scorer: httpx.AsyncClient, engine: AsyncEngine
    ) -> None:
        from services.scorer import gauges

        await apply(
            engine,
            [response_event(score=s, channel="sms") for s in (10, 10, 0)]
            + [
                ticket("ticket.created", "G", NOW - timedelta(hours=3), priority="high"),
                ticket("ticket.agent_replied", "G", NOW - timedelta(hours=2)),
            ],
        )
        await gauges.refresh(engine)
        text = (await scorer.get("/metrics")).text
        assert (
            'cxloop_scorer_score{channel="sms",metric="nps",scale="10",window="24h"} 33.3' in text
        )
        assert (
            'cxloop_scorer_sample_size{channel="all",metric="nps",scale="10",window="7d"} 3.0'
            in text
        )
        assert (
            'cxloop_scorer_service_time_seconds{kind="first_response",priority="high",'
            'quantile="0.5"} 3600.0'
        ) in text

    async def test_the_refresh_time_moves_only_when_the_gauges_were_refreshed(
        self, engine: AsyncEngine
    ) -> None:
        """With several scorers, the gauges to read are those of an instance that refreshed
        recently: one that cannot reach the database must not look fresh."""
        import asyncio

        from services.scorer import gauges
        from services.scorer.snapshots import ValueSnapshots

        async def one_round(eng: AsyncEngine) -> float:
            before = gauges.REFRESHED._value.get()
            stop = asyncio.Event()
            task = asyncio.create_task(gauges.keep_fresh(eng, stop, 0.05, [], ValueSnapshots(1)))
            await asyncio.sleep(0.5)
            stop.set()
            await task
            return float(gauges.REFRESHED._value.get() - before)

        unreachable = create_async_engine(
            "postgresql+asyncpg://nobody@127.0.0.1:9/none", connect_args={"timeout": 0.2}
        )
        try:
            assert await one_round(unreachable) == 0
        finally:
            await unreachable.dispose()
        assert await one_round(engine) > 0


class TestChannelSla:
    async def test_a_channel_specific_sla_changes_the_breach_rate(
        self,
        kafka_settings: KafkaSettings,
        database_url: str,
        auth: AuthSettings,
        api_key: str,
        scorer_settings: ScorerSettings,
        engine: AsyncEngine,
    ) -> None:
        from shared.settings import SlaSettings

        sla = SlaSettings(first_response_minutes={"urgent": 60, "chat/urgent": 5})
        app = create_app(
            kafka_settings, DatabaseSettings(url=database_url), auth, scorer_settings, sla
        )
        t0 = NOW - timedelta(days=1)
        await apply(
            engine,
            [
                ticket("ticket.created", "C", t0, priority="urgent", channel="chat"),
                ticket("ticket.agent_replied", "C", t0 + timedelta(minutes=10), channel="chat"),
                ticket("ticket.created", "E", t0, priority="urgent"),
                ticket("ticket.agent_replied", "E", t0 + timedelta(minutes=10)),
            ],
        )
        async with serving(app, api_key, "scorer") as client:
            body = await get(client, "/v1/service-times", window="7d", group_by="channel")
        breaches = {g["group"]: g["first_response"]["breaches"] for g in body["groups"]}
        assert breaches == {"chat": 1, "email": 0}
