"""Recompute the score and reason buckets from the raw responses, the customer value
facts (each order's refunded amount, ``customer_revenue``) from the raw order and refund
rows, retention from the customers' activity (``retention_counts``), and each customer's
latest NPS answer (``customer_latest_nps``) from
``customer_nps``, after adding to it the raw NPS responses it lacks (those an older scorer
stored during a rolling deploy) (``cxloop scorer rebuild``).

The raw rows go through the same folding code as the live consumer, so a changed definition
(say of "easy" on a CES scale) applies to history exactly as it will to new answers. It runs
in one transaction that first locks every table it empties (in a live batch's order, so
that a batch part-way through is waited for) and truncates the buckets: live batches wait
for it, and none is counted twice or missed. Answers erased with
``DELETE /v1/customers/{id}`` no longer exist as raw rows, so a rebuild no longer counts
them.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.scorer import repository
from services.scorer.aggregates import fold, fold_reasons
from services.scorer.models import responses
from shared import erasure
from shared.events import ResponseSubmitted

CHUNK = 5_000
# The tables a rebuild empties, in the order a live batch (repository.apply_batch) writes
# them.
EMPTIED = (
    "customer_latest_nps",
    "score_buckets",
    "score_days",
    "reason_buckets",
    "customer_revenue",
)


def _event(row: sa.Row[tuple[object, ...]]) -> ResponseSubmitted:
    r = row._mapping
    return ResponseSubmitted.model_validate(
        {
            **{
                k: r[k]
                for k in (
                    "event_id",
                    "submission_id",
                    "metric",
                    "scale",
                    "score",
                    "survey_type",
                    "channel",
                    "touchpoint",
                    "customer_id",
                    "ticket_id",
                    "comment",
                    "locale",
                    "source",
                    "occurred_at",
                    "received_at",
                )
            },
            "reasons": r["reasons"] or [],
            "segments": {k: r[k] for k in ("location", "product", "business_unit") if r[k]},
        }
    )


@dataclass(frozen=True)
class Rebuilt:
    """What a rebuild read: raw responses, and completed orders."""

    responses: int
    orders: int


async def rebuild(engine: AsyncEngine) -> Rebuilt:
    """Recompute every bucket from the raw responses, every revenue fact from the raw
    orders and the retention counts from the activity, in one transaction."""
    read = 0
    async with engine.begin() as conn:
        # Shared with the consumer's batches, exclusive to an erasure: an erasure cannot
        # commit between what this reads and writes, so no erased id comes back.
        await erasure.lock(conn, "scorer", exclusive=False)
        # Every table it empties, at once and in the order a live batch writes them, before
        # it empties any: a batch part-way through (its customers' latest answers written,
        # its buckets not yet) is waited for, instead of being left waiting for the
        # buckets while this waits for its latest answers, a deadlock Postgres ended by
        # aborting one of the two.
        await conn.execute(sa.text(f"LOCK TABLE {', '.join(EMPTIED)} IN ACCESS EXCLUSIVE MODE"))
        await conn.execute(sa.text("TRUNCATE score_buckets, score_days, reason_buckets"))
        result = await conn.stream(sa.select(responses).execution_options(yield_per=CHUNK))
        async for chunk in result.partitions(CHUNK):
            events = [_event(row) for row in chunk]
            read += len(events)
            await repository.add_to_buckets(conn, fold(events), fold_reasons(events))
        orders = await repository.rebuild_orders(conn)
        await repository.restore_nps(conn)
        await repository.derive_latest_nps(conn)
        # Last, as live batches take the retention lock last.
        await repository.derive_retention(conn)
    return Rebuilt(read, orders)
