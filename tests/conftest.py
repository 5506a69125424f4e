"""Session fixtures: one real Kafka broker and one real Postgres for the whole run.

Tests stay isolated through names, not servers: each test gets its own topic prefix,
consumer groups and database (copied from a migrated template in milliseconds).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from services.alerting.app import create_app as create_alerting
from services.alerting.config import AlertingConfig
from services.collector.app import create_app as create_collector
from services.migrations import upgrade
from services.scorer.app import create_app as create_scorer
from services.servers import ApacheKafkaBroker, apache_kafka_available
from shared.db import create_engine
from shared.kafka import ensure_topics
from shared.settings import (
    AlertingSettings,
    AuthSettings,
    CollectorSettings,
    DatabaseSettings,
    KafkaSettings,
    ScorerSettings,
    SourceSettings,
)
from tests.harness import backends
from tests.helpers import serving
from tests.processes import TEST_HASH_KEY, service_env

# Every service needs the keyed-hash secret; those built in-process read it from here.
os.environ.setdefault("CXLOOP_PRIVACY_HASH_KEY", TEST_HASH_KEY)

_CHOICE = pytest.StashKey[tuple[str, str]]()
_TESTS = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    docker = backends.docker_engine_answers()
    config.stash[_CHOICE] = (backends.choose_kafka(docker), backends.choose_postgres(docker))


def pytest_report_header(config: pytest.Config) -> list[str]:
    kafka, postgres = config.stash[_CHOICE]
    return [f"cxloop backends: kafka={kafka} postgres={postgres} (see tests/harness/backends.py)"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kafka_backend = config.stash[_CHOICE][0]
    for item in items:
        path = Path(str(item.fspath))
        if _TESTS / "integration" in path.parents:
            item.add_marker(pytest.mark.integration)
        if _TESTS / "e2e" in path.parents:
            item.add_marker(pytest.mark.e2e)
        if item.get_closest_marker("apache_kafka") and kafka_backend == "tansu":
            item.add_marker(
                pytest.mark.skip(reason="checks Kafka semantics Tansu lacks; runs on Apache Kafka")
            )


@pytest.fixture(scope="session")
def backend_choice(pytestconfig: pytest.Config) -> tuple[str, str]:
    return pytestconfig.stash[_CHOICE]


@pytest.fixture(scope="session")
async def kafka(backend_choice: tuple[str, str]) -> AsyncIterator[backends.KafkaServer]:
    server = await backends.start_kafka(backend_choice[0])
    yield server
    await backends.stop(server)


@pytest.fixture(scope="session")
async def postgres(backend_choice: tuple[str, str]) -> AsyncIterator[backends.PostgresServer]:
    server = await backends.start_postgres(backend_choice[1])
    yield server
    await backends.stop(server)


@pytest.fixture(scope="session")
async def migrated_template(postgres: backends.PostgresServer) -> str:
    """A database at the newest migration, copied for each test."""
    name = f"cxloop_template_{secrets.token_hex(4)}"
    url = await postgres.create_database(name)
    await asyncio.to_thread(upgrade, url)
    return name


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def database_url(postgres: backends.PostgresServer, migrated_template: str) -> str:
    """A fresh database at the newest migration, for this test alone."""
    return await postgres.create_database(unique("t"), template=migrated_template)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on this test's database, as the services make theirs (shared.db)."""
    engine = create_engine(DatabaseSettings(url=database_url))
    yield engine
    await engine.dispose()


@pytest.fixture
async def empty_database_url(postgres: backends.PostgresServer) -> str:
    """A fresh database with no schema at all."""
    return await postgres.create_database(unique("e"))


@pytest.fixture
async def kafka_settings(kafka: backends.KafkaServer) -> KafkaSettings:
    """Settings for this test's own topics, created with their partition counts."""
    settings = KafkaSettings(
        bootstrap_servers=kafka.bootstrap_servers,
        topic_prefix=f"{unique('t')}.",
        idempotence=kafka.supports_idempotence,
        produce_timeout_seconds=10,
    )
    await ensure_topics(settings)
    return settings


@pytest.fixture
def api_key() -> str:
    return "test-" + secrets.token_urlsafe(18)


@pytest.fixture
def auth(api_key: str) -> AuthSettings:
    return AuthSettings(api_key=api_key)


_FAST_GROUP = {
    "batch_timeout_ms": 100,
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 500,
    "commit_timeout_seconds": 5,
}


@pytest.fixture
def scorer_settings() -> ScorerSettings:
    return ScorerSettings(group_id=unique("scorer"), **_FAST_GROUP)  # type: ignore[arg-type]


@pytest.fixture
def alerting_settings() -> AlertingSettings:
    return AlertingSettings(group_id=unique("alerting"), **_FAST_GROUP)  # type: ignore[arg-type]


CollectorFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def collector_app(
    kafka_settings: KafkaSettings, database_url: str, auth: AuthSettings, api_key: str
) -> CollectorFactory:
    """Build a collector on this test's topics and database; use it as `async with`."""

    def make(
        settings: CollectorSettings | None = None, sources: SourceSettings | None = None
    ) -> AbstractAsyncContextManager[httpx.AsyncClient]:
        app = create_collector(
            kafka=kafka_settings,
            database=DatabaseSettings(url=database_url),
            auth=auth,
            settings=settings or CollectorSettings(),
            sources=sources or SourceSettings(),
        )
        return serving(app, api_key, "collector")

    return make


@pytest.fixture
def make_app(
    service: str,
    kafka_settings: KafkaSettings,
    database_url: str,
    auth: AuthSettings,
    scorer_settings: ScorerSettings,
    alerting_settings: AlertingSettings,
) -> Callable[[], FastAPI]:
    """Build the app of the service a module's own ``service`` fixture names ("scorer" or
    "alerting") on this test's topics and database."""

    def make() -> FastAPI:
        database = DatabaseSettings(url=database_url)
        if service == "scorer":
            return create_scorer(kafka_settings, database, auth, scorer_settings)
        return create_alerting(kafka_settings, database, auth, alerting_settings)

    return make


AlertingFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def alerting_with(
    kafka_settings: KafkaSettings,
    database_url: str,
    auth: AuthSettings,
    api_key: str,
    alerting_settings: AlertingSettings,
) -> AlertingFactory:
    """Build an alerting service with a routing config; use it as `async with`."""

    def make(
        config: AlertingConfig | None = None, **settings: Any
    ) -> AbstractAsyncContextManager[httpx.AsyncClient]:
        app = create_alerting(
            kafka_settings,
            DatabaseSettings(url=database_url),
            auth,
            alerting_settings.model_copy(update=settings),
            None,
            config,
        )
        return serving(app, api_key, "alerting")

    return make


@pytest.fixture
def stack_env(
    kafka: backends.KafkaServer, kafka_settings: KafkaSettings, database_url: str, api_key: str
) -> dict[str, str]:
    """The environment for the services as processes on this test's topics and database."""
    return service_env(
        bootstrap=kafka.bootstrap_servers,
        prefix=kafka_settings.topic_prefix,
        database_url=database_url,
        api_key=api_key,
        CXLOOP_KAFKA_IDEMPOTENCE=str(kafka.supports_idempotence).lower(),
    )


@pytest.fixture
async def own_kafka(kafka: backends.KafkaServer) -> AsyncIterator[ApacheKafkaBroker]:
    """An Apache Kafka broker of this test's own, persistent across a kill and a restart."""
    if not apache_kafka_available():
        pytest.skip("needs java and mvn for a broker of its own")
    server = ApacheKafkaBroker(backends.scratch_dir() / "kafka")
    await server.start()
    yield server
    await server.stop()
    backends.remove_scratch(server.data_dir)
