"""Kafka plumbing: client factories, topic creation, dead letters and the one consume loop.

Delivery is at-least-once. :func:`run_batches` hands each batch to a handler that applies it
in ONE database transaction which also records the event ids it applied, and commits the
offsets only after that transaction. A crash between the two redelivers the batch, and the
handler's dedupe by event id makes the redelivery harmless.

A record that validates but that the handler cannot apply because of its data (a
constraint, a value out of range: see :func:`shared.db.refused_data`) is found by applying
the failing batch in halves, in order, down to the one record that fails alone; that record
is retried once after a short wait (a race with another writer may have caused it) and,
refused again for the same reason, dead-lettered with it; the rest are applied. Any other
failure (the database down, a deadlock, a bug) retries the whole batch with backoff and
dead-letters nothing, and so does a split that looks systemic: more records refused alone
for one reason than a small share of the batch (schema skew during a rollout, a bug), or a
record that must never be dead-lettered (``customer.erased``) refused alone.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from pydantic import BaseModel, ValidationError

from shared import metrics
from shared.db import postgres_error, refused_data
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


_SEGMENT_MS = 86_400_000  # a day


async def ensure_topics(
    settings: KafkaSettings, *, replication_factor: int = 1, retention_ms: int | None = None
) -> list[str]:
    """Create every cxloop topic with its partition count; return the names that were new.

    With ``retention_ms``, every topic, new or existing, gets that ``retention.ms``, and a
    ``segment.ms`` of at most a day: Kafka deletes whole closed segments only, so a record
    outlives the retention by up to one segment's age. Other configs of a topic are kept.
    """
    admin = AIOKafkaAdminClient(**settings.to_aiokafka_params())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        configs = (
            {}
            if retention_ms is None
            else {
                "retention.ms": str(retention_ms),
                "segment.ms": str(min(retention_ms, _SEGMENT_MS)),
            }
        )
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
    """Serialise an event for the wire: UTF-8 JSON.

    The bytes ``model_dump_json()`` would give, taken from the serializer as they are
    instead of decoded to a str and encoded again (a third of the cost; once per record).
    """
    return event.__pydantic_serializer__.to_json(event)


_ERASED_HEADER: Final = (HEADER_TYPE, CUSTOMER_ERASED.encode())


def decode(model: type[BaseModel], record: ConsumerRecord[bytes, bytes]) -> BaseModel:
    """Validate a consumed record as ``model``; raise ``PoisonMessageError`` with the reason.

    A record whose ``cxloop-type`` header is ``customer.erased`` is read as
    :class:`~shared.events.CustomerErased`, whatever the topic's model.
    """
    if record.value is None:
        raise PoisonMessageError("empty record value")
    # Tested as a tuple in the headers (compared in C), not with a generator per record:
    # this runs once per record consumed.
    if record.headers and _ERASED_HEADER in record.headers:
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

    async def send(
        self, record: ConsumerRecord[bytes, bytes], reason: str, kind: str = "validation"
    ) -> None:
        """Copy ``record`` to the dead-letter topic and wait for the broker's ack.

        ``kind`` labels the dead-letter counter: ``validation`` (it could not be decoded),
        ``refused_by_database`` or ``refused_by_handler`` (it failed alone when applied).
        """
        origin = f"{record.topic}/{record.partition}/{record.offset}"
        headers = [
            (HEADER_DLQ_REASON, reason.encode("utf-8")),
            (HEADER_DLQ_ORIGIN, origin.encode("utf-8")),
            (HEADER_DLQ_GROUP, self._group.encode("utf-8")),
        ]
        await self._producer.send_and_wait(
            self._topic, value=record.value or b"", key=record.key, headers=headers
        )
        metrics.DEAD_LETTERS.labels(group=self._group, topic=record.topic, reason=kind).inc()
        log.warning("dead-lettered %s: %s", origin, reason)


Handler = Callable[[Sequence[Decoded]], Awaitable[None]]

# Header values of the records no split may dead-letter: an erasure that is lost would
# leave a customer's data in place.
_NEVER_DEAD_LETTERED_TYPES = frozenset({CUSTOMER_ERASED.encode()})


def never_dead_lettered(record: ConsumerRecord[bytes, bytes]) -> bool:
    """Return whether ``record`` must never be dead-lettered for its data (an erasure).

    Such a record refused alone makes the split systemic: the batch is retried with backoff.
    """
    return any(
        key == HEADER_TYPE and value in _NEVER_DEAD_LETTERED_TYPES
        for key, value in record.headers or ()
    )


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
    never_dead_letter: Callable[[ConsumerRecord[bytes, bytes]], bool] = never_dead_lettered,
    refused_share: float = 0.1,
    refused_retry_seconds: float = 0.5,
) -> None:
    """Consume until ``stop`` is set: decode, handle, dead-letter poison, then commit.

    ``models`` names the event model of each topic (by its broker-side name).

    A batch that fails on its data is applied in halves, in order, and each record that
    fails alone, and again after ``refused_retry_seconds``, is dead-lettered with its reason
    (see :class:`_Split`). When more records than ``refused_share`` of the batch (at least
    one) fail alone for one reason, or one for which ``never_dead_letter`` is true does, the
    split is systemic: nothing is dead-lettered and the batch is retried whole. A batch whose
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
    held = 0  # fetches in a row that held back a record never dead-lettered

    async def fetch() -> _Fetched:
        nonlocal held
        if held:
            await sleep_unless_stopped(stop, backoff_delay(held - 1))
        batches = await consumer.getmany(
            timeout_ms=settings.batch_timeout_ms, max_records=settings.batch_max_records
        )
        fetched = _Fetched(batches, [], [])
        holding = False
        for tp, records in list(batches.items()):
            for i, record in enumerate(records):
                try:
                    fetched.good.append(Decoded(record, decode(models[record.topic], record)))
                except PoisonMessageError as exc:
                    if not never_dead_letter(record):
                        fetched.poison.append((record, exc.reason, "validation"))
                        continue
                    # An erasure this version cannot read (a newer schema mid-rollout): its
                    # partition waits from it on, retried with backoff, never dead-lettered.
                    holding = True
                    _hold_back(consumer, group, tp, record, exc.reason)
                    del records[i:]
                    break
            if not records:
                del batches[tp]
        held = held + 1 if holding else 0
        return fetched

    async def finish(fetched: _Fetched, applying: asyncio.Task[list[Refused] | None]) -> bool:
        refused = await applying
        if refused is None:
            return False
        for record, reason, kind in [*fetched.poison, *refused]:
            await dead_letters.send(record, reason, kind)
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
                    split = _Split(
                        handle,
                        stop,
                        group,
                        never_dead_letter=never_dead_letter,
                        limit=max(1, int(refused_share * len(current.good))),
                        retry_seconds=refused_retry_seconds,
                    )
                    applying = asyncio.create_task(_apply_with_retry(split, current.good))
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


# A record, why it can never be applied, and the dead-letter counter's reason label.
Refused = tuple[ConsumerRecord[bytes, bytes], str, str]


@dataclass
class _Fetched:
    batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    good: list[Decoded]
    poison: list[Refused]


def _hold_back(
    consumer: AIOKafkaConsumer,
    group: str,
    tp: TopicPartition,
    record: ConsumerRecord[bytes, bytes],
    reason: str,
) -> None:
    consumer.seek(tp, record.offset)
    metrics.HELD_BACK.labels(group=group, topic=record.topic).inc()
    log.error(
        "cannot decode %s/%s/%s, which is never dead-lettered (%s): its partition waits "
        "and retries it; deploy the version that reads it",
        record.topic,
        record.partition,
        record.offset,
        reason,
    )


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


async def _apply_with_retry(split: _Split, good: Sequence[Decoded]) -> list[Refused] | None:
    """Apply ``good``; return the records refused for their data, or None if stopped first.

    A failure that does not blame the data, or a systemic split, retries the whole batch:
    the halves applied before it are in the ledger, so the retry skips them and
    dead-letters nothing new.
    """
    attempt = 0
    group = split.group
    while good:
        try:
            with metrics.BATCH_SECONDS.labels(group=group).time():
                return await split.settle(good)
        except _Stopped:
            return None
        except Exception as exc:
            metrics.BATCH_FAILURES.labels(group=group).inc()
            delay = backoff_delay(attempt)
            if isinstance(exc, SystemicRefusalError):
                metrics.BATCH_SPLITS.labels(group=group, outcome="systemic").inc()
                log.error(
                    "batch of %d: %s; dead-lettering nothing, retrying it whole in %.1fs",
                    len(good),
                    exc,
                    delay,
                )
            else:
                log.exception("batch of %d failed; retrying in %.1fs", len(good), delay)
            attempt += 1
            await sleep_unless_stopped(split.stop, delay)
            if split.stop.is_set():
                return None
    return []


class SystemicRefusalError(Exception):
    """A split whose refusals blame no single record: the batch is retried whole."""


class _Stopped(Exception):
    """``stop`` was set between two steps of a split."""


class _Split:
    """Applies a batch, or, if its data is refused, its halves in order, down to one record.

    Halving keeps the order in which the others are applied, as alerting's lifecycle needs:
    the records before a bad one, then the bad one alone (rolled back), then those after it.
    Each record refused alone is applied once more, alone, ``retry_seconds`` after the split
    (a foreign key or a unique key may have met a concurrent writer, or the cause of a
    systemic refusal been fixed meanwhile), and refused only if it fails again for the same
    reason. Any other failure propagates, and so does a systemic split
    (:class:`SystemicRefusalError`): more than ``limit`` records refused alone for one
    reason, a record ``never_dead_letter`` protects refused alone, or a retry refused for
    another reason. ``stop`` is honoured between steps.
    """

    def __init__(
        self,
        handle: Handler,
        stop: asyncio.Event,
        group: str,
        *,
        never_dead_letter: Callable[[ConsumerRecord[bytes, bytes]], bool],
        limit: int,
        retry_seconds: float,
    ) -> None:
        self.handle = handle
        self.stop = stop
        self.group = group
        self._never_dead_letter = never_dead_letter
        self._limit = limit
        self._retry_seconds = retry_seconds
        self._alone: collections.Counter[str] = collections.Counter()

    async def settle(self, batch: Sequence[Decoded]) -> list[Refused]:
        """Apply ``batch``; return the records refused for their data (see the class)."""
        self._alone.clear()
        refusal = await self._try(batch)
        if refusal is None:
            return []
        log.warning("batch of %d refused (%s); applying it in halves", len(batch), refusal[0])
        found = await self._split(batch, refusal)
        # Once more each, after the others: a concurrent writer, or a fix landed meanwhile.
        await sleep_unless_stopped(self.stop, self._retry_seconds)
        refused: list[Refused] = []
        for decoded, (reason, kind) in found:
            again = await self._try([decoded])
            if again is not None and again[0] != reason:
                raise SystemicRefusalError(f"a record refused for {reason}, then {again[0]}")
            if again is not None:
                refused.append((decoded.record, reason, kind))
        outcome = "dead_lettered" if refused else "applied"
        metrics.BATCH_SPLITS.labels(group=self.group, outcome=outcome).inc()
        return refused

    async def _try(self, batch: Sequence[Decoded]) -> tuple[str, str] | None:
        if self.stop.is_set():
            raise _Stopped
        try:
            await self.handle(batch)
            return None
        except Exception as exc:
            reason = refused_data(exc)
            if reason is None:
                raise
            kind = "refused_by_database" if postgres_error(exc) else "refused_by_handler"
            return reason, kind

    async def _split(
        self, batch: Sequence[Decoded], refusal: tuple[str, str]
    ) -> list[tuple[Decoded, tuple[str, str]]]:
        if len(batch) == 1:
            return [(batch[0], self._refused_alone(batch[0], refusal))]
        log.debug("batch of %d refused; applying it in halves", len(batch))
        refused: list[tuple[Decoded, tuple[str, str]]] = []
        half = len(batch) // 2
        for part in (batch[:half], batch[half:]):
            again = await self._try(part)
            if again is not None:
                refused += await self._split(part, again)
        return refused

    def _refused_alone(self, decoded: Decoded, refusal: tuple[str, str]) -> tuple[str, str]:
        reason = refusal[0]
        if self._never_dead_letter(decoded.record):
            raise SystemicRefusalError(f"a record never dead-lettered was refused ({reason})")
        self._alone[reason] += 1
        if self._alone[reason] > self._limit:
            raise SystemicRefusalError(
                f"{self._alone[reason]} records refused alone for one reason ({reason})"
            )
        return refusal


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
