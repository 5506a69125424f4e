"""The order ledger: an order id is one order, and its refunds never add up to more than it.

The collector keeps in Postgres, per order id, whose order it is, its currency and amount
(in minor units), how much of it was refunded, and each refund by its refund id
(migration 0019). The rules, in :func:`decide` (pure):

* ``order.completed`` for a new order id is recorded. Resent with the same customer,
  currency and amount, under any event id, it is a duplicate: answered with the first
  event's id, produced again never. With another customer, currency or amount it is a
  conflict (409 naming ``order_id``).
* ``order.refunded`` is one refund of its order, named by (order id, refund id): resent, a
  duplicate; resent with another amount, a conflict (409 naming ``refund_id``). In another
  currency than its order it is refused (422 naming ``currency``), for another customer too
  (422 naming ``customer_id``), and so is a refund larger than what remains of the order
  (its amount less the refunds so far: 422 naming ``amount``), and so is a refund of 0. A
  resent refund is compared by customer and currency before it can be a duplicate.
* ``order.completed`` of an order known only by its refunds is refused (422 naming
  ``amount``) when its amount is less than those refunds.
* A refund of an order the collector has not seen is accepted: orders may reach cxloop
  from several systems, and a payment processor may deliver the refund first. The order is
  then known by its currency and customer, and by its amount when the source says it (a
  Stripe charge does); once its amount is known, later refunds are capped by it.

How it stays true under concurrency and failures (:class:`OrderLedger`): one transaction
per request sets a lock timeout (2 s: past it, or with no pooled connection free, the
request is answered 503 as busy), takes the collector's erasure lock shared, locks the rows
of its orders (a placeholder row for an unknown one, so it can be locked too, all in
order_id order), decides, lets the caller produce, and writes only what the broker
acknowledged before it commits. Two concurrent refunds of one order are serialised by the
row lock, and a failed produce leaves nothing behind. An erased customer's orders carry the
collector's pseudonym for them (the erasure rewrites them under the erasure lock taken
exclusively, and its update waits for the row locks anyway), and a later event for them is
compared and stored under that pseudonym, so their id is never stored again.

What it is for: the synchronous answers only, a refund past its order or a reused order id
refused to the caller while they can still act. Counting does not depend on it: downstream,
the scorer and alerting count an order once by its order_id and a refund once by
(order_id, refund_id), whatever the event id, so an order event produced twice (a late
broker ack after a 503, a Stripe charge and its PaymentIntent, a commit that failed after
the ack) is not counted twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared import erasure
from shared.db import postgres_error
from shared.events import ORDER_COMPLETED, ORDER_REFUNDED, TouchpointEvent
from shared.money import json_amount
from shared.privacy import Hasher

SERVICE: Final = "collector"


@dataclass(frozen=True)
class OrderFact:
    """What one order event tells the ledger; amounts in the currency's minor units.

    ``order_amount_minor`` is the whole order's amount that a refund's source states (a
    Stripe charge carries it), so that its cap holds even before the order itself arrives.
    """

    type: str
    order_id: str
    customer_id: str
    currency: str
    amount_minor: int
    event_id: uuid.UUID
    refund_id: str | None = None
    order_amount_minor: int | None = None

    @classmethod
    def of(cls, event: TouchpointEvent, order_amount_minor: int | None = None) -> OrderFact:
        """Return the fact an ``order.*`` event states."""
        assert event.order_id is not None
        assert event.currency is not None
        return cls(
            type=event.type,
            order_id=event.order_id,
            customer_id=event.customer_id,
            currency=event.currency,
            amount_minor=event.amount_minor(),
            event_id=event.event_id,
            refund_id=event.refund_id,
            order_amount_minor=order_amount_minor,
        )


@dataclass
class Order:
    """One order as the ledger knows it (``refunds``: refund id → (amount, event id))."""

    customer_id: str
    currency: str
    amount_minor: int | None
    refunded_minor: int = 0
    completed_event_id: uuid.UUID | None = None
    refunds: dict[str, tuple[int, uuid.UUID]] = field(default_factory=dict)

    def copy(self) -> Order:
        return replace(self, refunds=dict(self.refunds))


class Verdict(StrEnum):
    """What the ledger says of one order event."""

    NEW = "new"  # produce it
    DUPLICATE = "duplicate"  # already recorded: answer with the first event id
    CONFLICT = "conflict"  # its id names something else: 409
    REFUSED = "refused"  # it breaks an order's rules: 422


@dataclass(frozen=True)
class Decision:
    """The ledger's verdict; ``event_id`` of a duplicate's first event; ``field`` and
    ``detail`` of a conflict or refusal, ``reason`` a metric label."""

    verdict: Verdict
    event_id: uuid.UUID | None = None
    field: str | None = None
    detail: str | None = None
    reason: str = ""


def _new() -> Decision:
    return Decision(Verdict.NEW, reason="new")


def apply(orders: dict[str, Order | None], fact: OrderFact) -> Decision:
    """Decide ``fact`` against ``orders`` and, when it is new, record it there."""
    order = orders.get(fact.order_id)
    if fact.type == ORDER_COMPLETED:
        return _complete(orders, order, fact)
    assert fact.type == ORDER_REFUNDED
    assert fact.refund_id is not None
    return _refund(orders, order, fact, fact.refund_id)


def _complete(orders: dict[str, Order | None], order: Order | None, fact: OrderFact) -> Decision:
    if order is None:
        orders[fact.order_id] = Order(
            fact.customer_id, fact.currency, fact.amount_minor, completed_event_id=fact.event_id
        )
        return _new()
    same = (
        order.customer_id == fact.customer_id
        and order.currency == fact.currency
        and order.amount_minor in (None, fact.amount_minor)
    )
    if not same:
        return Decision(
            Verdict.CONFLICT,
            field="order_id",
            detail=f"order_id {fact.order_id!r} was already recorded with another customer, "
            "currency or amount; an order id names one order",
            reason="order_conflict",
        )
    if order.completed_event_id is not None:
        return Decision(Verdict.DUPLICATE, event_id=order.completed_event_id, reason="duplicate")
    if fact.amount_minor < order.refunded_minor:
        cur = order.currency
        return Decision(
            Verdict.REFUSED,
            field="amount",
            detail=f"order {fact.order_id!r} of {json_amount(fact.amount_minor, cur)} {cur} is "
            f"less than its refunds so far: {json_amount(order.refunded_minor, cur)} {cur}",
            reason="under_refunds",
        )
    order.amount_minor = fact.amount_minor
    order.completed_event_id = fact.event_id
    return _new()


def _refund(
    orders: dict[str, Order | None], order: Order | None, fact: OrderFact, refund_id: str
) -> Decision:
    if order is None:
        order = Order(fact.customer_id, fact.currency, fact.order_amount_minor)
        orders[fact.order_id] = order
        known = False
    else:
        known = True
    if fact.amount_minor == 0:
        if not known:
            del orders[fact.order_id]
        return Decision(
            Verdict.REFUSED,
            field="amount",
            detail="a refund of 0 refunds nothing; send refunds of more than 0",
            reason="zero_refund",
        )
    # Customer and currency first: a resend naming another customer or currency is no
    # duplicate of the refund recorded, whatever its amount.
    if known and order.customer_id != fact.customer_id:
        return Decision(
            Verdict.REFUSED,
            field="customer_id",
            detail=f"order {fact.order_id!r} belongs to another customer",
            reason="customer_mismatch",
        )
    if known and order.currency != fact.currency:
        return Decision(
            Verdict.REFUSED,
            field="currency",
            detail=f"order {fact.order_id!r} is in {order.currency}; a refund is in the "
            "currency of its order",
            reason="currency_mismatch",
        )
    seen = order.refunds.get(refund_id)
    if seen is not None:
        if seen[0] == fact.amount_minor:
            return Decision(Verdict.DUPLICATE, event_id=seen[1], reason="duplicate")
        return Decision(
            Verdict.CONFLICT,
            field="refund_id",
            detail=f"refund_id {refund_id!r} of order {fact.order_id!r} was already recorded "
            "with another amount; a refund id names one refund",
            reason="refund_conflict",
        )
    total = order.amount_minor if order.amount_minor is not None else fact.order_amount_minor
    if total is not None:
        remaining = max(total - order.refunded_minor, 0)
        if fact.amount_minor > remaining:
            if not known:
                del orders[fact.order_id]
            cur = order.currency
            return Decision(
                Verdict.REFUSED,
                field="amount",
                detail=f"refund of {json_amount(fact.amount_minor, cur)} {cur} is more than "
                f"remains of order {fact.order_id!r}: {json_amount(remaining, cur)} {cur} "
                f"(of {json_amount(total, cur)} {cur})",
                reason="over_refund",
            )
    order.amount_minor = total
    order.refunded_minor += fact.amount_minor
    order.refunds[refund_id] = (fact.amount_minor, fact.event_id)
    return Decision(Verdict.NEW, reason="new" if known else "unknown_order")


def decide(orders: dict[str, Order | None], facts: Sequence[OrderFact]) -> list[Decision]:
    """Decide ``facts`` in order against ``orders`` (updated with the new ones)."""
    return [apply(orders, fact) for fact in facts]


def decide_stored(
    orders: dict[str, Order | None], facts: Sequence[OrderFact], stored: Sequence[bool]
) -> list[Decision]:
    """Decide each of ``facts`` as if only the earlier ones ``stored`` had been recorded.

    A fact not stored is judged on a copy of its order and leaves ``orders`` as they were.
    """
    decisions = []
    for fact, keep in zip(facts, stored, strict=True):
        if keep:
            decisions.append(apply(orders, fact))
            continue
        order = orders.get(fact.order_id)
        trial = {fact.order_id: order.copy() if order is not None else None}
        decisions.append(apply(trial, fact))
    return decisions


# Row locks, not advisory locks: a row lock lives in the row itself, so a batch of 500
# orders takes no slot of the shared lock table (which an advisory lock per order did, and
# held across the produce). An order not yet in the ledger gets a placeholder row first
# (``INSERT … ON CONFLICT DO NOTHING``: a concurrent request inserting the same order id
# waits for this transaction, then finds it), so that it can be locked too; every request
# inserts, then locks, in order_id order, so two never wait for each other in a cycle. A
# placeholder is the order unknown (:func:`read` gives None) and is deleted at commit
# unless an acknowledged event made it an order.
_PLACE = sa.text("""
INSERT INTO collector_orders (order_id, customer_id, currency)
SELECT * FROM unnest(
    CAST(:order_ids AS text[]), CAST(:customer_ids AS text[]), CAST(:currencies AS text[])
) ORDER BY 1
ON CONFLICT (order_id) DO NOTHING
RETURNING order_id
""")

_READ_ORDERS = sa.text("""
SELECT order_id, customer_id, currency, amount_minor, refunded_minor, completed_event_id
FROM collector_orders WHERE order_id = ANY(CAST(:order_ids AS text[]))
ORDER BY order_id
FOR UPDATE
""")

_READ_REFUNDS = sa.text("""
SELECT r.order_id, r.refund_id, r.amount_minor, r.event_id
FROM collector_order_refunds AS r
JOIN unnest(CAST(:order_ids AS text[]), CAST(:refund_ids AS text[])) AS w(order_id, refund_id)
  USING (order_id, refund_id)
""")

# The rows are locked for the whole transaction, so writing the values computed from them
# is safe. customer_id and currency change only on a placeholder becoming an order: on a
# known order they are written as read (the erasure, which owns customer_id, waits for us).
_WRITE_ORDERS = sa.text("""
UPDATE collector_orders AS o SET
    customer_id = w.customer_id,
    currency = w.currency,
    amount_minor = w.amount_minor,
    refunded_minor = w.refunded_minor,
    completed_event_id = w.completed_event_id
FROM unnest(
    CAST(:order_ids AS text[]), CAST(:customer_ids AS text[]), CAST(:currencies AS text[]),
    CAST(:amounts AS bigint[]), CAST(:refunded AS bigint[]), CAST(:completed AS uuid[])
) AS w(order_id, customer_id, currency, amount_minor, refunded_minor, completed_event_id)
WHERE o.order_id = w.order_id
""")

_DROP_PLACEHOLDERS = sa.text(
    "DELETE FROM collector_orders WHERE order_id = ANY(CAST(:order_ids AS text[]))"
)

_WRITE_REFUNDS = sa.text("""
INSERT INTO collector_order_refunds (order_id, refund_id, amount_minor, event_id)
SELECT * FROM unnest(
    CAST(:order_ids AS text[]), CAST(:refund_ids AS text[]), CAST(:amounts AS bigint[]),
    CAST(:event_ids AS uuid[])
)
""")

_ERASE = sa.text(
    "UPDATE collector_orders SET customer_id = :pseudonym WHERE customer_id = :customer_id"
)


async def place(conn: AsyncConnection, facts: Sequence[OrderFact]) -> set[str]:
    """Insert a placeholder row for each order of ``facts`` the ledger lacks; return their ids."""
    first: dict[str, OrderFact] = {}
    for fact in facts:
        first.setdefault(fact.order_id, fact)
    order_ids = sorted(first)
    params = {
        "order_ids": order_ids,
        "customer_ids": [first[k].customer_id for k in order_ids],
        "currencies": [first[k].currency for k in order_ids],
    }
    return {row.order_id for row in await conn.execute(_PLACE, params)}


async def read(
    conn: AsyncConnection, facts: Sequence[OrderFact], placeholders: AbstractSet[str] = frozenset()
) -> dict[str, Order | None]:
    """Lock and return the ledger's orders of ``facts`` (None for an unknown one, and for
    a ``placeholders`` row), with their refunds."""
    order_ids = sorted({f.order_id for f in facts})
    orders: dict[str, Order | None] = dict.fromkeys(order_ids)
    for row in await conn.execute(_READ_ORDERS, {"order_ids": order_ids}):
        if row.order_id in placeholders:
            continue
        orders[row.order_id] = Order(
            row.customer_id,
            row.currency,
            row.amount_minor,
            row.refunded_minor,
            row.completed_event_id,
        )
    refunds = sorted({(f.order_id, f.refund_id) for f in facts if f.refund_id is not None})
    if refunds:
        params = {"order_ids": [o for o, _ in refunds], "refund_ids": [r for _, r in refunds]}
        for row in await conn.execute(_READ_REFUNDS, params):
            order = orders[row.order_id]
            if order is not None:
                order.refunds[row.refund_id] = (row.amount_minor, row.event_id)
    return orders


async def write(
    conn: AsyncConnection, before: dict[str, Order | None], after: dict[str, Order | None]
) -> None:
    """Write the orders that changed from ``before`` to ``after``, and their new refunds.

    Every order of ``before`` has a row (a placeholder for the unknown ones); the
    placeholders that stayed unknown are deleted.
    """
    unknown = sorted(k for k, order in before.items() if order is None and after.get(k) is None)
    if unknown:
        await conn.execute(_DROP_PLACEHOLDERS, {"order_ids": unknown})
    changed = sorted(
        k for k, order in after.items() if order is not None and order != before.get(k)
    )
    if not changed:
        return
    rows = [(k, order) for k in changed if (order := after[k]) is not None]
    await conn.execute(
        _WRITE_ORDERS,
        {
            "order_ids": changed,
            "customer_ids": [o.customer_id for _, o in rows],
            "currencies": [o.currency for _, o in rows],
            "amounts": [o.amount_minor for _, o in rows],
            "refunded": [o.refunded_minor for _, o in rows],
            "completed": [o.completed_event_id for _, o in rows],
        },
    )
    new_refunds = []
    for k, order in rows:
        previous = before.get(k)
        known = previous.refunds if previous is not None else {}
        for refund_id, (amount, event_id) in sorted(order.refunds.items()):
            if refund_id not in known:
                new_refunds.append((k, refund_id, amount, event_id))
    if new_refunds:
        await conn.execute(
            _WRITE_REFUNDS,
            {
                "order_ids": [r[0] for r in new_refunds],
                "refund_ids": [r[1] for r in new_refunds],
                "amounts": [r[2] for r in new_refunds],
                "event_ids": [r[3] for r in new_refunds],
            },
        )


async def erase_customer(conn: AsyncConnection, customer_id: str, pseudonym: str) -> int:
    """Put the collector's pseudonym in place of an erased customer's id on their orders."""
    result = await conn.execute(_ERASE, {"customer_id": customer_id, "pseudonym": pseudonym})
    return int(result.rowcount)


class LedgerSession:
    """One request's turn at the ledger, inside its transaction (see :class:`OrderLedger`)."""

    def __init__(
        self, conn: AsyncConnection, orders: dict[str, Order | None], pseudonyms: dict[str, str]
    ) -> None:
        self._conn = conn
        self._before = orders
        self._pseudonyms = pseudonyms

    def _as_stored(self, fact: OrderFact) -> OrderFact:
        return _stored(fact, self._pseudonyms)

    def decide(self, facts: Sequence[OrderFact]) -> list[Decision]:
        """Decide ``facts`` in order; nothing is written yet."""
        orders = {k: v.copy() if v else None for k, v in self._before.items()}
        return decide(orders, [self._as_stored(f) for f in facts])

    def decide_stored(self, facts: Sequence[OrderFact], stored: Sequence[bool]) -> list[Decision]:
        """Decide ``facts`` again, as if only the ``stored`` ones among them were recorded."""
        orders = {k: v.copy() if v else None for k, v in self._before.items()}
        return decide_stored(orders, [self._as_stored(f) for f in facts], stored)

    async def commit(self, facts: Sequence[OrderFact]) -> None:
        """Write ``facts`` (the new ones the broker acknowledged), in order, and commit."""
        after = {k: v.copy() if v else None for k, v in self._before.items()}
        decide(after, [self._as_stored(f) for f in facts])
        await write(self._conn, self._before, after)
        await self._conn.commit()

    async def close(self) -> None:
        """Release the connection; what was not committed is rolled back."""
        await self._conn.close()


class LedgerBusy(Exception):
    """The orders stayed locked by other requests past the lock timeout, or no database
    connection was free in time: the caller should retry shortly."""


# Longest wait for an order's lock (another request holds it across its produce) or for the
# erasure lock: past it the request is answered 503, rather than queueing without bound.
LOCK_TIMEOUT_SECONDS: Final = 2.0
# Longest run of one ledger statement (a batch's reads and writes take milliseconds).
STATEMENT_TIMEOUT_SECONDS: Final = 5.0
# What a ledger transaction may sit idle (across the produce) beyond the produce's own
# timeout before Postgres ends it: a hung request then holds no order's lock for good.
IDLE_MARGIN_SECONDS: Final = 10.0

_TIMEOUTS = sa.text("""
SELECT set_config('lock_timeout', :lock, true),
       set_config('statement_timeout', :statement, true),
       set_config('idle_in_transaction_session_timeout', :idle, true)
""")


class OrderLedger:
    """Opens one transaction per request over the orders its events name."""

    def __init__(
        self,
        engine: AsyncEngine,
        hasher: Hasher,
        lock_timeout: float = LOCK_TIMEOUT_SECONDS,
        produce_timeout: float = 10.0,
    ) -> None:
        self._engine = engine
        self._hasher = hasher
        self._timeouts = {
            "lock": _ms(lock_timeout),
            "statement": _ms(STATEMENT_TIMEOUT_SECONDS),
            "idle": _ms(produce_timeout + IDLE_MARGIN_SECONDS),
        }

    async def begin(self, facts: Sequence[OrderFact]) -> LedgerSession:
        """Lock and read the orders of ``facts`` in a new transaction.

        The session commits only what :meth:`LedgerSession.commit` is given; closing it
        otherwise rolls back, so nothing is reserved for an event the broker did not
        acknowledge. Raises :class:`LedgerBusy` when a lock or a pooled connection is not
        had in time.
        """
        try:
            conn = await self._engine.connect()
        except sa.exc.TimeoutError:
            raise LedgerBusy("no database connection was free in time") from None
        try:
            await conn.begin()
            # For this transaction only: a lock not had in time is busy (503); a statement
            # or an idle spell past its bound (a hung request) ends it and frees its rows.
            await conn.execute(_TIMEOUTS, self._timeouts)
            # Shared: an erasure (exclusive) waits for this transaction, and one that
            # committed first has its pseudonyms read here.
            await erasure.lock(conn, SERVICE, exclusive=False)
            pseudonyms = await erasure.pseudonyms_of(
                conn, self._hasher, SERVICE, {f.customer_id for f in facts}
            )
            stored = [_stored(f, pseudonyms) for f in facts]
            placeholders = await place(conn, stored)
            orders = await read(conn, stored, placeholders)
        except BaseException as exc:
            await conn.close()
            if _lock_timed_out(exc):
                raise LedgerBusy("the orders are locked by another request") from None
            raise
        return LedgerSession(conn, orders, pseudonyms)


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def _stored(fact: OrderFact, pseudonyms: dict[str, str]) -> OrderFact:
    pseudonym = pseudonyms.get(fact.customer_id)
    return fact if pseudonym is None else replace(fact, customer_id=pseudonym)


def _lock_timed_out(exc: BaseException) -> bool:
    error = postgres_error(exc)
    return error is not None and error.sqlstate == "55P03"  # lock_not_available
