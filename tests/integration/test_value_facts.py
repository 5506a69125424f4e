"""The scorer's revenue facts: exact under redelivery, reordering, refunds before their
order, duplicate completions, over-refunds, erasure and rebuild."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.migrations import downgrade, upgrade
from services.scorer import queries, rebuild, repository, service
from services.scorer.consumer import BatchHandler
from shared import money
from shared.kafka import Decoded
from tests.builders import order_event, refund_event, response_event

T0 = datetime(2026, 10, 1, 12, tzinfo=UTC)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url)
    yield engine
    await engine.dispose()


async def apply(engine: AsyncEngine, events: Sequence[Any]) -> None:
    await BatchHandler(engine)([Decoded(None, e) for e in events])


async def facts(engine: AsyncEngine) -> dict[tuple[str, str], tuple[Any, ...]]:
    """customer_revenue: (customer, currency) → (orders, net minor, first, last)."""
    async with engine.connect() as conn:
        rows = await conn.execute(sa.text("SELECT * FROM customer_revenue"))
        return {
            (r.customer_id, r.currency): (
                r.orders,
                r.revenue_minor,
                r.first_purchase_at,
                r.last_purchase_at,
            )
            for r in rows
        }


async def orders(engine: AsyncEngine) -> dict[str, tuple[Any, ...]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text(
                "SELECT order_id, customer_id, currency, amount_minor, refunded_minor, "
                "completed_at, channel FROM orders"
            )
        )
        return {r.order_id: tuple(r)[1:] for r in rows}


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


class TestFacts:
    async def test_refund_before_its_order_duplicates_and_a_capped_refund(
        self, engine: AsyncEngine
    ) -> None:
        stream = [
            refund_event("A", "r1", "300", occurred_at=at(5)),
            order_event("A", "1000", occurred_at=at(1)),
            order_event("B", "12.50", "USD", occurred_at=at(2)),
            refund_event("B", "r1", "20.00", "USD", occurred_at=at(3)),  # more than the order
            order_event("C", "500", occurred_at=at(4)),
            # A second completion of C, later and bigger: changes nothing.
            order_event("C", "9999", occurred_at=at(6), channel="sms"),
        ]
        for event in stream:
            await apply(engine, [event])
        await apply(engine, stream)  # redelivered whole: the ledger drops it
        # The same refund resent under a new event id counts once.
        await apply(engine, [refund_event("A", "r1", "300", occurred_at=at(5))])
        assert await facts(engine) == {
            ("c1", "JPY"): (2, 1000 - 300 + 500, at(1), at(4)),
            ("c1", "USD"): (1, 0, at(2), at(2)),
        }
        got = await orders(engine)
        assert got["B"][2:4] == (1250, 1250)  # refunded capped at the amount
        assert (got["C"][2], got["C"][5]) == (500, "web")

    async def test_any_arrival_order_gives_the_same_facts(self, engine: AsyncEngine) -> None:
        rng = random.Random(3)
        stream = [
            order_event("A", "1000", occurred_at=at(1), customer_id="x"),
            order_event("A", "700", occurred_at=at(0), customer_id="y"),  # earlier: it wins
            refund_event("A", "r1", "100", occurred_at=at(3), customer_id="x"),
            refund_event("A", "r2", "50", "USD", occurred_at=at(3)),  # another currency
            order_event("B", "40", occurred_at=at(2), customer_id="x"),
            refund_event("B", "r1", "10", occurred_at=at(4), customer_id="x"),
            refund_event("B", "r1", "30", occurred_at=at(3.5), customer_id="x"),  # earlier
        ]
        expected = {
            ("y", "JPY"): (1, 600, at(0), at(0)),
            ("x", "JPY"): (1, 10, at(2), at(2)),
        }
        for _ in range(4):
            rng.shuffle(stream)
            await engine.dispose()
            async with engine.begin() as conn:
                await conn.execute(
                    sa.text(
                        "TRUNCATE scorer_applied_events, orders, order_refunds, customer_revenue"
                    )
                )
            cut = rng.randint(0, len(stream))
            await apply(engine, stream[:cut])
            await apply(engine, stream[cut:])
            assert await facts(engine) == expected

    async def test_rebuild_derives_the_same_facts_from_the_raw_rows(
        self, engine: AsyncEngine
    ) -> None:
        rng = random.Random(5)
        stream: list[Any] = []
        for i in range(60):
            order, customer = f"o{i % 40}", f"c{rng.randint(0, 7)}"
            currency = rng.choice(["JPY", "USD"])
            amount = str(rng.randint(1, 5000)) if currency == "JPY" else f"{rng.randint(1, 99)}.25"
            stream.append(
                order_event(
                    order,
                    amount,
                    currency,
                    customer_id=customer,
                    occurred_at=at(rng.randint(0, 99)),
                )
            )
            stream.append(
                refund_event(
                    order, f"r{rng.randint(0, 2)}", "1" if currency == "JPY" else "0.75", currency
                )
            )
        for i in range(0, len(stream), 9):
            await apply(engine, stream[i : i + 9])
        live, live_orders = await facts(engine), await orders(engine)
        assert len(live) > 5
        async with engine.begin() as conn:
            await conn.execute(sa.text("UPDATE orders SET refunded_minor = 0"))
            await conn.execute(sa.text("UPDATE customer_revenue SET revenue_minor = 1"))
        done = await rebuild.rebuild(engine)
        assert done.orders == 40
        assert await facts(engine) == live
        assert await orders(engine) == live_orders


class TestErasure:
    async def test_orders_and_the_nps_category_stay_under_the_pseudonym(
        self, engine: AsyncEngine
    ) -> None:
        from services.scorer import queries
        from shared import erasure
        from shared.privacy import Hasher
        from shared.settings import PrivacySettings, load

        await apply(
            engine,
            [
                order_event("A", "1000", customer_id="gone", occurred_at=at(1)),
                response_event(customer_id="gone", score=3, occurred_at=at(2)),
            ],
        )
        hasher = Hasher(load(PrivacySettings).key())
        async with engine.begin() as conn:
            pseudonym = await erasure.pseudonym_for(conn, hasher, "scorer", "gone")
            result = await queries.erase_customer(conn, "gone", pseudonym)
        assert result["orders_pseudonymised"] == 1
        assert await facts(engine) == {(pseudonym, "JPY"): (1, 1000, at(1), at(1))}
        # A later order and refund of the erased customer land under the pseudonym.
        await apply(
            engine,
            [
                order_event("B", "500", customer_id="gone", occurred_at=at(3)),
                refund_event("A", "r", "100", customer_id="gone"),
            ],
        )
        assert await facts(engine) == {(pseudonym, "JPY"): (2, 1400, at(1), at(3))}
        async with engine.connect() as conn:
            keys = {
                r.customer_key: r.score
                for r in await conn.execute(sa.text("SELECT * FROM customer_nps"))
            }
            ids = {r[0] for r in await conn.execute(sa.text("SELECT customer_id FROM orders"))}
            latest = {
                r.customer_key: r.score
                for r in await conn.execute(sa.text("SELECT * FROM customer_latest_nps"))
            }
        assert keys == {pseudonym: 3}
        assert latest == {pseudonym: 3}
        assert ids == {pseudonym}


# customer_revenue as a plain recomputation from the order and refund rows.
_RECOMPUTED = """
SELECT customer_id, currency, count(*) AS orders,
       sum(amount_minor - least(amount_minor, coalesce(
           (SELECT sum(r.amount_minor) FROM order_refunds r
            WHERE r.order_id = o.order_id AND r.currency = o.currency), 0))) AS net,
       min(completed_at) AS first, max(completed_at) AS last
FROM orders o WHERE completed_at IS NOT NULL GROUP BY customer_id, currency
"""


async def recomputed(engine: AsyncEngine) -> dict[tuple[str, str], tuple[Any, ...]]:
    async with engine.connect() as conn:
        rows = await conn.execute(sa.text(_RECOMPUTED))
        return {(r.customer_id, r.currency): (r.orders, r.net, r.first, r.last) for r in rows}


async def _waiting(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        found = await conn.scalar(
            sa.text(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                "WHERE NOT l.granted AND d.datname = current_database()"
            )
        )
        return int(found or 0)


async def held_open(
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
    first: Sequence[Any],
    second: Sequence[Any],
) -> None:
    """Apply ``first`` in a batch held open after its orders and customers are written, apply
    ``second`` meanwhile in another (as two batches in flight), and let the first commit
    once the second waits on a lock (or has finished)."""
    original = repository.refresh_customers
    holding, release = asyncio.Event(), asyncio.Event()
    holder: list[asyncio.Task[None] | None] = [None]

    async def refresh(conn: Any, customers: set[str]) -> None:
        await original(conn, customers)
        if asyncio.current_task() is holder[0]:
            holding.set()
            await release.wait()

    monkeypatch.setattr(repository, "refresh_customers", refresh)
    one = asyncio.create_task(apply(engine, first))
    holder[0] = one
    await asyncio.wait_for(holding.wait(), 10)
    two = asyncio.create_task(apply(engine, second))
    for _ in range(100):
        if two.done() or await _waiting(engine):
            break
        await asyncio.sleep(0.05)
    release.set()
    await asyncio.wait_for(asyncio.gather(one, two), 20)


class TestBatchesInFlight:
    """Two batches applied at once (CXLOOP_SCORER_BATCHES_IN_FLIGHT) lose nothing."""

    async def test_a_customer_s_row_counts_the_orders_of_both(
        self, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        await apply(engine, [order_event("O1", "100", customer_id="a", occurred_at=at(0))])
        await held_open(
            engine,
            monkeypatch,
            [order_event("X", "1000", customer_id="a", occurred_at=at(1))],
            [order_event("Y", "20", customer_id="a", occurred_at=at(2))],
        )
        assert await facts(engine) == {("a", "JPY"): (3, 1120, at(0), at(2))}
        assert await facts(engine) == await recomputed(engine)

    async def test_a_replaced_completion_leaves_its_owner_in_flight(
        self, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The first batch completes Z for b; the second, meanwhile, completes Z earlier for
        # c: c's completion wins, and b's row must lose the order.
        await held_open(
            engine,
            monkeypatch,
            [
                order_event("Z", "1000", customer_id="b", occurred_at=at(5)),
                order_event("B1", "7", customer_id="b", occurred_at=at(6)),
            ],
            [order_event("Z", "300", customer_id="c", occurred_at=at(1))],
        )
        assert await facts(engine) == {
            ("b", "JPY"): (1, 7, at(6), at(6)),
            ("c", "JPY"): (1, 300, at(1), at(1)),
        }
        assert await facts(engine) == await recomputed(engine)

    async def test_overlapping_batches_agree_with_the_orders_and_never_deadlock(
        self, engine: AsyncEngine
    ) -> None:
        rng = random.Random(11)
        for round_ in range(6):
            batches: list[list[Any]] = [[], []]
            for i in range(40):
                order = f"r{round_}o{rng.randint(0, 14)}"
                customer = f"k{rng.randint(0, 5)}"
                event = (
                    order_event(
                        order,
                        str(rng.randint(1, 900)),
                        customer_id=customer,
                        occurred_at=at(rng.randint(0, 50)),
                    )
                    if i % 3
                    else refund_event(order, f"f{rng.randint(0, 1)}", "5", customer_id=customer)
                )
                batches[rng.randint(0, 1)].append(event)
            # Each batch in its own order: the locks must not depend on it.
            for batch in batches:
                rng.shuffle(batch)
            await asyncio.gather(*(apply(engine, b) for b in batches))
            assert await facts(engine) == await recomputed(engine)


class TestLockTable:
    async def test_a_backlog_batch_takes_a_bounded_number_of_locks(
        self, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Thousands of orders from thousands of customers in one batch: each advisory lock
        takes a slot of Postgres's shared lock table (64 a connection by default), so one
        lock per id would run two such batches in flight out of it."""
        original = repository.refresh_customers
        held: list[int] = []

        async def refresh(conn: Any, customers: set[str]) -> None:
            await original(conn, customers)
            found = await conn.scalar(
                sa.text(
                    "SELECT count(*) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
                )
            )
            held.append(int(found or 0))

        monkeypatch.setattr(repository, "refresh_customers", refresh)
        n = 3 * repository.LOCK_STRIPES
        await apply(
            engine,
            [
                order_event(f"big-{i}", "100", customer_id=f"big-c{i}", occurred_at=at(1))
                for i in range(n)
            ],
        )
        # The order and the customer stripes, and the erasure lock.
        assert held
        assert max(held) <= 2 * repository.LOCK_STRIPES + 1
        assert len(await recomputed(engine)) == n
        assert await facts(engine) == await recomputed(engine)


class TestHugeSums:
    async def test_a_customer_s_revenue_past_bigint_still_applies(
        self, engine: AsyncEngine
    ) -> None:
        # 10,000 orders of the largest amount an event may carry: 10^19 minor units, past
        # bigint's 9.2 × 10^18.
        async with engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "INSERT INTO orders (order_id, customer_id, currency, amount_minor, "
                    "completed_at, completed_event) "
                    "SELECT 'big' || i, 'whale', 'JPY', :amount, :at, gen_random_uuid() "
                    "FROM generate_series(1, 10000) AS i"
                ),
                {"amount": money.MAX_MINOR, "at": at(0)},
            )
        await apply(engine, [order_event("small", "1000", customer_id="whale", occurred_at=at(1))])
        assert await facts(engine) == {
            ("whale", "JPY"): (10_001, 10_000 * money.MAX_MINOR + 1000, at(0), at(1))
        }
        span = service.Range(at(-1), at(2), None)
        found = await service.value(engine, span, {}, 1)
        (jpy,) = found.currencies
        assert jpy.revenue_minor == 10_000 * money.MAX_MINOR + 1000
        assert jpy.by_nps[3].revenue_minor == jpy.revenue_minor


class TestPastRange:
    async def test_customers_are_rated_at_the_range_s_end_from_the_key_s_index_alone(
        self, engine: AsyncEngine
    ) -> None:
        # A range that ends before the customers' latest answers: each is rated by their
        # answer before its end, one probe of customer_nps by its key per customer. The
        # key's index carries the score (migration 0024), so the probes read no table page:
        # on 10M answers they were 3.6 s of a 4.5 s statement when each read the table too.
        rng = random.Random(24)
        events: list[Any] = []
        expected: dict[str, str] = {}
        for c in range(60):
            scores = [rng.randint(0, 10) for _ in range(3)]
            for hour, score in zip((0, 10, 20), scores, strict=True):
                events.append(
                    response_event(customer_id=f"c{c}", score=score, occurred_at=at(hour))
                )
            events.append(order_event(f"o{c}", "1000", customer_id=f"c{c}", occurred_at=at(5)))
            before_end = scores[1]  # the answer at hour 10; the range ends at hour 15
            expected[f"c{c}"] = (
                "promoter" if before_end >= 9 else "passive" if before_end >= 7 else "detractor"
            )
        await apply(engine, events)
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            # What autovacuum does on a live table: mark its pages all-visible. A page whose
            # rows committed asynchronously (this harness's synchronous_commit=off) is marked
            # only once the WAL writer has flushed their commits (within 200 ms).
            for _ in range(50):
                await conn.execute(sa.text("VACUUM customer_nps"))
                pages = sa.text(
                    "SELECT relallvisible = relpages FROM pg_class WHERE relname = 'customer_nps'"
                )
                if (await conn.execute(pages)).scalar():
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("VACUUM left customer_nps's pages not all-visible for 5 s")
        async with engine.begin() as conn:
            # However few rows this test has, probe by the key as on a real table.
            await conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
            reads = sa.text(
                "SELECT pg_stat_get_xact_blocks_fetched('customer_nps'::regclass), "
                "pg_stat_get_xact_numscans('customer_nps_pkey'::regclass)"
            )
            table_before, probes_before = (await conn.execute(reads)).one()
            totals = await queries.customer_totals(
                conn, since=at(0), until=at(15), filters={}, group_by=None
            )
            table_after, probes_after = (await conn.execute(reads)).one()
        assert {t.category: t.customers for t in totals} == dict(Counter(expected.values()))
        assert probes_after - probes_before == 60  # each customer, once
        # At most the one page of the table's visibility map; with the score only in the
        # table, a page more per probe (60 more here).
        assert table_after - table_before <= 1


class TestMigration0024:
    async def test_it_waits_out_a_reader_and_keeps_every_answer_and_the_key(
        self, empty_database_url: str
    ) -> None:
        await asyncio.to_thread(upgrade, empty_database_url, "0023")
        engine = create_async_engine(empty_database_url)
        insert = sa.text(
            "INSERT INTO customer_nps (customer_key, occurred_at, event_id, score) "
            "VALUES (:c, :at, :e, :s)"
        )
        answers = [
            {"c": f"c{i % 7}", "at": at(i), "e": uuid.uuid4(), "s": i % 11} for i in range(50)
        ]
        try:
            async with engine.begin() as conn:
                await conn.execute(insert, answers)
            # A reader holds the table for 1.5 s: the swap gives way (500 ms at a time) and
            # gets it once the reader is done, instead of failing or queueing every other
            # reader and writer behind it.
            async with engine.connect() as reader:
                await reader.execute(sa.text("LOCK TABLE customer_nps IN ACCESS SHARE MODE"))
                migrating = asyncio.create_task(
                    asyncio.to_thread(upgrade, empty_database_url, "head")
                )
                await asyncio.sleep(1.5)
                assert not migrating.done()
                await reader.rollback()
            await asyncio.wait_for(migrating, timeout=60)
            async with engine.connect() as conn:
                stored = await conn.execute(
                    sa.text("SELECT customer_key, occurred_at, event_id, score FROM customer_nps")
                )
                assert sorted(map(tuple, stored)) == sorted(
                    (a["c"], a["at"], a["e"], a["s"]) for a in answers
                )
                assert await _indexes(conn) == [
                    "CREATE UNIQUE INDEX customer_nps_pkey ON public.customer_nps USING btree "
                    "(customer_key, occurred_at, event_id) INCLUDE (score)"
                ]
                options = await conn.scalar(
                    sa.text("SELECT reloptions FROM pg_class WHERE relname = 'customer_nps'")
                )
                assert options == ["autovacuum_vacuum_insert_scale_factor=0.02"]
            with pytest.raises(sa.exc.IntegrityError, match="customer_nps_pkey"):
                async with engine.begin() as conn:
                    await conn.execute(insert, {**answers[0], "s": 3})
            await asyncio.to_thread(downgrade, empty_database_url, "0023")
            async with engine.connect() as conn:
                assert await _indexes(conn) == [
                    "CREATE UNIQUE INDEX customer_nps_pkey ON public.customer_nps USING btree "
                    "(customer_key, occurred_at, event_id)"
                ]
        finally:
            await engine.dispose()


async def _indexes(conn: Any) -> list[str]:
    found = await conn.execute(
        sa.text(
            "SELECT pg_get_indexdef(indexrelid) FROM pg_index "
            "WHERE indrelid = 'customer_nps'::regclass ORDER BY 1"
        )
    )
    return [row[0] for row in found]
