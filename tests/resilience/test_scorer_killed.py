"""The scorer is SIGKILLed again and again during a large backlog, and made to die between
a batch's database commit and its offset commit: the final totals are still exact."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from pathlib import Path

import pytest

from services.scorer.aggregates import activity
from shared.events import NpsCategory, nps_category
from shared.settings import KafkaSettings
from shared.topics import Topic
from tests.builders import response_event
from tests.helpers import produce
from tests.processes import Service, scalar, wait_for

pytestmark = [pytest.mark.resilience, pytest.mark.apache_kafka]

BACKLOG = 20_000


async def test_totals_are_exact_after_kills_at_random_and_between_the_two_commits(
    stack_env: dict[str, str], kafka_settings: KafkaSettings, database_url: str, api_key: str
) -> None:
    rng = random.Random(7)
    events = [
        response_event(
            score=rng.randint(0, 10),
            customer_id=f"cust-{rng.randint(1, 3000)}",
            reasons=rng.sample(["price", "wait_time", "app"], rng.randint(0, 2)),
        )
        for _ in range(BACKLOG)
    ]
    # Redeliveries, as a producer retrying after a lost ack would add.
    await produce(kafka_settings, Topic.RESPONSES, events + rng.sample(events, BACKLOG // 10))

    env = stack_env | {"CXLOOP_SCORER_BATCH_MAX_RECORDS": "300"}
    applied = "SELECT count(*) FROM scorer_applied_events"

    crashing = Path(__file__).with_name("crashing_scorer.py")
    for after in (1, 3, 2):
        scorer = Service("scorer", env | {"CRASH_AFTER_BATCHES": str(after)}, api_key)
        scorer.argv = (str(crashing),)
        with contextlib.suppress(RuntimeError):  # it may die before it ever answers
            await scorer.start(ready=False)
        assert scorer.process is not None
        # 137 is its own exit: it got past a committed transaction and died there.
        assert await asyncio.wait_for(scorer.process.wait(), 90) == 137

    for _ in range(4):
        scorer = Service("scorer", env, api_key)
        await scorer.start()
        await asyncio.sleep(rng.uniform(0.5, 2.0))
        await scorer.kill()

    scorer = Service("scorer", env, api_key)
    await scorer.start()
    try:
        await wait_for(lambda: scalar(database_url, applied), lambda n: n == BACKLOG, timeout=180)
        await asyncio.sleep(2)  # anything still arriving would be a double count
        categories = Counter(nps_category(e.score) for e in events)
        totals = await _one_row(
            database_url,
            "SELECT sum(n), sum(score_sum), sum(promoters), sum(detractors) FROM score_buckets",
        )
        assert totals == (
            BACKLOG,
            sum(e.score for e in events),
            categories[NpsCategory.PROMOTER],
            categories[NpsCategory.DETRACTOR],
        )
        assert await scalar(database_url, "SELECT count(*) FROM responses") == BACKLOG
        reasons = sum(len(set(e.reasons)) for e in events)
        assert await scalar(database_url, "SELECT sum(n) FROM reason_buckets") == reasons
        expected_activity = len(activity(list(events)))
        assert await scalar(database_url, "SELECT count(*) FROM customer_activity") == (
            expected_activity
        )
    finally:
        await scorer.stop()


async def _one_row(database_url: str, sql: str) -> tuple[int, ...]:
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            row = (await conn.execute(sa.text(sql))).one()
            return tuple(int(v) for v in row)
    finally:
        await engine.dispose()
