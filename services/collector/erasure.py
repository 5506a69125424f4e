"""Erasing a customer: the collector's own state at once, every other service through Kafka.

The collector consumes no topic, so it applies an erasure to its own state in the DELETE
call itself, in the transaction that records the erasure: the customer's invitations go
(their opt-outs stay, as keyed hashes, so that a STOP is honoured for good), and a later
invitation for them is kept under a pseudonym (``shared/erasure.py``). Their orders in the
order ledger stay, under the collector's pseudonym for them, so that a refund is still
capped by its order and a resent order still counts once. The
transaction commits only once the broker has acknowledged ``customer.erased`` on every
customer topic, so a 202 means every service will erase, and a 503 means nothing happened.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

from aiokafka.errors import KafkaError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.collector import invitations, orders
from shared import erasure
from shared.events import CustomerErased, utcnow
from shared.kafka import HEADER_SCHEMA, HEADER_TYPE, encode
from shared.privacy import Hasher
from shared.runtime import ProducerHandle
from shared.topics import Topic, partition_key

# Every topic that carries customer events: on each, the erasure follows the customer's events.
CUSTOMER_TOPICS = (Topic.RESPONSES, Topic.TOUCHPOINTS)


class NotAcknowledged(Exception):
    """The broker did not acknowledge the erasure event; nothing was erased."""


@dataclass(frozen=True)
class Erasure:
    """An accepted erasure."""

    event: CustomerErased
    invitations_deleted: int


async def erase_customer(
    engine: AsyncEngine, producer: ProducerHandle, hasher: Hasher, customer_id: str
) -> Erasure:
    """Erase the collector's state of a customer and tell every service to erase theirs."""
    event = CustomerErased(event_id=uuid.uuid4(), requested_at=utcnow(), customer_id=customer_id)
    async with engine.begin() as conn:
        # Exclusive: an order ledger transaction in flight (shared) commits first, and one
        # that starts after this sees the customer erased.
        await erasure.lock(conn, "collector", exclusive=True)
        await erasure.record(conn, event.event_id, event.requested_at)
        pseudonym = await erasure.pseudonym_for(conn, hasher, "collector", customer_id)
        deleted = await invitations.erase_customer(conn, customer_id)
        await orders.erase_customer(conn, customer_id, pseudonym)
        # Raising here rolls all of it back.
        await _produce(producer, event)
    return Erasure(event, deleted)


async def _produce(handle: ProducerHandle, event: CustomerErased) -> None:
    if not handle.ready:
        raise NotAcknowledged("not connected to Kafka yet")
    settings = handle.settings
    headers = [
        (HEADER_TYPE, event.type.encode()),
        (HEADER_SCHEMA, str(event.schema_version).encode()),
    ]
    try:
        async with asyncio.timeout(settings.produce_timeout_seconds):
            futures = []
            for topic in CUSTOMER_TOPICS:
                future = await handle.producer.send(
                    settings.topic(topic),
                    value=encode(event),
                    key=partition_key(event.customer_id),
                    headers=headers,
                )
                # A late outcome is retrieved, so that asyncio does not warn about it.
                future.add_done_callback(_retrieve)
                futures.append(future)
            await asyncio.gather(*futures)
    except (KafkaError, TimeoutError) as exc:
        raise NotAcknowledged(type(exc).__name__) from None


def _retrieve(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()


async def status(engine: AsyncEngine, erasure_id: uuid.UUID) -> list[dict[str, Any]]:
    """Return each service's part of an erasure (empty for an unknown id)."""
    async with engine.connect() as conn:
        rows = await erasure.status(conn, erasure_id)
    order = {service: i for i, service in enumerate(erasure.SERVICES)}
    return sorted(rows, key=lambda r: order.get(str(r["service"]), len(order)))
