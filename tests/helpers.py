"""Helpers for tests on real servers: wait for a condition, read a topic back, produce."""

from __future__ import annotations

import asyncio
import contextvars
import importlib.util
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import httpx
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from fastapi import FastAPI
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from shared.apikeys import KeyKind, Scope, create_key
from shared.kafka import encode, make_producer
from shared.settings import KafkaSettings
from shared.topics import TOPIC_SPECS, Topic

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]],
    until: Callable[[T], bool],
    *,
    timeout: float = 30.0,
    interval: float = 0.1,
) -> T:
    """Call ``probe`` until ``until`` holds for its result; fail with the last result."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await probe()
        if until(value):
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last value: {value!r}")
        await asyncio.sleep(interval)


async def stays(
    probe: Callable[[], Awaitable[T]],
    holds: Callable[[T], bool],
    *,
    seconds: float,
    interval: float = 0.1,
) -> T:
    """Call ``probe`` for ``seconds`` and fail at the first result for which ``holds`` is false.

    For "nothing more arrives": ``eventually`` returns at the first true probe, so it cannot
    see a notification that comes later; this keeps looking for the whole duration and
    returns the last result.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    probes = 0
    while True:
        value = await probe()
        probes += 1
        if not holds(value):
            elapsed = seconds - (deadline - loop.time())
            shown = repr(value)
            shown = shown if len(shown) <= 2000 else shown[:2000] + "…"
            raise AssertionError(
                f"condition stopped holding after {elapsed:.1f}s (probe {probes}): {shown}"
            )
        if loop.time() >= deadline:
            return value
        await asyncio.sleep(interval)


async def read_topic(
    settings: KafkaSettings, topic: Topic, count: int, *, timeout: float = 20.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read ``count`` records from the start of every partition of ``topic``."""
    name = settings.topic(topic)
    consumer = AIOKafkaConsumer(**settings.to_aiokafka_params(), enable_auto_commit=False)
    await consumer.start()
    try:
        (spec,) = [s for s in TOPIC_SPECS if s.topic is topic]
        tps = [TopicPartition(name, p) for p in range(spec.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[ConsumerRecord[bytes, bytes]] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while len(records) < count and asyncio.get_running_loop().time() < deadline:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


async def produce(
    settings: KafkaSettings,
    topic: Topic,
    events: Sequence[BaseModel | bytes],
    *,
    key: bytes = b"k",
) -> None:
    """Produce events (or raw bytes) to ``topic`` and wait for every ack."""
    producer = make_producer(settings)
    await producer.start()
    try:
        # Sent without waiting for each ack, then awaited together: order per partition holds.
        acks = []
        for event in events:
            value = event if isinstance(event, bytes) else encode(event)
            record_key = key
            if isinstance(event, BaseModel) and hasattr(event, "customer_id"):
                record_key = str(event.customer_id).encode()
            acks.append(await producer.send(settings.topic(topic), value=value, key=record_key))
        await asyncio.gather(*acks)
    finally:
        await producer.stop()


@asynccontextmanager
async def serving(app: FastAPI, api_key: str, name: str) -> AsyncIterator[httpx.AsyncClient]:
    """Run ``app``'s lifespan and yield a client that calls it with ``api_key``."""
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url=f"http://{name}",
            headers={"Authorization": f"Bearer {api_key}"},
        ) as client,
    ):
        yield client


@asynccontextmanager
async def database_down(holder: Any) -> AsyncIterator[None]:
    """Swap ``holder.engine`` (an app's state, a key store) for one whose database nothing
    answers (port 1 refuses), and put the real one back on the way out."""
    real = holder.engine
    down = create_async_engine(real.url.set(port=1), connect_args={"timeout": 2})
    holder.engine = down
    try:
        yield
    finally:
        holder.engine = real
        await down.dispose()


async def cxloop(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``cxloop *args`` (``python -m services.cli``) on ``database_url`` alone: no other
    ``CXLOOP_*`` variable of this process reaches it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXLOOP_")}
    env["CXLOOP_DATABASE_URL"] = database_url
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


async def backend_pid(engine: AsyncEngine) -> int:
    """Return the server process id of the connection ``engine``'s pool hands out next."""
    async with engine.connect() as conn:
        return int(await conn.scalar(sa.text("SELECT pg_backend_pid()")) or 0)


@dataclass
class Recorded:
    """What :func:`recording` saw: each statement's text, and each pool checkout."""

    statements: list[str] = field(default_factory=list)
    checkouts: int = 0


_RECORDING: contextvars.ContextVar[Recorded | None] = contextvars.ContextVar(
    "recording", default=None
)


@contextmanager
def recording(engine: AsyncEngine) -> Iterator[Recorded]:
    """Record the statements and checkouts on ``engine`` of the current task and of the tasks
    it starts meanwhile (they copy its context). Tasks that already ran do not count: an
    app's background tasks (an outbox sender, SLA timers) share the engine, and so does a
    coalescer's run started by an earlier request. Statements sent straight to asyncpg
    (``shared.db.driver_connection``) are not seen, only their checkouts."""
    recorded = Recorded()

    def executed(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if _RECORDING.get() is recorded:
            recorded.statements.append(statement)

    def checked_out(*args: Any) -> None:
        if _RECORDING.get() is recorded:
            recorded.checkouts += 1

    sa.event.listen(engine.sync_engine, "before_cursor_execute", executed)
    sa.event.listen(engine.sync_engine.pool, "checkout", checked_out)
    token = _RECORDING.set(recorded)
    try:
        yield recorded
    finally:
        _RECORDING.reset(token)
        sa.event.remove(engine.sync_engine, "before_cursor_execute", executed)
        sa.event.remove(engine.sync_engine.pool, "checkout", checked_out)


@asynccontextmanager
async def http_server(app: Any, port: int) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1:``port`` (for a real browser); yield its URL."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def load_script(path: Path) -> ModuleType:
    """Import a script of ``scripts/`` (not a package) as a module, by its path."""
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def lean_answered(app: FastAPI, layer_type: type[Any]) -> int:
    """How many requests ``app``'s lean path (a middleware of ``layer_type`` with an
    ``answered`` count) answered: 0 without one."""
    layer: Any = app.middleware_stack
    while layer is not None:
        if isinstance(layer, layer_type):
            return int(layer.answered)
        layer = getattr(layer, "app", None)
    return 0


async def secret_key(database_url: str, scope: Scope, name: str) -> str:
    """A new secret API key of ``scope`` alone, stored in ``database_url``."""
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            key, _ = await create_key(conn, name=name, kind=KeyKind.SECRET, scopes=[scope])
    finally:
        await engine.dispose()
    return key
