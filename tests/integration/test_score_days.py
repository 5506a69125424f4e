"""Long windows read whole days from the daily rollup and the edges hour by hour: whatever
the range, the counts are those of the answers inside it."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from services.scorer import queries
from services.scorer.consumer import BatchHandler
from shared.db import create_engine
from shared.kafka import Decoded
from shared.scoring import bucket_start
from shared.settings import DatabaseSettings
from tests.builders import response_event


async def test_any_range_counts_exactly_the_answers_inside_it(database_url: str) -> None:
    rng = random.Random(5)
    now = bucket_start(datetime.now(UTC))
    events = [
        response_event(
            score=rng.randint(0, 10),
            channel=rng.choice(["web", "sms"]),
            occurred_at=now - timedelta(minutes=rng.randint(0, 6 * 24 * 60)),
        )
        for _ in range(600)
    ]
    engine = create_async_engine(database_url)
    try:
        for i in range(0, len(events), 150):
            await BatchHandler(engine)([Decoded(None, e) for e in events[i : i + 150]])
        for case in range(40):
            since = now - timedelta(hours=rng.randint(1, 6 * 24))
            until = since + timedelta(hours=rng.randint(1, 6 * 24))
            if case % 4 == 0:  # custom ranges need not start on the hour
                since += timedelta(minutes=rng.randint(1, 59))
            interval = [None, "day", "hour", "week"][case % 4]
            async with engine.connect() as conn:
                groups = await queries.score_counts(
                    conn,
                    metric="nps",
                    since=since,
                    until=until,
                    scale=None,
                    filters={"channel": "sms"} if case % 3 == 0 else {},
                    group_by="channel" if case % 2 else None,
                    interval=interval,
                )
            inside = [
                e
                for e in events
                if since <= bucket_start(e.occurred_at) < until
                and (case % 3 != 0 or e.channel.value == "sms")
            ]
            assert sum(g.counts.n for g in groups) == len(inside), (since, until, interval)
            assert sum(g.counts.score_sum for g in groups) == sum(e.score for e in inside)
            if case % 2:
                by_channel = {g.group: 0 for g in groups}
                for g in groups:
                    by_channel[g.group] += g.counts.n
                for channel, n in by_channel.items():
                    assert n == sum(1 for e in inside if e.channel.value == channel)
    finally:
        await engine.dispose()


async def test_a_cached_statement_takes_each_request_s_own_values(database_url: str) -> None:
    """The statement of one shape is compiled once; a later request of that shape with
    another metric, scale or filter value must count its own answers, not the first's."""
    now = bucket_start(datetime.now(UTC))
    at = now - timedelta(hours=2)
    answers = [
        *(response_event(metric="nps", score=9, channel="web", occurred_at=at) for _ in range(3)),
        *(response_event(metric="nps", score=2, channel="sms", occurred_at=at) for _ in range(5)),
        *(response_event(metric="csat", scale=5, score=4, channel="sms", occurred_at=at),) * 1,
        *(
            response_event(metric="ces", scale=7, score=6, channel="web", occurred_at=at)
            for _ in range(2)
        ),
        *(
            response_event(metric="ces", scale=5, score=1, channel="web", occurred_at=at)
            for _ in range(4)
        ),
    ]
    engine = create_async_engine(database_url)
    try:
        await BatchHandler(engine)([Decoded(None, e) for e in answers])
        cases = [
            ("nps", None, "web", 3),
            ("nps", None, "sms", 5),
            ("csat", None, "sms", 1),
            ("ces", 7, "web", 2),
            ("ces", 5, "web", 4),
            ("ces", 7, "sms", 0),
        ]
        for metric, scale, channel, expected in cases + cases[::-1]:
            async with engine.connect() as conn:
                groups = await queries.score_counts(
                    conn,
                    metric=metric,
                    since=now - timedelta(days=1),
                    until=now + timedelta(hours=1),
                    scale=scale,
                    filters={"channel": channel},
                )
            assert sum(g.counts.n for g in groups) == expected, (metric, scale, channel)
    finally:
        await engine.dispose()


async def test_a_30_day_score_over_10m_answers_starts_no_parallel_workers(
    database_url: str,
) -> None:
    # The hourly and daily rows 10M answers over 100 days leave (256 segment combinations an
    # hour). On Postgres's default parallel_setup_cost this query was planned with two workers
    # at some hours of the day, which on 2 busy cores took twice as long as without them.
    engine = create_engine(DatabaseSettings(url=database_url))
    statements: list[tuple[str, Any]] = []

    def seen(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        statements.append((statement, parameters))

    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text(_HOURS), {"hours": 2400})
            await conn.execute(sa.text(_DAYS))
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(sa.text("ANALYZE score_buckets"))
            await conn.execute(sa.text("ANALYZE score_days"))
        sa.event.listen(engine.sync_engine, "before_cursor_execute", seen)
        now = datetime.now(UTC)
        try:
            async with engine.connect() as conn:
                groups = await queries.score_counts(
                    conn,
                    metric="nps",
                    since=now - timedelta(days=30),
                    until=now,
                    scale=None,
                    filters={},
                    group_by="channel",
                )
        finally:
            sa.event.remove(engine.sync_engine, "before_cursor_execute", seen)
        assert sorted(str(g.group) for g in groups) == ["call_center", "email", "sms", "web"]
        ((statement, parameters),) = statements

        async def parallel_nodes(setup_cost: str | None) -> list[str]:
            async with engine.begin() as conn:
                if setup_cost is not None:
                    await conn.exec_driver_sql(f"SET LOCAL parallel_setup_cost = {setup_cost}")
                # A text of its own per setting: asyncpg keeps a prepared statement per text.
                plan = await conn.exec_driver_sql(
                    f"EXPLAIN /* {setup_cost} */ {statement}", parameters
                )
                return [row[0] for row in plan if "Gather" in row[0] or "Parallel" in row[0]]

        assert await parallel_nodes(None) == []
        # Where starting workers costs nothing, the same query is planned parallel: the plan
        # above is the setting's doing. (Postgres's default, 1000, planned two workers here or
        # not depending on the hour of day, which moves the rows between days and hours.)
        assert await parallel_nodes("0") != []
    finally:
        await engine.dispose()


_HOURS = """
INSERT INTO score_buckets (bucket_start, metric, scale, channel, survey_type, touchpoint,
    location, product, business_unit, n, score_sum, promoters, passives, detractors,
    satisfied, easy, score_sq_sum)
SELECT date_trunc('hour', now(), 'UTC') - h * interval '1 hour', 'nps', 10,
    (ARRAY['web', 'sms', 'call_center', 'email'])[1 + k / 2 % 4],
    (ARRAY['transactional', 'relationship'])[1 + k % 2],
    (ARRAY['checkout', 'delivery', 'support_call', 'onboarding'])[1 + k / 8 % 4],
    'loc' || k / 32 % 8, '', '', 16, 80, 5, 5, 6, 0, 0, 500
FROM generate_series(0, CAST(:hours AS integer) - 1) AS h, generate_series(0, 255) AS k
"""

_DAYS = """
INSERT INTO score_days (bucket_start, metric, scale, channel, survey_type, touchpoint,
    location, product, business_unit, n, score_sum, promoters, passives, detractors,
    satisfied, easy, score_sq_sum)
SELECT date_trunc('day', bucket_start, 'UTC'), metric, scale, channel, survey_type, touchpoint,
    location, product, business_unit, sum(n), sum(score_sum), sum(promoters), sum(passives),
    sum(detractors), sum(satisfied), sum(easy), sum(score_sq_sum)
FROM score_buckets GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9
"""
