"""Kafka plumbing: client factories, topic creation, dead letters and the one consume loop.

Delivery is at-least-once. :func:`run_batches` hands each batch to a handler that applies it
in ONE database transaction which also records the event ids it applied, and commits the
offsets only after that transaction. A crash between the two redelivers the batch, and the
handler's dedupe by event id makes the redelivery harmless.

A record that validates but that the handler cannot apply because of its data (a
constraint, a value out of range: see :func:`shared.db.refused_data`) is found by applying
the failing batch in halves, in order, down to the one record that fails alone; that record
is dead-lettered with the reason and the rest are applied. Any other failure (the database
down, a deadlock, a bug) retries the whole batch with backoff and dead-letters nothing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from pydantic import BaseModel, ValidationError

from shared import metrics
from shared.db import refused_data
from shared.errors import PoisonMessageError
from shared.events import CUSTOMER_ERASED, CustomerErased
from shared.settings import ConsumerSettings, KafkaSettings
from shared.topics import TOPIC_SPECS, Topic

log = logging.getLogger(__name__)

HEADER_TYPE = "cxloop-type"
HEADER_SCHEMA = "cxloop-schema-version"
HEADER_DLQ_REASON = "cxloop-dlq-reason"
HEADER_DLQ_ORIGIN = "cxloop-dlq-origin"
HEADER_DLQ_GROUP = "cxloop-dlq-group"


def make_producer(settings: KafkaSettings) -> AIOKafkaProducer:
    """Return an unstarted producer that waits for every in-sync replica (``acks=all``)."""
    return AIOKafkaProducer(
        **settings.to_aiokafka_params(),
        acks="all",
        enable_idempotence=settings.idempotence,
        linger_ms=2,
    )


def make_consumer(
    settings: KafkaSettings, consumer: ConsumerSettings, topics: Sequence[Topic]
) -> AIOKafkaConsumer:
    """Return an unstarted consumer with manual commits, subscribed to ``topics``."""
    return AIOKafkaConsumer(
        *(settings.topic(t) for t in topics),
        **settings.to_aiokafka_params(),
        group_id=consumer.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=consumer.session_timeout_ms,
        heartbeat_interval_ms=consumer.heartbeat_interval_ms,
    )


async def ensure_topics(
    settings: KafkaSettings, *, replication_factor: int = 1, retention_ms: int | None = None
) -> list[str]:
    """Create every cxloop topic with its partition count; return the names that were new.

    With ``retention_ms``, every topic, new or existing, gets that ``retention.ms``.
    """
    admin = AIOKafkaAdminClient(**settings.to_aiokafka_params())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        configs = {} if retention_ms is None else {"retention.ms": str(retention_ms)}
        wanted = [
            NewTopic(
                name=settings.topic(spec.topic),
                num_partitions=spec.partitions,
                replication_factor=replication_factor,
                topic_configs=configs,
            )
            for spec in TOPIC_SPECS
            if settings.topic(spec.topic) not in existing
        ]
        created = []
        for topic in wanted:
            try:
                response = await admin.create_topics([topic])
            except TopicAlreadyExistsError:
                continue
            # The broker may answer an error code (36: exists) rather than raise.
            if not any(error_code for _, error_code, *_ in response.topic_errors):
                created.append(topic.name)
        if retention_ms is not None:
            names = [settings.topic(spec.topic) for spec in TOPIC_SPECS]
            await _set_topic_configs(admin, [n for n in names if n not in created], configs)
        return created
    finally:
        await admin.close()


async def topic_configs(settings: KafkaSettings, name: str) -> dict[str, str]:
    """Return the configs set on topic ``name`` itself (not the broker's defaults)."""
    admin = AIOKafkaAdminClient(**settings.to_aiokafka_params())
    await admin.start()
    try:
        return await _dynamic_configs(admin, name)
    finally:
        await admin.close()


async def _dynamic_configs(admin: AIOKafkaAdminClient, name: str) -> dict[str, str]:
    (response,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
    found: dict[str, str] = {}
    for error_code, error_message, *_, entries in response.resources:
        if error_code:
            raise KafkaError(f"describe configs of {name}: {error_message}")
        for entry in entries:
            key, value, _read_only, source = entry[:4]
            # v0 says is_default (a bool); v1+ the source, 1 being the topic's own config.
            if source is False or source == 1:
                found[key] = value
    return found


async def _set_topic_configs(
    admin: AIOKafkaAdminClient, names: Sequence[str], configs: Mapping[str, str]
) -> None:
    # AlterConfigs replaces a topic's whole set, so the configs set before are sent back too.
    for name in names:
        for attempt in range(20):
            try:
                merged = {**await _dynamic_configs(admin, name), **configs}
                break
            except KafkaError:
                # A topic just created (by us or another client) may not be described yet.
                if attempt == 19:
                    raise
                await asyncio.sleep(0.5)
        (response,) = await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name, merged)]
        )
        for error_code, error_message, *_ in response.resources:
            if error_code:
                raise KafkaError(f"alter configs of {name}: {error_message}")


def encode(event: BaseModel) -> bytes:
    """Serialise an event for the wire: UTF-8 JSON."""
    return event.model_dump_json().encode("utf-8")


def decode(model: type[BaseModel], record: ConsumerRecord[bytes, bytes]) -> BaseModel:
    """Validate a consumed record as ``model``; raise ``PoisonMessageError`` with the reason.

    A record whose ``cxloop-type`` header is ``customer.erased`` is read as
    :class:`~shared.events.CustomerErased`, whatever the topic's model.
    """
    if record.value is None:
        raise PoisonMessageError("empty record value")
    erased = CUSTOMER_ERASED.encode()
    if any(k == HEADER_TYPE and v == erased for k, v in record.headers or ()):
        model = CustomerErased
    try:
        return model.model_validate_json(record.value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "record"
        raise PoisonMessageError(
            f"{where}: {first['msg']} ({exc.error_count()} error(s) in all)"
        ) from None


@dataclass(frozen=True)
class Decoded:
    """A consumed record and the event it holds."""

    record: ConsumerRecord[bytes, bytes]
    event: BaseModel


class DeadLetters:
    """Sends records that can never be applied to the dead-letter topic, with the reason."""

    def __init__(self, producer: AIOKafkaProducer, settings: KafkaSettings, group: str) -> None:
        self._producer = producer
        self._topic = settings.topic(Topic.DEAD_LETTERS)
        self._group = group

    async def send(self, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        """Copy ``record`` to the dead-letter topic and wait for the broker's ack."""
        origin = f"{record.topic}/{record.partition}/{record.offset}"
        headers = [
            (HEADER_DLQ_REASON, reason.encode("utf-8")),
            (HEADER_DLQ_ORIGIN, origin.encode("utf-8")),
            (HEADER_DLQ_GROUP, self._group.encode("utf-8")),
        ]
        await self._producer.send_and_wait(
            self._topic, value=record.value or b"", key=record.key, headers=headers
        )
        metrics.DEAD_LETTERS.labels(group=self._group, topic=record.topic).inc()
        log.warning("dead-lettered %s: %s", origin, reason)


Handler = Callable[[Sequence[Decoded]], Awaitable[None]]


def backoff_delay(attempt: int, *, base: float = 0.2, cap: float = 30.0) -> float:
    """Return a jittered exponential delay for retry number ``attempt`` (0-based)."""
    return float(min(cap, base * 2**attempt) * (0.5 + random.random() / 2))  # noqa: S311


async def sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, returning early when ``stop`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def run_batches(
    consumer: AIOKafkaConsumer,
    handle: Handler,
    stop: asyncio.Event,
    *,
    models: Mapping[str, type[BaseModel]],
    dead_letters: DeadLetters,
    settings: ConsumerSettings,
    in_flight: int = 1,
) -> None:
    """Consume until ``stop`` is set: decode, handle, dead-letter poison, then commit.

    ``models`` names the event model of each topic (by its broker-side name).

    A batch that fails on its data is applied in halves, in order, and each record that
    fails alone is dead-lettered with its reason (see :func:`_settle`). A batch whose
    handler fails otherwise (database down, or a bug) is retried whole with capped
    exponential backoff and nothing is committed, so no record is skipped. Stopping
    mid-retry leaves the batch uncommitted: the next owner of the partitions gets it again.
    The consumer is stopped on the way out.

    ``in_flight`` > 1 lets that many batches be handled at once, each in its own
    transaction, for a handler whose effects commute (the scorer's sums do; alerting's
    lifecycle does not). Offsets are still committed in order, each only once its batch
    and every batch before it are stored.
    """
    group = settings.group_id

    async def fetch() -> _Fetched:
        batches = await consumer.getmany(
            timeout_ms=settings.batch_timeout_ms, max_records=settings.batch_max_records
        )
        fetched = _Fetched(batches, [], [])
        for records in batches.values():
            for record in records:
                try:
                    fetched.good.append(Decoded(record, decode(models[record.topic], record)))
                except PoisonMessageError as exc:
                    fetched.poison.append((record, exc.reason))
        return fetched

    async def finish(fetched: _Fetched, applying: asyncio.Task[list[Refused] | None]) -> bool:
        refused = await applying
        if refused is None:
            return False
        for record, reason in [*fetched.poison, *refused]:
            await dead_letters.send(record, reason)
        await _commit(consumer, fetched.batches, settings)
        for tp, records in fetched.batches.items():
            metrics.CONSUMED.labels(group=group, topic=tp.topic).inc(len(records))
        await _record_lag(consumer, group)
        return True

    upcoming = asyncio.create_task(fetch())
    pending: collections.deque[tuple[_Fetched, asyncio.Task[list[Refused] | None]]] = (
        collections.deque()
    )
    try:
        while not stop.is_set():
            # A batch is finished (offsets committed) as soon as it and those before it are
            # stored, not when the next fetch returns.
            while pending and pending[0][1].done():
                if not await finish(*pending.popleft()):
                    return
            waits: set[asyncio.Task[Any]] = {pending[0][1]} if pending else set()
            if len(pending) < in_flight:
                # Fetch and decode the next batch while earlier ones wait on the database:
                # the two use different processes' CPU.
                waits.add(upcoming)
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if upcoming.done() and len(pending) < in_flight:
                current = upcoming.result()
                upcoming = asyncio.create_task(fetch())
                if current.batches:
                    applying = asyncio.create_task(
                        _apply_with_retry(handle, current.good, stop, group)
                    )
                    pending.append((current, applying))
        # Stopping: the batches in hand finish and commit, as a lone batch always did.
        while pending:
            if not await finish(*pending.popleft()):
                return
    finally:
        upcoming.cancel()
        for _, applying in pending:
            applying.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.gather(upcoming, *(applying for _, applying in pending))
        await consumer.stop()


Refused = tuple[ConsumerRecord[bytes, bytes], str]


@dataclass
class _Fetched:
    batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    good: list[Decoded]
    poison: list[Refused]


async def _record_lag(consumer: AIOKafkaConsumer, group: str) -> None:
    # The high-water mark comes with every fetch, so lag costs no extra request
    # (and does not rely on end_offsets, which some brokers get wrong).
    lag: dict[str, int] = {}
    for tp in consumer.assignment():
        highwater = consumer.highwater(tp)
        if highwater is None:
            continue
        position = await consumer.position(tp)
        lag[tp.topic] = lag.get(tp.topic, 0) + max(0, highwater - position)
    for topic, records in lag.items():
        metrics.LAG.labels(group=group, topic=topic).set(records)


async def _apply_with_retry(
    handle: Handler, good: Sequence[Decoded], stop: asyncio.Event, group: str
) -> list[Refused] | None:
    """Apply ``good``; return the records refused for their data, or None if stopped first.

    A failure that does not blame the data retries the whole batch: the halves applied
    before it are in the ledger, so the retry skips them and dead-letters nothing new.
    """
    attempt = 0
    while good:
        try:
            with metrics.BATCH_SECONDS.labels(group=group).time():
                return await _settle(handle, good)
        except Exception:
            metrics.BATCH_FAILURES.labels(group=group).inc()
            delay = backoff_delay(attempt)
            log.exception("batch of %d failed; retrying in %.1fs", len(good), delay)
            attempt += 1
            await sleep_unless_stopped(stop, delay)
            if stop.is_set():
                return None
    return []


async def _settle(handle: Handler, batch: Sequence[Decoded]) -> list[Refused]:
    """Apply ``batch``, or, if its data is refused, its halves in order; return the refused.

    Each record that fails alone is refused. Halving keeps the order in which the others
    are applied, as alerting's lifecycle needs: the records before a bad one, then the bad
    one alone (rolled back), then those after it. Any other failure propagates.
    """
    try:
        await handle(batch)
        return []
    except Exception as exc:
        reason = refused_data(exc)
        if reason is None:
            raise
    if len(batch) == 1:
        return [(batch[0].record, reason)]
    log.warning("batch of %d refused (%s); applying it in halves", len(batch), reason)
    half = len(batch) // 2
    return [*await _settle(handle, batch[:half]), *await _settle(handle, batch[half:])]


async def _commit(
    consumer: AIOKafkaConsumer,
    batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
    settings: ConsumerSettings,
) -> None:
    offsets = {tp: records[-1].offset + 1 for tp, records in batches.items() if records}
    try:
        # Some brokers let commit() hang while they are down; the timeout keeps the loop alive.
        await asyncio.wait_for(consumer.commit(offsets), timeout=settings.commit_timeout_seconds)
    except (KafkaError, TimeoutError) as exc:
        # The batch is applied; redelivery after a rebalance is deduplicated by event id.
        metrics.COMMIT_FAILURES.labels(group=settings.group_id).inc()
        log.warning("offset commit failed (%s); the batch may be redelivered", type(exc).__name__)


async def broker_answers(producer: AIOKafkaProducer, timeout: float = 3.0) -> bool:
    """Return whether the broker answers a metadata request within ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            return bool(await producer.client.fetch_all_metadata())
    except (KafkaError, TimeoutError, OSError):
        return False
