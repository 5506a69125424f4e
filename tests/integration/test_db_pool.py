"""The engine every service uses hands out live connections after Postgres closed pooled
ones (a restart, ``pg_terminate_backend``, an idle timeout), without a ping per checkout."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import create_engine
from shared.settings import DatabaseSettings
from tests.helpers import eventually


async def test_pooled_connections_the_server_closed_are_replaced_unseen(
    database_url: str,
) -> None:
    engine = create_engine(DatabaseSettings(url=database_url))
    other = create_engine(DatabaseSettings(url=database_url))
    try:
        # Three connections in the pool, each having served.
        async def pid() -> int:
            async with engine.connect() as conn:
                await asyncio.sleep(0.05)  # held, so that the three are different connections
                return int(await conn.scalar(sa.text("SELECT pg_backend_pid()")) or 0)

        pooled = set(await asyncio.gather(pid(), pid(), pid()))
        assert len(pooled) == 3
        async with other.connect() as admin:
            killed = await admin.scalar(
                sa.text("SELECT count(pg_terminate_backend(p)) FROM unnest(CAST(:p AS int[])) p"),
                {"p": sorted(pooled)},
            )
            assert killed == 3
        await eventually(lambda: _alive(other, pooled), lambda alive: alive == 0, interval=0.01)
        await asyncio.sleep(0.05)  # the driver reads each connection's end as it comes
        # Every request after that is served, each by a new connection.
        for _ in range(4):
            async with engine.begin() as conn:
                now = await conn.scalar(sa.text("SELECT pg_backend_pid()"))
            assert now not in pooled
    finally:
        await engine.dispose()
        await other.dispose()


async def _alive(engine: AsyncEngine, pids: set[int]) -> int:
    """How many of ``pids`` are still server processes (read in a transaction of its own:
    pg_stat_activity keeps one snapshot per transaction)."""
    async with engine.connect() as conn:
        found = await conn.scalar(
            sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(CAST(:p AS int[]))"),
            {"p": sorted(pids)},
        )
    return int(found or 0)
