"""Long windows read whole days from the daily rollup and the edges hour by hour: whatever
the range, the counts are those of the answers inside it."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import create_async_engine

from services.scorer import queries
from services.scorer.consumer import BatchHandler
from shared.kafka import Decoded
from shared.scoring import bucket_start
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
