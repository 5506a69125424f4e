"""Recompute the score and reason buckets from the raw responses, the customer value
facts (each order's refunded amount, ``customer_revenue``) from the raw order and refund
rows, retention from the customers' activity (``retention_counts``), and each customer's
latest NPS answer (``customer_latest_nps``) from
``customer_nps``, after adding to it the raw NPS responses it lacks (those an older scorer
stored during a rolling deploy) (``cxloop scorer rebuild``).

The raw rows are folded by the same SQL as a live batch's responses, so a changed definition
(say of "easy" on a CES scale) applies to history exactly as it will to new answers, and
read once: the buckets, the reasons and the restored NPS answers are of the same rows. It
runs in one transaction that first locks the tables it rewrites (``LOCKS``: in a live batch's
order, so that a batch part-way through is waited for) and truncates the buckets: live
batches wait for it, and none is counted twice or missed. Answers erased with
``DELETE /v1/customers/{id}`` no longer exist as raw rows, so a rebuild no longer counts
them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.scorer import repository
from shared import erasure
from shared.db import postgres_error

# What a rebuild locks before it writes anything, in the order a live batch without an
# erasure (repository.apply_batch, then count_retention) takes these tables: a batch
# part-way through (its customers' latest answers written, its buckets not yet; its orders
# written, its revenue facts not yet) is waited for, instead of waiting for this while this
# waits for it. A batch with an erasure pending takes the erasure lock exclusively and
# never runs beside a rebuild. The tables it truncates exclusively (readers wait too);
# those it rewrites with DELETE and UPDATE against writers only (readers read the old rows
# until it commits). Not the raw responses: it reads them once, in one statement
# (repository.fold_stored_responses), and a batch's raw rows it does not see are counted by
# that batch, which waits for it at customer_latest_nps.
LOCKS = (
    ("EXCLUSIVE", ("customer_latest_nps",)),
    ("ACCESS EXCLUSIVE", ("score_buckets", "score_days", "reason_buckets")),
    ("EXCLUSIVE", ("orders", "customer_revenue")),
)
# A reader holding one of these tables while it waits for another (a score query takes
# score_days before score_buckets; a dashboard panel may hold one table into its next
# statement) could meet the locking in a deadlock, and Postgres might abort the reader. So
# each LOCK waits at most LOCK_TIMEOUT, less than Postgres's deadlock_timeout (1 s by
# default): the locking backs off first, releases what it took, and tries again after a
# pause, for up to about LOCK_ATTEMPTS × (LOCK_TIMEOUT + 2 s); a batch in flight is done
# long before.
LOCK_TIMEOUT = "500ms"
LOCK_ATTEMPTS = 30
_GIVE_WAY = ("55P03", "40P01")  # lock_not_available, deadlock_detected


async def _lock(conn: AsyncConnection) -> None:
    """Take :data:`LOCKS` inside a savepoint, each wait bounded by :data:`LOCK_TIMEOUT`: on
    a timeout (or a deadlock) only the locks taken so far are released, and all are taken
    again after a pause. The rest of the transaction waits without that bound."""
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        savepoint = await conn.begin_nested()
        try:
            # Local to the savepoint: rolled back with it, and reset below once it holds.
            await conn.execute(sa.text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            for mode, tables in LOCKS:
                await conn.execute(sa.text(f"LOCK TABLE {', '.join(tables)} IN {mode} MODE"))
            await conn.execute(sa.text("SET LOCAL lock_timeout TO DEFAULT"))
        except DBAPIError as exc:
            await savepoint.rollback()
            error = postgres_error(exc)
            if error is None or error.sqlstate not in _GIVE_WAY or attempt == LOCK_ATTEMPTS:
                raise
            await asyncio.sleep(min(2.0, 0.05 * 2**attempt))
            continue
        await savepoint.commit()
        return


@dataclass(frozen=True)
class Rebuilt:
    """What a rebuild read: raw responses, and completed orders."""

    responses: int
    orders: int


async def rebuild(engine: AsyncEngine) -> Rebuilt:
    """Recompute every bucket from the raw responses, every revenue fact from the raw
    orders and the retention counts from the activity, in one transaction."""
    async with engine.begin() as conn:
        # Shared with the consumer's batches, exclusive to an erasure: an erasure cannot
        # commit between what this reads and writes, so no erased id comes back.
        await erasure.lock(conn, "scorer", exclusive=False)
        await _lock(conn)
        await conn.execute(sa.text("TRUNCATE score_buckets, score_days, reason_buckets"))
        read = await repository.fold_stored_responses(conn)
        orders = await repository.rebuild_orders(conn)
        await repository.derive_latest_nps(conn)
        # Last, as live batches take the retention lock last.
        await repository.derive_retention(conn)
    return Rebuilt(read, orders)
