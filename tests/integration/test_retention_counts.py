"""Retention is counted as activity arrives (``retention_counts``): always what joining
every customer's activity with their next period's gives, however the events are batched,
redelivered, applied by two transactions at once, rebuilt or migrated."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.migrations import upgrade
from services.scorer import rebuild, repository
from services.scorer.consumer import BatchHandler
from shared.events import TouchpointEvent
from shared.kafka import Decoded
from tests.builders import response_event

# What GET /v1/retention answered before the counts were kept: the join, read from the raw
# activity rows.
JOINED = """
SELECT a.period, a.period_start, count(*) AS active, count(b.customer_key) AS retained
FROM customer_activity a
LEFT JOIN customer_activity b
  ON b.period = a.period AND b.customer_key = a.customer_key
 AND b.period_start = CASE WHEN a.period = 'week' THEN a.period_start + 7
                           ELSE CAST(a.period_start + interval '1 month' AS date) END
GROUP BY a.period, a.period_start ORDER BY a.period, a.period_start
"""
COUNTED = """
SELECT period, period_start, active, retained FROM retention_counts
WHERE active > 0 ORDER BY period, period_start
"""
START = datetime(2026, 6, 1, 12, tzinfo=UTC)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url)
    yield engine
    await engine.dispose()


async def rows(engine: AsyncEngine, sql: str) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        return [tuple(r) for r in await conn.execute(sa.text(sql))]


def ticket_event(customer_id: str, at: datetime) -> TouchpointEvent:
    return TouchpointEvent.model_validate(
        {
            "event_id": uuid.uuid4(),
            "occurred_at": at,
            "received_at": at,
            "source": "api",
            "channel": "web",
            "customer_id": customer_id,
            "type": "ticket.created",
            "ticket_id": f"t-{uuid.uuid4().hex[:8]}",
        }
    )


def csat(customer_id: str, at: datetime) -> Any:
    # CSAT: no customer_nps or latest-answer row, so two batches of one customer share no
    # row but their activity's.
    return response_event(metric="csat", scale=5, score=4, customer_id=customer_id, occurred_at=at)


class TestCounting:
    async def test_counts_equal_the_join_however_events_are_batched_and_redelivered(
        self, engine: AsyncEngine
    ) -> None:
        rng = random.Random(23)
        events: list[Any] = []
        for _ in range(600):
            customer = f"c{rng.randint(0, 24)}"
            at = START + timedelta(days=rng.randint(0, 120), hours=rng.randint(0, 23))
            if rng.random() < 0.2:
                events.append(ticket_event(customer, at))
            else:
                events.append(response_event(customer_id=customer, occurred_at=at,
                                             score=rng.randint(0, 10)))  # fmt: skip
        rng.shuffle(events)
        handler = BatchHandler(engine)
        i = 0
        while i < len(events):
            size = rng.randint(1, 60)
            batch = [Decoded(None, e) for e in events[i : i + size]]
            await handler(batch)
            if rng.random() < 0.3:  # redelivered: adds nothing
                await handler(batch)
            i += size
        joined = await rows(engine, JOINED)
        assert sum(r[3] for r in joined) > 50  # customers come back: pairs to count
        assert await rows(engine, COUNTED) == joined

    async def test_a_rebuild_derives_them_again(self, engine: AsyncEngine) -> None:
        await BatchHandler(engine)(
            [Decoded(None, csat(f"c{i % 5}", START + timedelta(days=3 * i))) for i in range(40)]
        )
        counted = await rows(engine, COUNTED)
        assert any(r[3] for r in counted)
        async with engine.begin() as conn:
            await conn.execute(sa.text("UPDATE retention_counts SET active = 0, retained = 7"))
        await rebuild.rebuild(engine)
        assert await rows(engine, COUNTED) == counted == await rows(engine, JOINED)


class TestTwoBatchesAtOnce:
    @pytest.mark.parametrize("first", ["earlier", "later"])
    async def test_a_pair_whose_halves_arrive_together_counts_once(
        self, engine: AsyncEngine, first: str
    ) -> None:
        """Two batches in flight, each with one of a customer's two neighbouring weeks: the
        first's is not committed when the second looks for neighbours. Without the
        retention lock neither sees the other's row and the pair is never counted."""
        # Neighbouring weeks and months, so that the two batches share no row at all: a
        # shared month row would make the second wait on the first's insert instead.
        monday = datetime(2026, 6, 29, 12, tzinfo=UTC)
        weeks = [csat("pair", monday), csat("pair", monday + timedelta(days=7))]
        if first == "later":
            weeks.reverse()
        async with engine.connect() as one:
            await one.begin()
            await repository.apply_batch(one, [weeks[0]])

            async def second() -> None:
                async with engine.begin() as two:
                    await repository.apply_batch(two, [weeks[1]])

            running = asyncio.create_task(second())
            await asyncio.sleep(0.5)
            waited = not running.done()
            await one.commit()
            await running
        counted = await rows(engine, COUNTED)
        for period in ("week", "month"):
            assert [r[2:] for r in counted if r[0] == period] == [(1, 1), (1, 0)]
        assert counted == await rows(engine, JOINED)
        assert waited  # on the first's lock, until its commit

    async def test_a_batch_without_new_activity_takes_no_lock(self, engine: AsyncEngine) -> None:
        await BatchHandler(engine)([Decoded(None, csat("seen", START))])
        async with engine.connect() as one:
            await one.begin()
            await repository.apply_batch(one, [csat("new", START)])  # holds the lock
            # The same customer, week and month, another day's buckets: nothing new.
            async with engine.begin() as two:
                await asyncio.wait_for(
                    repository.apply_batch(two, [csat("seen", START + timedelta(days=1))]), 10
                )
            await one.commit()
        assert await rows(engine, COUNTED) == await rows(engine, JOINED)


class TestMigration:
    async def test_0023_counts_the_activity_already_stored(self, empty_database_url: str) -> None:
        await asyncio.to_thread(upgrade, empty_database_url, "0022")
        engine = create_async_engine(empty_database_url)
        rng = random.Random(5)
        mondays = [START.date() + timedelta(weeks=w) for w in range(8)]
        firsts = [START.date().replace(month=m, day=1) for m in range(1, 7)]
        activity: Sequence[dict[str, Any]] = [
            {"p": period, "s": start, "c": f"c{c}"}
            for c in range(30)
            for period, starts in (("week", mondays), ("month", firsts))
            for start in starts
            if rng.random() < 0.6
        ]
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    sa.text(
                        "INSERT INTO customer_activity (period, period_start, customer_key) "
                        "VALUES (:p, :s, :c)"
                    ),
                    list(activity),
                )
            joined = await rows(engine, JOINED)
            await asyncio.to_thread(upgrade, empty_database_url, "head")
            assert await rows(engine, COUNTED) == joined
            assert sum(r[3] for r in joined) > 30
        finally:
            await engine.dispose()
