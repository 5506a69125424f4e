"""Process runtime shared by the services: resilient start-up and the supervised consumer.

A service may start before its broker (compose, Kubernetes, a broker restart): it then
keeps trying in the background and reports not-ready meanwhile, instead of crashing.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import uvicorn
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from fastapi import FastAPI
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import logs, metrics
from shared.db import assert_schema_current, create_engine, database_answers
from shared.errors import BrokerUnavailableError, ConfigError
from shared.http.operations import ReadinessCheck, record_ready
from shared.kafka import (
    DeadLetters,
    Handler,
    backoff_delay,
    broker_answers,
    make_consumer,
    make_producer,
    run_batches,
    sleep_unless_stopped,
)
from shared.logs import AccessLogMiddleware
from shared.privacy import Hasher, verify_key
from shared.settings import (
    ConsumerSettings,
    DatabaseSettings,
    HttpSettings,
    KafkaSettings,
    LogSettings,
    load,
)
from shared.topics import Topic

log = logging.getLogger(__name__)


async def keep_trying(
    what: str, attempt_once: Callable[[], Awaitable[None]], stop: asyncio.Event
) -> bool:
    """Call ``attempt_once`` until it succeeds (True) or ``stop`` is set (False), with backoff."""
    attempt = 0
    while not stop.is_set():
        try:
            await attempt_once()
            if attempt:
                log.info("%s: connected after %d attempt(s)", what, attempt + 1)
            return True
        except Exception as exc:
            delay = backoff_delay(attempt, cap=10.0)
            log.warning("%s: %s; retrying in %.1fs", what, exc or type(exc).__name__, delay)
            attempt += 1
            await sleep_unless_stopped(stop, delay)
    return False


class ProducerHandle:
    """A producer started in the background; ``ready`` tells whether it can send now."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._stop = asyncio.Event()
        self._started = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        """Whether the producer has connected to the broker at least once."""
        return self._started.is_set()

    @property
    def producer(self) -> AIOKafkaProducer:
        """The started producer; raises ``BrokerUnavailableError`` before it has connected."""
        if self._producer is None:
            raise BrokerUnavailableError("not connected to Kafka yet")
        return self._producer

    def start(self) -> None:
        """Begin connecting in the background."""
        self._task = asyncio.create_task(self._connect(), name="producer-start")

    async def wait_started(self) -> bool:
        """Wait until started (True) or stopped before that (False)."""
        await asyncio.wait(
            [asyncio.ensure_future(self._started.wait()), asyncio.ensure_future(self._stop.wait())],
            return_when=asyncio.FIRST_COMPLETED,
        )
        return self._started.is_set()

    async def _connect(self) -> None:
        async def once() -> None:
            # A client whose start() failed is not reused: each attempt gets a fresh one.
            producer = make_producer(self.settings)
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer

        if await keep_trying("kafka producer", once, self._stop):
            self._started.set()

    async def stop(self) -> None:
        """Flush and close the producer."""
        self._stop.set()
        if self._task is not None:
            await self._task
        if self._producer is not None:
            await self._producer.stop()


class ConsumerWorker:
    """Runs :func:`shared.kafka.run_batches` for one service, restarting it if it ever dies."""

    def __init__(
        self,
        *,
        kafka: KafkaSettings,
        consumer: ConsumerSettings,
        models: Mapping[Topic, type[BaseModel]],
        handle: Handler,
        producer: ProducerHandle,
        in_flight: int = 1,
    ) -> None:
        self._in_flight = in_flight
        self._kafka = kafka
        self._settings = consumer
        self._topics = list(models)
        self._models = {kafka.topic(t): m for t, m in models.items()}
        self._handle = handle
        self._producer = producer
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.running = False

    def start(self) -> None:
        """Start consuming in the background."""
        self._task = asyncio.create_task(
            self._supervise(), name=f"consume-{self._settings.group_id}"
        )

    async def _supervise(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            if not await self._producer.wait_started():
                return
            consumer = await self._start_consumer()
            if consumer is None:
                return
            dead_letters = DeadLetters(
                self._producer.producer, self._kafka, self._settings.group_id
            )
            self.running = True
            try:
                await run_batches(
                    consumer,
                    self._handle,
                    self._stop,
                    models=self._models,
                    dead_letters=dead_letters,
                    settings=self._settings,
                    in_flight=self._in_flight,
                )
                attempt = 0
            except Exception:
                delay = backoff_delay(attempt, cap=10.0)
                log.exception("consumer loop died; restarting in %.1fs", delay)
                attempt += 1
                await sleep_unless_stopped(self._stop, delay)
            finally:
                self.running = False

    async def _start_consumer(self) -> AIOKafkaConsumer | None:
        started: list[AIOKafkaConsumer] = []

        async def once() -> None:
            consumer = make_consumer(self._kafka, self._settings, self._topics)
            try:
                await consumer.start()
            except BaseException:
                await consumer.stop()
                raise
            started.append(consumer)

        ok = await keep_trying(f"kafka consumer {self._settings.group_id}", once, self._stop)
        return started[0] if ok else None

    async def stop(self, timeout: float = 30.0) -> None:
        """Let the current batch finish and commit, then stop the consumer."""
        self._stop.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout)
            except TimeoutError:
                log.error("consumer did not stop within %.0fs; cancelling", timeout)
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task


# A consumer holds two batches of decoded events, their records and rows at once: thousands
# of young container objects. At CPython's default thresholds (700, 10, 10) the collector ran
# some 4,500 times over 200k answers, 34 of them full passes over every object the process
# holds (the app, its routes, SQLAlchemy's and pydantic's schemas), and took about a third
# of the scorer's CPU (py-spy; gc.callbacks). Nearly all of those objects are freed by
# reference counting anyway; cycles still get collected, only less often.
GC_THRESHOLDS: Final = (20_000, 20, 20)


def tune_gc() -> None:
    """Set up this process's garbage collector for consuming or serving: freeze what
    start-up built (the permanent generation, never scanned again) and collect young
    objects less often. Called once start-up is done (a consumer's start, the collector's
    lifespan). A request, too, allocates hundreds of short-lived containers: at CPython's
    defaults the collector ran a young collection every few requests (single events per
    CPU-second +24-37% with this).

    Process-wide, so it runs once per process, whichever service starts first, and only in
    a process that said it is a service's own (:func:`own_gc`): a test run that starts
    services in-process keeps CPython's defaults, so what it checks does not depend on
    which test started a service first.
    """
    global _gc_tuned
    if _gc_tuned or not _gc_owned:
        return
    _gc_tuned = True
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


_gc_tuned = False
_gc_owned = False


def own_gc() -> None:
    """Let :func:`tune_gc` set up this process's garbage collector: called by a service's
    own process (``cxloop collector|scorer|alerting``) and by the benchmarks, which run
    the scorer in-process as that process would."""
    global _gc_owned
    _gc_owned = True


class ConsumingService:
    """The runtime of a consuming service: its engine, producer (for dead letters) and worker."""

    def __init__(
        self,
        *,
        name: str,
        kafka: KafkaSettings,
        database: DatabaseSettings,
        consumer: ConsumerSettings,
        models: Mapping[Topic, type[BaseModel]],
        make_handler: Callable[[AsyncEngine], Handler],
        migrations: Path,
        in_flight: int = 1,
        hasher: Hasher | None = None,
    ) -> None:
        self._in_flight = in_flight
        self._hasher = hasher
        self.name = name
        self._kafka = kafka
        self._consumer = consumer
        self._models = models
        self._make_handler = make_handler
        self._migrations = migrations
        self.engine = create_engine(database)
        self._producer: ProducerHandle | None = None
        self._worker: ConsumerWorker | None = None

    async def start(self) -> None:
        """Refuse an outdated schema, then connect and start consuming in the background."""
        await assert_schema_current(self.engine, self._migrations)
        if self._hasher is not None:
            try:
                await verify_key(self.engine, self._hasher)
            except ConfigError:
                await self.engine.dispose()
                raise
        self._producer = ProducerHandle(self._kafka)
        self._producer.start()
        self._worker = ConsumerWorker(
            kafka=self._kafka,
            consumer=self._consumer,
            models=self._models,
            handle=self._make_handler(self.engine),
            producer=self._producer,
            in_flight=self._in_flight,
        )
        tune_gc()
        self._worker.start()

    async def stop(self) -> None:
        """Finish the batch in hand, commit, and close every client."""
        if self._worker is not None:
            await self._worker.stop()
        if self._producer is not None:
            await self._producer.stop()
        await self.engine.dispose()

    async def readiness(self) -> dict[str, bool]:
        """Report whether Kafka and Postgres answer and the consumer loop is running."""
        kafka = (
            self._producer is not None
            and self._producer.ready
            and await broker_answers(self._producer.producer)
        )
        return {
            "kafka": kafka,
            "database": await database_answers(self.engine),
            "consumer": self._worker is not None and self._worker.running,
        }

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        """Start with the app and stop with it; the engine is ``app.state.engine``."""
        await self.start()
        app.state.engine = self.engine
        app.state.keystore.engine = self.engine
        try:
            yield
        finally:
            await self.stop()


def serve(app: FastAPI, http: HttpSettings) -> None:
    """Run ``app`` under uvicorn until SIGTERM or SIGINT, using cxloop's logging.

    uvicorn's access log is off: it prints raw paths and query strings, which may carry a
    customer id; :class:`shared.logs.AccessLogMiddleware` logs route templates instead.
    """
    uvicorn.run(
        AccessLogMiddleware(app),
        host=http.host,
        port=http.port,
        log_config=None,
        access_log=False,
        # The app reads X-Forwarded-For itself, trusting http.forwarded_allow_ips only.
        proxy_headers=False,
    )


def worker_app(factory: Callable[[], FastAPI], service: str) -> AccessLogMiddleware:
    """Return what one worker of :func:`shared.workers.serve_workers` serves:
    ``factory()``'s app with cxloop's logging (set up again in the worker process) and its
    access log, and its ready gauge refreshed every :data:`READY_EVERY` seconds while it
    serves (``/readyz`` answers for the one worker that takes the request; the gauge, read
    from any worker, is 1 only when every live worker's last check passed)."""
    own_gc()
    logs.configure(load(LogSettings), service)
    metrics.forget_dead_workers()
    app = factory()
    served = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with served(app):
            refresh = asyncio.create_task(_refresh_ready(app), name="ready gauge")
            try:
                yield
            finally:
                refresh.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await refresh

    app.router.lifespan_context = lifespan
    return AccessLogMiddleware(app)


# How often each worker of several checks its dependencies for its ready gauge.
READY_EVERY: Final = 5.0


async def _refresh_ready(app: FastAPI) -> None:
    readiness: ReadinessCheck = app.state.readiness
    while True:
        try:
            record_ready(app.state.service, await readiness())
        except Exception as exc:
            log.warning("readiness check failed: %s", type(exc).__name__)
            metrics.READY.labels(service=app.state.service).set(0)
        await asyncio.sleep(READY_EVERY)
