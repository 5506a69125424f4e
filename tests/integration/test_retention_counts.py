"""Retention is counted as activity arrives (``retention_counts``): always what joining
every customer's activity with their next period's gives, however the events are batched,
redelivered, applied by two transactions at once, rebuilt or migrated."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from services.migrations import upgrade
from services.scorer import aggregates, gauges, rebuild, repository
from services.scorer.consumer import BatchHandler
from shared.events import CustomerErased, utcnow
from shared.kafka import Decoded
from tests.builders import response_event, ticket_event
from tests.helpers import cxloop

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


async def rows(engine: AsyncEngine, sql: str) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        return [tuple(r) for r in await conn.execute(sa.text(sql))]


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
                events.append(ticket_event(customer_id=customer, occurred_at=at))
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

    async def test_cxloop_scorer_retention_counts_them_again(
        self, engine: AsyncEngine, database_url: str
    ) -> None:
        """What an operator runs after a rollout across 0023 during which older scorers
        inserted activity that nothing counted."""
        await BatchHandler(engine)(
            [Decoded(None, csat(f"c{i % 3}", START + timedelta(days=5 * i))) for i in range(30)]
        )
        counted = await rows(engine, COUNTED)
        async with engine.begin() as conn:
            await conn.execute(sa.text("UPDATE retention_counts SET active = 1, retained = 0"))
        done = await cxloop(database_url, "scorer", "retention")
        assert done.returncode == 0, done.stderr
        assert f"counted {len(counted)} periods again" in done.stdout
        assert await rows(engine, COUNTED) == counted == await rows(engine, JOINED)


async def apply_and_count(conn: AsyncConnection, events: Sequence[Any]) -> None:
    """What the consumer's transaction does with a batch that holds no erasure."""
    await repository.apply_batch(conn, events)
    await repository.count_retention(conn)


async def waits_for_retention_lock(engine: AsyncEngine, pid: int, done: asyncio.Task[None]) -> bool:
    """Whether backend ``pid`` comes to wait for the retention lock before ``done`` ends."""
    async with engine.connect() as watcher:
        for _ in range(300):
            waiting = await watcher.scalar(
                sa.text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = :pid"
                    " AND NOT granted AND classid = :k AND objid = 0 AND objsubid = 2"
                ),
                {"pid": pid, "k": repository.RETENTION_LOCK},
            )
            if waiting:
                return True
            if done.done():
                return False
            await asyncio.sleep(0.05)
    return False


# 6,000 customers active in five weeks (to 2026-06-01) and five months (to May), and the
# first ten of them in the week of 2026-06-15 too: 60,010 rows.
SEEDED_ACTIVITY = """
INSERT INTO customer_activity (period, period_start, customer_key)
SELECT 'week', date '2026-05-04' + 7 * w, 'seeded' || c
FROM generate_series(0, 5999) c, generate_series(0, 4) w
UNION ALL
SELECT 'week', date '2026-06-15', 'seeded' || c FROM generate_series(0, 9) c
UNION ALL
SELECT 'month', CAST(date '2026-01-01' + make_interval(months => m) AS date), 'seeded' || c
FROM generate_series(0, 5999) c, generate_series(0, 4) m
"""
# The rows of customer_activity read so far by this backend and not yet reported: by
# sequential scans, and through each of its indexes. Postgres reports them only when the
# backend is idle outside a transaction, so two readings in one transaction differ by what
# happened between them.
ACTIVITY_ROWS_READ = """
SELECT (SELECT coalesce(seq_tup_read, 0) FROM pg_stat_xact_user_tables
        WHERE relid = 'customer_activity'::regclass)
     + (SELECT coalesce(sum(pg_stat_get_xact_tuples_returned(indexrelid)), 0) FROM pg_index
        WHERE indrelid = 'customer_activity'::regclass)
"""


def drift(period: str) -> float | None:
    return REGISTRY.get_sample_value("cxloop_scorer_retention_drift", {"period": period})


class TestDriftGauge:
    async def test_activity_an_older_scorer_left_uncounted_shows_until_counted_again(
        self, engine: AsyncEngine
    ) -> None:
        now = utcnow()
        await BatchHandler(engine)(
            [Decoded(None, csat(f"c{i}", now - timedelta(minutes=i))) for i in range(3)]
        )
        await gauges.refresh_retention_drift(engine)
        assert (drift("week"), drift("month")) == (0, 0)
        # What a scorer from before migration 0023 does: activity, and no count. This and
        # the previous week and month are watched; older periods are not (too many rows to
        # count every 30 s), though cxloop scorer retention counts them again too.
        week, month = aggregates.period_starts(now)
        previous_month = (month - timedelta(days=1)).replace(day=1)
        async with engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "INSERT INTO customer_activity (period, period_start, customer_key)"
                    " VALUES ('week', :w, 'older'), ('week', :w - 7, 'older'),"
                    " ('week', :w - 14, 'older'), ('month', :m, 'older'),"
                    " ('month', :pm, 'older'),"
                    " ('month', CAST(CAST(:pm AS date) - interval '1 month' AS date), 'older')"
                ),
                {"w": week, "m": month, "pm": previous_month},
            )
        await gauges.refresh_retention_drift(engine)
        assert (drift("week"), drift("month")) == (2, 2)
        async with engine.begin() as conn:
            await repository.derive_retention(conn)
        await gauges.refresh_retention_drift(engine)
        assert (drift("week"), drift("month")) == (0, 0)


class TestManyCustomers:
    async def test_a_batch_looks_its_customers_up_instead_of_reading_every_customer(
        self, engine: AsyncEngine
    ) -> None:
        """With tens of thousands of activity rows, counting a batch's new activity reads
        only its customers' neighbouring rows: it read every row (14 ms per batch at the
        median) when the planner, guessing hundreds of new rows, joined them all."""
        async with engine.begin() as conn:
            await conn.execute(sa.text(SEEDED_ACTIVITY))
            await repository.derive_retention(conn)
            await conn.execute(sa.text("ANALYZE customer_activity"))
        # 30 seeded customers come back the week after their last (2026-06-01), ten of them
        # the week before one they have already (2026-06-15); 70 are new.
        events = [csat(f"seeded{i}", START + timedelta(days=7)) for i in range(30)]
        events += [csat(f"new{i}", START + timedelta(days=7)) for i in range(70)]
        async with engine.begin() as conn:
            before = await conn.scalar(sa.text(ACTIVITY_ROWS_READ))
            await apply_and_count(conn, events)
            read = await conn.scalar(sa.text(ACTIVITY_ROWS_READ)) - before
        # 200 new rows (a week and a month each), each stored once and looked up on both
        # sides: hundreds of rows, not the 60,010.
        assert read < 1_000
        assert await rows(engine, COUNTED) == await rows(engine, JOINED)


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
        pid: list[int] = []
        started = asyncio.Event()
        async with engine.connect() as one:
            await one.begin()
            await apply_and_count(one, [weeks[0]])

            async def second() -> None:
                async with engine.begin() as two:
                    pid.append(int(await two.scalar(sa.text("SELECT pg_backend_pid()")) or 0))
                    started.set()
                    await apply_and_count(two, [weeks[1]])

            running = asyncio.create_task(second())
            await asyncio.wait_for(started.wait(), 30)
            waited = await waits_for_retention_lock(engine, pid[0], running)
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
            await apply_and_count(one, [csat("new", START)])  # holds the lock
            # The same customer, week and month, another day's buckets: nothing new.
            async with engine.begin() as two:
                await asyncio.wait_for(
                    apply_and_count(two, [csat("seen", START + timedelta(days=1))]), 10
                )
            await one.commit()
        assert await rows(engine, COUNTED) == await rows(engine, JOINED)


class TestErasureInABatch:
    async def test_a_customer_erased_between_two_of_their_periods_keeps_the_pair(
        self, engine: AsyncEngine
    ) -> None:
        """The batch's new week for the customer is counted after the erasure renamed their
        earlier weeks to the pseudonym: it is counted under the pseudonym too."""
        handler = BatchHandler(engine)
        monday = START - timedelta(days=START.weekday())
        await handler([Decoded(None, csat("gone", monday))])
        erased = CustomerErased(event_id=uuid.uuid4(), requested_at=utcnow(), customer_id="gone")
        await handler(
            [
                Decoded(None, csat("gone", monday + timedelta(days=7))),
                Decoded(None, erased),
                Decoded(None, csat("gone", monday + timedelta(days=14))),
            ]
        )
        counted = await rows(engine, COUNTED)
        assert [r[2:] for r in counted if r[0] == "week"] == [(1, 1), (1, 1), (1, 0)]
        assert counted == await rows(engine, JOINED)
        assert not await rows(engine, "SELECT * FROM customer_activity WHERE customer_key = 'gone'")


class TestMonths:
    async def test_december_and_january_are_neighbours(self, engine: AsyncEngine) -> None:
        december = datetime(2025, 12, 31, 23, tzinfo=UTC)
        await BatchHandler(engine)(
            [
                Decoded(None, csat("new-year", december)),
                Decoded(None, csat("new-year", december + timedelta(hours=2))),
            ]
        )
        counted = await rows(engine, COUNTED)
        assert [r[1:] for r in counted if r[0] == "month"] == [
            (date(2025, 12, 1), 1, 1),
            (date(2026, 1, 1), 1, 0),
        ]
        assert counted == await rows(engine, JOINED)


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
