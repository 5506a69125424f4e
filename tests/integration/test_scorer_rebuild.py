"""`cxloop scorer rebuild` gives exactly what the live path gave."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from services.scorer import rebuild, repository
from services.scorer.consumer import BatchHandler
from shared import erasure
from shared.events import ResponseSubmitted
from shared.kafka import Decoded
from tests.builders import response_event
from tests.helpers import cxloop

SNAPSHOT = {
    "score_buckets": "SELECT * FROM score_buckets ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9",
    "reason_buckets": "SELECT * FROM reason_buckets ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9",
    "score_days": "SELECT * FROM score_days ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9",
    "customer_latest_nps": "SELECT * FROM customer_latest_nps ORDER BY 1",
}


async def snapshot(engine: AsyncEngine) -> dict[str, list[tuple[object, ...]]]:
    async with engine.connect() as conn:
        return {t: [tuple(r) for r in await conn.execute(sa.text(q))] for t, q in SNAPSHOT.items()}


class TestRebuild:
    async def test_rebuild_equals_the_live_path(self, database_url: str) -> None:
        rng = random.Random(11)
        engine = create_async_engine(database_url)
        try:
            events = []
            for _ in range(400):
                metric = rng.choice(["nps", "csat", "ces"])
                scale = {"nps": 10, "csat": 5}.get(metric) or rng.choice([5, 7])
                events.append(
                    response_event(
                        metric=metric,
                        scale=scale,
                        score=rng.randint(0 if metric == "nps" else 1, scale),
                        channel=rng.choice(["web", "sms", "email"]),
                        reasons=rng.sample(["price", "app", "wait_time"], rng.randint(0, 2)),
                        segments={"location": rng.choice(["tokyo", "osaka", None])},
                        customer_id=f"c{rng.randint(0, 9)}",
                    )
                )
            handler = BatchHandler(engine)
            for i in range(0, len(events), 37):
                await handler([Decoded(None, e) for e in events[i : i + 37]])
            live = await snapshot(engine)
            assert live["score_buckets"]
            assert live["customer_latest_nps"]
            result = await cxloop(database_url, "scorer", "rebuild")
            assert result.returncode == 0, result.stderr
            assert "from 400 responses" in result.stdout
            assert await snapshot(engine) == live
            # Again: the customers' latest NPS answers are derived again from their history.
            async with engine.begin() as conn:
                await conn.execute(sa.text("TRUNCATE customer_latest_nps"))
            assert (await rebuild.rebuild(engine)).responses == 400
            assert await snapshot(engine) == live
        finally:
            await engine.dispose()

    async def test_old_responses_deleted_meanwhile_leave_the_buckets_and_answers_agreeing(
        self, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # An answer an older scorer stored raw only (no customer_nps row), deleted by the
        # scheduled trim of old responses while a rebuild runs: the trim commits just after
        # the rebuild has folded the raw rows. What the rebuild counts in the buckets, it
        # must also restore to customer_nps. It restored in a later statement, which no
        # longer saw the row: the answer was counted and had no customer_nps row.
        answers = [response_event(customer_id=f"c{s}", score=s) for s in (2, 9, 10)]
        await BatchHandler(engine)([Decoded(None, e) for e in answers])
        gone = answers[0]
        async with engine.begin() as conn:
            await conn.execute(
                sa.text("DELETE FROM customer_nps WHERE event_id = :id"), {"id": gone.event_id}
            )
        async with engine.connect() as trim:
            await trim.begin()
            await trim.execute(
                sa.text("DELETE FROM responses WHERE event_id = :id"), {"id": gone.event_id}
            )
            real = repository._driver

            async def driver(conn: AsyncConnection) -> Any:
                return TrimAfterTheFold(await real(conn), trim)

            monkeypatch.setattr(repository, "_driver", driver)
            assert (await rebuild.rebuild(engine)).responses == 3
            assert not trim.in_transaction()  # the trim did commit meanwhile
        async with engine.connect() as conn:
            counted = await conn.scalar(sa.text("SELECT sum(n) FROM score_buckets"))
            detractors = await conn.scalar(sa.text("SELECT sum(detractors) FROM score_buckets"))
            kept = await conn.scalar(
                sa.text("SELECT count(*) FROM customer_nps WHERE event_id = :id"),
                {"id": gone.event_id},
            )
        assert (counted, detractors) == (3, 1)
        assert kept == 1

    async def test_rebuild_restores_the_nps_answers_an_older_scorer_left_out(
        self, database_url: str
    ) -> None:
        # During a rolling deploy, a scorer without customer_nps stores the raw answer
        # only: the rebuild adds it, and keeps answers that only customer_nps holds (an
        # erased customer's, under the pseudonym).
        engine = create_async_engine(database_url)
        try:
            old = response_event(customer_id="rolled", score=2)
            kept = response_event(customer_id="kept", score=10)
            await BatchHandler(engine)([Decoded(None, e) for e in (old, kept)])
            async with engine.begin() as conn:
                await conn.execute(
                    sa.text("DELETE FROM customer_nps WHERE customer_key = 'rolled'")
                )
                await conn.execute(
                    sa.text("DELETE FROM customer_latest_nps WHERE customer_key = 'rolled'")
                )
                await conn.execute(
                    sa.text(
                        "INSERT INTO customer_nps VALUES ('pseudonym', now(), gen_random_uuid(), 4)"
                    )
                )
            await rebuild.rebuild(engine)
            async with engine.connect() as conn:
                answers = {
                    (r.customer_key, r.score)
                    for r in await conn.execute(sa.text("SELECT * FROM customer_nps"))
                }
                latest = {
                    r.customer_key: r.event_id
                    for r in await conn.execute(sa.text("SELECT * FROM customer_latest_nps"))
                }
            assert answers == {("rolled", 2), ("kept", 10), ("pseudonym", 4)}
            assert latest.keys() == {"rolled", "kept", "pseudonym"}
            assert (latest["rolled"], latest["kept"]) == (old.event_id, kept.event_id)
        finally:
            await engine.dispose()


# A committed order whose stored refunded amount is stale (its refund says 500): what a
# rebuild is run to put right, so it updates the row.
STALE_ORDER = (
    """
INSERT INTO orders (order_id, customer_id, currency, amount_minor, completed_at,
    completed_event, channel, location, product, business_unit, refunded_minor)
VALUES ('o1', 'c-live', 'JPY', 1000, now(), gen_random_uuid(), 'web', '', '', '', 0)
""",
    """
INSERT INTO order_refunds (order_id, refund_id, currency, amount_minor, occurred_at, event_id)
VALUES ('o1', 'r1', 'JPY', 500, now(), gen_random_uuid())
""",
)


async def latest_answer(batch: AsyncConnection, answer: ResponseSubmitted) -> None:
    await batch.execute(
        sa.text(
            "INSERT INTO customer_latest_nps (customer_key, occurred_at, event_id, score)"
            " VALUES (:c, :at, :id, 3)"
        ),
        {"c": answer.customer_id, "at": answer.occurred_at, "id": answer.event_id},
    )


async def buckets(batch: AsyncConnection, answer: ResponseSubmitted) -> None:
    # A row of score_buckets written, as a live batch's merge writes them.
    await batch.execute(
        sa.text(
            "INSERT INTO score_buckets (bucket_start, metric, scale, channel, survey_type,"
            " touchpoint, location, product, business_unit, n, score_sum, score_sq_sum,"
            " promoters, passives, detractors, satisfied, easy)"
            " VALUES (date_trunc('hour', CAST(:at AS timestamptz), 'UTC'), 'nps', 10, 'web',"
            " 'relationship', 'checkout', '', '', '', 1, :score, :square, 0, 0, 1, 0, 0)"
            " ON CONFLICT ON CONSTRAINT score_buckets_pkey DO UPDATE SET n = score_buckets.n + 1"
        ),
        {"at": answer.occurred_at, "score": answer.score, "square": answer.score**2},
    )


async def order(batch: AsyncConnection, _: ResponseSubmitted) -> None:
    await batch.execute(sa.text("UPDATE orders SET channel = 'email' WHERE order_id = 'o1'"))


async def revenue(batch: AsyncConnection, _: ResponseSubmitted) -> None:
    await batch.execute(
        sa.text(
            "INSERT INTO customer_revenue (customer_id, currency, orders, revenue_minor,"
            " first_purchase_at, last_purchase_at) VALUES ('c-other', 'JPY', 1, 10, now(), now())"
        )
    )


Step = Callable[[AsyncConnection, ResponseSubmitted], Awaitable[None]]


class TestBesideALiveBatch:
    @pytest.mark.parametrize(
        ("first", "then"),
        [(latest_answer, buckets), (order, revenue)],
        ids=["latest answers, then buckets", "orders, then revenue facts"],
    )
    async def test_a_batch_part_way_through_is_waited_for_not_deadlocked(
        self, engine: AsyncEngine, first: Step, then: Step
    ) -> None:
        """A live batch has written one table and not yet the next when a rebuild starts:
        the rebuild waits for it, and both commit. The rebuild used to empty the buckets
        (or lock the revenue facts) at once and wait for the latest answers (or the order)
        while the batch waited for the buckets (or the revenue facts): Postgres found the
        deadlock and aborted one of the two. The batch's next step must not wait for the
        rebuild at all: the rebuild backs off from any lock wait after 500 ms, so a wrong
        order would still see both commit, but only after the batch waited for it."""
        async with engine.begin() as conn:
            for statement in STALE_ORDER:
                await conn.execute(sa.text(statement))
        answer = response_event(metric="nps", score=3, customer_id="c-live")
        async with engine.begin() as batch:
            pid = await batch.scalar(sa.text("SELECT pg_backend_pid()"))
            # What a live batch does, in repository.apply_batch's order.
            await erasure.lock(batch, "scorer", exclusive=False)
            await first(batch, answer)
            async with rebuild_once_it_waits_for(engine, pid) as rebuilding:
                # Under the rebuild's 500 ms: were the batch to wait for the rebuild, it
                # would fail here, before the rebuild backs off.
                await batch.execute(sa.text("SET LOCAL lock_timeout = '200ms'"))
                await then(batch, answer)
        assert (await asyncio.wait_for(rebuilding, timeout=30)).orders == 1
        async with engine.connect() as conn:
            refunded = await conn.scalar(sa.text("SELECT refunded_minor FROM orders"))
        assert refunded == 500


class TrimAfterTheFold:
    """The rebuild's driver connection: once a statement that folds the raw rows (into
    staged_scores) has run, the trim's transaction commits."""

    def __init__(self, driver: Any, trim: AsyncConnection) -> None:
        self._driver = driver
        self._trim = trim

    def __getattr__(self, name: str) -> Any:
        return getattr(self._driver, name)

    async def _then_trim(self, sql: str) -> None:
        if "INTO staged_scores" in sql and self._trim.in_transaction():
            await self._trim.commit()

    async def execute(self, sql: str, *args: Any) -> Any:
        result = await self._driver.execute(sql, *args)
        await self._then_trim(sql)
        return result

    async def fetchval(self, sql: str, *args: Any) -> Any:
        result = await self._driver.fetchval(sql, *args)
        await self._then_trim(sql)
        return result


@contextlib.asynccontextmanager
async def rebuild_once_it_waits_for(
    engine: AsyncEngine, pid: int
) -> AsyncIterator[asyncio.Task[rebuild.Rebuilt]]:
    """Start a rebuild, and go on once it (or anyone) waits for backend ``pid``; the rebuild
    is cancelled if what runs inside fails."""
    rebuilding = asyncio.create_task(rebuild.rebuild(engine))
    try:
        assert await blocks_someone(engine, pid, rebuilding)
        yield rebuilding
    except BaseException:
        rebuilding.cancel()
        with contextlib.suppress(BaseException):
            await rebuilding
        raise


async def blocks_someone(engine: AsyncEngine, pid: int, rebuilding: asyncio.Task[Any]) -> bool:
    """Whether another session comes to wait for backend ``pid`` before ``rebuilding`` ends."""
    async with engine.connect() as watcher:
        for _ in range(600):  # 30 s: a loaded machine is slow to start the rebuild's session
            waiting = await watcher.scalar(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"
                ),
                {"pid": pid},
            )
            # pg_stat_activity is read once per transaction: a session that connects after
            # the first poll would never be seen in the same one.
            await watcher.commit()
            if waiting:
                return True
            if rebuilding.done():
                return False
            await asyncio.sleep(0.05)
    return False


class TestBesideAReader:
    async def test_a_reader_meeting_the_locking_in_a_deadlock_lets_it_try_again(
        self, engine: AsyncEngine
    ) -> None:
        """A reader holds the reason buckets and then reads the score buckets, which the
        rebuild has locked while it waits for the reasons: the rebuild's wait times out
        before Postgres looks for a deadlock, it releases what it took and locks again once
        the reader is done; the reader is never aborted. The rebuild used to fail (or the
        reader, whichever Postgres chose)."""
        async with engine.begin() as reader:
            pid = await reader.scalar(sa.text("SELECT pg_backend_pid()"))
            await reader.execute(sa.text("SELECT count(*) FROM reason_buckets"))
            async with rebuild_once_it_waits_for(engine, pid) as rebuilding:
                await reader.execute(sa.text("SELECT count(*) FROM score_buckets"))
        assert (await asyncio.wait_for(rebuilding, timeout=30)).responses == 0
