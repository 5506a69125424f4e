"""Turning accepted payloads into wire events, and producing them exactly as accepted."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, TypeGuard

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError

from services.collector import metrics
from services.collector.idempotency import (
    Claim,
    EventIds,
    IdempotencyStore,
    Verdict,
    batch_fingerprint,
    caller_key,
    item_key,
)
from services.collector.orders import LedgerBusy, LedgerSession, OrderFact, OrderLedger
from services.collector.orders import Verdict as OrderVerdict
from services.collector.schemas import BatchResult, EventIn, ItemResult, ResponseIn, Submitted
from shared.db import is_transient
from shared.events import (
    ORDER_TYPES,
    ResponseSubmitted,
    Segments,
    TouchpointEvent,
    resolve_scale,
    utcnow,
)
from shared.http import FieldErrors, error_body
from shared.kafka import HEADER_SCHEMA, HEADER_TYPE, encode
from shared.money import from_minor, to_minor
from shared.runtime import ProducerHandle
from shared.settings import CollectorSettings, KafkaSettings
from shared.topics import Topic, partition_key

log = logging.getLogger(__name__)

Event = ResponseSubmitted | TouchpointEvent


class Status(StrEnum):
    """What became of one submitted item."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    UNAVAILABLE = "unavailable"
    CONFLICT = "conflict"


# Why an item was not stored, as a 503 says it.
BROKER_MISSED = "the broker did not acknowledge in time"
LEDGER_DOWN = "the order ledger (Postgres) could not be reached"
LEDGER_BUSY = (
    "the order ledger is busy: another request holds these orders, or no database "
    "connection was free"
)
FIRST_MISSED = "the order event it repeats, earlier in this batch, was not acknowledged"
EARLIER_MISSED = (
    "an order event earlier in this batch, which this one was judged after, was not acknowledged"
)
SAME_KEY_MISSED = "the item with the same key earlier in this batch was not acknowledged"


@dataclass(frozen=True)
class Outcome:
    """The result for one item: its event id and status, and what refused it (``field``,
    ``detail``) when the order ledger did (a conflict, or a rejection), with the ledger's
    ``reason`` (a metric label); ``cause`` says why an unavailable item was not stored."""

    event_id: uuid.UUID
    status: Status
    error: dict[str, str] | None = None
    reason: str = ""
    cause: str | None = None


@dataclass(frozen=True)
class Item:
    """An event to produce and the idempotency key it came with, if any.

    ``fingerprint`` is the request content the key was used with (None for a vendor id,
    which names its event alone); ``batch`` is the claim key of the batch the item was
    keyed under; ``named_by`` is the request field that carried the key, for a conflict.
    ``order_amount_minor`` is the whole order's amount a refund's source states (Stripe).
    """

    event: Event
    key: str | None
    fingerprint: bytes | None = None
    batch: str | None = None
    named_by: str = "Idempotency-Key"
    order_amount_minor: int | None = None


def response_event(
    payload: ResponseIn, *, event_id: uuid.UUID, received_at: datetime, source: str
) -> ResponseSubmitted:
    """Build the wire event for an accepted response."""
    return ResponseSubmitted(
        event_id=event_id,
        occurred_at=payload.occurred_at or received_at,
        received_at=received_at,
        source=source,
        channel=payload.channel,
        customer_id=payload.customer_id,
        metric=payload.metric,
        scale=resolve_scale(payload.metric, payload.scale),
        score=payload.score,
        survey_type=payload.survey_type,
        touchpoint=payload.touchpoint,
        submission_id=payload.submission_id,
        ticket_id=payload.ticket_id,
        comment=payload.comment,
        reasons=tuple(payload.reasons),
        segments=wire_segments(payload.segments),
        locale=payload.locale,
    )


def touchpoint_event(
    payload: EventIn, *, event_id: uuid.UUID, received_at: datetime, source: str
) -> TouchpointEvent:
    """Build the wire event for an accepted touchpoint event."""
    return TouchpointEvent(
        event_id=event_id,
        occurred_at=payload.occurred_at or received_at,
        received_at=received_at,
        source=source,
        channel=payload.channel,
        customer_id=payload.customer_id,
        type=payload.type,
        ticket_id=payload.ticket_id,
        priority=payload.priority,
        status=payload.status,
        segments=wire_segments(payload.segments),
        attributes=payload.attributes,
        order_id=payload.order_id,
        refund_id=payload.refund_id,
        currency=payload.currency,
        amount=in_currency(payload.amount, payload.currency),
    )


def wire_segments(segments: Segments) -> Segments:
    """Return ``segments`` as the wire event's own model (a request's are ``SegmentsIn``).

    One shared instance per set of values: segments repeat from event to event, the model
    is frozen, and validating it again cost a third of building a wire event.
    """
    return _wire_segments(segments.location, segments.product, segments.business_unit)


@functools.lru_cache(maxsize=1024)
def _wire_segments(
    location: str | None, product: str | None, business_unit: str | None
) -> Segments:
    return Segments(location=location, product=product, business_unit=business_unit)


def in_currency(amount: Decimal | None, currency: str | None) -> Decimal | None:
    """Return ``amount`` written with exactly its currency's decimals ("12.5" → "12.50")."""
    if amount is None or currency is None:
        return amount
    return from_minor(to_minor(amount, currency), currency)


# Fields EventIn gained with orders. Left out of a fingerprint while unset, so that every
# body sent before them keeps its fingerprint: a key stored before the upgrade still matches
# its resend instead of conflicting (tests/unit/test_event_ids.py pins one).
_ORDER_FIELDS = ("order_id", "refund_id", "currency", "amount")


def request_content(payload: ResponseIn | EventIn) -> dict[str, Any]:
    """Return what an idempotency fingerprint covers of a validated payload."""
    content = payload.model_dump()
    if isinstance(payload, EventIn):
        for name in _ORDER_FIELDS:
            if content[name] is None:
                del content[name]
    return content


def configured_set_errors(payload: ResponseIn, settings: CollectorSettings) -> list[dict[str, str]]:
    """Return the errors of values outside the configured reason codes and segment sets."""
    errors = []
    allowed = set(settings.reason_codes)
    for i, reason in enumerate(payload.reasons):
        if allowed and reason not in allowed:
            errors.append(
                {
                    "field": f"reasons.{i}",
                    "detail": f"reason {reason!r} is not one of the configured reason codes",
                }
            )
    for name, values in (
        ("location", settings.locations),
        ("product", settings.products),
        ("business_unit", settings.business_units),
    ):
        value = getattr(payload.segments, name)
        if values and value is not None and value not in values:
            errors.append(
                {
                    "field": f"segments.{name}",
                    "detail": f"{name} {value!r} is not one of the configured values",
                }
            )
    return errors


def _topic(event: Event) -> Topic:
    return Topic.RESPONSES if isinstance(event, ResponseSubmitted) else Topic.TOUCHPOINTS


def _is_order(event: Event) -> TypeGuard[TouchpointEvent]:
    return isinstance(event, TouchpointEvent) and event.type in ORDER_TYPES


class Ingest:
    """Produces events once each: duplicates inside the window are answered, not produced."""

    def __init__(
        self,
        producer: ProducerHandle,
        store: IdempotencyStore,
        settings: CollectorSettings,
        ids: EventIds,
        orders: OrderLedger | None = None,
    ) -> None:
        self._producer = producer
        self.store = store
        self.settings = settings
        self.ids = ids
        self.orders = orders

    def resolve_event_id(
        self,
        source: str,
        event_id: uuid.UUID | None,
        key: str | None,
        caller: str | None = None,
        content: bytes | None = None,
    ) -> tuple[uuid.UUID, str | None]:
        """Return the event id and the idempotency key of a submission.

        A client's event id is its own key (global, as event ids are); otherwise an
        ``Idempotency-Key`` names the event with the body's fingerprint ``content``, scoped
        to ``caller`` (the API key's id), or a vendor id does, scoped to its source
        (``caller`` None); with neither, the event gets a fresh id and needs no key.
        """
        if event_id is not None:
            return event_id, f"{source}:event:{event_id}"
        if key is not None and caller is not None:
            assert content is not None
            return self.ids.for_key(source, caller, key, content), caller_key(source, caller, key)
        if key is not None:
            return self.ids.for_vendor(source, key), f"{source}:key:{key}"
        return uuid.uuid4(), None

    async def submit(
        self, items: Sequence[Item], *, source: str, batch: Claim | None = None
    ) -> list[Outcome]:
        """Produce ``items`` and wait for the broker's acks; return one outcome per item.

        ``batch`` is the claim of the batch key that items with ``batch`` set were keyed under.
        """
        first_of_key: dict[str, int] = {}
        for i, item in enumerate(items):
            if item.key is not None:
                first_of_key.setdefault(item.key, i)
        claims = [
            Claim(key, items[i].event.event_id, items[i].fingerprint, items[i].batch)
            for key, i in first_of_key.items()
        ]
        if batch is not None and any(item.batch == batch.key for item in items):
            claims.insert(0, batch)  # before its items, as IdempotencyStore.claim requires
        verdicts = dict(zip([c.key for c in claims], await self.store.claim(claims), strict=True))
        judged = _Judged(
            event_ids=[item.event.event_id for item in items],
            errors=[None] * len(items),
            reasons=[""] * len(items),
            causes=[None] * len(items),
        )
        statuses: list[Status | None] = []
        for i, item in enumerate(items):
            status = None if item.key is None else _status(items, first_of_key, i, verdicts)
            statuses.append(status)
            if status is Status.DUPLICATE and item.key is not None:
                first = first_of_key[item.key]
                if first != i and verdicts[item.key] is Verdict.NEW:
                    judged.same_key[i] = first  # its answer is the first's, known later
        facts = {
            i: OrderFact.of(item.event, item.order_amount_minor)
            for i, item in enumerate(items)
            if statuses[i] is None and _is_order(item.event)
        }
        ledger = await self._open_ledger(facts, statuses, judged)
        try:
            if ledger is not None:
                self._decide(ledger, facts, statuses, judged)
            to_send = [i for i, status in enumerate(statuses) if status is None]
            sent = await self._produce([items[i].event for i in to_send])
            for i, ok in zip(to_send, sent, strict=True):
                statuses[i] = Status.ACCEPTED if ok else Status.UNAVAILABLE
                judged.causes[i] = None if ok else BROKER_MISSED
            acked = [i for i, ok in zip(to_send, sent, strict=True) if ok]
            if ledger is not None:
                _judge_again(ledger, facts, statuses, judged, set(acked))
            # A duplicate of an event this request itself sent stands only if that was acked.
            for i, first in judged.repeats.items():
                if statuses[first] is not Status.ACCEPTED:
                    statuses[i] = Status.UNAVAILABLE
                    judged.causes[i] = FIRST_MISSED
            _follow_first_of_key(statuses, judged)
            if ledger is not None:
                await self._record(ledger, [facts[i] for i in acked if i in facts])
        finally:
            if ledger is not None:
                await _close(ledger)
        batch_new = batch is not None and verdicts.get(batch.key) is Verdict.NEW
        await self._settle_keys(items, batch if batch_new else None, statuses, acked, judged)
        outcomes = []
        counted: Counter[tuple[str, str, str]] = Counter()
        for i, (item, status) in enumerate(zip(items, statuses, strict=True)):
            assert status is not None
            counted[item.event.type.split(".")[0], item.event.channel.value, status.value] += 1
            outcomes.append(
                Outcome(
                    judged.event_ids[i],
                    status,
                    judged.errors[i],
                    judged.reasons[i],
                    judged.causes[i],
                )
            )
        # Once per label set, not per item: a batch of 500 otherwise looks its labels up 500 times.
        for (kind, channel, outcome), n in counted.items():
            metrics.EVENTS.labels(source=source, kind=kind, channel=channel, outcome=outcome).inc(n)
        return outcomes

    async def _settle_keys(
        self,
        items: Sequence[Item],
        batch: Claim | None,
        statuses: list[Status | None],
        acked: list[int],
        judged: _Judged,
    ) -> None:
        """Mark the acknowledged keys produced, and release or keep the ledger's refusals.

        A key whose request the order ledger refused (422, 409) is released, as a request
        refused by validation never claimed one, so a corrected resend under it is new. A
        batch item stays claimed whatever became of it: released, it would look foreign to
        its batch key on a resend and conflict. The items the broker missed, and those the
        ledger refused or answered duplicate, keep their claims as long as the batch's, so
        that a resend finds each of them again. A batch that stored nothing is released with
        all its items, as a refused request is, so that a corrected resend under its key is
        new. ``batch`` is None unless this request claimed it afresh: a key produced before,
        or used for something else, is not this request's to release.
        """
        produced = [k for i in acked if (k := items[i].key)]
        missed: list[str] = []
        released = [
            k
            for i, item in enumerate(items)
            if i in judged.ledger_refused and item.batch is None and (k := item.key)
        ]
        if batch is not None and not any(items[i].batch == batch.key for i in acked):
            released += [batch.key] + [
                k for item in items if item.batch == batch.key and (k := item.key)
            ]
        elif batch is not None:
            produced.append(batch.key)
            acked_set = set(acked)
            missed = [
                k
                for i, item in enumerate(items)
                if item.batch == batch.key
                and i not in acked_set
                and (
                    statuses[i] is Status.UNAVAILABLE
                    or i in judged.ledger_refused
                    or i in judged.ledger_duplicates
                )
                and (k := item.key)
            ]
        # After the broker's answer nothing here may fail the request: the events stand.
        try:
            await self.store.unclaim(released)
        except Exception as exc:
            _unsettled("release", exc)
        try:
            await self.store.mark_produced(produced, missed)
        except Exception as exc:
            _unsettled("mark", exc)

    async def _open_ledger(
        self, facts: dict[int, OrderFact], statuses: list[Status | None], judged: _Judged
    ) -> LedgerSession | None:
        """Open the order ledger for ``facts``; when Postgres is down or the orders stay
        locked, they are unavailable.

        Unlike an idempotency claim, an order cannot be produced unchecked: a refund's cap
        holds only if the ledger saw it, so the caller is told to retry.
        """
        if not facts or self.orders is None:
            return None
        try:
            return await self.orders.begin(list(facts.values()))
        except LedgerBusy:
            cause, outcome = LEDGER_BUSY, "busy"
            log.warning("order ledger busy; %d order event(s) answered 503", len(facts))
        except (DBAPIError, OSError) as exc:
            if not is_transient(exc):
                raise
            cause, outcome = LEDGER_DOWN, "unavailable"
            log.warning("order ledger unreachable; %d order event(s) answered 503", len(facts))
        for i, fact in facts.items():
            statuses[i] = Status.UNAVAILABLE
            judged.causes[i] = cause
            metrics.ORDERS.labels(type=fact.type, outcome=outcome).inc()
        return None

    @staticmethod
    def _decide(
        ledger: LedgerSession,
        facts: dict[int, OrderFact],
        statuses: list[Status | None],
        judged: _Judged,
    ) -> None:
        decisions = ledger.decide(list(facts.values()))
        sent_here: dict[uuid.UUID, int] = {}  # the new events of this request, by event id
        for (i, fact), decision in zip(facts.items(), decisions, strict=True):
            metrics.ORDERS.labels(type=fact.type, outcome=decision.reason).inc()
            judged.reasons[i] = decision.reason
            if decision.verdict is OrderVerdict.NEW:
                sent_here[fact.event_id] = i
            elif decision.verdict is OrderVerdict.DUPLICATE:
                assert decision.event_id is not None
                statuses[i] = Status.DUPLICATE
                judged.event_ids[i] = decision.event_id
                judged.ledger_duplicates.add(i)
                if decision.event_id in sent_here:
                    judged.repeats[i] = sent_here[decision.event_id]
            else:
                assert decision.field is not None
                assert decision.detail is not None
                conflict = decision.verdict is OrderVerdict.CONFLICT
                statuses[i] = Status.CONFLICT if conflict else Status.REJECTED
                judged.errors[i] = {"field": decision.field, "detail": decision.detail}
                judged.ledger_refused.add(i)

    async def _record(self, ledger: LedgerSession, acked: list[OrderFact]) -> None:
        """Record the acknowledged order events; the broker has them whatever happens here.

        A failed commit is retried once in a fresh transaction (its own connection, the
        first one closed so that its locks are gone): the orders are read and judged again,
        and an event recorded meanwhile comes back a duplicate and is not written twice.
        When that fails too, it is logged by its kind alone, never its message (it may quote
        an order's values), and counted: the events stand and are answered 2xx. Counting
        does not suffer: the scorer and alerting count an order once by its order_id and a
        refund once by (order_id, refund_id). What is lost is the ledger's memory of them,
        so a later resend is produced again (and dropped downstream by the same keys), and a
        refund of them is capped less. With nothing acked there is nothing to lose: the
        placeholders roll back with the transaction.
        """
        try:
            await ledger.commit(acked)
            return
        except Exception as exc:
            if not acked:
                return
            log.warning(
                "order ledger could not record %d acknowledged order event(s), retrying: %s",
                len(acked),
                type(exc).__name__,
            )
        await _close(ledger)
        assert self.orders is not None
        try:
            again = await self.orders.begin(acked)
            try:
                await again.commit(acked)
            finally:
                await _close(again)
        except Exception as exc:
            log.error(
                "order ledger could not record %d acknowledged order event(s): %s",
                len(acked),
                type(exc).__name__,
            )
            metrics.ORDER_LEDGER_MISSED.inc(len(acked))

    async def _produce(self, events: Sequence[Event]) -> list[bool]:
        if not events:
            return []
        if not self._producer.ready:
            return [False] * len(events)
        producer = self._producer.producer
        settings = self._producer.settings
        started = time.perf_counter()
        # One slot per event, filled as its record (or its batch) is handed to the producer:
        # if a later send fails, the records already sent still count once the broker acks.
        futures: list[asyncio.Future[object] | None] = [None] * len(events)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.produce_timeout_seconds
        try:
            async with asyncio.timeout_at(deadline):
                if len(events) >= BATCHED_FROM:
                    await _send_batches(producer, settings, events, futures)
                else:
                    for i, event in enumerate(events):
                        future = await producer.send(
                            settings.topic(_topic(event)),
                            value=encode(event),
                            key=partition_key(event.customer_id),
                            headers=_headers(event),
                        )
                        # An ack that arrives after we answered 503 is deduped downstream
                        # when the resend carries the same event_id or Idempotency-Key, as
                        # the 503 asks (an item without either gets a new id: a repeat);
                        # its outcome is retrieved here so asyncio does not warn.
                        future.add_done_callback(_retrieve)
                        futures[i] = future
                await asyncio.wait({f for f in futures if f is not None})
        except Exception as exc:
            # A send failed (a KafkaError, the deadline, or anything else aiokafka raises
            # while appending, such as an unknown partition): wait, within what is left of
            # the timeout, for those already sent, so they are answered as stored.
            if not isinstance(exc, KafkaError | TimeoutError):
                log.warning("producing failed (%s); answering what was acked", type(exc).__name__)
            sent = {f for f in futures if f is not None and not f.done()}
            left = deadline - loop.time()
            if sent and left > 0:
                await asyncio.wait(sent, timeout=left)
        ok = [
            f is not None and f.done() and not f.cancelled() and f.exception() is None
            for f in futures
        ]
        if any(ok):
            metrics.PRODUCE_SECONDS.observe(time.perf_counter() - started)
        return ok


# From this many events, a request's records go to the broker as one batch per partition.
BATCHED_FROM = 8
_PARTITIONER = DefaultPartitioner()


def _headers(event: Event) -> list[tuple[str, bytes]]:
    return _headers_of(event.type, event.schema_version)


@functools.lru_cache(maxsize=256)
def _headers_of(event_type: str, schema_version: int) -> list[tuple[str, bytes]]:
    # Shared by every record of the type: the producer only reads a record's headers.
    return [(HEADER_TYPE, event_type.encode()), (HEADER_SCHEMA, str(schema_version).encode())]


async def _send_batches(
    producer: AIOKafkaProducer,
    settings: KafkaSettings,
    events: Sequence[Event],
    future_of: list[asyncio.Future[object] | None],
) -> None:
    """Send ``events`` as record batches, one or more per partition, setting
    ``future_of[i]`` to event ``i``'s batch's future (which resolves when the broker acked
    the whole batch) as soon as that batch is submitted, so that a later failure leaves
    the futures of the batches already sent.

    The records go to the partitions ``producer.send`` would choose (the producer's default
    partitioner: murmur2 of the key, over the topic's partitions in order), in order within
    each; a batch costs the producer about what one record does, where ``send`` costs that
    per record.
    """
    partitions: dict[str, list[int]] = {}
    by_partition: dict[tuple[str, int], list[int]] = {}
    keyed: list[tuple[str, bytes, bytes]] = []
    topic_of: dict[type[Event], str] = {}
    for event in events:
        topic = topic_of.get(type(event)) or topic_of.setdefault(
            type(event), settings.topic(_topic(event))
        )
        if topic not in partitions:
            partitions[topic] = sorted(await producer.partitions_for(topic))
        key = partition_key(event.customer_id)
        partition = _PARTITIONER(key, partitions[topic], partitions[topic])
        by_partition.setdefault((topic, partition), []).append(len(keyed))
        keyed.append((topic, key, encode(event)))
    for (topic, partition), indexes in by_partition.items():
        batch = producer.create_batch()
        members: list[int] = []
        for i in indexes:
            _, key, value = keyed[i]
            while (
                batch.append(timestamp=None, key=key, value=value, headers=_headers(events[i]))
                is None
            ):
                await _submit(producer, batch, topic, partition, members, future_of)
                batch, members = producer.create_batch(), []
            members.append(i)
        await _submit(producer, batch, topic, partition, members, future_of)


async def _submit(
    producer: AIOKafkaProducer,
    batch: BatchBuilder,
    topic: str,
    partition: int,
    members: list[int],
    future_of: list[asyncio.Future[object] | None],
) -> None:
    future: asyncio.Future[object] = await producer.send_batch(batch, topic, partition=partition)
    future.add_done_callback(_retrieve)
    for i in members:
        future_of[i] = future


def _status(
    items: Sequence[Item], first_of_key: dict[str, int], i: int, verdicts: dict[str, Verdict]
) -> Status | None:
    """Return the status of keyed item ``i`` before producing (None: produce it)."""
    key = items[i].key
    assert key is not None
    first = first_of_key[key]
    verdict = verdicts[key]
    if verdict is Verdict.CONFLICT or items[i].fingerprint != items[first].fingerprint:
        return Status.CONFLICT
    if verdict is Verdict.DUPLICATE or first != i:
        return Status.DUPLICATE
    return None


@dataclass
class _Judged:
    """What one request's items became before and after the order ledger: answered event
    ids, the ledger's errors and reasons, why an item is unavailable, the items the ledger
    refused or answered duplicate, and each duplicate of an event this request sent
    (item → the item that sent it)."""

    event_ids: list[uuid.UUID]
    errors: list[dict[str, str] | None]
    reasons: list[str]
    causes: list[str | None]
    ledger_refused: set[int] = field(default_factory=set)
    ledger_duplicates: set[int] = field(default_factory=set)
    repeats: dict[int, int] = field(default_factory=dict)
    same_key: dict[int, int] = field(default_factory=dict)


def _judge_again(
    ledger: LedgerSession,
    facts: dict[int, OrderFact],
    statuses: list[Status | None],
    judged: _Judged,
    acked: set[int],
) -> None:
    """Judge the ledger's refusals again against only the order events the broker acked.

    Each order event was judged as if the new ones before it in this request would be
    stored. When one of those was missed, a refusal that rested on it is no answer (a 422
    is final for a client): the event is unavailable instead, so that it is resent.
    """
    missed = [
        i
        for i in facts
        if i not in acked and i not in judged.ledger_refused and i not in judged.ledger_duplicates
    ]
    if not missed or not judged.ledger_refused:
        return
    decisions = ledger.decide_stored(list(facts.values()), [i in acked for i in facts])
    for i, decision in zip(facts, decisions, strict=True):
        if i in judged.ledger_refused and decision.verdict in (
            OrderVerdict.NEW,
            OrderVerdict.DUPLICATE,
        ):
            judged.ledger_refused.discard(i)
            statuses[i] = Status.UNAVAILABLE
            judged.errors[i] = None
            judged.causes[i] = EARLIER_MISSED


def _follow_first_of_key(statuses: list[Status | None], judged: _Judged) -> None:
    """Answer each later item of a key used twice in one request as its first was answered:
    a duplicate of it if it was stored, unavailable if the broker missed it, and refused as
    it was if the ledger refused it."""
    for i, first in judged.same_key.items():
        status = statuses[first]
        judged.event_ids[i] = judged.event_ids[first]
        judged.errors[i] = judged.errors[first]
        judged.reasons[i] = judged.reasons[first]
        if status is Status.ACCEPTED:
            statuses[i] = Status.DUPLICATE
        elif status is Status.UNAVAILABLE and judged.causes[first] == BROKER_MISSED:
            statuses[i] = Status.UNAVAILABLE
            judged.causes[i] = SAME_KEY_MISSED
        else:
            statuses[i] = status
            judged.causes[i] = judged.causes[first]


async def _close(ledger: LedgerSession) -> None:
    try:
        await ledger.close()
    except Exception as exc:
        log.warning("order ledger connection did not close cleanly: %s", type(exc).__name__)


def _unsettled(what: str, exc: Exception) -> None:
    log.error("could not %s idempotency keys: %s", what, type(exc).__name__)
    metrics.KEYS_UNSETTLED.labels(what=what).inc()


def _retrieve(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()


def unavailable(detail: str, event_id: uuid.UUID | None = None) -> JSONResponse:
    """Return the 503 that tells a caller to retry later (with the same event id)."""
    extra = {"event_id": str(event_id)} if event_id else {}
    return JSONResponse(
        error_body(503, detail + "; nothing was stored, retry with the same event_id", **extra),
        status_code=503,
        headers={"Retry-After": "2"},
    )


def conflict_detail(named_by: str, key: str) -> str:
    """Say that ``key`` (carried in the field ``named_by``) was used for something else."""
    if named_by == "event_id":
        return (
            f"event_id {key} was already used for a different request; "
            "a different event needs a new event_id"
        )
    return (
        f"Idempotency-Key {key!r} was already used for a different request; "
        "send a different request under a new key"
    )


def conflict(named_by: str, key: str) -> JSONResponse:
    """Return the 409 that refuses a key reused for a different request, as Stripe does."""
    return JSONResponse(error_body(409, conflict_detail(named_by, key), named_by), status_code=409)


@dataclass(frozen=True)
class Submission:
    """How an endpoint turns a payload into an event: its model, builder and extra checks."""

    model: type[ResponseIn] | type[EventIn]
    build: Callable[..., Event]
    check: Callable[[Any, CollectorSettings], list[dict[str, str]]]


RESPONSES = Submission(ResponseIn, response_event, configured_set_errors)
EVENTS = Submission(EventIn, touchpoint_event, lambda payload, settings: [])


async def submit_one(
    ingest: Ingest,
    payload: ResponseIn | EventIn,
    submission: Submission,
    *,
    source: str,
    idempotency_key: str | None,
    caller: str,
) -> Submitted | JSONResponse:
    """Produce one validated payload; 422 for configured-set errors, 409 for a key reused
    with a different body, 503 without an ack."""
    errors = submission.check(payload, ingest.settings)
    if errors:
        metrics.REJECTED.labels(source=source, reason="validation").inc()
        raise FieldErrors(errors)
    content = ingest.ids.fingerprint(submission.model.__name__, request_content(payload))
    event_id, key = ingest.resolve_event_id(
        source, payload.event_id, idempotency_key, caller, content
    )
    event = submission.build(payload, event_id=event_id, received_at=utcnow(), source=source)
    named_by = "event_id" if payload.event_id is not None else "Idempotency-Key"
    (outcome,) = await ingest.submit([Item(event, key, content, named_by=named_by)], source=source)
    if outcome.status is Status.CONFLICT:
        if outcome.error is not None:
            return JSONResponse(
                error_body(409, outcome.error["detail"], outcome.error["field"]), status_code=409
            )
        return conflict(named_by, str(payload.event_id or idempotency_key))
    if outcome.status is Status.REJECTED:
        assert outcome.error is not None
        metrics.REJECTED.labels(source=source, reason="order").inc()
        raise FieldErrors([outcome.error])
    return answer_one(outcome)


async def produce_one(
    ingest: Ingest, event: Event, key: str | None, *, source: str
) -> Submitted | JSONResponse:
    """Produce one event named by a vendor id (or nothing): its outcome, or 503."""
    (outcome,) = await ingest.submit([Item(event, key)], source=source)
    return answer_one(outcome)


def answer_one(outcome: Outcome) -> Submitted | JSONResponse:
    """Answer one item's outcome, or 503 when the broker did not acknowledge it."""
    if outcome.status is Status.UNAVAILABLE:
        return unavailable(outcome.cause or BROKER_MISSED, outcome.event_id)
    assert outcome.status in (Status.ACCEPTED, Status.DUPLICATE)
    return Submitted(event_id=outcome.event_id, status=outcome.status.value)


def validation_errors(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {
            "field": ".".join(str(p) for p in e["loc"]) or "item",
            "detail": str(e["msg"]).removeprefix("Value error, "),
        }
        for e in exc.errors()
    ]


async def submit_batch(
    ingest: Ingest,
    raw_items: Sequence[Any],
    submission: Submission,
    *,
    source: str,
    idempotency_key: str | None,
    caller: str,
) -> BatchResult:
    """Validate every item on its own, produce the valid ones, and report each item's fate.

    Under an ``Idempotency-Key`` each item is keyed by its own content (its fingerprint, and
    how many identical items came before it), not by its position: a resend in any order
    maps each item to its first result, and an item the first batch did not hold conflicts.
    An item with its own ``event_id`` is keyed by that, as a single request is.
    """
    received_at = utcnow()
    kind = submission.model.__name__
    results: list[ItemResult | None] = []
    items: list[Item] = []
    positions: list[int] = []
    batch: Claim | None = None
    if idempotency_key is not None:
        batch = Claim(
            caller_key(source, caller, idempotency_key),
            ingest.ids.for_batch(source, caller, idempotency_key),
            batch_fingerprint(kind),
        )
    seen: Counter[bytes] = Counter()
    for index, raw in enumerate(raw_items):
        try:
            payload = submission.model.model_validate(raw)
            errors = submission.check(payload, ingest.settings)
        except ValidationError as exc:
            errors = validation_errors(exc)
        if errors:
            metrics.REJECTED.labels(source=source, reason="validation").inc()
            results.append(ItemResult(index=index, status="rejected", errors=errors))
            continue
        content = ingest.ids.fingerprint(kind, request_content(payload))
        if payload.event_id is None and batch is not None and idempotency_key is not None:
            occurrence = seen[content]
            seen[content] += 1
            event_id = ingest.ids.for_item(source, caller, idempotency_key, content, occurrence)
            key = item_key(source, caller, idempotency_key, content, occurrence)
            item = Item(
                submission.build(
                    payload, event_id=event_id, received_at=received_at, source=source
                ),
                key,
                batch=batch.key,
            )
        else:
            event_id, claim = ingest.resolve_event_id(source, payload.event_id, None)
            event = submission.build(
                payload, event_id=event_id, received_at=received_at, source=source
            )
            item = Item(event, claim, content, named_by="event_id")
        items.append(item)
        positions.append(index)
        results.append(None)
    outcomes = await ingest.submit(items, source=source, batch=batch)
    for index, item, outcome in zip(positions, items, outcomes, strict=True):
        if outcome.status is Status.UNAVAILABLE and outcome.cause not in (None, BROKER_MISSED):
            assert outcome.cause is not None
            named = item.named_by if outcome.cause == SAME_KEY_MISSED else "order_id"
            errors = [{"field": named, "detail": outcome.cause}]
            results[index] = ItemResult(index=index, status="unavailable", errors=errors)
        elif outcome.error is not None:
            status = "conflict" if outcome.status is Status.CONFLICT else "rejected"
            if status == "rejected":
                metrics.REJECTED.labels(source=source, reason="order").inc()
            results[index] = ItemResult(index=index, status=status, errors=[outcome.error])
        elif outcome.status is Status.CONFLICT:
            key_text = str(item.event.event_id) if item.batch is None else str(idempotency_key)
            errors = [{"field": item.named_by, "detail": conflict_detail(item.named_by, key_text)}]
            results[index] = ItemResult(index=index, status="conflict", errors=errors)
        else:
            results[index] = ItemResult(
                index=index, status=outcome.status.value, event_id=outcome.event_id
            )
    return summarise([r for r in results if r is not None])


def summarise(results: list[ItemResult]) -> BatchResult:
    """Return the batch answer for per-item ``results``."""
    counts = Counter(r.status for r in results)
    return BatchResult(
        results=results,
        accepted=counts["accepted"],
        duplicate=counts["duplicate"],
        rejected=counts["rejected"],
        unavailable=counts["unavailable"],
        conflict=counts["conflict"],
    )


def batch_response(result: BatchResult) -> BatchResult | JSONResponse:
    """Answer 200, or 503 (with every item's result) if the broker missed any item.

    A client that only looks at the status code then retries the whole batch, and the
    items already stored come back as duplicates: nothing unstored is ever answered 2xx.
    """
    if not result.unavailable:
        return result
    causes = Counter(
        r.errors[0]["detail"] if r.errors else BROKER_MISSED
        for r in result.results
        if r.status == "unavailable"
    )
    said = "; ".join(f"{n} item(s): {cause}" for cause, n in causes.items())
    body = error_body(
        503,
        f"{result.unavailable} item(s) were not stored ({said}); resend them",
        **result.model_dump(mode="json"),
    )
    return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})
