"""Erasing a customer everywhere, for good: the tables and steps every service shares.

One erasure travels like this:

1. The collector's ``DELETE /v1/customers/{id}`` records the erasure in ``erasures`` (one row
   per service, its own complete), erases its own state, and produces a ``customer.erased``
   event on every customer topic, keyed by the customer id.
2. Each consumer meets the event on each partition after the customer's earlier events.
   :func:`apply_in_order` applies the events before it, then erases (once per service:
   :func:`complete` marks the service's row), then applies the events after it. Erasing
   records the customer in ``erased_customers`` with a random pseudonym, under the
   service's name and a keyed hash of their id (never the id itself).
3. Any later event for the customer (a resend, a late webhook, a copy still in Kafka) is
   applied pseudonymised: :func:`pseudonymise` replaces the id with the customer's
   pseudonym and drops free text, so the original id is never stored again. Each service
   has its own pseudonym and starts pseudonymising only once it has erased: before that,
   its rows still carry the id, and one customer's rows never end up split between the id
   and a pseudonym that another service chose.

A batch that erases takes its service's :func:`lock` exclusively, every other batch takes
it shared: a batch still in flight (the scorer keeps two) commits before the erasure runs,
and a batch that starts after it sees the customer as erased. Each service has its own
lock, so an erasure in one never stalls the other, and a batch whose erasures that service
has already completed (a redelivery) takes it shared.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, Final

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.events import CustomerErased, ResponseSubmitted, TouchpointEvent
from shared.privacy import Hasher
from shared.scoring import in_utc

# Every service that holds customer data, in the order GET /v1/erasures/{id} lists them.
SERVICES: Final = ("collector", "scorer", "alerting")

metadata = sa.MetaData()
erasures = sa.Table(
    "erasures",
    metadata,
    sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("service", sa.Text, primary_key=True),
    sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("completed_at", sa.DateTime(timezone=True)),
)
erased_customers = sa.Table(
    "erased_customers",
    metadata,
    sa.Column("service", sa.Text, primary_key=True),
    sa.Column("id_hash", sa.LargeBinary, primary_key=True),
    sa.Column("pseudonym", sa.Text, nullable=False, unique=True),
    sa.Column("erased_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
)

CustomerEvent = ResponseSubmitted | TouchpointEvent

# Advisory locks of the two-int4 form, a key space apart from the one-bigint locks; the
# second int is this base plus the service's place in SERVICES.
_LOCK = (0x6378, 0x4552)


async def lock(conn: AsyncConnection, service: str, *, exclusive: bool) -> None:
    """Take ``service``'s erasure lock for this transaction: exclusive to erase, else shared."""
    function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    key = _LOCK[1] + SERVICES.index(service)
    await conn.execute(sa.text(f"SELECT {function}({_LOCK[0]}, {key})"))


async def pending(conn: AsyncConnection, service: str, erasure_ids: Iterable[uuid.UUID]) -> bool:
    """Return whether ``service`` has yet to complete any of ``erasure_ids``."""
    ids = set(erasure_ids)
    if not ids:
        return False
    done = await conn.scalar(
        sa.select(sa.func.count()).where(
            erasures.c.service == service,
            erasures.c.completed_at.is_not(None),
            erasures.c.id == sa.any_(sa.bindparam("ids", list(ids), type_=pg.ARRAY(pg.UUID))),
        )
    )
    return done != len(ids)


async def pseudonym_for(
    conn: AsyncConnection, hasher: Hasher, service: str, customer_id: str
) -> str:
    """Return the erased customer's pseudonym in ``service``, recording them erased if new."""
    stmt = pg.insert(erased_customers).values(
        service=service, id_hash=hasher.customer(customer_id), pseudonym=f"erased:{uuid.uuid4()}"
    )
    upsert = stmt.on_conflict_do_update(
        index_elements=[erased_customers.c.service, erased_customers.c.id_hash],
        set_={"id_hash": stmt.excluded.id_hash},
    ).returning(erased_customers.c.pseudonym)
    pseudonym: str = (await conn.execute(upsert)).scalar_one()
    return pseudonym


async def pseudonyms_of(
    conn: AsyncConnection, hasher: Hasher, service: str, customer_ids: Iterable[str]
) -> dict[str, str]:
    """Return the pseudonym of each of ``customer_ids`` that ``service`` has erased."""
    by_hash = {hasher.customer(c): c for c in set(customer_ids)}
    if not by_hash:
        return {}
    rows = await conn.execute(
        sa.select(erased_customers.c.id_hash, erased_customers.c.pseudonym).where(
            erased_customers.c.service == service,
            # One array parameter, not one per customer: any batch size stays under
            # the 32,767 bind parameters of a statement.
            erased_customers.c.id_hash
            == sa.any_(sa.bindparam("id_hashes", list(by_hash), type_=pg.ARRAY(sa.LargeBinary))),
        )
    )
    return {by_hash[bytes(row.id_hash)]: row.pseudonym for row in rows}


async def record(conn: AsyncConnection, erasure_id: uuid.UUID, requested_at: datetime) -> None:
    """Record a new erasure: the collector's part complete, the others pending."""
    await conn.execute(
        erasures.insert(),
        [
            {
                "id": erasure_id,
                "service": service,
                "requested_at": requested_at,
                "completed_at": requested_at if service == "collector" else None,
            }
            for service in SERVICES
        ],
    )


async def complete(
    conn: AsyncConnection, erasure_id: uuid.UUID, service: str, requested_at: datetime
) -> bool:
    """Mark ``service``'s part of an erasure complete; return False if it already was."""
    stmt = pg.insert(erasures).values(
        id=erasure_id, service=service, requested_at=requested_at, completed_at=sa.func.now()
    )
    upsert = stmt.on_conflict_do_update(
        index_elements=[erasures.c.id, erasures.c.service],
        set_={"completed_at": sa.func.now()},
        where=erasures.c.completed_at.is_(None),
    ).returning(erasures.c.id)
    return (await conn.execute(upsert)).first() is not None


async def status(conn: AsyncConnection, erasure_id: uuid.UUID) -> list[dict[str, Any]]:
    """Return each service's row of an erasure (empty for an unknown id)."""
    rows = await conn.execute(
        sa.select(erasures.c.service, erasures.c.requested_at, erasures.c.completed_at).where(
            erasures.c.id == erasure_id
        )
    )
    return [dict(row._mapping) for row in rows]


def pseudonymise(event: CustomerEvent, pseudonym: str) -> CustomerEvent:
    """Return ``event`` with the pseudonym for its customer and without its free text."""
    if isinstance(event, ResponseSubmitted):
        return event.model_copy(update={"customer_id": pseudonym, "comment": None})
    return event.model_copy(update={"customer_id": pseudonym, "attributes": {}})


Apply = Callable[[list[CustomerEvent]], Awaitable[None]]
Erase = Callable[[str, str], Awaitable[None]]


async def apply_in_order(
    conn: AsyncConnection,
    hasher: Hasher,
    service: str,
    events: Sequence[BaseModel],
    apply: Apply,
    erase: Erase,
) -> None:
    """Apply a batch in one transaction: events and erasures in the order they came.

    ``apply`` stores customer events (already pseudonymised where the customer is erased);
    ``erase(customer_id, pseudonym)`` erases one customer's data in this service.
    """
    erasing = (e.event_id for e in events if isinstance(e, CustomerErased))
    exclusive = await pending(conn, service, erasing)
    await lock(conn, service, exclusive=exclusive)
    if not exclusive:
        # Every erasure here was completed before (a redelivery, or its copy on the other
        # customer topic): nothing is erased, and each event is pseudonymised as it would be
        # in any segment. One segment takes the batch's locks once, in their one order; two
        # would take bucket rows and orders after customers, and could wait in a cycle with
        # another batch in flight.
        customer_events = [e for e in events if isinstance(e, ResponseSubmitted | TouchpointEvent)]
        await _apply_segment(conn, hasher, service, customer_events, apply)
        return
    segment: list[CustomerEvent] = []
    for event in events:
        if isinstance(event, CustomerErased):
            await _apply_segment(conn, hasher, service, segment, apply)
            segment = []
            # A time past the calendar in UTC is the event's fault, not the driver's
            # OverflowError (retried for ever).
            requested_at = in_utc(event.requested_at, "requested_at")
            if await complete(conn, event.event_id, service, requested_at):
                pseudonym = await pseudonym_for(conn, hasher, service, event.customer_id)
                await erase(event.customer_id, pseudonym)
        elif isinstance(event, ResponseSubmitted | TouchpointEvent):
            segment.append(event)
    await _apply_segment(conn, hasher, service, segment, apply)


async def _apply_segment(
    conn: AsyncConnection,
    hasher: Hasher,
    service: str,
    events: list[CustomerEvent],
    apply: Apply,
) -> None:
    if not events:
        return
    erased = await pseudonyms_of(conn, hasher, service, (e.customer_id for e in events))
    await apply(
        [pseudonymise(e, erased[e.customer_id]) if e.customer_id in erased else e for e in events]
    )
