"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from shared.kafka import ensure_topics
from shared.settings import KafkaSettings
from tests.browser import (  # noqa: F401 (registers the fixtures `browser` and `page`)
    browser_fixture,
    page_fixture,
)
from tests.conftest import unique
from tests.e2e import pages_stack
from tests.harness import backends


@pytest.fixture(scope="module")
async def pages(
    kafka: backends.KafkaServer, postgres: backends.PostgresServer, migrated_template: str
) -> AsyncIterator[pages_stack.PagesStack]:
    """The three services as processes, with their pages, on a database of their own."""
    database_url = await postgres.create_database(unique("pages"), template=migrated_template)
    prefix = f"{unique('pages')}."
    await ensure_topics(
        KafkaSettings(
            bootstrap_servers=kafka.bootstrap_servers,
            topic_prefix=prefix,
            idempotence=kafka.supports_idempotence,
        )
    )
    stack = await pages_stack.start(
        kafka.bootstrap_servers, prefix, database_url, kafka.supports_idempotence
    )
    try:
        yield stack
    finally:
        await pages_stack.stop(stack)
