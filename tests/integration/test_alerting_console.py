"""What the on-call console reads: the queue in its order, each filter, the counts per facet,
and the customer behind an alert (their recent answers and tickets, kept bounded)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.alerting import gauges, service
from services.alerting.app import create_app
from services.alerting.config import AlertingConfig
from services.alerting.consumer import AlertHandler
from services.alerting.models import alerts as alerts_table
from services.alerting.models import touches as touches_table
from services.alerting.schemas import QueueCounts, QueueFilters, QueueSort, QueueStatus
from shared.errors import PermanentError
from shared.events import CustomerErased, TouchpointEvent
from shared.kafka import Decoded
from shared.privacy import Hasher
from shared.settings import (
    AlertingSettings,
    AuthSettings,
    DatabaseSettings,
    KafkaSettings,
    SlaSettings,
)
from tests.builders import response_event
from tests.helpers import serving
from tests.processes import TEST_HASH_KEY

NOW = datetime.now(UTC).replace(microsecond=0)


def alert(name: str, **overrides: Any) -> dict[str, Any]:
    """An alert row; ``name`` is its customer, and ``age_minutes`` how long ago it opened."""
    opened = NOW - timedelta(minutes=overrides.pop("age_minutes", 10))
    row: dict[str, Any] = {
        "id": uuid.uuid4(),
        "dedupe_key": f"detractor:{name}:-",
        "rule": "detractor",
        "severity": "warning",
        "status": "open",
        "customer_id": name,
        "channel": "web",
        "reasons": [],
        "event_id": uuid.uuid4(),
        "occurrences": 1,
        "opened_at": opened,
        "last_seen_at": opened,
        # Every row names every column: an INSERT of many rows takes its columns from the first.
        "location": None,
        "assignee": None,
    }
    return row | overrides


async def insert(engine: AsyncEngine, *rows: dict[str, Any]) -> None:
    async with engine.begin() as conn:
        await conn.execute(alerts_table.insert(), list(rows))


def names(page: Any) -> list[str]:
    return [a.customer_id for a in page.items]


class TestQueueOrder:
    async def test_most_severe_first_then_oldest_and_open_only_by_default(
        self, engine: AsyncEngine
    ) -> None:
        await insert(
            engine,
            alert("info-old", severity="info", age_minutes=500),
            alert("warning-new", age_minutes=5),
            alert("critical-new", severity="critical", age_minutes=1),
            alert("warning-old", age_minutes=300),
            alert("critical-old", severity="critical", age_minutes=60),
            alert("other", severity="high", age_minutes=900),
            alert("acked", severity="critical", status="acknowledged", age_minutes=999),
            alert("resolved", severity="critical", status="resolved", age_minutes=999),
        )
        page = await service.queue(engine)
        assert names(page) == [
            "critical-old",
            "critical-new",
            "warning-old",
            "warning-new",
            "info-old",
            "other",
        ]
        assert page.next_cursor is None

    @pytest.mark.parametrize("sort", list(QueueSort))
    async def test_pages_follow_each_other_without_gaps_or_overlap(
        self, engine: AsyncEngine, sort: QueueSort
    ) -> None:
        # Ties on severity and age: the id decides, and a cursor still continues exactly.
        await insert(
            engine,
            *(
                alert(f"c{n}", severity=("critical", "warning")[n % 2], age_minutes=n // 3)
                for n in range(11)
            ),
        )
        whole = names(await service.queue(engine, sort=sort, limit=100))
        pages, cursor = [], None
        while True:
            page = await service.queue(engine, sort=sort, limit=3, cursor=cursor)
            pages.append(names(page))
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert [len(p) for p in pages] == [3, 3, 3, 2]
        assert [n for p in pages for n in p] == whole
        assert sorted(whole) == sorted(f"c{n}" for n in range(11))

    async def test_a_foreign_or_forged_cursor_is_refused(self, engine: AsyncEngine) -> None:
        await insert(engine, alert("a"), alert("b"))
        cursor = (await service.queue(engine, limit=1)).next_cursor
        assert cursor is not None
        with pytest.raises(PermanentError) as exc:
            await service.queue(engine, sort=QueueSort.NEWEST, cursor=cursor)
        assert exc.value.field == "cursor"
        huge = service.encode_cursor(QueueSort.SEVERITY, [10**20, NOW, uuid.uuid4()])
        for forged in ("nonsense", "e30", "WzFd", cursor[:-3], huge):
            with pytest.raises(PermanentError):
                await service.queue(engine, cursor=forged)


QUEUE = [
    alert("c-sms", channel="sms"),
    alert("c-tokyo", location="tokyo"),
    alert("c-osaka", location="osaka", assignee="sato"),
    alert("c-csat", rule="low_csat", dedupe_key="low_csat:c-csat:-", assignee="tanaka"),
    alert("c-acked", status="acknowledged", assignee="sato"),
    alert("c-resolved", status="resolved", location="tokyo"),
]


class TestQueueFilters:
    @pytest.mark.parametrize(
        ("filters", "expected"),
        [
            ({}, {"c-sms", "c-tokyo", "c-osaka", "c-csat"}),
            ({"rule": "low_csat"}, {"c-csat"}),
            ({"channel": "sms"}, {"c-sms"}),
            ({"location": "tokyo"}, {"c-tokyo"}),
            ({"assignee": "sato"}, {"c-osaka"}),
            ({"unassigned": True}, {"c-sms", "c-tokyo"}),
            ({"status": QueueStatus.ACKNOWLEDGED}, {"c-acked"}),
            ({"status": QueueStatus.RESOLVED}, {"c-resolved"}),
            (
                {"status": QueueStatus.UNRESOLVED},
                {"c-sms", "c-tokyo", "c-osaka", "c-csat", "c-acked"},
            ),
            ({"status": QueueStatus.ALL, "location": "tokyo"}, {"c-tokyo", "c-resolved"}),
            ({"status": QueueStatus.ALL, "assignee": "sato"}, {"c-osaka", "c-acked"}),
            ({"channel": "sms", "location": "tokyo"}, set()),
        ],
    )
    async def test_each_filter(
        self, engine: AsyncEngine, filters: dict[str, Any], expected: set[str]
    ) -> None:
        await insert(engine, *QUEUE)
        page = await service.queue(engine, QueueFilters(**filters))
        assert set(names(page)) == expected


def counts(facet: Any) -> dict[str | None, int]:
    return {v.value: v.count for v in facet.values}


class TestQueueCounts:
    async def test_each_facet_counts_under_the_other_filters(self, engine: AsyncEngine) -> None:
        await insert(engine, *QUEUE)
        everything = await service.queue_counts(engine)
        assert counts(everything.rule) == {"detractor": 3, "low_csat": 1}
        assert counts(everything.channel) == {"web": 3, "sms": 1}
        assert counts(everything.location) == {None: 2, "tokyo": 1, "osaka": 1}
        assert counts(everything.assignee) == {None: 2, "sato": 1, "tanaka": 1}
        # The status facet ignores the status filter: what choosing each status would show.
        assert counts(everything.status) == {"open": 4, "acknowledged": 1, "resolved": 1}
        assert not any(f.more for f in (everything.rule, everything.status))

        located = await service.queue_counts(
            engine, QueueFilters(status=QueueStatus.ALL, location="tokyo")
        )
        assert counts(located.location) == {None: 3, "tokyo": 2, "osaka": 1}
        assert counts(located.status) == {"open": 1, "resolved": 1}
        assert counts(located.rule) == {"detractor": 2}
        assert counts(located.assignee) == {None: 2}

        unassigned = await service.queue_counts(engine, QueueFilters(unassigned=True))
        assert counts(unassigned.assignee) == {None: 2, "sato": 1, "tanaka": 1}
        assert counts(unassigned.channel) == {"web": 1, "sms": 1}

    async def test_a_facet_lists_its_most_frequent_values_and_says_there_are_more(
        self, engine: AsyncEngine
    ) -> None:
        many = service.FACET_VALUES + 5
        await insert(
            engine,
            *(alert(f"c{n}", location=f"store-{n:03d}") for n in range(many)),
            *(alert(f"busy{n}", location="store-busy") for n in range(3)),
        )
        located = (await service.queue_counts(engine)).location
        assert len(located.values) == service.FACET_VALUES
        assert located.more
        assert (located.values[0].value, located.values[0].count) == ("store-busy", 3)


@pytest.fixture
async def http(
    kafka_settings: KafkaSettings,
    database_url: str,
    auth: AuthSettings,
    api_key: str,
    alerting_settings: AlertingSettings,
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(kafka_settings, DatabaseSettings(url=database_url), auth, alerting_settings)
    async with serving(app, api_key, "alerting") as client:
        yield client


class TestOverHttp:
    async def test_the_list_keeps_its_old_defaults_and_takes_the_queue_order(
        self, engine: AsyncEngine, http: httpx.AsyncClient
    ) -> None:
        await insert(engine, *QUEUE, alert("c-crit", severity="critical", age_minutes=1))
        r = await http.get("/v1/alerts")
        assert r.status_code == 200, r.text
        assert len(r.json()["items"]) == len(QUEUE) + 1  # every status, as before
        assert r.json()["items"][0]["customer_id"] == "c-crit"  # newest first, as before
        r = await http.get("/v1/alerts", params={"status": "open", "sort": "severity", "limit": 2})
        body = r.json()
        assert body["items"][0]["customer_id"] == "c-crit"
        r = await http.get(
            "/v1/alerts",
            params={
                "status": "open",
                "sort": "severity",
                "limit": 2,
                "cursor": body["next_cursor"],
            },
        )
        assert len(r.json()["items"]) == 2
        r = await http.get("/v1/alerts", params={"unassigned": "true", "status": "unresolved"})
        assert {a["customer_id"] for a in r.json()["items"]} == {"c-sms", "c-tokyo", "c-crit"}
        assert (await http.get("/v1/alerts", params={"customer_id": "c-acked"})).json()["items"]

    async def test_counts_and_refusals(self, engine: AsyncEngine, http: httpx.AsyncClient) -> None:
        await insert(engine, *QUEUE)
        r = await http.get("/v1/alerts/counts", params={"status": "open"})
        assert r.status_code == 200, r.text
        body = QueueCounts.model_validate(r.json())
        assert counts(body.status) == {"open": 4, "acknowledged": 1, "resolved": 1}
        assert counts(body.assignee) == {None: 2, "sato": 1, "tanaka": 1}
        r = await http.get("/v1/alerts", params={"cursor": "forged"})
        assert (r.status_code, r.json()["field"]) == (422, "cursor")
        r = await http.get("/v1/alerts/counts", params={"assignee": "sato", "unassigned": "true"})
        assert (r.status_code, r.json()["field"]) == (422, "unassigned")


def ticket(customer: str, at: datetime, **fields: Any) -> TouchpointEvent:
    return TouchpointEvent.model_validate(
        {
            "event_id": uuid.uuid4(),
            "occurred_at": at,
            "received_at": at,
            "source": "zendesk",
            "channel": "email",
            "customer_id": customer,
            "type": "ticket.created",
            "ticket_id": "T-77",
            "priority": "urgent",
            **fields,
        }
    )


def batch(*events: Any) -> list[Decoded]:
    return [Decoded(None, e) for e in events]


@pytest.fixture
def handler(engine: AsyncEngine) -> AlertHandler:
    return AlertHandler(engine, SlaSettings(), hasher=Hasher(TEST_HASH_KEY.encode()))


async def touch_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(touches_table)) or 0)


class TestCustomerTouches:
    async def test_the_last_twenty_are_kept_and_redelivery_changes_nothing(
        self, engine: AsyncEngine, handler: AlertHandler
    ) -> None:
        answers = [
            response_event(
                customer_id="jane",
                score=n % 11,
                comment=f"answer {n}",
                reasons=["price"],
                occurred_at=NOW - timedelta(hours=30 - n),
            )
            for n in range(25)
        ]
        tickets = [ticket("jane", NOW - timedelta(minutes=30 - n)) for n in range(3)]
        other = response_event(customer_id="bob", occurred_at=NOW - timedelta(days=9))
        first = batch(*answers[:12], other, *tickets, *answers[12:])
        await handler(first)
        await handler(first)  # redelivered: the ledger knows every event
        await handler(batch(*reversed(answers)))

        touches = await service.customer_touches(engine, "jane")
        assert len(touches.items) == 20
        assert [t.kind for t in touches.items[:3]] == ["ticket"] * 3
        newest_answers = sorted(answers, key=lambda e: e.occurred_at, reverse=True)[:17]
        assert [t.event_id for t in touches.items[3:]] == [e.event_id for e in newest_answers]
        assert await touch_count(engine) == 21  # Jane's twenty, and Bob's one

        answer = touches.items[3]
        assert (answer.metric, answer.channel, answer.touchpoint, answer.reasons) == (
            "nps",
            "web",
            "checkout",
            ["price"],
        )
        assert answer.comment == "answer 24"
        assert answer.ticket_url is None

        # A late answer older than the twenty kept is applied, and trimmed at once.
        late = response_event(customer_id="jane", occurred_at=NOW - timedelta(days=30))
        await handler(batch(late))
        after = await service.customer_touches(engine, "jane")
        assert [t.event_id for t in after.items] == [t.event_id for t in touches.items]
        # Jane's detractor answers are one alert (its rule, customer and ticket); Bob's 9 none.
        (jane,) = (await service.alerts_for_customer(engine, "jane")).items
        assert (jane.rule, jane.occurrences) == ("detractor", 17)
        assert (await service.alerts_for_customer(engine, "bob")).items == []

    async def test_tickets_carry_their_fields_and_link(
        self, engine: AsyncEngine, handler: AlertHandler
    ) -> None:
        purchase = ticket("kim", NOW, type="purchase", ticket_id=None, priority=None)
        await handler(
            batch(
                ticket("kim", NOW - timedelta(minutes=5)),
                ticket("kim", NOW, type="ticket.status_changed", status="pending", priority="high"),
                purchase,
            )
        )
        config = AlertingConfig.model_validate(
            {"ticket_urls": {"zendesk": "https://acme.zendesk.com/agent/tickets/{ticket_id}"}}
        )
        touches = await service.customer_touches(engine, "kim", config)
        assert [(t.kind, t.event_type, t.status, t.priority) for t in touches.items] == [
            ("ticket", "ticket.status_changed", "pending", "high"),
            ("ticket", "ticket.created", None, "urgent"),
        ]
        assert touches.items[0].source == "zendesk"
        assert touches.items[0].ticket_url == "https://acme.zendesk.com/agent/tickets/T-77"

    async def test_erasure_pseudonymises_them_as_it_does_alerts(
        self, engine: AsyncEngine, handler: AlertHandler
    ) -> None:
        words = response_event(
            customer_id="jane", score=1, comment="call me, Jane", reasons=["rude_staff"]
        )
        erased = CustomerErased(event_id=uuid.uuid4(), requested_at=NOW, customer_id="jane")
        again = response_event(
            customer_id="jane", score=2, comment="it's Jane again", reasons=["delivery_speed"]
        )
        await handler(batch(words, ticket("jane", NOW), erased, again))

        assert (await service.customer_touches(engine, "jane")).items == []
        assert (await service.alerts_for_customer(engine, "jane")).items == []
        async with engine.connect() as conn:
            owners = set((await conn.execute(sa.select(touches_table.c.customer_id))).scalars())
        (pseudonym,) = owners
        assert pseudonym.startswith("erased:")
        touches = await service.customer_touches(engine, pseudonym)
        assert len(touches.items) == 3
        assert [(t.comment, t.reasons) for t in touches.items if t.kind == "answer"] == [
            (None, []),
            (None, []),
        ]
        (alert_,) = (await service.alerts_for_customer(engine, pseudonym)).items
        assert (alert_.comment, alert_.reasons, alert_.occurrences) == (None, [], 2)

    async def test_an_answer_dated_far_ahead_cannot_stay_on_top(
        self, engine: AsyncEngine, handler: AlertHandler
    ) -> None:
        ahead = response_event(customer_id="ahead", occurred_at=datetime(2999, 1, 1, tzinfo=UTC))
        await handler(batch(ahead))
        (touch,) = (await service.customer_touches(engine, "ahead")).items
        # Kept as dated when it was applied (give or take the allowed skew), so newer
        # touches come above it and it is trimmed in its turn.
        assert touch.occurred_at < datetime.now(UTC) + timedelta(days=1)
        newer = [
            response_event(customer_id="ahead", occurred_at=datetime.now(UTC) + timedelta(hours=n))
            for n in range(1, 21)
        ]
        await handler(batch(*newer))
        kept = (await service.customer_touches(engine, "ahead")).items
        assert ahead.event_id not in {t.event_id for t in kept}

    async def test_touches_past_their_retention_are_purged(
        self, engine: AsyncEngine, handler: AlertHandler
    ) -> None:
        old = response_event(customer_id="kept", occurred_at=NOW - timedelta(days=100))
        recent = response_event(customer_id="kept", occurred_at=NOW - timedelta(days=10))
        await handler(batch(old, recent))
        assert await gauges.purge(engine, timedelta(days=90)) == 1
        kept = (await service.customer_touches(engine, "kept")).items
        assert [t.event_id for t in kept] == [recent.event_id]
        assert AlertingSettings().touch_retention_days == 90
