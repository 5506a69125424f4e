"""The engine every service uses hands out live connections after Postgres closed pooled
ones (a restart, ``pg_terminate_backend``) or a network dropped idle ones, and asks the
server nothing before reusing a connection that was busy a moment ago."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection

from shared.db import create_engine, driver_connection, is_transient
from shared.settings import DatabaseSettings
from tests.helpers import backend_pid, eventually


class Pings:
    """Counts the pings the engine sends (SQLAlchemy's, through the driver's adapter), and
    makes them fail while ``failing`` is set, as over a connection a network dropped."""

    def __init__(self) -> None:
        self.sent = 0
        self.failing = False


@pytest.fixture
def pings(monkeypatch: pytest.MonkeyPatch) -> Pings:
    seen = Pings()
    ping = AsyncAdapt_asyncpg_connection.ping

    def counted(self: AsyncAdapt_asyncpg_connection) -> None:
        seen.sent += 1
        if seen.failing:
            raise OSError("connection reset by peer")
        ping(self)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(AsyncAdapt_asyncpg_connection, "ping", counted)
    return seen


async def test_pooled_connections_the_server_closed_are_replaced_unseen(
    database_url: str,
) -> None:
    engine = create_engine(DatabaseSettings(url=database_url))
    other = create_engine(DatabaseSettings(url=database_url))
    try:
        drivers: list[Any] = []

        # Three connections in the pool, each having served.
        async def pid() -> int:
            async with engine.connect() as conn:
                await asyncio.sleep(0.05)  # held, so that the three are different connections
                drivers.append((await conn.get_raw_connection()).driver_connection)
                return int(await conn.scalar(sa.text("SELECT pg_backend_pid()")) or 0)

        pooled = set(await asyncio.gather(pid(), pid(), pid()))
        assert len(pooled) == 3
        async with other.connect() as admin:
            killed = await admin.scalar(
                sa.text(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(p)) "
                    "FROM unnest(CAST(:p AS int[])) p"
                ),
                {"p": sorted(pooled)},
            )
            assert killed == 3
        # Once the driver has read each connection's end (what the check looks at)...
        await eventually(
            lambda: _closed(drivers), lambda closed: closed == [True] * 3, interval=0.01
        )
        # ... every request is served, each by a new connection.
        for _ in range(4):
            async with engine.begin() as conn:
                now = await conn.scalar(sa.text("SELECT pg_backend_pid()"))
            assert now not in pooled
    finally:
        await engine.dispose()
        await other.dispose()


async def test_a_connection_in_use_a_moment_ago_is_not_pinged(
    database_url: str, pings: Pings
) -> None:
    engine = create_engine(DatabaseSettings(url=database_url))
    try:
        for _ in range(5):
            async with engine.begin() as conn:
                await conn.scalar(sa.text("SELECT 1"))
        assert pings.sent == 0
    finally:
        await engine.dispose()


async def test_an_idle_connection_that_does_not_answer_is_replaced(
    database_url: str, pings: Pings
) -> None:
    # Idle past the threshold from the start (0 s): every checkout after the first pings.
    engine = create_engine(DatabaseSettings(url=database_url), idle_ping_seconds=0)
    try:
        first = await backend_pid(engine)
        assert await backend_pid(engine) == first  # it answered its ping, and is kept
        assert pings.sent == 1
        pings.failing = True  # as if a NAT had dropped it while it waited in the pool
        replaced = await backend_pid(engine)
        assert replaced != first
        assert pings.sent == 2  # the new connection is not pinged: it has just been made
    finally:
        await engine.dispose()


async def _closed(drivers: list[Any]) -> list[bool]:
    return [bool(d.is_closed()) for d in drivers]


class TestDriverConnection:
    """Statements sent straight to asyncpg never leave a connection the pool should not reuse."""

    async def test_a_begin_without_its_commit_is_not_pooled(self, database_url: str) -> None:
        engine = create_engine(DatabaseSettings(url=database_url, pool_size=1))
        try:
            before = await backend_pid(engine)
            async with driver_connection(engine) as driver:
                await driver.execute("BEGIN")
                await driver.execute("CREATE TABLE left_open (x int)")
            assert await backend_pid(engine) != before
            async with engine.connect() as conn:  # nothing of the open transaction stayed
                assert await conn.scalar(sa.text("SELECT to_regclass('left_open')")) is None
        finally:
            await engine.dispose()

    async def test_a_cancelled_statement_leaves_no_busy_connection(self, database_url: str) -> None:
        engine = create_engine(DatabaseSettings(url=database_url, pool_size=1), pool_timeout=5)
        started = asyncio.Event()

        async def sleep() -> None:
            async with driver_connection(engine) as driver:
                started.set()
                await driver.fetch("SELECT pg_sleep(30)")

        try:
            task = asyncio.create_task(sleep())
            await started.wait()
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            async with asyncio.timeout(10), driver_connection(engine) as driver:
                assert await driver.fetchval("SELECT 1") == 1
        finally:
            await engine.dispose()

    async def test_a_statement_the_server_cut_is_a_lost_connection(self, database_url: str) -> None:
        engine = create_engine(DatabaseSettings(url=database_url, pool_size=1))
        try:
            # What asyncpg raises depends on when it reads the server's goodbye: its 57P01,
            # or "connection is closed" from the transaction's exit, which alone says nothing.
            with pytest.raises(Exception) as raised:  # noqa: PT011
                async with driver_connection(engine) as driver, driver.transaction():
                    await driver.execute("SELECT pg_terminate_backend(pg_backend_pid())")
            assert is_transient(raised.value), repr(raised.value)
            async with driver_connection(engine) as driver:  # a new connection serves
                assert await driver.fetchval("SELECT 1") == 1
        finally:
            await engine.dispose()
