"""The scorer folds a batch's responses in SQL: exactly what the Python definitions give.

``services/scorer/aggregates.py`` defines a bucket, a reason count and a customer's activity;
the live path (repository._APPLY_STAGED) and ``cxloop scorer rebuild`` fold the staged (or
stored) responses with SQL instead. Here both are held equal to those definitions on
answers of every metric and scale, in zones far from UTC, at the edges of an hour, day,
ISO week, month and year, with Japanese segments and reasons named twice in one answer.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator
from datetime import date, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from services.scorer import rebuild, repository
from services.scorer.aggregates import activity, fold, fold_reasons, nps_answers
from services.scorer.consumer import BatchHandler
from shared.db import session_settings
from shared.errors import PermanentError
from shared.events import ResponseSubmitted, TouchpointEvent
from shared.kafka import Decoded
from shared.scoring import Counts, in_utc
from shared.settings import DatabaseSettings
from tests.builders import EDGE_TIMES, mixed_answers, response_event, ticket_event

COUNT_COLUMNS = (
    "n, score_sum, score_sq_sum, promoters, passives, detractors, satisfied, easy"
)  # fmt: skip
KEY = (
    "bucket_start, metric, scale, channel, survey_type, touchpoint, location, product,"
    " business_unit"
)


def counts(c: Counts) -> tuple[int, ...]:
    return (c.n, c.score_sum, c.score_sq_sum, c.promoters, c.passives, c.detractors,
            c.satisfied, c.easy)  # fmt: skip


def expected_days(events: list[ResponseSubmitted]) -> dict[tuple[Any, ...], tuple[int, ...]]:
    days: dict[tuple[Any, ...], Counts] = {}
    for key, c in fold(events).items():
        day = key.bucket_start.replace(hour=0)
        days.setdefault((day, *key[1:]), Counts()).add(c)
    return {k: counts(c) for k, c in days.items()}


async def tables(engine: AsyncEngine) -> dict[str, Any]:
    async with engine.connect() as conn:

        async def rows(sql: str) -> list[tuple[Any, ...]]:
            return [tuple(r) for r in await conn.execute(sa.text(sql))]

        return {
            "scores": {
                r[:9]: r[9:]
                for r in await rows(f"SELECT {KEY}, {COUNT_COLUMNS} FROM score_buckets")  # noqa: S608
            },
            "days": {
                r[:9]: r[9:]
                for r in await rows(f"SELECT {KEY}, {COUNT_COLUMNS} FROM score_days")  # noqa: S608
            },
            "reasons": {
                r[:9]: r[9]
                for r in await rows(
                    "SELECT bucket_start, category, reason, channel, survey_type, touchpoint,"
                    " location, product, business_unit, n FROM reason_buckets"
                )
            },
            "activity": set(
                await rows("SELECT period, period_start, customer_key FROM customer_activity")
            ),
            "nps": Counter(
                await rows("SELECT customer_key, occurred_at, event_id, score FROM customer_nps")
            ),
            "latest": set(
                await rows(
                    "SELECT customer_key, occurred_at, event_id, score FROM customer_latest_nps"
                )
            ),
            "retention": await rows(
                "SELECT period, period_start, active FROM retention_counts ORDER BY 1, 2"
            ),
        }


def expected(events: list[ResponseSubmitted]) -> dict[str, Any]:
    answers = nps_answers(events)
    latest: dict[str, tuple[Any, ...]] = {}
    for a in answers:
        if a[0] not in latest or a[1:3] > latest[a[0]][1:3]:
            latest[a[0]] = a
    active = activity(list(events))
    return {
        "scores": {tuple(k): counts(c) for k, c in fold(events).items()},
        "days": expected_days(events),
        "reasons": {tuple(k): n for k, n in fold_reasons(events).items()},
        "activity": active,
        "nps": Counter(answers),
        "latest": set(latest.values()),
        "retention": sorted(Counter((p, s) for p, s, _ in active).items()),
    }


def next_month(start: date) -> date:
    return date(start.year + start.month // 12, start.month % 12 + 1, 1)


# A session zone with a 45-minute offset: a fold that took the session's hour, day, week or
# month instead of UTC's would put answers in other buckets and periods.
SESSION_ZONE = "Asia/Kathmandu"


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    settings = session_settings(DatabaseSettings(url=database_url))
    engine = create_async_engine(
        database_url, connect_args={"server_settings": settings | {"TimeZone": SESSION_ZONE}}
    )
    async with engine.connect() as conn:
        assert await conn.scalar(sa.text("SHOW TimeZone")) == SESSION_ZONE
    yield engine
    await engine.dispose()


class TestLivePath:
    async def test_folds_as_the_definitions_do_and_a_redelivery_adds_nothing(
        self, engine: AsyncEngine
    ) -> None:
        events = mixed_answers(600)
        handler = BatchHandler(engine)
        for i in range(0, len(events), 97):
            await handler([Decoded(None, e) for e in events[i : i + 97]])
        # Redelivered, as after a crash before the offsets' commit: nothing changes.
        await handler([Decoded(None, e) for e in events[100:300]])
        got = await tables(engine)
        want = expected(events)
        want["retention"] = [(p, s, n) for (p, s), n in want["retention"]]
        assert got == want
        # What the events must hold for the equality to mean something.
        assert any(len(set(e.reasons)) < len(e.reasons) for e in events)
        assert {k[0].year for k in got["scores"]} == {2026, 2027}
        assert len({k[3:] for k in got["scores"]}) > 20
        assert {m for _, m, *_ in got["scores"]} == {"nps", "csat", "ces"}

    async def test_answers_and_touchpoints_in_one_batch_both_count_as_activity(
        self, engine: AsyncEngine
    ) -> None:
        # A batch's touchpoints are staged apart from its answers, whose activity is read
        # from the staged answers: both must reach customer_activity and retention_counts.
        answers = mixed_answers(300, seed=11)
        touchpoints = [
            ticket_event(customer_id=a.customer_id, occurred_at=t)
            for a, t in zip(answers[::7], EDGE_TIMES * 9, strict=False)
        ] + [ticket_event(customer_id=f"only-tickets-{i}") for i in range(5)]
        # 2026-12-27 15:00 in UTC: that Sunday's ISO week and December, whatever the zone.
        touchpoints.append(
            ticket_event(customer_id="only-tickets-edge", occurred_at="2026-12-28T05:00:00+14:00")
        )
        events: list[ResponseSubmitted | TouchpointEvent] = [*answers, *touchpoints]
        random.Random(5).shuffle(events)
        handler = BatchHandler(engine)
        batches = [events[i : i + 61] for i in range(0, len(events), 61)]
        for batch in batches:
            await handler([Decoded(None, e) for e in batch])
        got = await tables(engine)
        active = activity(events)
        assert got["activity"] == active
        assert {k for k in got["activity"] if k[2] == "only-tickets-edge"} == {
            ("week", date(2026, 12, 21), "only-tickets-edge"),
            ("month", date(2026, 12, 1), "only-tickets-edge"),
        }
        retained = Counter(
            (p, s)
            for p, s, c in active
            if (p, s + timedelta(days=7) if p == "week" else next_month(s), c) in active
        )
        async with engine.connect() as conn:
            counted = await conn.execute(
                sa.text("SELECT period, period_start, active, retained FROM retention_counts")
            )
            assert {(p, s): (a, r) for p, s, a, r in counted} == {
                (p, s): (n, retained[p, s])
                for (p, s), n in Counter((p, s) for p, s, _ in active).items()
            }
        # What the events must hold for the equality to mean something.
        only_touched = active - activity(list(answers))
        assert any(k[2].startswith("only-tickets-") for k in only_touched)
        assert any(not k[2].startswith("only-tickets-") for k in only_touched)
        # Every batch holds answers, so no touchpoint went the touchpoint-only way; and
        # within one batch, an answer and a touchpoint of one customer in one period new
        # to customer_activity (a row the two sources both bring, inserted once).
        assert all(any(isinstance(e, ResponseSubmitted) for e in batch) for batch in batches)
        seen: set[tuple[str, date, str]] = set()
        shared_new = 0
        for batch in batches:
            shared = activity([e for e in batch if isinstance(e, ResponseSubmitted)]) & activity(
                [e for e in batch if isinstance(e, TouchpointEvent)]
            )
            shared_new += len(shared - seen)
            seen |= activity(batch)
        assert shared_new > 0
        assert sum(retained.values()) > 0

    async def test_each_edge_time_lands_in_its_utc_hour_and_periods(
        self, engine: AsyncEngine
    ) -> None:
        events = [
            response_event(occurred_at=t, customer_id=f"c{i}") for i, t in enumerate(EDGE_TIMES)
        ]
        await BatchHandler(engine)([Decoded(None, e) for e in events])
        got = await tables(engine)
        hours = sorted(k[0] for k in got["scores"])
        assert hours == sorted(
            in_utc(e.occurred_at).replace(minute=0, second=0, microsecond=0) for e in events
        )
        # 2026-12-31T23:30-08:00 is 2027-01-01 in UTC: January's and that ISO week's.
        assert ("month", date(2027, 1, 1), "c0") in got["activity"]
        assert ("week", date(2026, 12, 28), "c0") in got["activity"]
        # 2026-12-28T05:00+14:00 is the Sunday before in UTC: the week before.
        assert ("week", date(2026, 12, 21), "c3") in got["activity"]
        # A Sunday evening in UTC is Monday in the session's zone: still the UTC week's.
        assert ("week", date(2026, 12, 21), "c6") in got["activity"]
        want = expected(events)
        for table in ("scores", "days", "reasons", "activity", "nps", "latest"):
            assert got[table] == want[table], table

    @pytest.mark.parametrize("field", ["occurred_at", "received_at"])
    @pytest.mark.parametrize("moment", ["9999-12-31T23:30:00-01:00", "0001-01-01T00:30:00+01:00"])
    async def test_a_time_past_the_calendar_in_utc_is_refused_naming_its_field(
        self, engine: AsyncEngine, moment: str, field: str
    ) -> None:
        # Valid in its own zone; an OverflowError of the driver instead would be taken for a
        # bug and retried for ever.
        bad = response_event(**{field: moment})
        with pytest.raises(PermanentError) as refused:
            await BatchHandler(engine)([Decoded(None, response_event()), Decoded(None, bad)])
        assert refused.value.field == field
        async with engine.connect() as conn:
            assert await conn.scalar(sa.text("SELECT count(*) FROM responses")) == 0


class TestRebuild:
    @pytest.mark.parametrize("lower", [0, 5])
    async def test_a_reason_counts_once_whatever_its_arrays_lower_bound(
        self, engine: AsyncEngine, lower: int
    ) -> None:
        # Postgres arrays may start at any subscript; the rebuild reads what is stored.
        await BatchHandler(engine)([Decoded(None, response_event(score=3))])
        async with engine.begin() as conn:
            await conn.execute(
                sa.text("UPDATE responses SET reasons = CAST(CAST(:r AS text) AS text[])"),
                {"r": f"[{lower}:{lower + 3}]={{price,app,price,app}}"},
            )
            lower_bound = sa.text("SELECT array_lower(reasons, 1) FROM responses")
            assert await conn.scalar(lower_bound) == lower
        await rebuild.rebuild(engine)
        got = await tables(engine)
        assert sorted((k[1], k[2], n) for k, n in got["reasons"].items()) == [
            ("detractor", "app", 1),
            ("detractor", "price", 1),
        ]

    async def test_folds_the_stored_responses_as_the_definitions_do(
        self, engine: AsyncEngine
    ) -> None:
        events = mixed_answers(400, seed=3)
        await BatchHandler(engine)([Decoded(None, e) for e in events])
        async with engine.begin() as conn:
            await conn.execute(sa.text("UPDATE score_buckets SET n = n + 1"))
            await conn.execute(sa.text("DELETE FROM reason_buckets WHERE reason = 'delivery.late'"))
        assert (await rebuild.rebuild(engine)).responses == len(events)
        got = await tables(engine)
        want = expected(events)
        for table in ("scores", "days", "reasons"):
            assert got[table] == want[table], table
        assert any(k[2] == "delivery.late" for k in got["reasons"])


class TestStaging:
    async def test_a_sessions_first_batch_locks_no_table_it_stages_for(
        self, database_url: str
    ) -> None:
        # Its staging tables are created in a session's first batch. Declared LIKE the tables
        # they stage for, they locked those (ACCESS SHARE, to the commit) before the batch
        # wrote customer_latest_nps: the order cxloop scorer rebuild locks in
        # (rebuild.LOCKS), and a batch beside a rebuild could meet it in a deadlock.
        engine = create_async_engine(database_url, poolclass=NullPool)
        try:
            async with engine.begin() as conn:
                await repository.stage(conn)
                locked = await conn.scalars(
                    sa.text(
                        "SELECT c.relname FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                        " WHERE l.pid = pg_backend_pid() AND c.relpersistence = 'p'"
                        " AND c.relnamespace <> CAST('pg_catalog' AS regnamespace)"
                        " AND c.relkind = 'r'"
                    )
                )
                assert list(locked) == []
                assert await conn.scalar(sa.text("SELECT count(*) FROM staged_responses")) == 0
        finally:
            await engine.dispose()

    async def test_each_staged_column_has_its_tables_type(self, database_url: str) -> None:
        engine = create_async_engine(database_url, poolclass=NullPool)
        pairs = {
            "staged_responses": "responses",
            "staged_scores": "score_buckets",
            "staged_reasons": "reason_buckets",
            "staged_activity": "customer_activity",
            "new_activity": "customer_activity",
        }
        try:
            async with engine.begin() as conn:
                await repository.stage(conn)
                for staged, table in pairs.items():
                    types = {}
                    for name in (staged, table):
                        rows = await conn.execute(
                            sa.text(
                                "SELECT attname, format_type(atttypid, atttypmod) FROM"
                                " pg_attribute WHERE attrelid = to_regclass(:t)"
                                " AND attnum > 0 AND NOT attisdropped"
                            ),
                            {"t": name},
                        )
                        types[name] = {str(r[0]): str(r[1]) for r in rows}
                    assert types[staged], staged
                    # Every staged column is the table's, of its type (the raw rows' stored_at
                    # is the table's default, not staged).
                    assert types[staged] == {
                        k: v for k, v in types[table].items() if k in types[staged]
                    }
                    assert set(types[table]) - set(types[staged]) <= {"stored_at"}
        finally:
            await engine.dispose()
